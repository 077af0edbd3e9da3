"""Scheduling policies, implemented once in the Rust core and shared by the simulator and the
host runtime.

- :class:`Policy`: what :func:`tierflow.simulate` runs: ``placement`` (none, static, pack,
  replicate), ``eviction`` (lru, lfu, fifo, belady), ``batching`` (paper, affinity), ``prefetch``.
- :class:`EvictionPolicy`: the eviction state machine a runtime drives by expert name::

      >>> from tierflow.policies import EvictionPolicy
      >>> p = EvictionPolicy("lru", ["a", "b", "c"])
      >>> for e in ["a", "b", "a"]:
      ...     p.on_access(e)
      >>> p.victim(["a", "b"])
      'b'

- :func:`place`: which experts each device instance pins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import _tierflow
from ..errors import InvalidArgumentError

__all__ = ["POLICIES", "EvictionPolicy", "Policy", "place"]


@dataclass(frozen=True)
class Policy:
    """A scheduling policy.

    Args:
        eviction: lru | lfu | fifo | belady (planned: evicts the expert used furthest in the trace).
        placement: none | static (pin the most popular experts) | pack (spread pinned experts over
            instances by popularity and capacity) | replicate (pack, with hot experts on several).
        pinned_fraction: share of the fast tier that placement may pin (the rest caches).
        batching: paper (router once per batch, then (prompt, expert) pairs in sequence) | affinity
            (group queued requests per resident expert; none waits more than ``max_wait`` s).
        batch_size: requests per batch.
        prefetch: load the next likely experts (rest of the batch, queued requests, the router's
            second choice) while the current one runs.
        instances: identical devices sharing the traffic.
    """

    eviction: str = "lru"
    placement: str = "none"
    pinned_fraction: float = 0.5
    batching: str = "paper"
    batch_size: int = 1
    max_wait: float = 1.0
    prefetch: bool = False
    instances: int = 1
    replica_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.eviction not in ("lru", "lfu", "fifo", "belady"):
            raise InvalidArgumentError(
                f"policy: eviction must be lru, lfu, fifo or belady, got {self.eviction!r}"
            )
        if self.placement not in ("none", "static", "pack", "replicate"):
            raise InvalidArgumentError(
                f"policy: placement must be none, static, pack or replicate, got {self.placement!r}"
            )
        if self.batching not in ("paper", "affinity"):
            raise InvalidArgumentError(
                f"policy: batching must be paper or affinity, got {self.batching!r}"
            )
        if not 0 <= self.pinned_fraction <= 1:
            raise InvalidArgumentError(
                f"policy: pinned_fraction must be in [0, 1], got {self.pinned_fraction!r}"
            )
        for f in ("batch_size", "instances"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"policy: {f} must be an integer >= 1, got {v!r}")
        if not self.max_wait >= 0:
            raise InvalidArgumentError(
                f"policy: max_wait must be >= 0 seconds, got {self.max_wait!r}"
            )

    @classmethod
    def parse(cls, spec: str | Policy | None, **overrides: Any) -> Policy:
        """A named policy (see :data:`POLICIES`), optionally ``+``-combined (``static+belady``)."""
        if spec is None:
            spec = "lru"
        if isinstance(spec, Policy):
            return replace(spec, **overrides) if overrides else spec
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"policy must be a name or a Policy, got {spec!r}")
        kw: dict[str, Any] = {}
        for part in spec.split("+"):
            part = part.strip().lower()
            if part not in POLICIES:
                raise InvalidArgumentError(f"policy: unknown {part!r} (known: {sorted(POLICIES)})")
            kw.update(POLICIES[part])
        kw.update(overrides)
        return cls(**kw)

    @property
    def name(self) -> str:
        parts = [self.eviction]
        if self.placement != "none":
            parts.insert(0, self.placement)
        if self.prefetch:
            parts.append("prefetch")
        if self.batching == "affinity":
            parts.append(f"affinity{self.batch_size}")
        elif self.batch_size > 1:
            parts.append(f"bs{self.batch_size}")
        return "+".join(parts)

    def native(self, popularity: list[float] | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["popularity"] = popularity
        return d


#: Named building blocks for :meth:`Policy.parse`.
POLICIES: dict[str, dict[str, Any]] = {
    "lru": {"eviction": "lru"},
    "lfu": {"eviction": "lfu"},
    "fifo": {"eviction": "fifo"},
    "belady": {"eviction": "belady"},
    "planned": {"eviction": "belady"},
    "static": {"placement": "static"},
    "pack": {"placement": "pack"},
    "replicate": {"placement": "replicate"},
    "prefetch": {"prefetch": True},
    "affinity": {"batching": "affinity", "batch_size": 8},
    "paper": {"batching": "paper"},
}


class EvictionPolicy:
    """An eviction policy over named experts, driven by a runtime (same code as the simulator).

    Call :meth:`on_access` on every use (hit or miss), :meth:`on_insert` when an expert becomes
    resident, :meth:`on_evict` when it leaves, and :meth:`victim` to pick whom to evict among the
    evictable resident experts. ``belady`` needs the planned access order: :meth:`set_future`.
    """

    def __init__(self, kind: str, experts: Sequence[str]) -> None:
        self.experts = list(experts)
        if len(set(self.experts)) != len(self.experts):
            raise InvalidArgumentError("EvictionPolicy: duplicate expert names")
        self._idx = {e: i for i, e in enumerate(self.experts)}
        self._p = _tierflow.EvictionPolicy(kind, len(self.experts))

    @property
    def kind(self) -> str:
        return str(self._p.kind)

    def _i(self, e: str) -> int:
        try:
            return self._idx[e]
        except KeyError:
            raise InvalidArgumentError(f"EvictionPolicy: unknown expert {e!r}") from None

    def on_access(self, expert: str) -> None:
        self._p.on_access(self._i(expert))

    def on_insert(self, expert: str) -> None:
        self._p.on_insert(self._i(expert))

    def on_evict(self, expert: str) -> None:
        self._p.on_evict(self._i(expert))

    def victim(self, resident: Iterable[str]) -> str | None:
        """The expert to evict among ``resident`` (None if it is empty)."""
        v = self._p.victim([self._i(e) for e in resident])
        return None if v is None else self.experts[v]

    def set_future(self, sequence: Iterable[str]) -> None:
        self._p.set_future([self._i(e) for e in sequence])

    def __repr__(self) -> str:
        return f"EvictionPolicy({self.kind!r}, {len(self.experts)} experts)"


def place(
    placement: str,
    sizes: dict[str, int],
    popularity: dict[str, float],
    capacity: int,
    instances: int = 1,
    fraction: float = 1.0,
    replica_factor: float = 1.0,
) -> list[list[str]]:
    """Experts pinned on each of ``instances`` devices whose fast tier holds ``capacity`` bytes."""
    names = list(sizes)
    pins = _tierflow.place(
        placement,
        [int(sizes[n]) for n in names],
        [float(popularity.get(n, 0.0)) for n in names],
        int(capacity),
        int(instances),
        float(fraction),
        float(replica_factor),
    )
    return [[names[i] for i in p] for p in pins]
