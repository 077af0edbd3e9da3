"""Kernel benchmarks: tierflow against its anchors (NumPy/OpenBLAS, tierflow float32, the
machine's memory read bandwidth) in the same run, both sides on 2 threads.

Run (as BENCHMARKS.md says):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 TIERFLOW_NUM_THREADS=2 \
        python -m pytest benches/test_kernels.py -m bench --benchmark-enable -s -q

Each test times both sides with the same method (best of a few rounds) and records the ratio in
``extra_info``; the module prints a table of every ratio at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

import tierflow

pytestmark = pytest.mark.bench
THREADS = 2
RESULTS: list[tuple[str, str, float]] = []


def best_of(f: Callable[[], object], rounds: int) -> float:
    f()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def record(benchmark, name: str, what: str, ratio: float) -> None:
    benchmark.extra_info[what] = round(ratio, 3)
    RESULTS.append((name, what, ratio))


@pytest.fixture(scope="module", autouse=True)
def _setup_and_report():
    tierflow.set_num_threads(THREADS)
    yield
    print("\n\nkernel benchmark ratios (higher is better for tierflow)")
    for name, what, r in RESULTS:
        print(f"  {name:<40} {what:<34} {r:8.2f}")


@pytest.fixture(scope="module")
def bandwidth() -> float:
    return tierflow.bench.memory_bandwidth(nbytes=512 << 20, reps=5)


def rounds_for(flops: float) -> int:
    return 2 if flops > 5e10 else 3 if flops > 5e9 else 7


@pytest.mark.parametrize("size", [512, 1024, 2048, 4096])
def test_square_gemm_f32(benchmark, size):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    out = np.empty((size, size), np.float32)
    r = rounds_for(2 * size**3)
    t_np = best_of(lambda: np.matmul(a, b, out=out), r)
    benchmark.pedantic(tierflow.matmul, args=(a, b, out), rounds=r, iterations=1, warmup_rounds=1)
    t_tf = benchmark.stats.stats.min
    record(benchmark, f"gemm f32 {size}^3", "x NumPy", t_np / t_tf)


@pytest.mark.parametrize("kn", [4096, 8192])
@pytest.mark.parametrize("m", [1, 8, 32])
def test_decode_f32(benchmark, bandwidth, m, kn):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((m, kn)).astype(np.float32)
    w = rng.standard_normal((kn, kn)).astype(np.float32)
    out = np.empty((m, kn), np.float32)
    r = 5
    t_np = best_of(lambda: np.matmul(x, w, out=out), r)
    benchmark.pedantic(tierflow.matmul, args=(x, w, out), rounds=r, iterations=1, warmup_rounds=1)
    t_tf = benchmark.stats.stats.min
    name = f"decode f32 M={m} K=N={kn}"
    record(benchmark, name, "x NumPy", t_np / t_tf)
    record(benchmark, name, "fraction of read bandwidth", w.nbytes / t_tf / bandwidth)
    benchmark.extra_info["bandwidth_GBps"] = bandwidth / 1e9


@pytest.mark.parametrize("kn", [4096, 8192])
@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("fmt", ["bf16", "q8_0", "q4_0"])
def test_decode_formats(benchmark, fmt, m, kn):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((m, kn)).astype(np.float32)
    w = rng.standard_normal((kn, kn)).astype(np.float32)
    q = tierflow.quantize(w, fmt)
    out = np.empty((m, kn), np.float32)
    t_f32 = best_of(lambda: tierflow.matmul(x, w, out=out), 5)
    del w
    benchmark.pedantic(tierflow.matmul, args=(x, q, out), rounds=5, iterations=1, warmup_rounds=1)
    record(
        benchmark,
        f"decode {fmt} M={m} K=N={kn}",
        "x tierflow f32",
        t_f32 / benchmark.stats.stats.min,
    )
