"""``tierflow search SPACE``: hardware-in-the-loop architecture search (see tierflow.search)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "search",
        help="search expert architectures for a device (Optuna NSGA-II; measured on this host "
        "or simulated)",
    )
    p.add_argument("space", help="the search space: a .json, .yaml or .yml file")
    p.add_argument(
        "--device",
        default=None,
        help="host (measured in the loop), sn40l, sn40l:SOCKETS, dgx_h100, dgx_a100, a device "
        "JSON file, or several joined by commas (default: the file's, else host)",
    )
    p.add_argument("--trials", type=int, default=None, help="the study's trial budget (40)")
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        help="objective, repeatable: decode, prefill, p50, p99, mean, params, total_params, "
        "nbytes, memory_fast, memory_slow, fast_tier (name:min / name:max); default decode, params",
    )
    p.add_argument(
        "--constraint",
        action="append",
        default=None,
        help="constraint, repeatable, e.g. 'p99 <= 50 ms', 'fast_tier <= 512 MiB'",
    )
    p.add_argument("--trace", default=None, help="a JSONL trace: p50/p99/mean are simulated on it")
    p.add_argument("--storage", default=None, help="Optuna storage URL, e.g. sqlite:///search.db")
    p.add_argument("--study", default=None, help="the study's name (default tierflow-search)")
    p.add_argument("--out", default="tierflow-search", help="folder for front.json and front.png")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--prompt-tokens", type=int, default=32, help="tokens of the measured prefill")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="simulated devices: keep the preset's efficiencies instead of those each format "
        "reaches on this host (tierflow.search.calibrate)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..errors import InvalidArgumentError
    from ..search import load_space, search

    space, extra = load_space(args.space)
    known = {"objectives", "constraints", "device", "trials", "study"}
    bad = set(extra) - known
    if bad:
        raise InvalidArgumentError(
            f"space file: unknown top-level key(s) {sorted(bad)} (known: space, {', '.join(sorted(known))})"
        )
    console = Console(width=max(Console().width, 140))
    r = search(
        space,
        args.device or extra.get("device", "host"),
        trace=args.trace,
        objectives=args.objective or extra.get("objectives", ("decode", "params")),
        constraints=args.constraint or extra.get("constraints", ()),
        trials=args.trials if args.trials is not None else int(extra.get("trials", 40)),
        storage=args.storage,
        study_name=args.study or extra.get("study", "tierflow-search"),
        seed=args.seed,
        prompt_tokens=args.prompt_tokens,
        progress=not args.quiet,
        console=console,
        calibrate=not args.no_calibrate,
    )
    if r.calibration is not None:
        console.print(r.calibration["summary"])
    console.print(r.table())
    console.print(r.best_text())
    c = r.counts()
    console.print(
        f"trials: {c['COMPLETE']} complete ({c['feasible']} meet the constraints), "
        f"{c['PRUNED']} pruned (do not fit), {c['FAIL']} failed"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r.to_json(out / "front.json")
    msg = f"wrote {out / 'front.json'}"
    if not args.no_plot:
        r.plot(out / "front.png")
        msg += f" and {out / 'front.png'}"
    console.print(msg)
    return 0
