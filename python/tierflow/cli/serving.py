"""``tierflow run coe.json --trace trace.jsonl`` (serve a graph on this host) and ``tierflow tune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("run", help="serve a CoE graph (JSON) on this host for a JSONL trace")
    p.add_argument("coe", help="the CoE JSON (experts from safetensors checkpoints or a store)")
    p.add_argument("--trace", required=True, help="the requests (JSONL, see tierflow.Trace)")
    p.add_argument(
        "--store",
        default=None,
        help="a tierflow store folder with '<expert>/...' tensors (default: <coe folder>/store if present)",
    )
    p.add_argument(
        "--policy", default="lru", help="lru, lfu, planned, lru+prefetch, planned+prefetch, ..."
    )
    p.add_argument("--ram", default="1GiB", help="RAM-tier budget for experts (default 1GiB)")
    p.add_argument("--workers", type=int, default=1, help="worker threads")
    p.add_argument("--json", default=None, help="write the measured report here")
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="serve across the nodes of a Ray cluster (default: the running one, 'auto'); "
        "--ram is then the budget per node",
    )
    p.set_defaults(func=run)
    sv = sub.add_parser(
        "serve",
        help="serve a CoE of checkpoint experts over HTTP on Ray Serve (127.0.0.1)",
    )
    sv.add_argument("coe", help="the CoE JSON (experts from checkpoint folders)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="a running Ray cluster (default: a local one)",
    )
    sv.add_argument(
        "--examples",
        default=None,
        help="JSON {expert: [example prompts]} for the embedding router (default: the demo's)",
    )
    sv.add_argument("--fallback", default=None, help="the expert for low-confidence routes")
    sv.add_argument("--max-experts", type=int, default=2, help="expert models per replica")
    sv.add_argument("--replicas", type=int, default=1, help="expert replicas")
    sv.add_argument(
        "--max-queued", type=int, default=8, help="queued requests per replica (then 503)"
    )
    sv.set_defaults(func=run_serve)
    t = sub.add_parser(
        "tune", help="measure kernel thread counts and ISA paths here; keep the best"
    )
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--intermediate", type=int, default=768)
    t.add_argument("--reps", type=int, default=5)
    t.set_defaults(func=run_tune)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ..serving import schedule
    from ..serving.tune import apply_tuning
    from ..sim.coe import CoE
    from ..sim.trace import Trace
    from ..store import parse_size

    con = Console()
    g = CoE.from_json(args.coe)
    trace = Trace.load_jsonl(args.trace)
    store = args.store
    if store is None and (Path(args.coe).parent / "store" / "tierflow-store.json").exists():
        store = Path(args.coe).parent / "store"
    apply_tuning()
    if args.ray is not None:
        return run_ray(args, g, trace, store, con)
    with schedule(
        g, policy=args.policy, store=store, ram_budget=parse_size(args.ram), workers=args.workers
    ) as plan:
        for why in plan.broken.values():
            con.print(f"[red]{why}[/]")
        with Progress(console=con) as pb:
            task = pb.add_task("serving", total=len(trace))
            rep = plan.run(trace, progress=lambda: pb.advance(task))
    con.print(rep.table(title=f"{g.name} on this host ({plan.policy.name}), measured"))
    for i, why in sorted(rep.errors.items())[:20]:
        con.print(f"[yellow]request {i}[/]: {why}")
    if args.json:
        d = rep.to_dict(per_request=True)
        d["errors"] = {str(k): v for k, v in rep.errors.items()}
        Path(args.json).write_text(json.dumps(d, indent=2, default=str))
    return 0 if not rep.errors else 3


def run_ray(args: argparse.Namespace, g: Any, trace: Any, store: Any, con: Any) -> int:
    """``tierflow run ... --ray [ADDRESS]``: the plan across the Ray cluster's nodes."""
    from rich.progress import Progress

    from ..errors import InvalidArgumentError
    from ..serving import schedule
    from ..sim.devices import import_ray, ray_cluster
    from ..store import parse_size

    if store is None:
        raise InvalidArgumentError("--ray needs a store folder every node can read (--store)")
    ray = import_ray()
    devs = ray_cluster(args.ray)
    try:
        with schedule(
            g,
            devices=devs,
            policy=args.policy,
            store=store,
            ram_budget=parse_size(args.ram),
            workers=args.workers,
        ) as plan:
            with Progress(console=con) as pb:
                task = pb.add_task(f"serving on {len(devs)} nodes", total=len(trace))
                rep = plan.run(trace, progress=lambda: pb.advance(task))
        con.print(rep.table(title=f"{g.name} on {len(devs)} Ray nodes ({args.policy}), measured"))
        con.print(super(type(rep), rep).table(title="total"))
        for i, why in sorted(rep.errors.items())[:20]:
            con.print(f"[yellow]request {i}[/]: {why}")
        if args.json:
            d = rep.to_dict(per_request=True)
            d["errors"] = {str(k): v for k, v in rep.errors.items()}
            Path(args.json).write_text(json.dumps(d, indent=2, default=str))
    finally:
        ray.shutdown()
    return 0 if not rep.errors else 3


def run_serve(args: argparse.Namespace) -> int:
    """``tierflow serve``: until interrupted; Serve and Ray stopped through their handles."""
    import signal
    import threading

    from ..errors import InvalidArgumentError
    from ..serving.serve import _experts_from_coe, serve_coe
    from ..sim.devices import import_ray

    experts = _experts_from_coe(args.coe)
    if args.examples:
        examples = json.loads(Path(args.examples).read_text())
    else:
        from ..demos.experts import DEMO_EXAMPLES

        examples = {e: v for e, v in DEMO_EXAMPLES.items() if e in experts}
    unknown = sorted(set(examples) - set(experts))
    if unknown or not examples:
        raise InvalidArgumentError(
            f"serve: the router's examples name no expert of the CoE or unknown ones {unknown}"
        )
    if args.fallback is not None and args.fallback not in experts:
        raise InvalidArgumentError(f"serve: --fallback {args.fallback!r} is not an expert")
    ray = import_ray()
    from ray import serve

    ray.init(address=args.ray, include_dashboard=False, logging_level="warning")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve_coe(
            experts,
            examples,
            port=args.port,
            fallback=args.fallback,
            max_experts=args.max_experts,
            replicas=args.replicas,
            max_queued=args.max_queued,
        )
        print(
            f"tierflow serve: http://127.0.0.1:{args.port}/v1/completions (Ctrl-C stops)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..serving.tune import tune, tune_path

    con = Console()
    r = tune(args.hidden, args.intermediate, reps=args.reps)
    t = Table(title="kernel time summed over the expert's shapes (lower is better)")
    t.add_column("threads x isa")
    t.add_column("seconds", justify="right")
    for k, v in sorted(r["total_seconds"].items(), key=lambda kv: kv[1]):
        t.add_row(k, f"{v * 1e3:.2f} ms")
    con.print(t)
    pt = Table(title="streamed matmul from the file tier, per panel size")
    pt.add_column("panel")
    pt.add_column("seconds", justify="right")
    for k, v in r["panel_seconds"].items():
        pt.add_row(f"{int(k) >> 20} MiB", f"{v * 1e3:.2f} ms")
    con.print(pt)
    con.print(
        f"best: {r['threads']} threads, {r['isa']}, panel {r['panel_bytes'] >> 20} MiB; "
        f"saved to {tune_path()}"
    )
    return 0
