"""The host runtime's residency manager and request loop.

Experts' weights live in a :class:`~tierflow.TieredStore` with a file tier (home), a RAM tier and
a small fast tier (the router's weights, pinned). The runtime keeps the experts resident in RAM
within ``ram_budget`` bytes: which expert leaves is decided by the simulator's
:class:`~tierflow.policies.EvictionPolicy` (the same Rust code :func:`tierflow.simulate` runs),
and loads go through the store's background :meth:`~tierflow.TieredStore.prefetch`.

One dispatcher thread takes requests in routed order: it *acquires* each request's expert (a hit,
a wait on an in-flight prefetch, or a demand load: the stall), issues prefetches for the experts
the policy expects next, and hands the request to a pool of ``workers`` threads that compute (the
kernels release the GIL). An expert in use by a worker is never evicted.

Prefetch (``policy.prefetch``): after acquiring request ``i``, the runtime looks at the next
``lookahead`` routed requests (the "planned" future, or the router's queue) and loads each expert
not resident, provided the policy's victim (among all resident experts) is needed later than the
candidate. If that victim is the expert computing right now, it leaves the cache at once and the
load overlaps its compute (double buffering: the RAM tier then peaks at the budget plus that one
expert, whose buffers the worker still reads); a prefetch that cannot make room waits for the
next release.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future as CFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InvalidArgumentError, TierflowError
from ..sim.policies import EvictionPolicy
from ..store import TieredStore

__all__ = ["ExpertError", "Outcome", "Residency"]


class ExpertError(TierflowError):
    """A request failed because of its expert (unknown, quarantined, corrupt weights)."""


@dataclass
class Outcome:
    """One served request: output (None if it failed), error text, timings in seconds."""

    index: int
    expert: str
    output: np.ndarray | None = None
    error: str | None = None
    start: float = 0.0
    ready: float = 0.0  # weights resident
    end: float = 0.0
    stall: float = 0.0
    kind: str = "hit"  # hit | prefetch_hit | miss | failed


@dataclass
class _Slot:
    nbytes: int
    future: Any = None  # store Future while loading
    refs: int = 0
    t_issue: float = 0.0
    prefetched: bool = False  # loaded ahead of its demand, not used yet


@dataclass
class Counters:
    hits: int = 0
    prefetch_hits: int = 0
    misses: int = 0
    loads: int = 0
    prefetches: int = 0
    evictions: int = 0
    load_bytes: int = 0
    stall: float = 0.0
    occupancy: list[tuple[float, int]] = field(default_factory=list)
    per_expert: dict[str, int] = field(default_factory=dict)  # loads per expert


class Residency:
    """Which experts are in RAM, under a byte budget, driven by an :class:`EvictionPolicy`."""

    def __init__(
        self,
        store: TieredStore,
        tensors: dict[str, list[str]],
        nbytes: dict[str, int],
        budget: int,
        eviction: str,
        ram_tier: str = "ram",
    ) -> None:
        self.store, self.tensors, self.nbytes = store, tensors, nbytes
        self.budget, self.ram = int(budget), ram_tier
        too_big = [e for e, b in nbytes.items() if b > self.budget]
        if too_big:
            raise InvalidArgumentError(
                f"runtime: expert(s) {too_big[:3]} larger than the RAM budget ({self.budget} bytes)"
            )
        self.policy = EvictionPolicy(eviction, list(tensors))
        self.slots: dict[str, _Slot] = {}
        self._pending: tuple[list[str], Callable[[str], float]] | None = None
        self.leaving: dict[str, _Slot] = {}  # evicted while in use (double buffering)
        self.cv = threading.Condition()
        self.c = Counters()
        self.t0 = time.perf_counter()
        # resident at start (e.g. left in RAM by an earlier run on the same store): adopt them
        for e, names in tensors.items():
            if names and all(store.tier_of(n) == ram_tier for n in names):
                if self.used() + nbytes[e] <= self.budget:
                    self.slots[e] = _Slot(nbytes[e])
                    self.policy.on_insert(e)
                else:
                    self._drop(e)

    def used(self) -> int:
        return sum(s.nbytes for s in self.slots.values())

    def _reap(self) -> None:
        """Finish loads that completed in the background (caller holds ``cv``); a failed one
        frees its slot (the next demand for that expert reports the error)."""
        for e, s in list(self.slots.items()):
            if s.future is not None and s.future.done():
                try:
                    s.future.wait(0)
                except Exception:
                    del self.slots[e]
                    continue
                s.future = None
                self.policy.on_insert(e)

    def resident(self) -> list[str]:
        self._reap()
        return [e for e, s in self.slots.items() if s.future is None]

    def _drop(self, e: str) -> None:
        for n in self.tensors[e]:
            if self.store.tier_of(n) == self.ram:
                self.store.evict(n)

    def _note(self) -> None:
        self.c.occupancy.append((time.perf_counter() - self.t0, self.used()))

    def _evictable(self) -> list[str]:
        """Experts a demand load may evict: resident, not in use, and not prefetched for a
        request still ahead (unless nothing else is left)."""
        self._reap()
        free = [e for e, s in self.slots.items() if s.future is None and s.refs == 0]
        return [e for e in free if not self.slots[e].prefetched] or free

    def _make_room(self, need: int, allow: Callable[[str], bool] | None = None) -> bool:
        """Evict (policy's choice) until ``need`` more bytes fit. With ``allow`` (a prefetch),
        the policy chooses among all resident experts, in use or not, and we stop (False) as
        soon as its victim is in use or not allowed: a prefetch never evicts what the policy
        would keep at the next demand. Caller holds ``cv``."""
        while self.used() + need > self.budget:
            if allow is None:
                v = self.policy.victim(self._evictable())
            else:
                v = self.policy.victim(self.resident())
                if v is not None and not allow(v):
                    return False
                if v is not None and self.slots[v].refs > 0:
                    # double buffering: the expert computing now leaves the cache while its
                    # successor loads (its buffers stay alive until the worker drops them);
                    # at most one such expert, so RAM peaks at budget + one expert
                    if self.leaving:
                        return False
                    self.leaving[v] = self.slots[v]
            if v is None:
                return False
            self._drop(v)
            del self.slots[v]
            self.policy.on_evict(v)
            self.c.evictions += 1
            self._note()
        return True

    def _start_load(self, e: str) -> _Slot:
        slot = _Slot(self.nbytes[e], t_issue=time.perf_counter())
        slot.future = self.store.prefetch(self.tensors[e], self.ram)
        self.slots[e] = slot
        self.c.loads += 1
        self.c.per_expert[e] = self.c.per_expert.get(e, 0) + 1
        self.c.load_bytes += self.nbytes[e]
        self._note()
        return slot

    def _finish(self, e: str, slot: _Slot) -> None:
        """Wait for ``slot``'s load (without holding cv); errors name the expert."""
        fut = slot.future
        try:
            fut.wait()
        except (CorruptFileError, OSError, TierflowError) as err:
            with self.cv:
                if self.slots.get(e) is slot:
                    del self.slots[e]
                    self._note()
                self.cv.notify_all()
            raise ExpertError(f"expert {e!r}: its weights could not be loaded: {err}") from err
        with self.cv:
            if slot.future is fut:
                slot.future = None
                self.policy.on_insert(e)
            self.cv.notify_all()

    def acquire(self, e: str) -> tuple[float, str]:
        """Make ``e`` resident and hold it; returns (stall seconds, hit|prefetch_hit|miss)."""
        t = time.perf_counter()
        with self.cv:
            self.policy.on_access(e)
            while True:
                slot = self.slots.get(e)
                if slot is not None:
                    slot.refs += 1
                    kind = "prefetch_hit" if slot.prefetched else "hit"
                    slot.prefetched = False
                    break
                if self._make_room(self.nbytes[e]):
                    slot = self._start_load(e)
                    slot.refs += 1
                    kind = "miss"
                    break
                self.cv.wait(0.05)  # everything evictable is in use: wait for a release
        if slot.future is not None:
            try:
                self._finish(e, slot)
            except ExpertError:
                raise
        stall = time.perf_counter() - t
        with self.cv:
            if kind == "hit":
                self.c.hits += 1
            elif kind == "prefetch_hit":
                self.c.prefetch_hits += 1
            else:
                self.c.misses += 1
            self.c.stall += stall
        return stall, kind

    def release(self, e: str) -> None:
        """Let go of ``e``; retry prefetches that waited for it to become evictable."""
        with self.cv:
            s = self.leaving.get(e) or self.slots.get(e)
            if s is not None:
                s.refs -= 1
                if e in self.leaving and s.refs <= 0:
                    del self.leaving[e]
            pending, self._pending = self._pending, None
            self.cv.notify_all()
        if pending is not None:
            self.prefetch(*pending)

    def prefetch(self, candidates: Sequence[str], next_use: Callable[[str], float]) -> int:
        """Start loads for ``candidates`` (in order) where room can be made by evicting only
        experts needed later than the candidate. Returns loads started."""
        started = 0
        with self.cv:
            self._pending = None
            for k, c in enumerate(candidates):
                if c in self.slots:
                    continue
                nu = next_use(c)

                def later(v: str, nu: float = nu) -> bool:
                    return next_use(v) > nu

                if not self._make_room(self.nbytes[c], allow=later):
                    self._pending = (list(candidates[k:]), next_use)
                    break
                self._start_load(c).prefetched = True
                self.c.prefetches += 1
                started += 1
        return started

    def settle(self) -> None:
        """Wait for in-flight loads (end of a run)."""
        for e, s in list(self.slots.items()):
            if s.future is not None:
                try:
                    self._finish(e, s)
                except ExpertError:
                    pass


def serve(
    residency: Residency,
    requests: Sequence[tuple[int, str, Any]],
    compute: Callable[[str, Any, int], np.ndarray],
    *,
    workers: int = 1,
    prefetch: bool = False,
    lookahead: int = 1,
    future: Sequence[str] | None = None,
    broken: dict[str, str] | None = None,
    progress: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Serve ``requests`` = (index, expert, payload) in order; ``compute(expert, payload, index)``
    runs on the worker pool while the expert is held resident."""
    if workers < 1:
        raise InvalidArgumentError(f"runtime: workers must be >= 1, got {workers}")
    broken = broken or {}
    seq = list(future) if future is not None else [r[1] for r in requests]
    positions: dict[str, list[int]] = {}
    for i, e in enumerate(seq):
        positions.setdefault(e, []).append(i)
    cursor = [0]

    def next_use(e: str) -> float:
        import bisect

        p = positions.get(e)
        if not p:
            return float("inf")
        k = bisect.bisect_right(p, cursor[0])
        return float(p[k]) if k < len(p) else float("inf")

    outs: list[Outcome] = []
    sem = threading.Semaphore(workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tierflow-worker")
    futs: list[CFuture[None]] = []

    def work(o: Outcome, payload: Any) -> None:
        try:
            o.output = compute(o.expert, payload, o.index)
        except Exception as err:
            o.error = f"expert {o.expert!r}: {type(err).__name__}: {err}"
            o.kind = "failed"
        finally:
            o.end = time.perf_counter()
            residency.release(o.expert)
            sem.release()
            if progress:
                progress()

    try:
        for pos, (idx, e, payload) in enumerate(requests):
            cursor[0] = pos
            o = Outcome(idx, e)
            outs.append(o)
            sem.acquire()
            o.start = time.perf_counter()
            if e in broken:
                o.error, o.kind, o.end = broken[e], "failed", o.start
                o.ready = o.start
                sem.release()
                if progress:
                    progress()
                continue
            try:
                o.stall, o.kind = residency.acquire(e)
            except ExpertError as err:
                o.error, o.kind = str(err), "failed"
                o.end = o.ready = time.perf_counter()
                sem.release()
                if progress:
                    progress()
                continue
            o.ready = time.perf_counter()
            if prefetch:
                window = []
                for _, e2, _ in requests[pos + 1 : pos + 1 + lookahead]:
                    if e2 not in window and e2 != e and e2 not in broken:
                        window.append(e2)
                residency.prefetch(window, next_use)
            futs.append(pool.submit(work, o, payload))
        for f in futs:
            f.result()
    finally:
        pool.shutdown(wait=True)
        residency.settle()
    return outs
