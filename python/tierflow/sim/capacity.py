"""The capacity sweep behind ``tierflow plan``: what fits, and with what latency.

For a CoE, a device and a trace, sweep the fast (exec) tier capacity for several policies,
simulate each point, and recommend the policy and the smallest capacity whose p99 end-to-end
latency meets a target (then refine that capacity by bisection).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._deprecated import renamed
from ..errors import InvalidArgumentError, ScheduleError
from .coe import CoE
from .devices import Device
from .policies import Policy
from .simulate import simulate
from .trace import Trace

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["DEFAULT_POLICIES", "CapacitySweep", "sweep_capacity"]

DEFAULT_POLICIES = ("lru", "lfu", "static+lru", "lru+prefetch", "belady")


@dataclass
class CapacitySweep:
    """The result of :func:`sweep_capacity`: p99 latency per policy and exec-tier capacity, and
    the recommended policy and capacity."""

    target_p99: float
    capacities: list[int]  # bytes of the exec tier for experts (router and reserve excluded)
    p99: dict[str, list[float]]  # policy -> p99 per capacity (nan: does not fit)
    best_policy: str | None
    best_capacity: int | None  # bytes for experts
    device_capacity: int | None  # bytes of the exec tier including router and reserve
    notes: list[str] = field(default_factory=list)

    def table(self) -> Table:
        from rich.table import Table

        t = Table(
            title=f"p99 end-to-end latency vs fast-tier capacity (target {self.target_p99:g} s)"
        )
        t.add_column("experts' capacity", justify="right")
        for p in self.p99:
            t.add_column(p, justify="right")
        for i, c in enumerate(self.capacities):
            cells = []
            for p in self.p99:
                v = self.p99[p][i]
                s = "-" if np.isnan(v) else f"{v:.3f}"
                cells.append(f"[green]{s}[/]" if v <= self.target_p99 else s)
            t.add_row(f"{c / 1e9:.1f} GB", *cells)
        return t

    def plot(self, path: str | os.PathLike[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.array(self.capacities) / 1e9
        for p, ys in self.p99.items():
            ax.plot(x, ys, marker="o", label=p)
        ax.axhline(self.target_p99, color="k", linestyle="--", label="target p99")
        if self.best_capacity:
            ax.axvline(
                self.best_capacity / 1e9,
                color="g",
                linestyle=":",
                label=f"recommended ({self.best_policy})",
            )
        ax.set_yscale("log")
        ax.set_xlabel("fast-tier capacity for experts (GB)")
        ax.set_ylabel("p99 latency (s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_p99": self.target_p99,
            "capacities": self.capacities,
            "p99": {k: [None if np.isnan(v) else v for v in vs] for k, vs in self.p99.items()},
            "best_policy": self.best_policy,
            "best_capacity": self.best_capacity,
            "device_capacity": self.device_capacity,
            "notes": self.notes,
        }


def _p99(g: CoE, d: Device | list[Device], t: Trace, pol: Policy, links: Any = None) -> float:
    try:
        if isinstance(d, list):
            return float(
                np.percentile(simulate(g, devices=d, trace=t, policy=pol, links=links).latency, 99)
            )
        return float(np.percentile(simulate(g, d, t, pol).latency, 99))
    except ScheduleError:
        return float("nan")


class _Scaled:
    """Several devices whose exec tiers scale together: ``at(c)`` gives each device its share
    (by its full room for experts, at least the largest expert) of ``c`` bytes for experts."""

    def __init__(self, g: CoE, devices: Sequence[Device]) -> None:
        self.devs = list(devices)
        router = g.router_node.nbytes if g.router_node else 0
        self.over = [d.reserved + (router if k == 0 else 0) for k, d in enumerate(self.devs)]
        room = [max(d.exec.capacity - o, 1) for d, o in zip(self.devs, self.over, strict=True)]
        self.share = [r / sum(room) for r in room]
        self.big = max(g.nodes[e].nbytes for e in g.experts)

    def rooms(self, c: int) -> list[int]:
        return [max(self.big, int(c * s)) for s in self.share]

    def at(self, c: int) -> list[Device]:
        return [
            d.with_exec_capacity(r + o)
            for d, r, o in zip(self.devs, self.rooms(c), self.over, strict=True)
        ]


def sweep_capacity(
    g: CoE,
    device: Device | Sequence[Device],
    trace: Trace,
    *,
    target_p99: float,
    policies: Sequence[str | Policy] = DEFAULT_POLICIES,
    steps: int = 10,
    refine: int = 6,
    progress: Callable[[], None] | None = None,
    links: Any = None,
) -> CapacitySweep:
    """Sweep ``steps`` capacities (geometric) from one expert to the whole CoE for each policy; recommend the
    policy needing the least capacity for ``p99 <= target_p99`` and bisect its capacity
    ``refine`` times. ``progress()`` is called after each simulation.

    ``device`` may be a list of devices (joined by ``links``, see :mod:`tierflow.sim.placement`):
    their exec tiers then scale together, each by its share of the capacity (at least one
    expert each), and the capacities are aggregates over the devices."""
    if not (isinstance(target_p99, (int, float)) and target_p99 > 0):
        raise InvalidArgumentError(f"plan: target_p99 must be > 0 seconds, got {target_p99!r}")
    if steps < 2:
        raise InvalidArgumentError("plan: steps must be at least 2")
    pols = [Policy.parse(p) for p in policies]
    router = g.router_node.nbytes if g.router_node else 0
    sizes = [g.nodes[e].nbytes for e in g.experts]
    lo, hi = max(sizes), sum(sizes)
    if isinstance(device, (list, tuple)):
        scaled = _Scaled(g, device)
        lo = sum(scaled.rooms(0))
        hi = max(hi, lo)
        overhead = 0

        def at(c: int) -> Any:
            return scaled.at(c)

        def actual(c: int) -> int:
            return sum(scaled.rooms(c))

    else:
        if not isinstance(device, Device):
            raise InvalidArgumentError(
                f"plan: device must be a tierflow.Device or a list of them, got {type(device).__name__}"
            )
        one = device
        overhead = one.reserved + router

        def at(c: int) -> Any:
            return one.with_exec_capacity(c + overhead)

        def actual(c: int) -> int:
            return c

    caps = sorted({actual(int(c)) for c in np.geomspace(lo, hi, steps)})  # dense near the knee
    tick = progress or (lambda: None)
    table: dict[str, list[float]] = {p.name: [] for p in pols}
    for c in caps:
        d = at(c)
        for p in pols:
            table[p.name].append(_p99(g, d, trace, p, links))
            tick()
    best: tuple[int, float, str] | None = None
    for p in pols:
        for i, v in enumerate(table[p.name]):
            if v <= target_p99:
                if best is None or (caps[i], v) < best[:2]:
                    best = (caps[i], v, p.name)
                break
    notes = []
    if best is None:
        notes.append(
            f"no policy meets p99 <= {target_p99:g} s even with every expert resident: the device is too slow for this traffic"
        )
        return CapacitySweep(float(target_p99), caps, table, None, None, None, notes)
    cap, _, name = best
    pol = next(p for p in pols if p.name == name)
    i = caps.index(cap)
    if i > 0:
        a, b = caps[i - 1], cap  # a fails, b passes
        for _ in range(refine):
            m = (a + b) // 2
            v = _p99(g, at(m), trace, pol, links)
            tick()
            if v <= target_p99:
                b = m
            else:
                a = m
        cap = b
    if pol.eviction == "belady":
        notes.append(
            "belady needs the future access order (a planned batch job); online traffic should use the best other policy"
        )
    return CapacitySweep(float(target_p99), caps, table, name, cap, cap + overhead, notes)


__getattr__ = renamed(
    __name__,
    {
        "Plan": ("tierflow.sim.capacity.CapacitySweep", lambda: CapacitySweep),
        "plan": ("tierflow.sim.capacity.sweep_capacity", lambda: sweep_capacity),
    },
)  # the old names, kept for one release
