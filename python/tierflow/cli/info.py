"""``tierflow info``: version, CPU features, kernel paths."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("info", help="version, CPU features found, kernel paths available")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .._info import info

    d = info()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    c = Console()
    c.print(
        f"[bold]tierflow[/bold] {d['version']} ({d['target_arch']}), {d['num_threads']} threads"
    )
    t = Table(title="CPU features (found at run time)")
    t.add_column("feature")
    t.add_column("present")
    for k, v in d["cpu_features"].items():
        t.add_row(k, "yes" if v else "no")
    c.print(t)
    c.print(
        f"kernel paths available: {', '.join(d['isa_available'])}; selected: [bold]{d['isa_selected']}[/bold]"
    )
    c.print(f"extension kernels in use: {', '.join(d['isa_extensions']) or 'none'}")
    return 0
