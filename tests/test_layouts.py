"""``tierflow.matmul`` with weights in every memory layout: C order, Fortran order, the transpose
of a PyTorch ``(N, K)`` weight, strided slices and negative strides, at decode (M <= 32) and GEMM
shapes, against NumPy in float64. C-contiguous weights and weights whose transpose is
C-contiguous are read in place (no copy); other strides cost one counted packed copy per call."""

from __future__ import annotations

import numpy as np
import pytest

import tierflow
from tierflow.kernels import layout_copies

K, N = 96, 80


def _layouts(w: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """Views of ``w`` (K, N) in different layouts: name -> (array, read in place)."""
    big = np.zeros((2 * K, 3 * N), w.dtype)
    big[::2, ::3] = w
    neg = np.ascontiguousarray(w[::-1, ::-1])
    negT = np.ascontiguousarray(w.T[::-1])
    return {
        "C": (np.ascontiguousarray(w), True),
        "F": (np.asfortranarray(w), True),
        "T": (np.ascontiguousarray(w.T).T, True),
        "strided": (big[::2, ::3], False),
        "neg": (neg[::-1, ::-1], False),
        "negT": (negT[::-1].T, False),
    }


def _bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 4 * x.shape[1] * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w)) + 1e-30


@pytest.mark.parametrize("m", [1, 8, 32, 33, 130])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_layout_matches_float64(m, dtype):
    rng = np.random.default_rng(m)
    if dtype == "bfloat16":
        ml = pytest.importorskip("ml_dtypes")
        dt = np.dtype(ml.bfloat16)
    else:
        dt = np.dtype(dtype)
    w = rng.standard_normal((K, N)).astype(dt)
    x = rng.standard_normal((m, K)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64)
    bound = _bound(x.astype(np.float64), w.astype(np.float64))
    results = {}
    for name, (wl, in_place) in _layouts(w).items():
        assert np.array_equal(wl.astype(np.float32), w.astype(np.float32))
        before = layout_copies()
        got = tierflow.matmul(x, wl)
        assert layout_copies() - before == (0 if in_place else 1), name
        assert got.shape == (m, N) and got.dtype == np.float32
        assert np.all(np.abs(got - want) <= bound), name
        results[name] = got
    # the row-stored forms (F, T) are one kernel, the strided ones a copy to one of the two
    assert np.array_equal(results["F"], results["T"])


def test_bias_out_and_leading_dims_with_transposed_weight():
    rng = np.random.default_rng(1)
    w_nk = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    out = np.empty((2, 3, N), np.float32)
    got = tierflow.matmul(x, w_nk.T, out=out, bias=bias)
    want = x.astype(np.float64) @ w_nk.T.astype(np.float64) + bias
    assert got is out and np.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_quantized_from_either_layout_is_the_same():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((K, N)).astype(np.float32)
    for fmt in tierflow.FORMATS:
        a = tierflow.quantize(w, fmt)
        for wl, _ in _layouts(w).values():
            b = tierflow.quantize(wl, fmt)
            assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), fmt


def test_store_handles_of_either_layout(tmp_path):
    rng = np.random.default_rng(3)
    w_nk = rng.standard_normal((N, K)).astype(np.float32)
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("w_nk", w_nk, tier="disk")
        s.put("w_kn", np.ascontiguousarray(w_nk.T), tier="disk")
        for m in (1, 8, 64):
            x = rng.standard_normal((m, K)).astype(np.float32)
            want = x.astype(np.float64) @ w_nk.T.astype(np.float64)
            bound = _bound(x.astype(np.float64), np.abs(w_nk.T).astype(np.float64))
            before = layout_copies()
            for ref in (s["w_nk"].T, s["w_kn"]):
                got = tierflow.matmul(x, ref)
                assert np.all(np.abs(got - want) <= bound)
            assert layout_copies() == before
