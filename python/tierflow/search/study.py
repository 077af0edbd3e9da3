"""``tierflow.search``: multi-objective architecture search (Optuna, NSGA-II) with the cost of
each candidate measured on this host or predicted for a simulated device.

Objectives (``objectives=``, each ``"name"`` or ``"name:min"`` / ``"name:max"``):

=================  ==========  =========================================================
name               direction   what
=================  ==========  =========================================================
``decode``         min         seconds of one decode step (batch ``batch``, context = prompt)
``prefill``        min         seconds of one prefill pass over ``prompt_tokens`` tokens
``p50``/``p99``    min         request latency percentiles on ``trace`` (needs a trace)
``mean``           min         mean request latency on ``trace`` (needs a trace)
``params``         max         parameters of one expert (a capacity proxy)
``total_params``   max         parameters of all experts
``nbytes``         min         bytes of one expert's weights in its format
``memory_fast``    min         bytes of experts held in the fast tier
``memory_slow``    min         bytes of experts left in the slower tier(s)
``fast_tier``      min         the fast tier's size for experts (``fast_tier`` of the space)
``quality``        min         the user's ``quality(config) -> float`` (e.g. a validation loss)
=================  ==========  =========================================================

Constraints (``constraints=``): strings ``"<metric> <op> <value>[unit]"`` with ``op`` one of
``<= < >= >``, time units ``s ms us``, sizes ``B KB MB GB KiB MiB GiB TiB``, counts ``k M G``:
``"p99 <= 50 ms"``, ``"fast_tier <= 512 MiB"``, ``"params >= 10M"``. They go to NSGA-II as
Optuna's ``constraints_func``; only trials meeting every constraint are on the front.

On several devices, a latency metric is the worst over the devices (the design must serve on
each); per-device figures are kept with each trial.

A trial whose candidate cannot run (an expert larger than the fast tier) is *pruned*; a trial
whose ``quality`` raises or returns NaN is *failed* (its error is kept in the trial's
``error`` attribute); the search goes on either way.

Storage and resume: with ``storage="sqlite:///x.db"`` and ``study_name``, every trial is stored as
it completes; calling :func:`search` again with the same storage and name loads the study, marks
the trials of a killed run that were still running as failed, and runs only the remaining
``trials`` (``trials`` is the study's total budget). A study stores its space, objectives,
constraints and devices, and refuses to resume with different ones.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..trace import Trace
from .measure import Measurer
from .predict import Infeasible, predict, resolve_devices
from .space import Config, Space, load_space

__all__ = ["OBJECTIVES", "Constraint", "Objective", "Record", "SearchResult", "search"]

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
_TRACE_METRICS = ("p50", "p99", "mean")
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


def _metric(name: str) -> str:
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
        m = _metric(name)
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
        metric = _metric(m.group(1))
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
        for u, s in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if v >= s:
                return f"{v / s:.3g}{u}"
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


class _TrialFailed(Exception):
    """A trial the search marks failed (the user's quality raised or returned NaN)."""


def _check_count(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidArgumentError(f"search: {name} must be an integer >= 0, got {v!r}")
    return v


def _sampler(optuna: Any) -> Any:
    """NSGA-II that tags each new trial with this process's id and host as it is created (so a
    resume can tell the trials of a killed run from those of a live worker)."""

    class Sampler(optuna.samplers.NSGAIISampler):  # type: ignore[misc]
        def before_trial(self, study: Any, trial: Any) -> None:
            owner = [os.getpid(), socket.gethostname()]
            study._storage.set_trial_user_attr(trial._trial_id, "owner", owner)
            super().before_trial(study, trial)

    return Sampler


def _fail_stale(study: Any, grace: float = 60.0) -> int:
    """Mark as failed the trials left RUNNING by a process of this host that no longer exists
    (and those with no process id, started more than ``grace`` seconds ago)."""
    import datetime

    from optuna.trial import TrialState

    n = 0
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("owner", (None, None))
        if pid is None:
            start = t.datetime_start or now
            alive = (now - start).total_seconds() < grace
        elif host != socket.gethostname():
            continue
        else:
            try:
                os.kill(int(pid), 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        if not alive:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    return n


def _records(
    study: Any, objectives: list[Objective], constraints: list[Constraint]
) -> list[Record]:
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        cfg = t.user_attrs.get("config")
        metrics = t.user_attrs.get("metrics", {})
        values = list(t.values) if t.state == TrialState.COMPLETE and t.values else []
        feasible = t.state == TrialState.COMPLETE and all(c.met(metrics) for c in constraints)
        out.append(
            Record(
                number=t.number,
                state=t.state.name,
                config=Config(**cfg) if cfg else None,
                metrics=metrics,
                values=values,
                feasible=feasible,
                error=t.user_attrs.get("error"),
                per_device=t.user_attrs.get("per_device", {}),
            )
        )
    return out


def search(
    space: Space | dict[str, Any] | str | os.PathLike[str],
    device: Any = "host",
    trace: Trace | str | os.PathLike[str] | None = None,
    objectives: Sequence[str | Objective] = ("decode", "params"),
    quality: Callable[[Config], float] | None = None,
    trials: int = 40,
    constraints: Sequence[str | Constraint] = (),
    storage: str | None = None,
    study_name: str = "tierflow-search",
    *,
    seed: int | None = 0,
    population: int | None = None,
    policy: str | None = None,
    prompt_tokens: int = 32,
    measurer: Measurer | None = None,
    progress: bool | None = None,
    console: Any = None,
) -> SearchResult:
    """Search ``space`` for the expert architectures that serve best on ``device``.

    Args:
        space: a :class:`~tierflow.search.Space`, a dict, or a JSON/YAML file (see
            :mod:`tierflow.search.space`).
        device: ``"host"`` (measured in the loop), ``"sn40l"``, ``"sn40l:N"``, ``"dgx_h100"``,
            ``"dgx_a100"``, a :class:`~tierflow.Device`, a device JSON file, or a list of these.
        trace: a :class:`~tierflow.Trace` or JSONL file: request latencies (p50/p99/mean) are
            simulated on it.
        objectives: metric names, each optionally ``:min`` / ``:max`` (see the module docs).
        quality: ``quality(config) -> float``, minimised unless ``"quality:max"``; a raise or NaN
            fails that trial only.
        trials: the study's total trial budget (a resumed study runs the rest).
        constraints: strings such as ``"p99 <= 50 ms"``, ``"fast_tier <= 512 MiB"``.
        storage: an Optuna storage URL (``"sqlite:///search.db"``); None keeps the study in memory.
        study_name: the study's name in ``storage``.
        seed: the sampler's seed (None: random).
        population: NSGA-II population size (default ``min(50, max(4, trials // 4))``).
        policy: the simulator's policy for trace latencies (default ``"lru"``).
        prompt_tokens: tokens of the measured / predicted prefill (and the decode context).
        measurer: the in-the-loop :class:`~tierflow.search.Measurer` (default: cached on disk).
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        A :class:`SearchResult` (``front``, ``best``, ``table()``, ``to_json()``, ``plot()``).

    Raises:
        InvalidArgumentError: an empty or inconsistent space, an unknown objective, metric or
            device, a constraint that cannot be parsed, a trace metric without a trace, or a
            stored study created with different settings.
    """
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - optuna is in the search extra
        raise InvalidArgumentError(
            "tierflow.search needs Optuna: pip install 'tierflow[search]'"
        ) from e
    sp, _ = load_space(space)
    targets = resolve_devices(device)
    if isinstance(objectives, str):
        objectives = [objectives]
    objs = [Objective.parse(o) for o in objectives]
    if not objs:
        raise InvalidArgumentError("search: give at least one objective")
    if len({o.metric for o in objs}) != len(objs):
        raise InvalidArgumentError(f"search: an objective is named twice in {objectives}")
    if isinstance(constraints, str):
        constraints = [constraints]
    cons = [Constraint.parse(c) for c in constraints]
    if isinstance(trace, (str, os.PathLike)):
        trace = Trace.load_jsonl(trace)
    if trace is not None and not isinstance(trace, Trace):
        raise InvalidArgumentError(f"search: trace must be a tierflow.Trace, got {trace!r}")
    used = {o.metric for o in objs} | {c.metric for c in cons}
    if trace is None and used & set(_TRACE_METRICS):
        raise InvalidArgumentError(
            f"search: {sorted(used & set(_TRACE_METRICS))} need a trace (trace=...)"
        )
    if "quality" in used and quality is None:
        raise InvalidArgumentError("search: the quality objective needs quality=callable")
    if quality is not None and not callable(quality):
        raise InvalidArgumentError("search: quality must be a callable quality(config) -> float")
    if quality is not None and "quality" not in used:
        objs.append(Objective("quality", "minimize"))
    trials = _check_count("trials", trials)
    if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 1:
        raise InvalidArgumentError(f"search: prompt_tokens must be >= 1, got {prompt_tokens!r}")
    if not isinstance(study_name, str) or not study_name:
        raise InvalidArgumentError("search: study_name must be a non-empty string")
    meas = measurer
    if meas is None and any(t.measured for t in targets):
        meas = Measurer(prompt_tokens=prompt_tokens)
    if meas is not None:
        prompt_tokens = meas.prompt_tokens

    settings = {
        "space": sp.to_dict(),
        "objectives": [str(o) for o in objs],
        "constraints": [c.text for c in cons],
        "devices": [t.name for t in targets],
        "prompt_tokens": prompt_tokens,
        "trace": None if trace is None else len(trace),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pop = population or min(50, max(4, trials // 4))
    # Optuna >= 5 takes constraints from Trial.set_constraint (constraints_func is deprecated);
    # older versions from the sampler's constraints_func
    new_api = hasattr(optuna.trial.Trial, "set_constraint")
    kw: dict[str, Any] = {}
    if cons and not new_api:
        kw["constraints_func"] = lambda t: t.user_attrs.get("constraints", [1.0] * len(cons))
    sampler = _sampler(optuna)(population_size=pop, seed=seed, **kw)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            directions=[o.direction for o in objs],
            sampler=sampler,
            load_if_exists=True,
        )
    except ValueError as e:  # directions differ from the stored study's
        raise InvalidArgumentError(f"search: study {study_name!r}: {e}") from None
    stored = study.user_attrs.get("tierflow")
    if stored is None:
        study.set_user_attr("tierflow", settings)
    elif stored != settings:
        diff = sorted(k for k in settings if stored.get(k) != settings[k])
        raise InvalidArgumentError(
            f"search: study {study_name!r} in {storage} was created with other {', '.join(diff)}; "
            "use another study_name"
        )
    _fail_stale(study)
    finished = len(
        study.get_trials(
            deepcopy=False,
            states=(
                optuna.trial.TrialState.COMPLETE,
                optuna.trial.TrialState.PRUNED,
                optuna.trial.TrialState.FAIL,
            ),
        )
    )
    todo = max(0, trials - finished)
    latency = [m for m, (_, k) in OBJECTIVES.items() if k == "time"]

    def evaluate(c: Config) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        total = c.experts * c.nbytes
        fast = min(c.fast_tier, total) if c.fast_tier else total
        metrics: dict[str, float] = {
            "params": float(c.params),
            "total_params": float(c.experts * c.params),
            "nbytes": float(c.nbytes),
            "memory_fast": float(fast),
            "memory_slow": float(total - fast),
            "fast_tier": float(c.fast_tier or total),
        }
        per: dict[str, dict[str, float]] = {}
        for t in targets:
            m = meas.measure(c) if (t.measured and meas is not None) else None
            per[t.name] = predict(
                c, t, measurement=m, trace=trace, policy=policy, prompt_tokens=prompt_tokens
            )
        for k in latency:
            vals = [p[k] for p in per.values() if k in p]
            if vals:
                metrics[k] = max(vals)
        return metrics, per

    def objective(trial: Any) -> tuple[float, ...]:
        c = sp.repair(sp.sample(trial))
        trial.set_user_attr("config", c.to_dict())
        try:
            metrics, per = evaluate(c)
        except Infeasible as e:
            trial.set_user_attr("error", str(e))
            raise optuna.TrialPruned(str(e)) from None
        if quality is not None:
            try:
                q = float(quality(c))
            except Exception as e:  # the user's code: any error fails this trial only
                trial.set_user_attr("error", f"quality raised {type(e).__name__}: {e}")
                raise _TrialFailed(str(e)) from None
            if not math.isfinite(q):
                trial.set_user_attr("error", f"quality returned {q}")
                raise _TrialFailed("quality is not finite")
            metrics["quality"] = q
        violations = [x.violation(metrics) for x in cons]
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("per_device", per)
        if cons and not new_api:
            trial.set_user_attr("constraints", violations)
        if new_api:
            for i, v in enumerate(violations):
                trial.set_constraint(f"c{i}", v)
        return tuple(metrics[o.metric] for o in objs)

    show = progress if progress is not None else _isatty()
    callbacks = []
    bar = None
    if show and todo:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn(f"search {study_name} on {'+'.join(t.name for t in targets)}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        task = bar.add_task("trials", total=todo, note="")

        def tick(study: Any, t: Any) -> None:
            note = t.state.name.lower()
            if meas is not None:
                note += f" | measured {meas.stats['measured']}, cached {meas.stats['cached']}"
            bar.update(task, advance=1, note=note)

        callbacks.append(tick)
    if todo:
        if bar is not None:
            bar.start()
        try:
            study.optimize(objective, n_trials=todo, catch=(_TrialFailed,), callbacks=callbacks)
        finally:
            if bar is not None:
                bar.stop()
    return SearchResult(
        study_name=study_name,
        devices=[t.name for t in targets],
        objectives=objs,
        constraints=cons,
        records=_records(study, objs, cons),
        space=sp,
        study=study,
    )


def _isatty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def front_values(result: SearchResult) -> np.ndarray:
    """The front's objective values as an array (rows: trials)."""
    return np.array([r.values for r in result.front], dtype=float)
