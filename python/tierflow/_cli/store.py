"""``tierflow inspect`` and the store demo (``tierflow demo --store``)."""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "inspect",
        help="tensors, dtypes, shapes, sizes of a safetensors or GGUF file, checkpoint or store",
    )
    p.add_argument(
        "path",
        help="a .safetensors or .gguf file, a checkpoint folder or index JSON, or a tierflow store folder",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_inspect)


def _fmt(n: int | None) -> str:
    from ..store import _fmt_bytes

    return _fmt_bytes(n)


def _short(v: Any) -> Any:
    """A metadata value for display: long arrays (token lists) as their first items and length."""
    if isinstance(v, list) and len(v) > 8:
        return [*v[:8], f"... ({len(v)} items)"]
    return v


def run_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .. import _tierflow
    from ..errors import MissingFileError

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
    elif path.suffix == ".gguf" and path.is_file():
        from ..models.gguf import read_gguf

        g = read_gguf(path)
        title = f"GGUF v{g.version} {path} (alignment {g.alignment})"
        meta = {k: _short(v) for k, v in g.metadata.items()}
        for t in g.tensors.values():
            rows.append(
                {
                    "name": t.name,
                    "dtype": t.type,
                    "shape": list(t.shape),
                    "nbytes": t.nbytes,
                    "where": f"@{t.offset}",
                    "file": str(path),
                }
            )
        if args.json:
            print(json.dumps({"metadata": meta, "tensors": rows}, indent=2))
            return 0
        mt = Table(title=f"metadata of {path}")
        for c in ("key", "type", "value"):
            mt.add_column(c)
        for k, v in meta.items():
            mt.add_row(k, g.metadata_types[k], str(v))
        console.print(mt)
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
            h = json.loads(_tierflow.read_safetensors_header(str(f)))
            for t in h["tensors"]:
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


def store_demo(
    size: int, ram: int, tensors: int, folder: str | None, console: Any
) -> dict[str, Any]:
    """Write ``size`` bytes of weights into the file tier of a store, then stream them up through
    a RAM tier smaller than the total, computing on tensor i while tensor i+1 is prefetched;
    once without and once with prefetch. Returns the figures."""
    import numpy as np
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..store import Tier, TieredStore

    per = max(1, size // tensors)
    k = 1024
    n = max(1, per // (4 * k))
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="tierflow-demo-")
        folder = tmp.name
    root = Path(folder) / "store"
    results: dict[str, Any] = {}
    tiers = [Tier("fast", min(32 << 20, ram // 4)), Tier("ram", ram), Tier("disk", path="disk")]
    with TieredStore(root, tiers=tiers, policy="lru", default_tier="ram") as store:
        rng = np.random.default_rng(0)
        cols = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
        )
        with Progress(*cols, console=console, transient=True) as prog:
            task = prog.add_task("writing weights to the file tier", total=tensors)
            for i in range(tensors):
                if f"w{i}" not in store:
                    store.put(f"w{i}", rng.standard_normal((k, n), dtype=np.float32), tier="disk")
                prog.advance(task)
        names = [f"w{i}" for i in range(tensors)]
        x = rng.standard_normal((8, k), dtype=np.float32)
        for mode in ("no prefetch", "prefetch next"):
            for nm in names:  # start cold: everything back in the file tier
                if store.tier_of(nm) != "disk":
                    store.move(nm, "disk")
            store.reset_stats()
            t0 = time.perf_counter()
            checksum = 0.0
            waited = 0.0  # time the compute loop spent waiting for its weights
            with Progress(*cols, console=console, transient=True) as prog:
                task = prog.add_task(f"streaming ({mode})", total=tensors)
                if mode == "prefetch next":
                    store.prefetch(names[:1])
                for i, nm in enumerate(names):
                    tw = time.perf_counter()
                    w = store.get(nm)  # waits (a stall) if its prefetch is still in flight
                    waited += time.perf_counter() - tw
                    if mode == "prefetch next" and i + 1 < tensors:
                        store.prefetch(names[i + 1 : i + 2])  # overlaps the compute below
                    for _ in range(4):  # the "compute" on this weight
                        y = x @ w
                    checksum += float(y[0, 0])
                    prog.advance(task)
            wall = time.perf_counter() - t0
            st = store.stats()
            results[mode] = {"wall_s": wall, "waited_s": waited, "stats": st, "checksum": checksum}
            console.print(
                f"[bold]{mode}[/bold]: {tensors} tensors, {_fmt(per * tensors)} streamed in {wall:.2f} s, "
                f"of which {waited:.2f} s waiting for weights"
            )
            console.print(st.table())
    if tmp is not None:
        tmp.cleanup()
    a, b = results["no prefetch"], results["prefetch next"]
    if not math.isclose(a["checksum"], b["checksum"], rel_tol=1e-6):
        raise RuntimeError("prefetch changed the result")  # never expected
    hidden = 1 - b["waited_s"] / a["waited_s"] if a["waited_s"] > 0 else 0.0
    console.print(
        f"waiting for weights: {a['waited_s']:.2f} s without prefetch, {b['waited_s']:.2f} s with "
        f"({hidden:.0%} of the load time hidden); wall {a['wall_s']:.2f} s -> {b['wall_s']:.2f} s"
    )
    return results
