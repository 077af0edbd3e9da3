"""Weight layouts: ``tierflow.matmul(x, w)`` with ``w`` the same float32 ``(K, N)`` weight held
C-contiguous (the anchor), as the transpose of a PyTorch ``(N, K)`` array (``w_nk.T``), in
Fortran order, and as a stored ``(N, K)`` tensor's transposed handle, timed in the same run,
interleaved, 2 threads; the ratio is median(contiguous) / median(layout) (>= 1: as fast).

Run (as BENCHMARKS.md says):

    TIERFLOW_NUM_THREADS=2 pytest benches/test_layouts.py -m bench -s

Targets: >= 0.9x at decode shapes (4096 x 4096, M = 1 and 8), >= 1 / 1.2 = 0.83x at GEMM shapes
(1024^3): a layout costs at most 20% more time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

import tierflow
from conftest import record as _record

pytestmark = pytest.mark.bench
THREADS = 2


@pytest.fixture(scope="module", autouse=True)
def _threads():
    tierflow.set_num_threads(THREADS)
    yield
    tierflow.set_num_threads(None)


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median time of each function over ``rounds`` alternating rounds, after one warm-up each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            if r:
                times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


@pytest.mark.parametrize("k,n,m", [(4096, 4096, 1), (4096, 4096, 8), (1024, 1024, 1024)])
def test_layouts_vs_contiguous(benchmark, ratios, tmp_path, k, n, m):
    rng = np.random.default_rng(0)
    w_nk = rng.standard_normal((n, k), dtype=np.float32)
    w_c = np.ascontiguousarray(w_nk.T)
    w_f = np.asfortranarray(w_c)
    x = rng.standard_normal((m, k), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    with tierflow.TieredStore(tmp_path / "s", tiers=[tierflow.Tier("ram", "1GB")]) as s:
        s.put("w_nk", w_nk)
        s.put("w_c", w_c)
        fns = {
            "contiguous": lambda: tierflow.matmul(x, w_c, out),
            "w_nk.T": lambda: tierflow.matmul(x, w_nk.T, out),
            "fortran": lambda: tierflow.matmul(x, w_f, out),
            "store contiguous": lambda: tierflow.matmul(x, s["w_c"], out),
            "store w_nk.T": lambda: tierflow.matmul(x, s["w_nk"].T, out),
        }
        copies = tierflow.kernels.layout_copies()
        med = interleaved_medians(fns, rounds=31 if m <= 8 else 9)
        assert tierflow.kernels.layout_copies() == copies  # all read in place
    benchmark.pedantic(tierflow.matmul, args=(x, w_nk.T, out), rounds=1, iterations=1)
    shape = f"{k}x{n} M={m}"
    target = 0.9 if m <= 32 else round(1 / 1.2, 3)
    for name, anchor in (
        ("w_nk.T", "contiguous"),
        ("fortran", "contiguous"),
        ("store w_nk.T", "store contiguous"),
    ):
        ratio = med[anchor] / med[name]
        benchmark.extra_info[name] = round(ratio, 3)
        _record(
            ratios,
            f"layouts: {name} vs {anchor} {shape}",
            ratio,
            target,
            note=f"{med[name] * 1e3:.2f} ms vs {med[anchor] * 1e3:.2f} ms",
        )
