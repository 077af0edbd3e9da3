"""``tierflow demo --store``: a tiered store streaming weights larger than its RAM tier."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from ..store.tiered import _fmt_bytes as _fmt

__all__ = ["store_demo"]


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
