"""``tierflow demo --search``: one small space searched for this host, an SN40L node and a DGX
H100, showing that the fronts differ (under a minute on a 2-core machine; the host's in-the-loop
measurements are cached, so a second run takes seconds)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..sim.trace import Trace

__all__ = ["DEMO_CONSTRAINTS", "DEMO_DEVICES", "DEMO_SPACE", "demo_trace", "run_search_demo"]

#: the demo's space: Llama-style experts of 2-64 layers, widths 256-1024, every weight format,
#: 8 experts with 1 GiB of fast tier for them
DEMO_SPACE: dict[str, Any] = {
    "hidden": [256, 512, 768, 1024],
    "layers": {"low": 2, "high": 64, "step": 2},
    "heads": 8,
    "kv_heads": 2,
    "intermediate": [1024, 2816],
    "vocab": 4096,
    "format": ["f32", "bf16", "q8_0", "q4_0"],
    "experts": 8,
    "fast_tier": "1GiB",
    "batch": 1,
}
DEMO_DEVICES = ("host", "sn40l", "dgx_h100")
DEMO_OBJECTIVES = ("p99", "params")
#: the latency budget per device: 50 ms on the accelerators; this 2-core host, whose experts
#: load from disk, gets 250 ms (nothing in the space meets 50 ms here)
DEMO_CONSTRAINTS = {"host": "p99 <= 250 ms", "sn40l": "p99 <= 50 ms", "dgx_h100": "p99 <= 50 ms"}


def demo_trace(experts: int = 8, n: int = 60) -> Trace:
    """One user sending ``n`` requests (32 prompt tokens, 8 output tokens), Zipf over experts."""
    return Trace.closed_loop(
        experts, users=1, n=n, prompt_tokens=32, output_tokens=8, zipf_s=1.0, seed=7
    )


def run_search_demo(
    out: str | os.PathLike[str] | None = None,
    *,
    trials: int = 36,
    console: Any = None,
    plots: bool = True,
    space: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Search the demo space on each demo device; print each front and the largest expert under
    the constraint; write ``front-<device>.json`` / ``.png`` and ``fronts.png`` to ``out``."""
    from rich.console import Console

    from ..search import search
    from ..sim.devices import host_cache_path

    con = console or Console()
    folder = Path(out) if out else host_cache_path().parent / "demo-search"
    folder.mkdir(parents=True, exist_ok=True)
    trace = demo_trace(n=60)
    results = {}
    t0 = time.perf_counter()
    for dev in DEMO_DEVICES:
        r = search(
            space or DEMO_SPACE,
            dev,
            trace=trace,
            objectives=DEMO_OBJECTIVES,
            constraints=[DEMO_CONSTRAINTS[dev]],
            trials=trials,
            study_name=f"demo-{dev}",
            seed=0,
            progress=True,
            console=con,
        )
        results[dev] = r
        if r.calibration is not None:
            con.print(r.calibration["summary"])
        con.print(r.table(title=f"{dev}: Pareto front (p99 latency vs parameters per expert)"))
        con.print(r.best_text())
        r.to_json(folder / f"front-{dev}.json")
        if plots:
            r.plot(folder / f"front-{dev}.png")
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), sharex=True)
        for ax, r in zip(axes, results.values(), strict=True):
            r.plot(folder / "unused.png", ax=ax)
        fig.tight_layout()
        fig.savefig(folder / "fronts.png", dpi=90)
        plt.close(fig)
    con.print(f"{time.perf_counter() - t0:.1f} s; JSON and PNGs in {folder}")
    return results
