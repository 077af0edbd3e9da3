"""What a search returns: the finished trials, the Pareto front, the largest expert meeting the
constraints, as a rich table, JSON and a PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .objectives import OBJECTIVES, Constraint, Objective
from .space import Config, Space

__all__ = ["Record", "SearchResult", "dominates", "pareto_front"]


@dataclass
class Record:
    """One finished trial."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    config: Config | None
    metrics: dict[str, float] = field(default_factory=dict)
    values: list[float] = field(default_factory=list)
    feasible: bool = False
    error: str | None = None
    per_device: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "config": self.config.to_dict() if self.config else None,
            "metrics": self.metrics,
            "values": self.values,
            "feasible": self.feasible,
            "error": self.error,
            "per_device": self.per_device,
        }


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def pareto_front(records: list[Record], directions: Sequence[str]) -> list[Record]:
    """The feasible complete records no other feasible record dominates (duplicates of one
    configuration kept once)."""
    ok = [r for r in records if r.state == "COMPLETE" and r.feasible]
    front, seen = [], set()
    for r in ok:
        if any(dominates(o.values, r.values, directions) for o in ok if o is not r):
            continue
        key = (r.config, tuple(r.values))
        if key in seen:
            continue
        seen.add(key)
        front.append(r)
    return sorted(front, key=lambda r: tuple(r.values))


def _fmt(metric: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    kind = OBJECTIVES.get(metric, ("", "count"))[1]
    if kind == "time":
        return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"
    if kind == "bytes":
        for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if v >= s:
                return f"{v / s:.3g} {u}"
        return f"{v:.0f} B"
    if metric.endswith("params"):
        for u, f in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if v >= f:
                return f"{v / f:.3g}{u}"
    return f"{v:.4g}"


@dataclass
class SearchResult:
    """What :func:`search` returns: every finished trial, the Pareto front, the best expert."""

    study_name: str
    devices: list[str]
    objectives: list[Objective]
    constraints: list[Constraint]
    records: list[Record]
    space: Space
    study: Any = None  # the optuna.Study
    #: the per-format efficiencies simulated devices were predicted with (see
    #: :mod:`tierflow.search.calibrate`); None with ``calibrate=False`` or on this host only
    calibration: dict[str, Any] | None = None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def front(self) -> list[Record]:
        return pareto_front(self.records, self.directions)

    @property
    def best(self) -> Record | None:
        """The largest expert (most parameters) among the trials meeting every constraint; ties
        go to the better first objective."""
        ok = [r for r in self.records if r.state == "COMPLETE" and r.feasible]
        if not ok:
            return None
        o = self.objectives[0]
        sign = 1.0 if o.direction == "minimize" else -1.0
        return max(ok, key=lambda r: (r.metrics["params"], -sign * r.metrics[o.metric]))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        for r in self.records:
            out[r.state] = out.get(r.state, 0) + 1
        out["feasible"] = sum(r.state == "COMPLETE" and r.feasible for r in self.records)
        return out

    def table(self, title: str | None = None) -> Any:
        """The Pareto front as a rich table."""
        from rich.table import Table

        cons = ", ".join(c.text for c in self.constraints) or "none"
        t = Table(
            title=title
            or f"Pareto front on {' + '.join(self.devices)} ({len(self.records)} trials; constraints: {cons})"
        )
        for col in ("#", "hidden", "layers", "heads/kv", "inter", "vocab", "format", "experts"):
            t.add_column(col, justify="right")
        t.add_column("fast tier", justify="right")
        t.add_column("batch", justify="right")
        shown = [o.metric for o in self.objectives]
        extra = [m for m in ("params",) if m not in shown]
        for m in shown + extra:
            t.add_column(m + (" (obj)" if m in shown else ""), justify="right")
        best = self.best
        for r in self.front:
            c = r.config
            assert c is not None
            cells = [
                str(r.number) + (" *" if best is not None and r.number == best.number else ""),
                str(c.hidden),
                str(c.layers),
                f"{c.heads}/{c.kv_heads}",
                str(c.intermediate),
                str(c.vocab),
                c.format,
                str(c.experts),
                _fmt("fast_tier", c.fast_tier) if c.fast_tier else "all",
                str(c.batch),
            ]
            cells += [_fmt(m, r.metrics.get(m, float("nan"))) for m in shown + extra]
            t.add_row(*cells)
        return t

    def best_text(self) -> str:
        b = self.best
        where = " + ".join(self.devices)
        if b is None:
            return f"no trial meets the constraints on {where}"
        assert b.config is not None
        m = ", ".join(f"{o.metric} {_fmt(o.metric, b.metrics[o.metric])}" for o in self.objectives)
        return (
            f"largest expert meeting the constraints on {where}: trial {b.number}, "
            f"{b.config.label()}, {_fmt('params', b.metrics['params'])} parameters ({m})"
        )

    def to_dict(self) -> dict[str, Any]:
        b = self.best
        return {
            "study": self.study_name,
            "devices": self.devices,
            "objectives": [str(o) for o in self.objectives],
            "constraints": [c.text for c in self.constraints],
            "space": self.space.to_dict(),
            "counts": self.counts(),
            "front": [r.to_dict() for r in self.front],
            "best": b.to_dict() if b else None,
            "trials": [r.to_dict() for r in self.records],
            "calibration": self.calibration,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        import json

        s = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(s)
        return s

    def plot(self, path: str | os.PathLike[str], ax: Any = None) -> None:
        """Latency against parameters, one colour per format: every feasible trial faint, the
        front bold, infeasible trials as grey crosses, constraints on either axis drawn."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ys = [o.metric for o in self.objectives if OBJECTIVES[o.metric][1] == "time"]
        y = ys[0] if ys else "decode"
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(7, 4.5))
        colours = {"f32": "tab:blue", "bf16": "tab:orange", "q8_0": "tab:green", "q4_0": "tab:red"}
        done = [r for r in self.records if r.state == "COMPLETE" and y in r.metrics]
        bad = [r for r in done if not r.feasible]
        if bad:
            ax.scatter(
                [r.metrics["params"] for r in bad],
                [r.metrics[y] for r in bad],
                marker="x",
                color="0.7",
                label="violates a constraint",
            )
        front = {r.number for r in self.front}
        for fmt, col in colours.items():
            ok = [r for r in done if r.feasible and r.config and r.config.format == fmt]
            if not ok:
                continue
            ax.scatter(
                [r.metrics["params"] for r in ok],
                [r.metrics[y] for r in ok],
                color=col,
                alpha=0.3,
                s=18,
            )
            fr = [r for r in ok if r.number in front]
            ax.scatter(
                [r.metrics["params"] for r in fr],
                [r.metrics[y] for r in fr],
                color=col,
                edgecolor="k",
                s=60,
                label=f"{fmt} (front)" if fr else f"{fmt}",
            )
        for c in self.constraints:
            if c.metric == y:
                ax.axhline(c.value, color="k", linestyle="--", label=f"constraint {c.text}")
            elif c.metric == "params":
                ax.axvline(c.value, color="k", linestyle=":", label=f"constraint {c.text}")
        b = self.best
        if b is not None and y in b.metrics:
            ax.scatter(
                [b.metrics["params"]],
                [b.metrics[y]],
                marker="*",
                s=250,
                color="gold",
                edgecolor="k",
                label="largest meeting constraints",
                zorder=5,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters per expert")
        ax.set_ylabel(f"{y} latency (s)")
        ax.set_title(f"{' + '.join(self.devices)}")
        ax.legend(fontsize=7)
        if own:
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
