"""Shared helpers of the benchmark suites: each compares tierflow against an anchor in the same
run and reports the ratio (times alone mean little on a shared, noisy machine)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(os.environ.get("TIERFLOW_BENCH_RESULTS", Path(__file__).parent / "results.json"))


def best_of(
    fn: Callable[[], Any], repeat: int = 3, setup: Callable[[], Any] | None = None
) -> float:
    """The best wall time of `repeat` runs of fn (setup, untimed, before each)."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.fixture(scope="session")
def ratios():
    """Record {name: {ratio, target, ...}}; printed and written to benches/results.json."""
    rows: dict[str, dict[str, Any]] = {}
    yield rows
    if not rows:
        return
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    old.update(rows)
    RESULTS.write_text(json.dumps(old, indent=2, sort_keys=True))
    print("\n\nratios (tierflow / anchor, same run):")
    for k, v in rows.items():
        ok = "meets" if v["ratio"] >= v["target"] else "FALLS SHORT of"
        print(f"  {k}: {v['ratio']:.2f}x ({ok} target {v['target']}x) {v.get('note', '')}")


def record(
    ratios: dict[str, dict[str, Any]], name: str, ratio: float, target: float, **extra: Any
) -> None:
    ratios[name] = {"ratio": round(ratio, 3), "target": target, **extra}
