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

A simulated device is predicted with its preset's efficiencies scaled by the share of the f32
rates each weight format keeps on this host (``calibrate=True``, the default; see
:mod:`tierflow.search.calibrate`); the calibration used is in :attr:`SearchResult.calibration`
and in the study's ``calibration`` user attribute.

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
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from ..sim.trace import Trace
from .calibrate import Calibration
from .calibrate import calibrate as calibrate_host
from .measure import Measurer
from .objectives import OBJECTIVES, TRACE_METRICS, Constraint, Objective
from .predict import Infeasible, Target, predict, resolve_devices
from .result import Record, SearchResult
from .space import Config, Space, load_space

__all__ = ["search"]


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


def _dead(owner: Any) -> bool:
    """Whether ``owner`` ([pid, host]) is a process of this host that no longer exists."""
    pid, host = owner
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _fail_stale(study: Any, grace: float = 60.0) -> int:
    """Mark as failed the trials left RUNNING by a process of this host that no longer exists.

    A trial killed before it was tagged (between its creation and the sampler's hook) has no
    owner: it is stale when the trial before it was a dead process's (runs are sequential), or
    when it started more than ``grace`` seconds ago."""
    import datetime

    from optuna.trial import TrialState

    n = 0
    now = datetime.datetime.now()
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        owner = t.user_attrs.get("owner")
        if owner is not None:
            stale = _dead(owner)
        else:
            prev = [p for p in trials if p.number < t.number and "owner" in p.user_attrs]
            old = (now - (t.datetime_start or now)).total_seconds() >= grace
            stale = old or bool(prev and _dead(prev[-1].user_attrs["owner"]))
        if stale:
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
    calibrate: bool | Calibration = True,
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
        calibrate: for simulated devices, replace the preset's bandwidth and compute
            efficiencies by those each weight format reaches on this host
            (:mod:`tierflow.search.calibrate`: a reference expert per format, measured in the
            loop and cached); ``False`` keeps the preset's; a
            :class:`~tierflow.search.calibrate.Calibration` is used as given.

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
    if trace is None and used & set(TRACE_METRICS):
        raise InvalidArgumentError(
            f"search: {sorted(used & set(TRACE_METRICS))} need a trace (trace=...)"
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
    if not isinstance(calibrate, (bool, Calibration)):
        raise InvalidArgumentError(
            f"search: calibrate must be True, False or a Calibration, got {calibrate!r}"
        )
    simulated = [t for t in targets if not t.measured]
    calib = calibrate if isinstance(calibrate, Calibration) else None
    meas = measurer
    if meas is None and (any(t.measured for t in targets) or (simulated and calibrate is True)):
        meas = Measurer(prompt_tokens=prompt_tokens)
    if meas is not None:
        prompt_tokens = meas.prompt_tokens
    if simulated and calibrate is True:
        assert meas is not None
        calib = calibrate_host(list(sp.dims["format"].values()), meas)
    if not simulated:
        calib = None
    if calib is not None:
        missing = [f for f in sp.dims["format"].values() if f not in calib.formats]
        if missing:
            raise InvalidArgumentError(f"search: the calibration has no figures for {missing}")

    settings = {
        "space": sp.to_dict(),
        "objectives": [str(o) for o in objs],
        "constraints": [c.text for c in cons],
        "devices": [t.name for t in targets],
        "prompt_tokens": prompt_tokens,
        "trace": None if trace is None else len(trace),
        "calibrated": calib is not None,
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
    # An explicit RDBStorage whose SQLAlchemy engine (and the sqlite connections it holds) is
    # disposed when the search returns or raises: Python >= 3.13 warns (ResourceWarning) about a
    # sqlite connection garbage-collected unclosed. Without pooling (NullPool) each connection is
    # closed as soon as its storage call is done, so the study handed back in the result (still
    # usable: it reconnects on use) leaves nothing open either.
    rdb = _rdb_storage(optuna, storage) if storage is not None else None
    try:
        try:
            study = optuna.create_study(
                storage=rdb if rdb is not None else storage,
                study_name=study_name,
                directions=[o.direction for o in objs],  # type: ignore[misc]
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
        if calib is not None:  # the calibration the latest run predicted with
            study.set_user_attr("calibration", calib.to_dict())
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
                if calib is not None and t.device is not None:
                    t = Target(t.name, calib.apply(t.device, c.format))
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
            calibration=None if calib is None else calib.to_dict(),
        )
    finally:
        if rdb is not None:
            rdb.engine.dispose()


def _rdb_storage(optuna: Any, url: Any) -> Any:
    """``url`` as an Optuna RDBStorage whose engine keeps no connection open between calls."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"search: storage must be a database URL, got {url!r}")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
    except (ValueError, ImportError, SQLAlchemyError) as e:
        raise InvalidArgumentError(f"search: storage {url!r}: {e}") from None


def _isatty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
