"""Objectives and constraints of a search: metric names, directions, units and parsing.

See :mod:`tierflow.search.study` for the table of metrics.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import InvalidArgumentError

__all__ = ["OBJECTIVES", "TRACE_METRICS", "Constraint", "Objective", "metric_name"]

# name -> (default direction, unit kind)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "decode": ("minimize", "time"),
    "prefill": ("minimize", "time"),
    "p50": ("minimize", "time"),
    "p99": ("minimize", "time"),
    "mean": ("minimize", "time"),
    "params": ("maximize", "count"),
    "total_params": ("maximize", "count"),
    "nbytes": ("minimize", "bytes"),
    "memory_fast": ("minimize", "bytes"),
    "memory_slow": ("minimize", "bytes"),
    "fast_tier": ("minimize", "bytes"),
    "quality": ("minimize", "count"),
}
_ALIASES = {
    "decode_latency": "decode",
    "prefill_latency": "prefill",
    "latency_p50": "p50",
    "latency_p99": "p99",
    "p50_latency": "p50",
    "p99_latency": "p99",
    "fast tier": "fast_tier",
    "fast": "fast_tier",
    "parameters": "params",
    "bytes": "nbytes",
}
TRACE_METRICS = ("p50", "p99", "mean")
_UNITS = {
    "time": {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6},
    "bytes": {
        "": 1.0,
        "b": 1.0,
        "kb": 1e3,
        "mb": 1e6,
        "gb": 1e9,
        "tb": 1e12,
        "kib": 2.0**10,
        "mib": 2.0**20,
        "gib": 2.0**30,
        "tib": 2.0**40,
    },
    "count": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9},
}


def metric_name(name: str) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"search: a metric is a name, got {name!r}")
    n = name.strip().lower()
    n = _ALIASES.get(n, n).replace(" ", "_")
    if n not in OBJECTIVES:
        raise InvalidArgumentError(
            f"search: unknown objective or metric {name!r} (known: {', '.join(OBJECTIVES)})"
        )
    return n


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "minimize" | "maximize"

    @classmethod
    def parse(cls, spec: str | Objective) -> Objective:
        if isinstance(spec, Objective):
            return spec
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"search: an objective is a string, got {spec!r}")
        name, _, d = spec.partition(":")
        m = metric_name(name)
        if not d:
            return cls(m, OBJECTIVES[m][0])
        d = {"min": "minimize", "max": "maximize"}.get(d.strip().lower(), d.strip().lower())
        if d not in ("minimize", "maximize"):
            raise InvalidArgumentError(f"search: objective {spec!r}: direction must be min or max")
        return cls(m, d)

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction[:3]}"


_CONSTRAINT = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*([A-Za-z]*)\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """``metric op value`` (value in base units: seconds, bytes, counts)."""

    metric: str
    op: str
    value: float
    text: str = ""

    @classmethod
    def parse(cls, spec: str | Constraint) -> Constraint:
        if isinstance(spec, Constraint):
            return spec
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"search: a constraint is a string, got {spec!r}")
        m = _CONSTRAINT.match(spec)
        if not m:
            raise InvalidArgumentError(
                f"search: constraint {spec!r} is not '<metric> <op> <value>[unit]' "
                "(e.g. 'p99 <= 50 ms', 'fast_tier <= 512 MiB')"
            )
        metric = metric_name(m.group(1))
        kind = OBJECTIVES[metric][1]
        unit = m.group(4).lower()
        if unit not in _UNITS[kind]:
            raise InvalidArgumentError(
                f"search: constraint {spec!r}: unit {m.group(4)!r} does not fit {metric} "
                f"({kind}: {', '.join(u for u in _UNITS[kind] if u)})"
            )
        try:
            v = float(m.group(3)) * _UNITS[kind][unit]
        except ValueError:
            raise InvalidArgumentError(f"search: constraint {spec!r}: bad number") from None
        if not math.isfinite(v):
            raise InvalidArgumentError(f"search: constraint {spec!r}: bad number")
        return cls(metric, m.group(2), v, spec.strip())

    def violation(self, metrics: dict[str, float]) -> float:
        """<= 0 when met (Optuna's convention), scaled by the bound."""
        x = metrics[self.metric]
        scale = abs(self.value) or 1.0
        d = (x - self.value) if self.op in ("<=", "<") else (self.value - x)
        if self.op in ("<", ">") and d == 0:
            d = 1e-12
        return d / scale

    def met(self, metrics: dict[str, float]) -> bool:
        return self.violation(metrics) <= 0
