"""``tierflow tune``: measure the kernels on this machine at the shapes the runtime uses and keep
the fastest settings in ``<cache>/tune.json`` (read back by :func:`load_tuning` and applied by
:func:`apply_tuning`, which the demo and ``tierflow run`` call).

What is searched: the thread count (1 .. CPUs) for each kernel shape, the kernel's
instruction-set path (each available one; the default is the fastest detected, this checks it),
and the panel size (block of weight bytes) of the streaming matmul that pulls a stored weight
from the file tier through a double buffer (``matmul(x, store[name], panel_bytes=...)``). The
kernels' register tiles are compile-time constants and are not searched.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import kernels
from .._info import get_num_threads, info, set_num_threads
from ..sim.devices import host_cache_path

__all__ = ["apply_tuning", "load_tuning", "tune", "tune_path"]


def tune_path() -> Path:
    return host_cache_path().with_name("tune.json")


def _time(f: Any, reps: int) -> float:
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def tune(
    hidden: int = 256,
    intermediate: int = 768,
    tokens: tuple[int, ...] = (1, 16),
    reps: int = 5,
    save: bool = True,
) -> dict[str, Any]:
    """Time matmul, attention and mlp at the expert's shapes for every thread count and ISA path;
    returns (and saves) ``{"threads": best overall, "isa": best, "results": [...]}``."""
    rng = np.random.default_rng(0)
    before = get_num_threads()
    ncpu = os.cpu_count() or 1
    isas = [i for i in info().get("isa_available", ["scalar"]) if i != "scalar"] or ["scalar"]
    w_up = rng.standard_normal((hidden, intermediate), dtype=np.float32)
    w_dn = rng.standard_normal((intermediate, hidden), dtype=np.float32)
    results = []
    totals: dict[tuple[int, str], float] = {}
    try:
        for th in range(1, ncpu + 1):
            set_num_threads(th)
            for isa in isas:
                for m in tokens:
                    x = rng.standard_normal((m, hidden), dtype=np.float32)
                    q = rng.standard_normal((1, hidden // 64, m, 64), dtype=np.float32)
                    cases = {
                        "matmul": lambda x=x, isa=isa: kernels.matmul(x, w_up, _isa=isa),
                        "mlp": lambda x=x, isa=isa: kernels.mlp(x, w_up, w_up, w_dn, _isa=isa),
                        "attention": lambda q=q, isa=isa: kernels.attention(
                            q, q, q, causal=True, _isa=isa
                        ),
                    }
                    for name, f in cases.items():
                        s = _time(f, reps)
                        results.append(
                            {"kernel": name, "tokens": m, "threads": th, "isa": isa, "seconds": s}
                        )
                        totals[(th, isa)] = totals.get((th, isa), 0.0) + s
    finally:
        set_num_threads(before)
    (best_th, best_isa) = min(totals, key=lambda k: totals[k])
    panels = _tune_panels(hidden * 4, intermediate * 4, reps)
    out = {
        "threads": best_th,
        "isa": best_isa,
        "shapes": {"hidden": hidden, "intermediate": intermediate, "tokens": list(tokens)},
        "total_seconds": {f"{t}x{i}": v for (t, i), v in totals.items()},
        "panel_bytes": min(panels, key=lambda k: panels[k]),
        "panel_seconds": {str(k): v for k, v in panels.items()},
        "results": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if save:
        p = tune_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, p)
    return out


def _tune_panels(k: int, n: int, reps: int) -> dict[int, float]:
    """Seconds of a streamed (file tier -> double buffer) ``(4, k) @ (k, n)`` matmul of a packed
    float32 weight per panel size."""
    import tempfile

    from ..store import Tier, TieredStore

    rng = np.random.default_rng(1)
    w = kernels.pack(rng.standard_normal((k, n), dtype=np.float32))
    x = rng.standard_normal((4, k), dtype=np.float32)
    out: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="tierflow-tune-") as d:
        with TieredStore(d, [Tier("ram", None), Tier("disk", None, path="disk")]) as s:
            s.put("w", w, tier="disk")
            ref = s["w"]
            for p in (1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20):
                out[p] = _time(lambda p=p: kernels.matmul(x, ref, panel_bytes=p), reps)
    return out


def load_tuning() -> dict[str, Any] | None:
    try:
        return dict(json.loads(tune_path().read_text()))
    except (OSError, ValueError):
        return None


def apply_tuning() -> int | None:
    """Set the kernel thread count from ``tune.json`` if present; returns it (None: no file)."""
    t = load_tuning()
    if not t or not isinstance(t.get("threads"), int) or t["threads"] < 1:
        return None
    set_num_threads(int(t["threads"]))
    return int(t["threads"])
