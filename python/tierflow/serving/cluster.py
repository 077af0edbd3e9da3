"""A CoE served across the nodes of a Ray cluster.

- :func:`ray_cluster` -> one :class:`~tierflow.Device` per alive Ray node, measured by the host
  probe (:func:`tierflow.devices.host`) run as a Ray task pinned to that node, cached per node.
- :func:`schedule_cluster` (what ``tierflow.schedule(g, devices=ray_cluster(...))`` calls) places
  the experts over the nodes with :func:`tierflow.sim.placement.place` (the simulator's placement)
  and starts one Ray actor per node holding experts. Each actor runs the host runtime
  (:func:`tierflow.serving.plan.schedule`: its own TieredStore in a node-local folder, a RAM budget,
  the prefetch thread and the worker pool). The experts placed on a node reach its file tier
  once, through Ray's object store from the store given to ``schedule`` (counted as network
  bytes); its requests then load them from that file tier into RAM as its policy decides.
- :meth:`ClusterPlan.run` routes every request where requests enter (this process), sends each
  to a node holding its expert in calls of ``chunk`` requests (replicas in turn), and returns a
  :class:`~tierflow.sim.placement.ClusterReport` with per-node columns. Inputs and outputs travel
  through Ray's object store and are counted as network bytes. Each node prefetches over the
  requests of its call, with the shared EvictionPolicy.
- Faults: a node whose actor dies mid-trace (``ray.kill``) is dropped; its experts are placed
  again on the surviving nodes (sent to them through the object store) and its unfinished calls
  are sent there (each request's result is kept once, from the call that completed). A node that
  is not alive raises ScheduleError naming it; an expert larger than every node's RAM budget
  raises ScheduleError with the bytes missing.

Limits: weights always come from the scheduling process's store, never from another node's RAM;
a node that receives experts after a loss rebuilds its runtime (its RAM cache starts empty).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ScheduleError
from ..sim.coe import CoE
from ..sim.devices import (
    Device,
    RayMissingError,
    import_ray,
    is_ray_device,
    ray_cluster,
)
from ..sim.devices import MemoryTier as Tier
from ..sim.policies import Policy
from ..sim.trace import Trace

__all__ = [
    "ClusterPlan",
    "RayMissingError",
    "import_ray",
    "ray_cluster",
    "schedule",
    "schedule_cluster",
]


class _NodeRuntime:
    """The actor body: the host runtime on one node, with its own TieredStore (a node-local
    folder: the node's file tier), serving calls of requests."""

    def __init__(
        self, coe: dict[str, Any], policy: str, ram_budget: int, workers: int, lookahead: int
    ) -> None:
        import tempfile

        from ..store import Tier as STier
        from ..store import TieredStore

        self.coe = CoE.from_dict(coe)
        self.folder = tempfile.mkdtemp(prefix="tierflow-node-")
        self.store = TieredStore(
            self.folder,
            [STier("fast", "64MiB"), STier("ram", None), STier("disk", None, path="disk")],
            default_tier="ram",
        )
        self.policy, self.ram_budget = policy, ram_budget
        self.workers, self.lookahead = workers, lookahead
        self.hosted: list[str] = []
        self.plan: Any = None
        self.fresh = True

    def host(self, weights: dict[str, dict[str, np.ndarray]]) -> int:
        """Write experts' tensors into this node's file tier (from the object store) and
        (re)build the runtime over every expert held here. Returns bytes written."""
        import ray

        from ..sim.placement import _sub_coe
        from .plan import schedule

        n = 0
        for e, ts in weights.items():
            if e in self.hosted:
                continue
            if isinstance(ts, ray.ObjectRef):
                ts = ray.get(ts)
            for t, a in ts.items():
                self.store.put(f"{e}/{t}", np.asarray(a), tier="disk")
                n += int(np.asarray(a).nbytes)
            self.hosted.append(e)
        if self.plan is not None:
            self.plan.close()
        sub = _sub_coe(self.coe, self.hosted)
        self.plan = schedule(
            sub,
            policy=self.policy,
            store=self.store,
            ram_budget=self.ram_budget,
            workers=self.workers,
            lookahead=self.lookahead,
        )
        self.fresh = True
        return n

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def serve(self, reqs: list[tuple[int, str, np.ndarray, int]]) -> dict[str, Any]:
        """Serve (index, expert, input, output tokens) in order; return outputs and counters."""
        from ..errors import InvalidArgumentError as _IA

        names = self.plan.coe.experts
        idx = {e: i for i, e in enumerate(names)}
        unknown = [e for _, e, _, _ in reqs if e not in idx]
        if unknown:
            raise _IA(f"experts {unknown[:3]} are not held on this node")
        n = len(reqs)
        t = Trace(
            names,
            np.zeros(n),
            np.array([x.shape[0] for _, _, x, _ in reqs]),
            np.array([o for *_, o in reqs]),
            np.array([idx[e] for _, e, _, _ in reqs]),
        )
        w = time.perf_counter()
        rep = self.plan.run(t, [x for _, _, x, _ in reqs], fresh=self.fresh)
        wall = time.perf_counter() - w
        self.fresh = False
        inst = rep.instances[0]
        return {
            "index": [i for i, *_ in reqs],
            "outputs": rep.outputs,
            "errors": {reqs[k][0]: v for k, v in rep.errors.items()},
            "latency": rep.latency.tolist(),
            "ttft": rep.ttft.tolist(),
            "kinds": list(rep.kinds),  # type: ignore[attr-defined]
            "hits": int(inst["hits"]),
            "misses": int(inst["misses"]),
            "loads": int(inst["switches"]),
            "prefetches": int(inst["prefetches"]),
            "disk_bytes": int(sum(inst["link_bytes"])),
            "stall": float(inst["stall"]),
            "busy": float(inst["busy"]),
            "wall": wall,
        }

    def close(self) -> None:
        import shutil

        if self.plan is not None:
            self.plan.close()
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class ClusterPlan:
    """A CoE scheduled across Ray nodes (see the module text)."""

    def __init__(
        self,
        g: CoE,
        devices: list[Device],
        policy: Policy,
        store: str,
        ram_budget: int,
        workers: int,
        lookahead: int,
        chunk: int,
        local: Any,
    ) -> None:
        self.coe, self.devices, self.policy = g, devices, policy
        self.store, self.ram_budget = store, ram_budget
        self.workers, self.lookahead, self.chunk = workers, lookahead, chunk
        self.local = local  # a host Plan in this process: the router and request inputs
        self.ray = import_ray()
        self.alive = list(range(len(devices)))
        self.actors: dict[int, Any] = {}
        self.placement: Any = None
        self.events: list[str] = []
        self.held: dict[int, set[str]] = {}
        self.staged: dict[int, int] = {}  # bytes of weights sent to each node's file tier
        self._refs: dict[str, Any] = {}

    # --- placement and actors ---------------------------------------------------------------
    def _place(self, trace: Trace | None) -> None:
        from ..sim.placement import Link, place

        pop = (
            {e: float(c) for e, c in trace.counts().items()}
            if trace is not None
            else {e: 1.0 for e in self.coe.experts}
        )
        devs = [self._budget_device(self.devices[k]) for k in self.alive]
        pl = place(
            _sized(self.coe, self.local),
            devs,
            popularity=pop,
            entry=0,
            links=Link(1e9, 1e-4),  # same-machine nodes: the ranking does not depend on it
            replicate="hot",
        )
        # indices of the alive list -> device indices
        pl.homes = {e: [self.alive[k] for k in hs] for e, hs in pl.homes.items()}
        self.placement = pl

    def _budget_device(self, d: Device) -> Device:
        return Device(
            name=d.name,
            tiers=[Tier("ram", int(self.ram_budget), 1e9, 0.0), Tier("disk", 1 << 50)],
            exec_tier="ram",
            read_bandwidth=d.read_bandwidth,
            peak_flops=dict(d.peak_flops),
            launch_overhead=d.launch_overhead,
            kernels_per_layer=1.0,
            sources=dict(d.sources),
        )

    def _weights(self, e: str) -> Any:
        """An object-store reference to expert ``e``'s tensors, read from this process's store."""
        if e not in self._refs:
            st = self.local.store
            ts = {
                n[len(e) + 1 :]: np.array(st.get(n, promote=False)) for n in self.local.tensors[e]
            }
            self._refs[e] = self.ray.put(ts)
        return self._refs[e]

    def _start(self) -> None:
        """Start an actor on each node that holds experts and not yet running, and send every
        node the experts placed on it that it does not hold (through the object store)."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cls = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(_NodeRuntime)
        need = sorted({k for hs in self.placement.homes.values() for k in hs})
        for k in need:
            if k in self.actors:
                continue
            node = self.devices[k].sources["ray_node_id"]
            self.actors[k] = cls.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(
                self.coe.to_dict(),
                self.policy.name,
                int(self.ram_budget),
                self.workers,
                self.lookahead,
            )
            self.held[k] = set()
        calls = {}
        for k in need:
            new = [e for e in self.placement.on(k) if e not in self.held[k]]
            if not new:
                continue
            calls[k] = (self.actors[k].host.remote({e: self._weights(e) for e in new}), new)
        for k, (ref, new) in calls.items():
            try:
                nb = ray.get(ref, timeout=300)
            except ray.exceptions.RayTaskError as err:
                raise ScheduleError(
                    f"node {self.devices[k].name}: its runtime failed to start: {err}"
                ) from None
            except Exception as err:
                raise ScheduleError(
                    f"node {self.devices[k].name} ({self.devices[k].sources['ray_node_id']}) "
                    f"cannot be reached: {type(err).__name__}: {err}"
                ) from None
            self.held[k].update(new)
            self.staged[k] = self.staged.get(k, 0) + int(nb)

    def ping(self, n: int = 20) -> float:
        """Median seconds of an empty call's round trip to the nodes' actors (Ray's fixed cost
        per call, without the requests' data)."""
        ray = self.ray
        rtt = []
        for _ in range(n):
            for a in self.actors.values():
                t = time.perf_counter()
                ray.get(a.node.remote())
                rtt.append(time.perf_counter() - t)
        return float(np.median(rtt)) if rtt else 0.0

    # --- a whole trace -----------------------------------------------------------------------
    def inputs_for(self, trace: Trace, seed: int = 0) -> list[np.ndarray]:
        return self.local.inputs_for(trace, seed)

    def run(
        self,
        trace: Trace,
        inputs: Sequence[Any] | None = None,
        *,
        progress: Callable[[], None] | None = None,
    ) -> Any:
        """Serve ``trace``; returns a :class:`~tierflow.sim.placement.ClusterReport` (measured) with
        ``outputs``, ``errors``, ``routed`` and ``retried`` (requests sent again after a node
        died)."""
        from ..sim.placement import ClusterReport

        ray = self.ray
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
        xs = [np.asarray(x, dtype=np.float32) for x in inputs]
        n = len(trace)
        # 1. the router, where requests enter
        routed, router_s = [], np.zeros(n)
        for i, x in enumerate(xs):
            t = time.perf_counter()
            e = self.local.route(x)[0] if self.local.router else trace.experts[int(trace.expert[i])]
            router_s[i] = time.perf_counter() - t
            routed.append(e)
        unknown = sorted({e for e in routed if e not in self.coe.nodes})
        if unknown:
            raise InvalidArgumentError(f"run: unknown expert(s) {unknown[:5]}")
        outs_tok = [int(v) for v in trace.output_tokens]
        # 2. the calls: per node, chunks of requests in trace order
        nodes_of: dict[int, int] = {}
        rr: dict[str, int] = {}

        def assign(i: int) -> int:
            hs = self.placement.homes[routed[i]]
            k = hs[rr.get(routed[i], 0) % len(hs)]
            rr[routed[i]] = rr.get(routed[i], 0) + 1
            return k

        queues: dict[int, list[int]] = {}
        for i in range(n):
            k = nodes_of[i] = assign(i)
            queues.setdefault(k, []).append(i)
        result: dict[int, dict[str, Any]] = {}
        stats = {k: _zero() for k in range(len(self.devices))}
        served_by = np.full(n, -1, dtype=np.int64)
        retried: set[int] = set()
        net: dict[str, dict[str, float]] = {}
        inflight: dict[Any, tuple[int, list[int], float]] = {}

        def submit(k: int) -> None:
            q = queues.get(k)
            if not q or any(v[0] == k for v in inflight.values()):
                return
            part, queues[k] = q[: self.chunk], q[self.chunk :]
            reqs = [(i, routed[i], xs[i], outs_tok[i]) for i in part]
            ref = self.actors[k].serve.remote(reqs)
            inflight[ref] = (k, part, time.perf_counter())
            rec = net.setdefault(f"entry->{self.devices[k].name}", {"bytes": 0.0, "messages": 0.0})
            rec["bytes"] += float(sum(xs[i].nbytes for i in part))
            rec["messages"] += 1

        def flush() -> None:  # weights sent to nodes' file tiers since the last call
            for k2, nb in sorted(self.staged.items()):
                rec = net.setdefault(
                    f"entry->{self.devices[k2].name} (weights)", {"bytes": 0.0, "messages": 0.0}
                )
                rec["bytes"] += nb
                rec["messages"] += 1
            self.staged.clear()

        t0 = time.perf_counter()
        flush()
        for k in list(queues):
            submit(k)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            ref = done[0]
            k, part, ts = inflight.pop(ref)
            try:
                r = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as err:
                self._lose(k, err)
                flush()
                lost = part + queues.pop(k, [])
                for other_ref, (k2, p2, _) in list(inflight.items()):
                    if k2 == k:  # never the case with one call per node, kept for safety
                        inflight.pop(other_ref)
                        lost += p2
                for i in sorted(lost):
                    k2 = assign(i)
                    nodes_of[i] = k2
                    queues.setdefault(k2, []).append(i)
                    retried.add(i)
                for k2 in list(queues):
                    queues[k2].sort()
                    submit(k2)
                continue
            rtt = time.perf_counter() - ts
            over = max(rtt - r["wall"], 0.0)
            for j, i in enumerate(r["index"]):
                if i in result:
                    raise AssertionError(f"request {i} served twice")  # cannot happen
                result[i] = {
                    "output": r["outputs"][j],
                    "latency": router_s[i] + r["latency"][j] + over,
                    "ttft": router_s[i] + r["ttft"][j] + over,
                    "kind": r["kinds"][j],
                }
                served_by[i] = k
                if progress:
                    progress()
            for i, why in r["errors"].items():
                result[int(i)]["error"] = why
            s = stats[k]
            for f in ("hits", "misses", "loads", "prefetches", "disk_bytes", "stall", "busy"):
                s[f] += r[f]
            s["ray_overhead"] += over
            s["calls"] += 1
            back = float(sum(o.nbytes for o in r["outputs"] if o is not None))
            rec = net.setdefault(f"{self.devices[k].name}->entry", {"bytes": 0.0, "messages": 0.0})
            rec["bytes"] += back
            rec["messages"] += 1
            submit(k)
        t_end = time.perf_counter()
        if len(result) != n:
            raise ScheduleError(f"run: {n - len(result)} requests were not served")
        return self._report(
            trace, routed, result, stats, served_by, net, retried, t0, t_end, ClusterReport
        )

    def _lose(self, k: int, err: Exception) -> None:
        """Node ``k``'s actor died: place its experts again on the surviving nodes."""
        name = self.devices[k].name
        self.events.append(f"{name} lost ({type(err).__name__}); experts placed again")
        self.actors.pop(k, None)
        self.alive = [a for a in self.alive if a != k]
        if not self.alive:
            raise ScheduleError(f"run: every node is lost (last: {name})")
        old = self.placement.homes
        self._place(None)
        # keep where experts were (warm caches) when the node survives, add the lost ones
        for e, hs in old.items():
            keep = [h for h in hs if h != k]
            if keep:
                self.placement.homes[e] = keep
        self._start()

    def _report(
        self,
        trace: Trace,
        routed: list[str],
        result: dict[int, dict[str, Any]],
        stats: dict[int, dict[str, float]],
        served_by: np.ndarray,
        net: dict[str, dict[str, float]],
        retried: set[int],
        t0: float,
        t_end: float,
        cls: Any,
    ) -> Any:
        n = len(routed)
        lat = np.array([result[i]["latency"] for i in range(n)])
        ttft = np.array([result[i]["ttft"] for i in range(n)])
        devs = [self._budget_device(d) for d in self.devices]
        instances = []
        for k in range(len(self.devices)):
            s = stats[k]
            instances.append(
                {
                    "switches": int(s["loads"]),
                    "hits": int(s["hits"]),
                    "misses": int(s["misses"]),
                    "prefetches": int(s["prefetches"]),
                    "link_bytes": [int(s["disk_bytes"])],
                    "busy": float(s["busy"]),
                    "stall": float(s["stall"]),
                    "occupancy_t": np.zeros(1),
                    "occupancy_bytes": np.zeros(1),
                    "ray_overhead": float(s["ray_overhead"]),
                    "calls": int(s["calls"]),
                }
            )
        names = self.coe.experts
        raw = {
            "arrival": np.zeros(n),
            "ttft": ttft,
            "latency": lat,
            "queue": np.zeros(n),
            "instance": served_by.astype(np.uint32),
            "instances": instances,
            "node_loads": np.array([float(routed.count(e)) for e in names]),
            "home": np.zeros(len(names)),
            "pinned": [[] for _ in devs],
            "exec_capacity": int(self.ram_budget) * len(devs),
            "makespan": t_end - t0,
            "batches": n,
        }
        rep = cls(
            raw,
            self.coe,
            devs,
            trace,
            self.policy,
            [None] * len(devs),
            self.placement,
            served_by,
            net,
        )
        rep.outputs = [result[i]["output"] for i in range(n)]
        rep.errors = {i: result[i]["error"] for i in range(n) if "error" in result[i]}
        rep.routed = routed
        rep.kinds = [result[i]["kind"] for i in range(n)]
        rep.retried = sorted(retried)
        rep.events = list(self.events)
        return rep

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        for a in self.actors.values():
            try:
                self.ray.get(a.close.remote(), timeout=30)
            except Exception:
                pass
            self.ray.kill(a)
        self.actors.clear()
        self.local.close()

    def __enter__(self) -> ClusterPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ClusterPlan({self.coe.name!r}, {len(self.coe.experts)} experts on "
            f"{len(self.alive)} nodes, policy={self.policy.name!r}, ram_budget={self.ram_budget})"
        )


def _zero() -> dict[str, float]:
    return dict.fromkeys(
        (
            "hits",
            "misses",
            "loads",
            "prefetches",
            "disk_bytes",
            "stall",
            "busy",
            "ray_overhead",
            "calls",
        ),
        0.0,
    )


def _sized(g: CoE, local: Any) -> CoE:
    """``g`` with each expert's bytes as stored (what the RAM budget holds)."""
    import copy

    h = copy.deepcopy(g)
    for e, b in local.nbytes.items():
        if e in h.nodes and b > 0:
            h.nodes[e].nbytes = int(b)
    return h


def schedule_cluster(
    g: CoE,
    devices: Sequence[Device],
    policy: str | Policy | None = "lru",
    *,
    store: Any,
    ram_budget: int | str | None = None,
    workers: int = 1,
    lookahead: int = 1,
    chunk: int = 4,
    trace: Trace | None = None,
    **overrides: Any,
) -> ClusterPlan:
    """Schedule ``g`` over Ray nodes (``devices`` from :func:`ray_cluster`). ``ram_budget``: bytes
    of experts in RAM per node (default: the node's RAM tier); ``chunk``: requests per call to a
    node; ``trace``: popularity for the placement (default: uniform; :meth:`ClusterPlan.run`
    does not re-place)."""
    from ..store import TieredStore, parse_size
    from .plan import schedule

    ray = import_ray()
    if not ray.is_initialized():
        raise ScheduleError(
            "schedule: Ray is not initialised (call tierflow.devices.ray_cluster first)"
        )
    if store is None:
        raise InvalidArgumentError(
            "schedule: across Ray nodes, store= must hold the experts' weights (a TieredStore or "
            "its folder)"
        )
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InvalidArgumentError(f"schedule: chunk must be an integer >= 1, got {chunk!r}")
    devs = list(devices)
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    for d in devs:
        if not is_ray_device(d):
            raise InvalidArgumentError(
                f"schedule: device {d.name!r} is not a Ray node (use tierflow.devices.ray_cluster())"
            )
        if d.sources["ray_node_id"] not in alive:
            raise ScheduleError(
                f"schedule: node {d.name} ({d.sources['ray_node_id']}, "
                f"{d.sources.get('ray_address', '?')}) cannot be reached: it is not alive in the cluster"
            )
    pol = Policy.parse(policy, **overrides)
    budget = parse_size(ram_budget)
    if budget is None:
        budget = min(d.exec.capacity for d in devs)
    store_path = str(store.path) if isinstance(store, TieredStore) else str(Path(store).resolve())
    local = schedule(g, policy=pol, store=store, ram_budget=1 << 50)
    try:
        plan = ClusterPlan(g, devs, pol, store_path, int(budget), workers, lookahead, chunk, local)
        plan._place(trace)
        plan._start()
    except BaseException:
        local.close()
        raise
    return plan


def schedule(
    g: CoE,
    devices: Sequence[Device] | None = None,
    policy: str | Policy | None = "lru",
    **kw: Any,
) -> Any:
    """``tierflow.schedule``: across Ray nodes when ``devices`` come from
    :func:`tierflow.devices.ray_cluster` (a :class:`ClusterPlan`), else on this host
    (:func:`tierflow.serving.plan.schedule`, a :class:`~tierflow.serving.Plan`)."""
    from .plan import schedule as host_schedule

    devs = list(devices) if devices is not None else []
    if any(is_ray_device(d) for d in devs):
        return schedule_cluster(g, devs, policy, **kw)
    return host_schedule(g, devices, policy, **kw)
