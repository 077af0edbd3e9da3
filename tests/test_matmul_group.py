"""tierflow.matmul_group: several weights sharing x in one call, each result bit for bit what
tierflow.matmul gives for that weight alone (the reference), and that within float64 bounds."""

from __future__ import annotations

import numpy as np
import pytest

import tierflow
from tierflow.errors import ShapeError


def _weights(rng, k, ns):
    ws = []
    for j, n in enumerate(ns):
        w = rng.standard_normal((k, n)).astype(np.float32)
        kind = j % 4
        if kind == 0:
            ws.append(tierflow.quantize(w, "q8_0"))
        elif kind == 1:
            ws.append(np.ascontiguousarray(w.T).T)  # (N, K) rows, passed as the transpose
        elif kind == 2:
            ws.append(tierflow.quantize(w, "q4_0"))
        else:
            ws.append(tierflow.quantize(w, "f16"))
    return ws


@pytest.mark.parametrize("m", [1, 5, 32, 40])
def test_group_equals_matmul_alone(m):
    rng = np.random.default_rng(m)
    k, ns = 512, [384, 64, 1000, 96]  # over 256 KiB in all: the worker threads run the tasks
    ws = _weights(rng, k, ns)
    bs = [rng.standard_normal(n).astype(np.float32) if j != 1 else None for j, n in enumerate(ns)]
    x = rng.standard_normal((m, k)).astype(np.float32)
    got = tierflow.matmul_group(x, ws, bs)
    for j, (w, b) in enumerate(zip(ws, bs, strict=True)):
        want = tierflow.matmul(x, w, bias=b)
        assert got[j].shape == (m, ns[j])
        np.testing.assert_array_equal(got[j], want, err_msg=f"weight {j}")
        # and near the float64 product on the weight as stored
        wf = tierflow.dequantize(w) if isinstance(w, tierflow.QuantizedTensor) else w
        ref = x.astype(np.float64) @ np.asarray(wf, np.float64)
        if b is not None:
            ref += b
        scale = np.abs(x).astype(np.float64) @ np.abs(np.asarray(wf, np.float64))
        tol = 0.02 if j % 2 == 0 else 1e-5  # q8_0 / q4_0 round x to Q8 blocks at decode shapes
        assert np.all(np.abs(got[j] - ref) <= tol * scale + 1e-5), f"weight {j}"


def test_group_leading_dims_fallbacks_and_nan():
    rng = np.random.default_rng(0)
    k = 64
    w_plain = rng.standard_normal((k, 32)).astype(np.float32)  # C-contiguous (K, N): alone
    w_q = tierflow.quantize(rng.standard_normal((k, 48)).astype(np.float32), "q8_0")
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    a, b = tierflow.matmul_group(x, [w_plain, w_q])
    np.testing.assert_array_equal(a, tierflow.matmul(x, w_plain))
    np.testing.assert_array_equal(b, tierflow.matmul(x, w_q))
    x[0, 1, 5] = np.nan  # not rounded to Q8 blocks: the float path, NaN propagates to that row
    (c,) = tierflow.matmul_group(x, [w_q])
    np.testing.assert_array_equal(c, tierflow.matmul(x, w_q))
    assert np.isnan(c[0, 1]).all() and np.isfinite(c[1]).all()
    assert tierflow.matmul_group(x, []) == []


def test_group_rejects_bad_shapes_before_computing():
    rng = np.random.default_rng(1)
    w1 = tierflow.quantize(rng.standard_normal((64, 32)).astype(np.float32), "q8_0")
    w2 = tierflow.quantize(rng.standard_normal((96, 32)).astype(np.float32), "q8_0")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    with pytest.raises(ShapeError, match="K differs"):
        tierflow.matmul_group(x, [w1, w2])
    with pytest.raises(ShapeError, match="bias"):
        tierflow.matmul_group(x, [w1], [np.zeros(31, np.float32)])
    with pytest.raises(ShapeError, match="biases"):
        tierflow.matmul_group(x, [w1], [None, None])
