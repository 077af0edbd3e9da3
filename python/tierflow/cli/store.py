"""``tierflow inspect``: the tensors of a safetensors file, a checkpoint or a store folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "inspect", help="tensors, dtypes, shapes, sizes of a safetensors file, checkpoint or store"
    )
    p.add_argument(
        "path",
        help="a .safetensors file, a checkpoint folder or index JSON, or a tierflow store folder",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_inspect)


def _fmt(n: int | None) -> str:
    from ..store.tiered import _fmt_bytes

    return _fmt_bytes(n)


def run_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..errors import MissingFileError
    from ..store.safetensors import tensor_table

    path = Path(args.path)
    console = Console()
    rows: list[dict[str, Any]] = []
    title = str(path)
    if (path / "tierflow-store.json").is_file():
        m = json.loads((path / "tierflow-store.json").read_text())
        title = f"tierflow store {path} (policy {m['policy']}, tiers {', '.join(t['name'] for t in m['tiers'])})"
        for name, e in sorted(m["tensors"].items()):
            rows.append(
                {
                    "name": name,
                    "dtype": e["dtype"],
                    "shape": e["shape"],
                    "nbytes": e["nbytes"],
                    "where": e.get("tier") or "",
                    "file": e["file"],
                }
            )
    else:
        files: list[Path]
        if path.is_dir():
            idx = path / "model.safetensors.index.json"
            if idx.is_file():
                files = sorted(
                    {path / f for f in json.loads(idx.read_text())["weight_map"].values()}
                )
            else:
                files = sorted(path.glob("*.safetensors"))
        elif path.suffix == ".json" and path.is_file():
            files = sorted(
                {path.parent / f for f in json.loads(path.read_text())["weight_map"].values()}
            )
        elif path.exists():
            files = [path]
        else:
            raise MissingFileError(2, "no such file or folder", str(path))
        for f in files:
            for t in tensor_table(f):
                rows.append(
                    {
                        "name": t["name"],
                        "dtype": t["dtype"],
                        "shape": t["shape"],
                        "nbytes": t["end"] - t["start"],
                        "where": f.name,
                        "file": str(f),
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=title)
    for c in ("tensor", "dtype", "shape", "size", "tier / file"):
        table.add_column(c, justify="right" if c == "size" else "left")
    for r in rows:
        table.add_row(r["name"], r["dtype"], str(tuple(r["shape"])), _fmt(r["nbytes"]), r["where"])
    console.print(table)
    console.print(f"{len(rows)} tensors, {_fmt(sum(r['nbytes'] for r in rows))}")
    return 0
