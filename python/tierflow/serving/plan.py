"""``tierflow.schedule(g, devices=[tierflow.devices.host()], policy=...) -> Plan`` and
``plan.run(trace, inputs=...) -> Report``: a CoE served for real on this machine.

Example:
    >>> import tempfile, tierflow as tf
    >>> from tierflow.demos import write_demo_coe
    >>> folder = tempfile.mkdtemp()
    >>> g = write_demo_coe(folder, experts=4, hidden=64, intermediate=128, layers=1)
    >>> t = tf.Trace.closed_loop(g.experts, users=1, n=8, prompt_tokens=4, output_tokens=1, seed=0)
    >>> with tf.schedule(g, policy="lru", store=folder + "/store", ram_budget="1MiB") as plan:
    ...     report = plan.run(t)
    >>> report.summary()["requests"], len(report.outputs)
    (8, 8)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..sim.coe import CoE
from ..sim.devices import Device
from ..sim.policies import Policy
from ..sim.report import Report
from ..sim.trace import Trace
from ..store import Tier, TieredStore, parse_size
from .engine import ExpertError, Outcome, Residency, serve
from .experts import PrototypeRouter, TransformerExpert, demo_input

__all__ = ["Plan", "RunReport", "schedule"]

ROUTER_PREFIX = "router/"


class RunReport(Report):
    """A :class:`~tierflow.Report` measured on this host, plus ``outputs`` (per request, None if
    it failed), ``errors`` ({request index: reason}), ``routed`` (expert names) and ``store_stats``."""

    outputs: list[np.ndarray | None]
    errors: dict[int, str]
    routed: list[str]
    store_stats: dict[str, Any]
    loads: int


def _open_store(store: TieredStore | str | os.PathLike[str]) -> tuple[TieredStore, bool]:
    if isinstance(store, TieredStore):
        return store, False
    p = Path(store)
    if (p / "tierflow-store.json").exists():
        return TieredStore.open(p, verify="header", strict=False), True
    p.mkdir(parents=True, exist_ok=True)
    tiers = [Tier("fast", "64MiB"), Tier("ram", None), Tier("disk", None, path="disk")]
    return TieredStore(p, tiers, default_tier="ram"), True


class Plan:
    """A CoE scheduled on this host: weights in a TieredStore, a RAM budget, a policy.

    Use :meth:`run` for a whole trace (the dispatcher sees the routed queue, which is what the
    ``planned`` policy plans with) and :meth:`infer` for one request from any thread.
    """

    def __init__(
        self,
        g: CoE,
        device: Device,
        policy: Policy,
        store: TieredStore,
        own_store: bool,
        ram_budget: int,
        experts: Mapping[str, Any],
        router: PrototypeRouter | None,
        broken: dict[str, str],
        workers: int,
        lookahead: int,
    ) -> None:
        self.coe, self.device, self.policy = g, device, policy
        self.store, self._own = store, own_store
        self.ram_budget = ram_budget
        self.experts = dict(experts)
        self.router = router
        self.broken = broken
        self.workers, self.lookahead = workers, lookahead
        self.tensors = {e: [f"{e}/{t}" for t in m.tensors] for e, m in self.experts.items()}
        self.nbytes = {
            e: sum(int(store.info(n)["nbytes"]) for n in names) for e, names in self.tensors.items()
        }
        self._lock = threading.Lock()
        self._residency: Residency | None = None

    # --- pieces ----------------------------------------------------------------------------
    def _weights(self, e: str) -> dict[str, Any]:
        m = self.experts[e]
        get = lambda t: self.store.get(f"{e}/{t}", promote=False)  # noqa: E731
        if hasattr(m, "weights"):
            return dict(m.weights(get))
        return {t: get(t) for t in m.tensors}

    def compute(
        self, e: str, x: Any, output_tokens: int = 1, on_first: Callable[[], None] | None = None
    ) -> np.ndarray:
        """Run expert ``e`` on ``x`` (its weights must be resident; see :meth:`infer`).
        ``on_first`` is passed to experts that report their first output (TTFT)."""
        m = self.experts[e]
        if on_first is not None and isinstance(m, TransformerExpert):
            return np.asarray(m.forward(x, self._weights(e), output_tokens, on_first))
        return np.asarray(m.forward(x, self._weights(e), output_tokens))

    def route(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        """The router's choice for ``x`` and its probabilities (needs a router)."""
        if self.router is None:
            raise InvalidArgumentError("this plan has no router: give each request's expert")
        p = self.router.scores(x, self.store.get(ROUTER_PREFIX + "prototypes"))
        return self.router.experts[int(np.argmax(p))], p

    def check_expert(self, e: str) -> None:
        """Raise :class:`ExpertError` with the reason a request for ``e`` cannot be served."""
        if e in self.broken:
            raise ExpertError(self.broken[e])
        if e not in self.experts:
            known = sorted(self.experts)
            raise ExpertError(
                f"unknown expert {e!r}: not a node of CoE {self.coe.name!r} "
                f"(known: {known[:8]}{' ...' if len(known) > 8 else ''})"
            )
        if e in self.broken:
            raise ExpertError(self.broken[e])

    def _new_residency(self) -> Residency:
        live = {e: t for e, t in self.tensors.items() if e not in self.broken}
        r = Residency(
            self.store,
            live,
            {e: self.nbytes[e] for e in live},
            self.ram_budget,
            self.policy.eviction,
        )
        return r

    def residency(self) -> Residency:
        with self._lock:
            if self._residency is None:
                self._residency = self._new_residency()
            return self._residency

    def infer(self, expert: str | None, x: Any, output_tokens: int = 1) -> np.ndarray:
        """Serve one request (thread safe): route if ``expert`` is None, load, compute."""
        x = np.asarray(x, dtype=np.float32)
        if expert is None:
            expert, _ = self.route(x)
        self.check_expert(expert)
        r = self.residency()
        r.acquire(expert)
        try:
            return self.compute(expert, x, output_tokens)
        finally:
            r.release(expert)

    # --- a whole trace ---------------------------------------------------------------------
    def inputs_for(self, trace: Trace, seed: int = 0) -> list[np.ndarray]:
        """Deterministic inputs for ``trace``: with a prototype router, each request's input is
        its expert's prototype plus noise (so the router agrees with the trace); otherwise noise."""
        out = []
        protos = self.store.get(ROUTER_PREFIX + "prototypes") if self.router else None
        hidden = self._hidden()
        for i in range(len(trace)):
            e = trace.experts[int(trace.expert[i])]
            tok = int(trace.prompt_tokens[i])
            if protos is not None and self.router is not None and e in self.router.experts:
                out.append(
                    demo_input(protos[self.router.experts.index(e)], tok, seed * 1_000_003 + i)
                )
            else:
                rng = np.random.default_rng(seed * 1_000_003 + i)
                out.append(rng.standard_normal((tok, hidden)).astype(np.float32))
        return out

    def _hidden(self) -> int:
        for m in self.experts.values():
            h = getattr(m, "hidden", None)
            if h:
                return int(h)
        raise InvalidArgumentError("cannot infer the input width: pass inputs=")

    def run(
        self,
        trace: Trace,
        inputs: Sequence[Any] | None = None,
        *,
        progress: Callable[[], None] | None = None,
        fresh: bool = True,
    ) -> RunReport:
        """Serve ``trace`` (in order, ``workers`` at a time) and return the measured Report.

        Each request: the router picks its expert (when the plan has a router; otherwise the
        trace's expert is used), the expert's weights are made resident (hit, prefetched, or
        loaded from the file tier: the stall), the expert computes on a worker. ``fresh`` starts
        from an empty RAM tier (every expert on file), so policies compare on equal terms.
        Requests for unknown or broken experts fail with a reason in ``report.errors``.
        """
        if not isinstance(trace, Trace):
            raise InvalidArgumentError(
                f"run: trace must be a tierflow.Trace, got {type(trace).__name__}"
            )
        if len(trace) == 0:
            raise InvalidArgumentError("run: the trace is empty")
        if inputs is None:
            inputs = self.inputs_for(trace)
        if len(inputs) != len(trace):
            raise InvalidArgumentError(f"run: {len(inputs)} inputs for {len(trace)} requests")
        with self._lock:
            if fresh and self._residency is not None:
                for e in list(self._residency.slots):
                    self._residency._drop(e)
                self._residency = None
            if fresh:
                for e, names in self.tensors.items():
                    if e not in self.broken:
                        for n in names:
                            if self.store.tier_of(n) != "disk" and n in self.store:
                                self.store.evict(n)
            self._residency = res = self._new_residency()
        self.store.reset_stats()
        # 1. route every queued request (the router runs once per request, timed)
        routed: list[str] = []
        router_s = np.zeros(len(trace))
        xs = [np.asarray(x, dtype=np.float32) for x in inputs]
        for i, x in enumerate(xs):
            t = time.perf_counter()
            if self.router is not None:
                e, _ = self.route(x)
            else:
                e = trace.experts[int(trace.expert[i])]
            router_s[i] = time.perf_counter() - t
            routed.append(e)
        broken = dict(self.broken)
        for e in set(routed):
            try:
                self.check_expert(e)
            except ExpertError as err:
                broken[e] = str(err)
        if self.policy.eviction == "belady":
            res.policy.set_future([e for e in routed if e not in broken])
        outs_tok = [int(v) for v in trace.output_tokens]
        reqs = [(i, e, (xs[i], outs_tok[i])) for i, e in enumerate(routed)]

        first: dict[int, float] = {}

        def compute(e: str, payload: Any, idx: int) -> np.ndarray:
            def mark() -> None:
                first[idx] = time.perf_counter()

            return self.compute(e, payload[0], payload[1], mark)

        t0 = time.perf_counter()
        res.t0 = t0
        outcomes = serve(
            res,
            reqs,
            compute,
            workers=self.workers,
            prefetch=self.policy.prefetch,
            lookahead=self.lookahead,
            broken=broken,
            progress=progress,
        )
        t_end = time.perf_counter()
        return self._report(trace, outcomes, routed, router_s, res, t0, t_end, first)

    def _report(
        self,
        trace: Trace,
        outs: list[Outcome],
        routed: list[str],
        router_s: np.ndarray,
        res: Residency,
        t0: float,
        t_end: float,
        first: dict[int, float] | None = None,
    ) -> RunReport:
        """The simulator's Report fields, measured: latency = router + stall + compute of each
        request; ttft up to the first output (latency when the expert does not report it)."""
        n = len(outs)
        first = first or {}
        arrival = np.array([o.start - t0 for o in outs])
        latency = np.array([router_s[o.index] + (o.end - o.start) for o in outs])
        ttft = np.array([router_s[o.index] + (first.get(o.index, o.end) - o.start) for o in outs])
        queue = np.zeros(n)
        names = self.coe.experts
        loads = np.array([float(res.c.per_expert.get(e, 0)) for e in names])
        st = self.store.stats()
        link = st["counters"]["links"].get("disk->ram", {"bytes": 0, "seconds": 0.0})
        occ = res.c.occupancy or [(0.0, 0)]
        c = res.c
        busy = float(sum(o.end - o.ready for o in outs if o.kind != "failed"))
        raw = {
            "arrival": arrival,
            "ttft": ttft,
            "latency": latency,
            "queue": queue,
            "instance": np.zeros(n, dtype=np.uint32),
            "instances": [
                {
                    "switches": c.loads,
                    "hits": c.hits + c.prefetch_hits,
                    "misses": c.misses,
                    "prefetches": c.prefetches,
                    "link_bytes": [int(link["bytes"])],
                    "busy": busy,
                    "stall": float(c.stall),
                    "occupancy_t": np.array([t for t, _ in occ]),
                    "occupancy_bytes": np.array([b for _, b in occ], dtype=np.float64),
                }
            ],
            "node_loads": loads,
            "home": np.zeros(len(names)),
            "pinned": [[]],
            "exec_capacity": self.ram_budget,
            "makespan": t_end - t0,
            "batches": n,
        }
        dev = self.device
        if len(dev.tiers) != 2:
            from .host import host_device

            dev = host_device(self.ram_budget)
        valid_trace = trace
        rep = RunReport(raw, self.coe, dev, valid_trace, self.policy)
        rep.outputs = [o.output for o in outs]
        rep.errors = {o.index: o.error for o in outs if o.error}
        rep.routed = routed
        rep.store_stats = dict(st)
        rep.loads = c.loads
        rep.compute_s = np.array([o.end - o.ready for o in outs])  # type: ignore[attr-defined]
        rep.stall_s = np.array([o.stall for o in outs])  # type: ignore[attr-defined]
        rep.kinds = [o.kind for o in outs]  # type: ignore[attr-defined]
        rep.router_s = router_s  # type: ignore[attr-defined]
        rep.prefetch_hits = c.prefetch_hits  # type: ignore[attr-defined]
        rep.load_seconds = float(link.get("seconds", 0.0))  # type: ignore[attr-defined]
        return rep

    # --- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        if self._residency is not None:
            self._residency.settle()
        if self._own:
            self.store.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Plan({self.coe.name!r}, {len(self.experts)} experts, policy={self.policy.name!r}, "
            f"ram_budget={self.ram_budget}, workers={self.workers})"
        )


def schedule(
    g: CoE,
    devices: Sequence[Device] | None = None,
    policy: str | Policy | None = "lru",
    *,
    store: TieredStore | str | os.PathLike[str] | None = None,
    experts: Mapping[str, Any] | None = None,
    ram_budget: int | str | None = None,
    workers: int = 1,
    lookahead: int = 1,
    **overrides: Any,
) -> Plan:
    """Schedule ``g`` onto this host.

    Args:
        g: the CoE. Each expert's weights come from ``store`` (tensors named ``"{expert}/..."``)
            or, when the node was built from a safetensors checkpoint, from that file (adopted in
            place into a private store).
        devices: ``[tierflow.devices.host()]`` (the default); the host runtime runs one device.
        policy: as for :func:`tierflow.simulate` (``"lru"``, ``"planned+prefetch"``, ...): the
            eviction kind picks which expert leaves RAM, ``prefetch`` loads upcoming experts.
        store: a TieredStore, or the folder of one (opened with ``strict=False``: tensors that
            fail verification quarantine their expert, the others serve).
        experts: ``{name: model}`` with ``tensors`` and ``forward``; default: a
            :class:`TransformerExpert` inferred from the stored shapes.
        ram_budget: bytes of experts kept in RAM (default: the device's exec-tier capacity).
        workers: threads computing requests concurrently.
        lookahead: queued requests the prefetcher looks at.

    Raises:
        InvalidArgumentError: bad arguments, an expert larger than the budget.
        ScheduleError: an expert has no weights in the store or checkpoint.
    """
    if not isinstance(g, CoE):
        raise InvalidArgumentError(f"schedule: g must be a tierflow.CoE, got {type(g).__name__}")
    g.validate()
    devs = list(devices) if devices is not None else []
    if len(devs) > 1:
        raise InvalidArgumentError(
            "schedule: the host runtime runs on one device (this host); for several nodes pass "
            "devices=tierflow.devices.ray_cluster()"
        )
    pol = Policy.parse(policy, **overrides)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(f"schedule: workers must be an integer >= 1, got {workers!r}")
    own = False
    if store is None:
        import tempfile

        store, own = _open_store(tempfile.mkdtemp(prefix="tierflow-run-"))
    else:
        store, own = _open_store(store)
    try:
        names, broken = _expert_weights(g, store)
        models = _expert_models(g, store, names, broken, experts)
        router = _router(g, store, names)
        if devs:
            dev = devs[0]
        else:
            from .host import host_device

            dev = host_device(parse_size(ram_budget) or 1 << 30)
        budget = parse_size(ram_budget)
        if budget is None:
            budget = dev.exec.capacity - dev.reserved
        plan = Plan(
            g, dev, pol, store, own, int(budget), models, router, broken, workers, lookahead
        )
    except BaseException:
        if own:
            store.close()
        raise
    return plan


def _expert_weights(g: CoE, store: TieredStore) -> tuple[set[str], dict[str, str]]:
    """The store's tensor names once every expert's weights are in it (a safetensors checkpoint
    named by a node is adopted in place), and the experts that cannot serve, with the reason."""
    from ..errors import ScheduleError

    names = set(store.names())
    broken: dict[str, str] = {}
    for t, why in store.quarantined().items():
        e = t.split("/", 1)[0]
        broken.setdefault(
            e, f"expert {e!r} is unavailable: its weights failed verification ({t}: {why})"
        )
    for e in g.experts:
        node = g.nodes[e]
        if not any(n.startswith(e + "/") for n in names) and e not in broken:
            src = node.source or ""
            if src.startswith("safetensors:"):
                path = src[len("safetensors:") :]
                try:
                    store.load_safetensors(path, tier="disk", prefix=e + "/")
                except Exception as err:
                    broken[e] = f"expert {e!r} is unavailable: {path}: {err}"
                names = set(store.names())
            else:
                raise ScheduleError(
                    f"schedule: expert {e!r} has no weights (no '{e}/' tensors in the store "
                    "and no safetensors checkpoint)"
                )
    return names, broken


def _expert_models(
    g: CoE,
    store: TieredStore,
    names: set[str],
    broken: dict[str, str],
    experts: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The model of each expert: given in ``experts``, or a :class:`TransformerExpert` from the
    node's tags or the stored shapes (a broken expert without one is left out)."""
    models: dict[str, Any] = {}
    for e in g.experts:
        if experts is not None and e in experts:
            models[e] = experts[e]
            continue
        shapes = {
            n[len(e) + 1 :]: tuple(store.info(n)["shape"]) for n in names if n.startswith(e + "/")
        }
        tagged = TransformerExpert.from_tags(list(g.nodes[e].tags), g.nodes[e].layers)
        if tagged is not None and set(shapes) == set(tagged.tensors):
            models[e] = tagged
            continue
        try:
            models[e] = TransformerExpert.from_shapes(shapes, f"expert {e!r}")
        except Exception:
            if e in broken:
                continue
            raise
    return models


def _router(g: CoE, store: TieredStore, names: set[str]) -> PrototypeRouter | None:
    """The stored prototype router, pinned in the fast tier, or None when the store has none."""
    if ROUTER_PREFIX + "prototypes" not in names:
        return None
    rnode = g.router_node
    order = list(g.routes.get(rnode.name, g.experts)) if rnode else g.experts
    router = PrototypeRouter(order, int(store.info(ROUTER_PREFIX + "prototypes")["shape"][1]))
    if store.tier_of(ROUTER_PREFIX + "prototypes") != "fast" and "fast" in store.tier_names:
        store.move(ROUTER_PREFIX + "prototypes", "fast")
    store.pin(ROUTER_PREFIX + "prototypes")
    return router
