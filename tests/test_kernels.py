"""tierflow.kernels: matmul and weight formats against NumPy float64, on every instruction-set
path this machine has (the private ``_isa=`` argument forces one per call)."""

from __future__ import annotations

import doctest
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierflow
import tierflow.kernels.bench
import tierflow.kernels.kvcache
import tierflow.kernels.ops
from tierflow import kernels

ISAS = tierflow.info()["isa_available"]
EPS32 = float(np.finfo(np.float32).eps)
# Sizes that hit every tile edge: 1, primes, and non-multiples of 4, 8, 16 and 32.
DIMS = st.sampled_from([0, 1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 33, 64, 67, 97])
MS = st.sampled_from([1, 2, 3, 4, 5, 8, 9, 31, 33, 40])


def ref_matmul(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    r = x.astype(np.float64) @ w.astype(np.float64)
    return r if bias is None else r + bias.astype(np.float64)


def bound(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """float32 accumulation of K products: |err| <= 2 K eps32 sum_k |x||w| (+ tiny)."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64))
    return 2.0 * max(k, 1) * EPS32 * mag + 1e-30


def test_doctests():
    assert doctest.testmod(tierflow.kernels.ops).failed == 0
    assert doctest.testmod(tierflow.kernels.bench).failed == 0
    assert doctest.testmod(tierflow.kernels.kvcache).failed == 0


def test_expected_isa_selected():
    """CI sets TIERFLOW_EXPECT_ISA (e.g. avx2): fail if the fast path was silently skipped."""
    want = os.environ.get("TIERFLOW_EXPECT_ISA")
    if not want:
        pytest.skip("TIERFLOW_EXPECT_ISA not set")
    assert want in ISAS, f"CPU lacks {want}: available {ISAS}"
    assert tierflow.info()["isa_selected"] == want


def test_expected_extensions_used():
    """CI sets TIERFLOW_EXPECT_EXT to the VNNI / BF16 extensions this CPU has (from
    /proc/cpuinfo): each must have its kernel bodies running here, not silently skipped."""
    if os.environ.get("TIERFLOW_EXPECT_EXT") is None:
        pytest.skip("TIERFLOW_EXPECT_EXT not set")
    want = os.environ["TIERFLOW_EXPECT_EXT"].split()
    got = tierflow.info()["isa_extensions"]
    assert set(want) <= set(got), f"extensions without kernels here: {set(want) - set(got)}"


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=25, deadline=None)
@given(
    m=MS,
    k=DIMS,
    n=DIMS,
    seed=st.integers(0, 2**31),
    order=st.sampled_from("CF"),
    wdt=st.sampled_from(["float32", "float16", "bfloat16"]),
    use_bias=st.booleans(),
)
def test_matmul_plain_matches_float64(isa, m, k, n, seed, order, wdt, use_bias):
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal((m, k)), np.float32, order=order)
    w32 = rng.standard_normal((k, n)).astype(np.float32)
    if wdt == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        w = w32.astype(ml_dtypes.bfloat16)
    else:
        w = np.asarray(w32.astype(wdt), order=order)
    wv = w.astype(np.float32)  # the values the weight really holds
    bias = rng.standard_normal(n).astype(np.float32) if use_bias else None
    got = tierflow.matmul(x, w, bias=bias, _isa=isa)
    assert got.dtype == np.float32 and got.shape == (m, n)
    want = ref_matmul(x, wv, bias)
    assert np.all(np.abs(got - want) <= bound(x, wv, k) + (1e-6 if use_bias else 0))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, k, n", [(130, 1030, 1050), (45, 1100, 70), (300, 40, 2100)])
def test_matmul_past_the_gemm_blocks(isa, m, k, n):
    """Large-M products past every block of the GEMM kernels (AVX2: MC 144, KC 256, NC 4080;
    AVX-512: MC 112, KC = NC 1024) and off every tile edge (6 x 16, 14 x 32), with a bias,
    against float64."""
    rng = np.random.default_rng(m + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = tierflow.matmul(x, w, bias=bias, _isa=isa)
    assert np.all(np.abs(got - ref_matmul(x, w, bias)) <= bound(x, w, k) + 1e-6)


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=20, deadline=None)
@given(
    m=MS,
    kb=st.sampled_from([0, 1, 2, 3, 5]),
    n=DIMS,
    seed=st.integers(0, 2**31),
    fmt=st.sampled_from(["f32", "f16", "bf16", "q8_0", "q4_0"]),
)
def test_matmul_quantized_matches_dequantized(isa, m, kb, n, seed, fmt):
    """x @ q equals x @ q.dequantize() (float64) within the accumulation bound, and the
    dequantised weight is within the format's quantisation error of the original."""
    k = 32 * kb
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    q = tierflow.quantize(w, fmt)
    dq = q.dequantize()
    assert dq.shape == (k, n) and dq.dtype == np.float32
    check_quant_error(w, dq, fmt)
    got = tierflow.matmul(x, q, _isa=isa)
    extra = act_rounding_bound(x, dq, fmt)
    assert np.all(np.abs(got - ref_matmul(x, dq)) <= bound(x, dq, k) + extra)


def act_rounding_bound(x: np.ndarray, w: np.ndarray, fmt: str) -> np.ndarray | float:
    """What rounding the activations to Q8 blocks may add (q8_0 / q4_0 at decode shapes):
    per block of 32 along K, ``|x - dx qx| <= dx / 2`` with ``dx = max|x| / 127`` (plus the
    float32 rounding of ``dx``), so the product moves by at most ``sum_b dx_b/2 sum_b |w|``."""
    m, k = x.shape
    if fmt not in ("q8_0", "q4_0") or m > kernels.ROUNDED_ACTIVATIONS_MAX_M or k == 0:
        return 0.0
    dx = np.abs(x.astype(np.float64)).reshape(m, k // 32, 32).max(axis=2) / 127.0
    per_elem = np.repeat(dx * (0.5 + 2.0**-20), 32, axis=1)  # (m, k)
    return per_elem @ np.abs(w.astype(np.float64))


def test_decode_quantized_rounds_activations_like_ggml():
    """At decode shapes a q8_0 weight multiplies activations rounded to Q8 blocks: the result
    equals the float64 product of the rounded operands (computed here by hand), not x @ dq."""
    rng = np.random.default_rng(3)
    k, n = 128, 40
    x = rng.standard_normal((3, k)).astype(np.float32)
    q = tierflow.quantize(rng.standard_normal((k, n)).astype(np.float32), "q8_0")
    dq = q.dequantize().astype(np.float64)
    xb = x.reshape(3, k // 32, 32).astype(np.float64)
    dx = (np.abs(x).reshape(3, k // 32, 32).max(axis=2) / np.float32(127)).astype(np.float32)
    qx = np.clip(np.round(xb * (127.0 / np.abs(xb).max(axis=2, keepdims=True))), -127, 127)
    xr = (qx * dx[..., None].astype(np.float64)).reshape(3, k)
    want = xr @ dq
    for isa in ISAS:
        got = tierflow.matmul(x, q, _isa=isa)
        assert np.all(np.abs(got - want) <= bound(xr, dq, k))
        # ... and differs from the unrounded product by no more than the stated bound.
        assert np.all(
            np.abs(got - x.astype(np.float64) @ dq)
            <= bound(x, dq, k) + act_rounding_bound(x, dq, "q8_0")
        )
    # Inf in x: not rounded, propagates as IEEE 754 says.
    x[1, 5] = np.inf
    got = tierflow.matmul(x, q)
    assert np.all(np.isfinite(got[0])) and np.all(np.isfinite(got[2]))
    assert np.array_equal(np.isinf(got[1]), dq[5] != 0)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_vnni_decode_bit_identical_to_scalar(fmt):
    """The VNNI bodies (avx512 with AVX-512-VNNI, avx2 with AVX-VNNI) keep the scalar
    reference's order of operations: the same bits, with tails of rows and odd M."""
    exts = tierflow.info()["isa_extensions"]
    exact = [i for i, e in (("avx512", "avx512vnni"), ("avx2", "avxvnni")) if e in exts]
    if not exact:
        pytest.skip("no VNNI extension active on this CPU")
    rng = np.random.default_rng(5)
    for m in (1, 2, 3, 8, 9):
        for k, n in ((32, 1), (96, 37), (512, 70)):
            x = rng.standard_normal((m, k)).astype(np.float32)
            q = tierflow.quantize(rng.standard_normal((k, n)).astype(np.float32), fmt)
            b = rng.standard_normal(n).astype(np.float32)
            want = tierflow.matmul(x, q, bias=b, _isa="scalar")
            for isa in exact:
                got = tierflow.matmul(x, q, bias=b, _isa=isa)
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (isa, m, k, n)


def check_quant_error(w: np.ndarray, dq: np.ndarray, fmt: str) -> None:
    err = np.abs(dq.astype(np.float64) - w)
    if fmt == "f32":
        assert np.array_equal(dq, w)
    elif fmt == "f16":
        assert np.all(err <= 2.0**-11 * np.abs(w) + 2.0**-24)
    elif fmt == "bf16":
        assert np.all(err <= 2.0**-8 * np.abs(w) + 1e-38)
    else:
        k, n = w.shape
        blocks = np.abs(w.T.reshape(n, k // 32, 32)).max(axis=2) if k else np.zeros((n, 0))
        # Per element: rounding to the grid (d/2 for Q8_0, d for Q4_0's truncation) plus the
        # f16 rounding of the scale (relative 2^-11) times the largest |q| (127, resp. 8).
        amax = np.repeat(blocks, 32, axis=1).T if k else np.zeros((0, n))
        if fmt == "q8_0":
            tol = amax / 127.0 * (0.5 + 127 * 2.0**-11) * 1.001 + 1e-7
        else:
            tol = amax / 8.0 * (1.0 + 8 * 2.0**-11) * 1.001 + 1e-7
        assert np.all(err <= tol)


def test_q8_0_and_q4_0_gguf_layout():
    """Byte-level layout of one block, computed by hand."""
    w = np.zeros((32, 1), np.float32)
    w[:, 0] = np.arange(32) - 16  # max |x| = 16 at element 0 (value -16)
    q8 = tierflow.quantize(w, "q8_0")
    assert q8.nbytes == 34
    d = np.frombuffer(q8.data[:2].tobytes(), np.float16)[0]
    assert d == np.float16(16 / 127)
    qs = q8.data[2:].view(np.int8)
    assert qs.tolist() == np.round((np.arange(32) - 16) / np.float32(16 / 127)).astype(int).tolist()
    q4 = tierflow.quantize(w, "q4_0")
    assert q4.nbytes == 18
    assert np.frombuffer(q4.data[:2].tobytes(), np.float16)[0] == np.float16(2.0)  # -16 / -8
    nib = q4.data[2:]
    lo, hi = nib & 0x0F, nib >> 4
    vals = np.concatenate([lo, hi]).astype(int) - 8  # elements 0..15 low, 16..31 high
    want = np.clip(np.trunc((np.arange(32) - 16) / 2.0 + 8.5), 0, 15).astype(int) - 8
    assert vals.tolist() == want.tolist()
    assert np.allclose(q4.dequantize()[:, 0], vals * 2.0)


def test_from_blocks_round_trip_and_corruption():
    w = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    q = tierflow.quantize(w, "q4_0")
    q2 = tierflow.QuantizedTensor._from_blocks("q4_0", (64, 5), q.data.copy())
    assert np.array_equal(q2.dequantize(), q.dequantize())
    with pytest.raises(tierflow.CorruptFileError):
        tierflow.QuantizedTensor("q4_0", (64, 5), q.data[:-1])
    bad = q.data.copy()
    bad[0:2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    with pytest.raises(tierflow.CorruptFileError):
        tierflow.QuantizedTensor("q4_0", (64, 5), bad)
    # Read back from a store: the length is checked at once, the scales at the first result
    # that is not finite (a non-finite scale always makes one), never a silent NaN.
    with pytest.raises(tierflow.CorruptFileError):
        tierflow.QuantizedTensor._from_blocks("q4_0", (64, 5), q.data[:-1])
    lazy = tierflow.QuantizedTensor._from_blocks("q4_0", (64, 5), bad)
    with pytest.raises(tierflow.CorruptFileError, match="non-finite scale"):
        tierflow.matmul(np.ones((3, 64), np.float32), lazy)
    with pytest.raises(tierflow.CorruptFileError, match="non-finite scale"):
        tierflow.QuantizedTensor._from_blocks("q4_0", (64, 5), bad).dequantize()
    x_nan = np.full((2, 64), np.nan, np.float32)  # NaN from x: the scales check out, NaN returned
    assert np.isnan(tierflow.matmul(x_nan, q2)).all()
    with pytest.raises(tierflow.ShapeError):
        tierflow.quantize(np.ones((33, 2), np.float32), "q8_0")
    with pytest.raises(tierflow.DTypeError):
        tierflow.quantize(w, "q3_k")
    with pytest.raises(tierflow.ShapeError):
        tierflow.QuantizedTensor("q8_0", (2**62, 2**62), np.zeros(0, np.uint8))


def test_pack_is_a_stable_prepacked_weight():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    p = tierflow.pack(w)
    assert p.format == "f32" and p.nbytes == w.nbytes
    assert np.array_equal(p.dequantize(), w)
    assert tierflow.pack(p) is p
    assert np.all(np.abs(tierflow.matmul(x, p) - ref_matmul(x, w)) <= bound(x, w, 40))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wdt", ["float32", "float16", "bfloat16"])
def test_decode_column_groups_and_tails(isa, wdt):
    """Decode shapes on both weight layouts at the edges of the kernels' groups: N around the
    16 / 32 / 64-column tiles of the plain-weight kernel, K around the 16-lane and 32-element
    (bf16 pair) groups of the row kernels, M = 1 and 2 (the AVX-512-BF16 body) and more."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = ml_dtypes.bfloat16 if wdt == "bfloat16" else np.dtype(wdt)
    fmt = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[wdt]
    rng = np.random.default_rng(11)
    for k, n in [(15, 48), (16, 63), (17, 64), (31, 65), (32, 96), (33, 112), (100, 144)]:
        w = rng.standard_normal((k, n)).astype(np.float32).astype(dt)
        wv = w.astype(np.float32)
        for m in (1, 2, 3, 9):
            x = rng.standard_normal((m, k)).astype(np.float32)
            want, tol = ref_matmul(x, wv), bound(x, wv, k)
            for weight in (w, np.ascontiguousarray(w.T).T, tierflow.quantize(wv, fmt)):
                got = tierflow.matmul(x, weight, _isa=isa)
                assert np.all(np.abs(got - want) <= tol), (k, n, m, type(weight))
    # Inf in the activations: IEEE semantics (Inf * w = +-Inf, Inf * 0 = NaN) on every body.
    w = rng.standard_normal((64, 40)).astype(np.float32).astype(dt)
    w[3, 5] = 0
    x = rng.standard_normal((2, 64)).astype(np.float32)
    x[:, 3] = np.inf
    with np.errstate(invalid="ignore"):
        want = x.astype(np.float64) @ w.astype(np.float64)
    for weight in (w, tierflow.quantize(w.astype(np.float32), fmt)):
        got = tierflow.matmul(x, weight, _isa=isa)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)])


@pytest.mark.parametrize("isa", ISAS)
def test_matmul_strides_batches_out_and_f16_inputs(isa):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 6, 90)).astype(np.float32)
    x = base[:, ::2, ::3]  # (4, 3, 30), non-contiguous
    w = rng.standard_normal((60, 30)).astype(np.float32).T[:, ::2]  # (30, 30) strided
    want = ref_matmul(x, w)
    got = tierflow.matmul(x, w, _isa=isa)
    assert got.shape == (4, 3, 30)
    assert np.all(np.abs(got - want) <= bound(x, w, 30))
    out = np.empty((4, 3, 30), np.float32)
    assert tierflow.matmul(x, w, out=out, _isa=isa) is out
    assert np.array_equal(out, got)
    xh = x.astype(np.float16)
    got_h = tierflow.matmul(xh, w, _isa=isa)
    assert np.all(np.abs(got_h - ref_matmul(xh.astype(np.float32), w)) <= bound(x, w, 30) * 2)
    v = tierflow.matmul(x[0, 0], w, _isa=isa)  # 1-D x
    assert v.shape == (30,)


def test_large_m_gemm_path():
    """M above the decode threshold goes through the gemm crate / panelled dequantisation."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((130, 96)).astype(np.float32)
    w = rng.standard_normal((96, 70)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    for weight in (w, w.astype(np.float16), tierflow.quantize(w, "q8_0")):
        wv = (
            weight.dequantize()
            if isinstance(weight, tierflow.QuantizedTensor)
            else weight.astype(np.float32)
        )
        for isa in ISAS:
            got = tierflow.matmul(x, weight, bias=b, _isa=isa)
            assert np.all(np.abs(got - ref_matmul(x, wv, b)) <= bound(x, wv, 96) + 1e-5)


def test_matmul_bad_input():
    x = np.ones((3, 4), np.float32)
    w = np.ones((5, 6), np.float32)
    with pytest.raises(tierflow.ShapeError, match=r"\(3, 4\).*\(5, 6\)"):
        tierflow.matmul(x, w)
    with pytest.raises(tierflow.DTypeError):
        tierflow.matmul(x.astype(np.int32), np.ones((4, 6), np.float32))
    with pytest.raises(tierflow.DTypeError):
        tierflow.matmul(x, np.ones((4, 6), np.int8))
    w = np.ones((4, 6), np.float32)
    with pytest.raises(tierflow.ShapeError):
        tierflow.matmul(x, w, out=np.empty((3, 5), np.float32))
    with pytest.raises(tierflow.DTypeError):
        tierflow.matmul(x, w, out=np.empty((3, 6), np.float64))
    ro = np.empty((3, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.matmul(x, w, out=ro)
    with pytest.raises(tierflow.ShapeError):
        tierflow.matmul(x, w, bias=np.ones(5, np.float32))
    with pytest.raises(tierflow.ShapeError):
        tierflow.matmul(x, np.ones(4, np.float32))
    huge = np.lib.stride_tricks.as_strided(np.ones(1, np.float32), (2**31, 2**20, 4), (0, 0, 0))
    with pytest.raises(tierflow.ShapeError, match="overflow"):
        tierflow.matmul(huge, np.ones((4, 4096), np.float32))  # result: 2^65 bytes
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.matmul(x, w, _isa="no-such-isa")


def test_empty_and_ieee():
    assert tierflow.matmul(np.ones((0, 4), np.float32), np.ones((4, 3), np.float32)).shape == (0, 3)
    assert tierflow.matmul(np.ones((2, 4), np.float32), np.ones((4, 0), np.float32)).shape == (2, 0)
    z = tierflow.matmul(
        np.ones((2, 0), np.float32),
        np.ones((0, 3), np.float32),
        bias=np.arange(3, dtype=np.float32),
    )
    assert z.tolist() == [[0, 1, 2], [0, 1, 2]]
    x = np.ones((2, 64), np.float32)
    x[0, 3] = np.nan
    x[1, 5] = np.inf
    for isa in ISAS:
        for w in (
            np.ones((64, 20), np.float32),
            tierflow.quantize(np.ones((64, 20), np.float32), "q4_0"),
        ):
            r = tierflow.matmul(x, w, _isa=isa)
            assert np.isnan(r[0]).all() and np.isposinf(r[1]).all()


def test_memory_bandwidth_probe():
    bw = tierflow.kernels.bench.memory_bandwidth(nbytes=8 << 20, reps=2)
    assert 1e8 < bw < 1e13
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.kernels.bench.memory_bandwidth(nbytes=1)


def test_quantized_tensor_round_trips_through_the_store(tmp_path):
    """QuantizedTensor is a store BlockTensor: stored as typed blocks, read back as itself."""
    w = np.random.default_rng(4).standard_normal((64, 9)).astype(np.float32)
    q = tierflow.quantize(w, "q8_0")
    assert isinstance(q, tierflow.BlockTensor)
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("layer0.w", q)
        back = s.get("layer0.w")
    assert isinstance(back, tierflow.QuantizedTensor)
    assert back.format == "q8_0" and back.shape == (64, 9)
    assert np.array_equal(back.data, q.data)
    x = np.ones((2, 64), np.float32)
    assert np.array_equal(tierflow.matmul(x, back), tierflow.matmul(x, q))


@pytest.mark.parametrize("fmt", ["f32", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("m", [1, 7, 40])
def test_streamed_matmul_is_bit_identical_from_every_tier(tmp_path, fmt, m):
    """matmul(x, store[name]) streams panels from the tensor's tier, bit-identical to memory."""
    rng = np.random.default_rng(10)
    k, n = 64, 1000
    w = rng.standard_normal((k, n)).astype(np.float32)
    q = tierflow.pack(w) if fmt == "f32" else tierflow.quantize(w, fmt)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    want = tierflow.matmul(x, q, bias=bias)
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("layer0.w", q)
        for tier in [t.name for t in s.tiers]:
            s.move("layer0.w", tier)

            def streamed(tier=tier):
                return dict(s.stats())["counters"]["streamed"].get(tier, {}).get("bytes", 0)

            before = streamed()
            got = tierflow.matmul(x, s["layer0.w"], bias=bias, panel_bytes=7000)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), tier
            assert s.tier_of("layer0.w") == tier  # streaming leaves the weight where it is
            assert streamed() - before == q.nbytes  # the store counted the traffic


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("m", [1, 7, 32, 33])
def test_streamed_plain_matmul_is_bit_identical_from_every_tier(tmp_path, dtype, m):
    """A plain (K, N) float weight in the store streams in panels of whole rows of K at decode
    shapes (m <= 32), bit-identical to memory; with more rows it is loaded whole (same result)."""
    rng = np.random.default_rng(11)
    k, n = 67, 500
    w = rng.standard_normal((k, n)).astype(np.float32)
    if dtype == "bfloat16":
        w = w.astype(pytest.importorskip("ml_dtypes").bfloat16)
    else:
        w = w.astype(dtype)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for isa in ISAS:
        want = tierflow.matmul(x, w, bias=bias, _isa=isa)
        with tierflow.TieredStore(tmp_path / f"s{isa}") as s:
            s.put("w", w)
            for tier in [t.name for t in s.tiers]:
                s.move("w", tier)
                before = dict(s.stats())["counters"]["streamed"].get(tier, {}).get("bytes", 0)
                got = tierflow.matmul(x, s["w"], bias=bias, panel_bytes=3 * n * 4 + 5, _isa=isa)
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (tier, isa)
                if m <= 32:
                    assert s.tier_of("w") == tier  # streaming leaves the weight where it is
                after = dict(s.stats())["counters"]["streamed"].get(tier, {}).get("bytes", 0)
                assert after - before == (w.nbytes if m <= 32 else 0)


@pytest.mark.parametrize("m", [1, 40])
def test_streamed_transposed_ref(tmp_path, m):
    """store["fc.weight"].T (a PyTorch Linear weight, (out, in) as stored) streams its rows at
    any size, bit-identical to the in-memory product with the transposed array."""
    rng = np.random.default_rng(12)
    wt = rng.standard_normal((300, 64)).astype(np.float32)  # (out, in)
    x = rng.standard_normal((m, 64)).astype(np.float32)
    want = tierflow.matmul(x, tierflow.pack(wt.T))
    np.testing.assert_allclose(want, x.astype(np.float64) @ wt.T, rtol=1e-4, atol=1e-4)
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("fc.weight", wt)
        ref = s["fc.weight"].T
        assert ref.shape == (64, 300) and np.array_equal(ref.numpy(), wt.T)
        s.move("fc.weight", "disk")
        got = tierflow.matmul(x, ref, panel_bytes=64 * 4 * 64)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        assert s.tier_of("fc.weight") == "disk"
        with pytest.raises(tierflow.ShapeError):
            tierflow.matmul(x, s["fc.weight"])  # (300, 64): K differs
        s.put("v", np.ones(3, np.float32))
        with pytest.raises(tierflow.ShapeError):
            _ = s["v"].T
        s.put("q", tierflow.quantize(np.ones((32, 3), np.float32), "q8_0"))
        with pytest.raises(tierflow.DTypeError):
            _ = s["q"].T


def test_streamed_corrupt_scale_is_an_error(tmp_path):
    """A non-finite block scale in a streamed panel (bytes changed on disk behind the store,
    size and mtime kept so the store cannot tell) is a CorruptFileError, not NaN output."""
    rng = np.random.default_rng(13)
    q = tierflow.quantize(rng.standard_normal((64, 300)).astype(np.float32), "q8_0")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("q", q)
        s.move("q", "disk")
        info = s.info("q")
        with open(info["file"], "rb") as f:
            raw = f.read()
        at = raw.index(q.data[250 * 68 : 250 * 68 + 68].tobytes())  # row 250: 2 blocks of 34
        st = os.stat(info["file"])
        with open(info["file"], "r+b") as f:
            f.seek(at)
            f.write(b"\x00\x7c")  # f16 +inf as the scale of row 250's first block
        os.utime(info["file"], ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(tierflow.CorruptFileError, match="non-finite scale"):
            tierflow.matmul(x, s["q"], panel_bytes=64 * 68)


def test_streamed_matmul_errors(tmp_path):
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("plain", np.ones((8, 3), np.float32))
        assert np.array_equal(
            tierflow.matmul(np.ones((2, 8), np.float32), s["plain"]), np.full((2, 3), 8, np.float32)
        )
        with pytest.raises(tierflow.InvalidArgumentError):
            tierflow.matmul(np.ones((2, 8), np.float32), s["plain"], panel_bytes=0)
        s.put("q", tierflow.quantize(np.ones((32, 3), np.float32), "q8_0"))
        with pytest.raises(tierflow.ShapeError):
            tierflow.matmul(np.ones((2, 8), np.float32), s["q"])
        with pytest.raises(tierflow.InvalidArgumentError):
            tierflow.matmul(np.ones((2, 32), np.float32), s["q"], panel_bytes=0)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_vnni_decode_layout_equals_blocks(fmt):
    """q8_0 / q4_0 repacked into the VNNI decode layout (16 rows' blocks interleaved,
    `kernels/qpack.rs`) give the bits of the GGUF blocks on every path, and unpack exactly."""
    from tierflow import _tierflow

    rng = np.random.default_rng(7)
    k, n = 256, 300
    q = tierflow.quantize(rng.standard_normal((k, n)).astype(np.float32), fmt)
    packed = _tierflow._pack_vnni(fmt, k, n, q.data)
    assert packed.nbytes == -(-n // 16) * (k // 32) * (32 + (512 if fmt == "q8_0" else 256))
    b = rng.standard_normal(n).astype(np.float32)
    for isa in tierflow.info()["isa_available"]:
        for m in (1, 3, 8, 40):
            x = rng.standard_normal((m, k)).astype(np.float32)
            want = tierflow.matmul(x, q, bias=b, _isa=isa)
            got = np.empty((m, n), np.float32)
            _tierflow._matmul_packed(x, fmt, k, n, packed, got, b, isa)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (isa, m)
    with pytest.raises(tierflow.errors.ShapeError):
        _tierflow._matmul_packed(x, fmt, k, n, packed[:-1], got, None, None)
