"""``tierflow demo``: the README's main job."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: stream weights larger than the RAM tier, with prefetch, and report",
    )
    p.add_argument("--size", default="384MiB", help="total bytes of weights (default 384MiB)")
    p.add_argument(
        "--ram", default="128MiB", help="RAM-tier budget, smaller than --size (default 128MiB)"
    )
    p.add_argument("--tensors", type=int, default=24, help="number of weight tensors (default 24)")
    p.add_argument(
        "--dir", default=None, help="keep the store in this folder (default: a temporary folder)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import InvalidArgumentError
    from ..store import parse_size
    from .store import store_demo

    size, ram = parse_size(args.size), parse_size(args.ram)
    if not size or not ram or args.tensors < 1:
        raise InvalidArgumentError(
            "--size and --ram must be positive sizes and --tensors at least 1"
        )
    console = Console()
    console.rule("tierflow demo: a tiered store streaming weights larger than its RAM tier")
    store_demo(size, ram, args.tensors, args.dir, console)
    return 0
