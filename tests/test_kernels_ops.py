"""tierflow.kernels: attention and the fused transformer ops against NumPy float64 references,
on every instruction-set path this machine has."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierflow
from reference_impl import round_acts_q8

ISAS = tierflow.info()["isa_available"]
erf = np.vectorize(math.erf)


def ref_attention(q, k, v, causal=False, scale=None, mask=None):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    _, h, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    k = np.repeat(k, h // hkv, axis=1)
    v = np.repeat(v, h // hkv, axis=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = q @ k.transpose(0, 1, 3, 2) * scale
    if mask is not None:
        m = np.asarray(mask)
        s = s + (np.where(m, 0.0, -np.inf) if m.dtype == bool else m)
    if causal:
        i = np.arange(sq)[:, None]
        j = np.arange(skv)[None, :]
        s = np.where(j <= i + skv - sq, s, -np.inf)
    with np.errstate(invalid="ignore"):
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p = p / p.sum(-1, keepdims=True)
    return p @ v


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=15, deadline=None)
@given(
    b=st.integers(1, 2),
    hkv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3]),
    sq=st.sampled_from([1, 2, 7, 33, 65]),
    skv=st.sampled_from([1, 5, 64, 67, 130]),
    d=st.sampled_from([1, 8, 17, 64]),
    causal=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_attention_matches_float64(isa, b, hkv, group, sq, skv, d, causal, seed):
    rng = np.random.default_rng(seed)
    h = hkv * group
    q = rng.standard_normal((b, h, sq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, skv, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, skv, d)).astype(np.float32)
    got = tierflow.attention(q, k, v, causal=causal, _isa=isa)
    want = ref_attention(q, k, v, causal=causal)
    # Rows with no visible key (causal, Sq > Skv) are NaN in both.
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.allclose(got[ok], want[ok], atol=2e-5 * math.sqrt(d) + 1e-6, rtol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
def test_attention_masks_scale_and_long_s(isa):
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 4, 50, 32)).astype(np.float32)
    k = rng.standard_normal((2, 2, 300, 32)).astype(np.float32)
    v = rng.standard_normal((2, 2, 300, 32)).astype(np.float32)
    bmask = rng.random((2, 1, 50, 300)) > 0.3
    bmask[..., 0] = True
    fmask = rng.standard_normal((50, 300)).astype(np.float32)
    for mask in (bmask, fmask):
        got = tierflow.attention(q, k, v, mask=mask, scale=0.2, _isa=isa)
        assert np.allclose(got, ref_attention(q, k, v, scale=0.2, mask=mask), atol=5e-5)
    # long S, causal, S = 1 query (decode)
    q1 = rng.standard_normal((1, 2, 1, 64)).astype(np.float32)
    k1 = rng.standard_normal((1, 2, 2000, 64)).astype(np.float32)
    v1 = rng.standard_normal((1, 2, 2000, 64)).astype(np.float32)
    got = tierflow.attention(q1, k1, v1, causal=True, _isa=isa)
    assert np.allclose(got, ref_attention(q1, k1, v1, causal=True), atol=3e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [1, 3, 64, 80, 128, 256])
def test_attention_tile_edges(isa, d):
    """Shapes at the kernel's tile edges (48 query rows x 128 keys, register tiles of 6 rows x 16
    lanes): S not a multiple of any of them, D not a multiple of 8 or 16, GQA, causal with more
    queries than keys (the first rows see nothing: NaN), an additive mask, and one query row."""
    rng = np.random.default_rng(d)
    for b, h, hkv, sq, skv in [
        (1, 2, 1, 49, 49),
        (2, 3, 3, 97, 131),
        (1, 2, 2, 100, 65),
        (1, 1, 1, 7, 300),
        (2, 8, 2, 1, 300),  # one query row (decode): the decode kernel unless masked
    ]:
        q = rng.standard_normal((b, h, sq, d)).astype(np.float32)
        k = rng.standard_normal((b, hkv, skv, d)).astype(np.float32)
        v = rng.standard_normal((b, hkv, skv, d)).astype(np.float32)
        fmask = rng.standard_normal((1, h, sq, skv)).astype(np.float32)
        for causal in (False, True):
            for mask in (None, fmask):
                got = tierflow.attention(q, k, v, causal=causal, mask=mask, _isa=isa)
                want = ref_attention(q, k, v, causal=causal, mask=mask)
                assert np.array_equal(np.isnan(got), np.isnan(want))
                ok = ~np.isnan(want)
                assert np.allclose(got[ok], want[ok], atol=2e-5 * math.sqrt(d) + 1e-6, rtol=1e-4)


def test_attention_bad_input_and_ieee():
    q = np.ones((1, 4, 3, 8), np.float32)
    k = np.ones((1, 3, 5, 8), np.float32)
    with pytest.raises(tierflow.ShapeError, match=r"\(1, 4, 3, 8\).*\(1, 3, 5, 8\)"):
        tierflow.attention(q, k, k)  # 3 kv heads do not divide 4
    with pytest.raises(tierflow.ShapeError):
        tierflow.attention(q, np.ones((1, 2, 5, 7), np.float32), np.ones((1, 2, 5, 7), np.float32))
    with pytest.raises(tierflow.ShapeError):
        tierflow.attention(q[0], q[0], q[0])
    with pytest.raises(tierflow.DTypeError):
        tierflow.attention(q.astype(np.int64), q, q)
    with pytest.raises(tierflow.ShapeError):
        tierflow.attention(q, q, q, mask=np.ones((2, 2), bool))
    assert tierflow.attention(q[:, :, :0], q, q).shape == (1, 4, 0, 8)
    qn = q.copy()
    qn[0, 1, 2, 3] = np.nan
    out = tierflow.attention(qn, q, q)
    assert np.isnan(out[0, 1, 2]).all() and not np.isnan(out[0, 0]).any()
    # +inf in a query row: inf - inf in the softmax, that row NaN only (as NumPy); a NaN key
    # reaches exactly the causal rows that see it.
    for isa in ISAS:
        rng = np.random.default_rng(8)
        q2, k2, v2 = (rng.standard_normal((1, 1, 130, 16)).astype(np.float32) for _ in range(3))
        q2[0, 0, 7] = np.inf
        k2[0, 0, 100, 5] = np.nan
        out = tierflow.attention(q2, k2, v2, causal=True, _isa=isa)
        rows = np.isnan(out[0, 0]).any(-1)
        assert rows[7] and rows[100:].all() and rows.sum() == 31


def test_rms_layer_norm(tmp_path):
    rng = np.random.default_rng(6)
    for isa in ISAS:
        for d in (1, 7, 64, 4099):
            x = rng.standard_normal((5, d)).astype(np.float32) * 3 + 1
            w = rng.standard_normal(d).astype(np.float32)
            bb = rng.standard_normal(d).astype(np.float32)
            x64 = x.astype(np.float64)
            want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * w
            assert np.allclose(tierflow.rms_norm(x, w, _isa=isa), want, rtol=1e-5, atol=1e-5)
            mu = x64.mean(-1, keepdims=True)
            var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
            want = (x64 - mu) / np.sqrt(var + 1e-5) * w + bb
            assert np.allclose(tierflow.layer_norm(x, w, bb, _isa=isa), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(tierflow.ShapeError):
        tierflow.rms_norm(np.ones((2, 3), np.float32), np.ones(4, np.float32))
    assert tierflow.rms_norm(np.ones((0, 3), np.float32)).shape == (0, 3)


@pytest.mark.parametrize("isa", ISAS)
def test_activations_and_softmax(isa):
    x = np.concatenate([np.linspace(-30, 30, 2001), [np.inf, -np.inf, np.nan]]).astype(np.float32)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        silu = x64 / (1 + np.exp(-x64))
        g_erf = 0.5 * x64 * (1 + erf(x64 / math.sqrt(2)))
        g_tanh = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    fin = np.isfinite(x)
    for got, want in (
        (tierflow.silu(x, _isa=isa), silu),
        (tierflow.gelu(x, _isa=isa), g_erf),
        (tierflow.gelu(x, "tanh", _isa=isa), g_tanh),
    ):
        assert np.allclose(got[fin], want[fin], rtol=1e-5, atol=1e-6)
        assert np.isnan(got[-1])
    assert tierflow.silu(np.float32([np.inf]), _isa=isa)[0] == np.inf
    s = np.random.default_rng(7).standard_normal((3, 5, 77)).astype(np.float32) * 10
    for axis in (-1, 1):
        s64 = s.astype(np.float64)
        e = np.exp(s64 - s64.max(axis, keepdims=True))
        want = e / e.sum(axis, keepdims=True)
        assert np.allclose(tierflow.softmax(s, axis=axis, _isa=isa), want, rtol=1e-5, atol=1e-7)
    row = np.float32([[1.0, np.nan, 2.0]])
    assert np.isnan(tierflow.softmax(row, _isa=isa)).all()
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.gelu(x, "fast")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope(isa, interleaved):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 11, 16)).astype(np.float32)
    pos = np.arange(11) * 37.0 + 5
    d = 16
    t = pos[:, None] * 10000.0 ** (-2 * np.arange(d // 2) / d)
    c, s = np.cos(t), np.sin(t)
    x64 = x.astype(np.float64)
    if interleaved:
        a, b = x64[..., 0::2], x64[..., 1::2]
        want = np.empty_like(x64)
        want[..., 0::2] = a * c - b * s
        want[..., 1::2] = b * c + a * s
    else:
        a, b = x64[..., : d // 2], x64[..., d // 2 :]
        want = np.concatenate([a * c - b * s, b * c + a * s], -1)
    got = tierflow.rope(x, pos, interleaved=interleaved, _isa=isa)
    assert np.allclose(got, want, atol=1e-5)
    with pytest.raises(tierflow.ShapeError):
        tierflow.rope(np.ones((3, 5), np.float32))
    with pytest.raises(tierflow.ShapeError):
        tierflow.rope(x, np.arange(3))


@pytest.mark.parametrize("fmt", [None, "bf16", "q8_0", "q4_0"])
def test_mlp_swiglu_and_gelu_any_format(fmt):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    wg, wu = (rng.standard_normal((64, 96)).astype(np.float32) * 0.1 for _ in range(2))
    wd = rng.standard_normal((96, 64)).astype(np.float32) * 0.1

    def conv(w):
        return w if fmt is None else tierflow.quantize(w, fmt)

    def val(w):
        return w.dequantize().astype(np.float64) if fmt else w.astype(np.float64)

    # q8_0 / q4_0 at decode shapes multiply activations rounded to Q8 blocks (see matmul).
    rounded = fmt in ("q8_0", "q4_0")
    r = round_acts_q8 if rounded else (lambda v: v)
    tol = 1e-3 if rounded else 1e-4
    g, u, dn = conv(wg), conv(wu), conv(wd)
    x64 = r(x.astype(np.float64))
    a = x64 @ val(g)
    want = r((a / (1 + np.exp(-a))) * (x64 @ val(u))) @ val(dn)
    assert np.allclose(tierflow.mlp(x, g, u, dn), want, rtol=tol, atol=tol)
    want2 = r(0.5 * a * (1 + erf(a / math.sqrt(2)))) @ val(dn)
    assert np.allclose(tierflow.mlp(x, g, dn, activation="gelu"), want2, rtol=tol, atol=tol)
    with pytest.raises(tierflow.ShapeError):
        tierflow.mlp(x, g, u, conv(rng.standard_normal((64, 64)).astype(np.float32)))


@pytest.mark.parametrize("isa", ISAS)
def test_paged_kv_cache_decode_matches_contiguous(isa):
    """Pages taken in scrambled order, appended in uneven steps, equal the contiguous reference."""
    rng = np.random.default_rng(11)
    b, hkv, h, d, page = 2, 2, 6, 24, 16
    cache = tierflow.PagedKVCache(
        num_blocks=40, block_size=page, num_kv_heads=hkv, head_dim=d, batch=b
    )
    rng.shuffle(cache._free)
    ks, vs = [], []
    for t in (5, 16, 1, 70):
        k = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
        v = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
        cache.append(k, v)
        ks.append(k)
        vs.append(v)
    k_all, v_all = np.concatenate(ks, 2), np.concatenate(vs, 2)
    q = rng.standard_normal((b, h, 1, d)).astype(np.float32)
    got = cache.attention(q, _isa=isa)
    assert np.allclose(got, ref_attention(q, k_all, v_all), atol=2e-5)
    assert cache.lengths == [92, 92] and cache.blocks_in_use == 2 * 6
    cache.free(0)
    assert np.isnan(cache.attention(q, _isa=isa)[0]).all()
    with pytest.raises(tierflow.CapacityError):
        cache.append(*(np.ones((b, hkv, 16 * 40, d), np.float32),) * 2)
    with pytest.raises(tierflow.ShapeError):
        cache.attention(np.ones((b, 5, 1, d), np.float32))
