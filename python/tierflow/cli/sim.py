"""``tierflow simulate``, ``tierflow plan`` and ``tierflow paper sn40l``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import InvalidArgumentError


def _device(spec: str) -> Any:
    from ..sim import devices

    presets = {
        "sn40l": devices.sn40l,
        "dgx_a100": devices.dgx_a100,
        "dgx_h100": devices.dgx_h100,
        "host": devices.host,
    }
    if spec in presets:
        return presets[spec]()
    if spec.startswith("sn40l:"):
        return devices.sn40l(int(spec.split(":", 1)[1]))
    return devices.Device.from_json(spec)


def _coe(spec: str) -> Any:
    from ..sim import paper
    from ..sim.coe import CoE

    if spec.startswith("samba:"):
        return paper.coe(int(spec.split(":", 1)[1]))
    return CoE.from_json(spec)


def _trace(args: argparse.Namespace, g: Any) -> Any:
    from ..sim.trace import Trace

    if args.trace:
        return Trace.load_jsonl(args.trace)
    common: dict[str, Any] = {
        "n": args.requests,
        "popularity": args.popularity,
        "zipf_s": args.zipf,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "drift": args.drift,
        "seed": args.seed,
    }
    if args.users:
        return Trace.closed_loop(g.experts, users=args.users, think_time=args.think, **common)
    return Trace.poisson(g.experts, rate=args.rate, **common)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("coe", help="CoE JSON file, or samba:N for N Llama2-7B experts and a router")
    p.add_argument(
        "--device",
        default="sn40l",
        help="sn40l, sn40l:SOCKETS, dgx_a100, dgx_h100, host, or a device JSON file",
    )
    p.add_argument("--trace", help="JSONL trace (default: generate one)")
    p.add_argument("--requests", type=int, default=10000, help="generated requests")
    p.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals per second")
    p.add_argument(
        "--users", type=int, default=0, help="closed loop with this many users instead of Poisson"
    )
    p.add_argument("--think", type=float, default=0.0, help="closed-loop mean think time (s)")
    p.add_argument("--popularity", choices=["zipf", "uniform"], default="zipf")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent")
    p.add_argument("--drift", type=float, default=0.0, help="popularity drift (experts per second)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..sim.simulate import simulate

    console = Console()
    g = _coe(args.coe)
    d = _device(args.device)
    t = _trace(args, g)
    policies = args.policy or ["lru"]
    reports = []
    with _progress(console) as prog:
        task = prog.add_task("simulating", total=len(policies))
        for p in policies:
            reports.append(
                simulate(g, d, t, p, batch_size=args.batch_size, instances=args.instances)
            )
            prog.advance(task)
    console.print(g.summary())
    for r in reports:
        console.print(r.table())
    if len(reports) > 1:
        console.print(reports[0].compare(reports[1]))
    if args.plot:
        reports[0].plot(args.plot)
        console.print(f"plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in reports], f, indent=2)
        console.print(f"report written to {args.json}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..sim.capacity import DEFAULT_POLICIES, sweep_capacity

    console = Console()
    g = _coe(args.coe)
    d = _device(args.device)
    t = _trace(args, g)
    pols = args.policy or list(DEFAULT_POLICIES)
    total = args.steps * len(pols) + args.refine
    with _progress(console) as prog:
        task = prog.add_task("planning", total=total)
        res = sweep_capacity(
            g,
            d,
            t,
            target_p99=args.target_p99,
            policies=pols,
            steps=args.steps,
            refine=args.refine,
            progress=lambda: prog.advance(task),
        )
    console.print(res.table())
    if res.best_policy and res.best_capacity is not None and res.device_capacity is not None:
        console.print(
            f"recommended: policy [bold]{res.best_policy}[/] with {res.best_capacity / 1e9:.1f} GB of "
            f"{d.exec.name} for experts ({res.device_capacity / 1e9:.1f} GB with router and reserve)"
        )
    for n in res.notes:
        console.print(f"note: {n}")
    if args.plot:
        res.plot(args.plot)
        console.print(f"plot written to {args.plot}")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from ..sim import paper

    if args.which != "sn40l":
        raise InvalidArgumentError(f"unknown paper {args.which!r} (known: sn40l)")
    console = Console(width=max(Console().width, 110))
    with _progress(console) as prog:
        task = prog.add_task("simulating Table V", total=22)
        res = paper.check(progress=lambda: prog.advance(task))
    t = Table(title="SN40L Node speedup (Table V): ours vs the paper")
    t.add_column("metric")
    for c in ("vs A100: ours", "paper", "diff", "vs H100: ours", "paper", "diff"):
        t.add_column(c, justify="right")

    def f(v: Any) -> str:
        return f"{v:.1f}x" if isinstance(v, float) else str(v)

    def diff(o: Any, p: Any) -> str:
        return f"{o / p - 1:+.0%}" if isinstance(o, float) and isinstance(p, float) else "see below"

    for name, oa, pa, oh, ph in res.rows:
        t.add_row(name, f(oa), f(pa), diff(oa, pa), f(oh), f(ph), diff(oh, ph))
    console.print(t)
    for n in res.notes:
        console.print(f"- {n}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": res.rows, "details": res.details, "notes": res.notes}, fh, indent=2)
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("simulate", help="simulate a CoE on a device under a trace and policies")
    _common(p)
    p.add_argument(
        "--policy",
        action="append",
        help="policy name, e.g. lru, static+lfu, lru+prefetch (repeatable)",
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--plot", help="write latency CDF + occupancy PNG here")
    p.add_argument("--json", help="write the reports as JSON here")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "plan", help="recommend a policy and the smallest fast tier meeting a p99 target"
    )
    _common(p)
    p.add_argument("--target-p99", type=float, required=True, help="seconds")
    p.add_argument("--policy", action="append", help="candidate policies (repeatable)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--refine", type=int, default=5)
    p.add_argument("--plot", help="write the p99-vs-capacity curve PNG here")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "paper", help="reproduce a paper's table (sn40l: Table V of arXiv 2405.07518)"
    )
    p.add_argument("which", choices=["sn40l"])
    p.add_argument("--json", help="write rows and details as JSON here")
    p.set_defaults(func=cmd_paper)
