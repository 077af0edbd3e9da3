"""tierflow.PagedKVCache with its pages in a TieredStore: the paged decode kernel reads the pages
where they are (a memory tier in place, the file tier through the store) and gives the pool path's
result bit for bit, within float32 rounding of a NumPy float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierflow
from tierflow import _tierflow

ISAS = tierflow.info()["isa_available"]
HKV, H, D, PAGE = 2, 6, 24, 16
LENS = [37, 0, 16, 1, 48]  # several pages, empty, exactly one page, one position, three pages
PAGE_BYTES = 2 * HKV * PAGE * D * 4


def ref_decode(q, ks, vs, scale=None):
    """float64 softmax(q k^T * scale) v per sequence and head (GQA); NaN for no keys."""
    b, h, _, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = np.full((b, h, 1, d), np.nan)
    for i, (k, v) in enumerate(zip(ks, vs, strict=True)):
        if k.shape[1] == 0:
            continue
        k64 = np.repeat(k.astype(np.float64), h // k.shape[0], axis=0)
        v64 = np.repeat(v.astype(np.float64), h // v.shape[0], axis=0)
        s = np.einsum("hd,hsd->hs", q[i, :, 0].astype(np.float64), k64) * scale
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[i, :, 0] = np.einsum("hs,hsd->hd", p, v64)
    return out


def sequences(rng, lens, hkv=HKV, d=D):
    ks = [rng.standard_normal((hkv, n, d)).astype(np.float32) for n in lens]
    vs = [rng.standard_normal((hkv, n, d)).astype(np.float32) for n in lens]
    return ks, vs


def fill(cache, ks, vs, steps=(5, 16, 1)):
    """Append each sequence in uneven steps (then the rest), so pages fill across calls."""
    for i, (k, v) in enumerate(zip(ks, vs, strict=True)):
        at = 0
        for t in (*steps, k.shape[1]):
            t = min(t, k.shape[1] - at)
            if t > 0:
                cache.append(k[None, :, at : at + t], v[None, :, at : at + t], seq=i)
                at += t


def two_tier_store(tmp_path, ram_pages):
    tiers = [
        tierflow.Tier("ram", ram_pages * PAGE_BYTES),
        tierflow.Tier("disk", None, path="disk"),
    ]
    return tierflow.TieredStore(tmp_path / "store", tiers=tiers)


@pytest.mark.parametrize("isa", ISAS)
def test_pages_in_each_tier_equal_the_pools_and_the_reference(tmp_path, isa):
    rng = np.random.default_rng(5)
    ks, vs = sequences(rng, LENS)
    q = rng.standard_normal((len(LENS), H, 1, D)).astype(np.float32)
    want = ref_decode(q, ks, vs)
    pool = tierflow.PagedKVCache(64, PAGE, HKV, D, batch=len(LENS))
    rng.shuffle(pool._free)  # scattered pages
    fill(pool, ks, vs)
    base = pool.attention(q, _isa=isa)
    assert np.isnan(base[1]).all() and not np.isnan(np.delete(base, 1, axis=0)).any()
    np.testing.assert_allclose(base, want, atol=2e-5, rtol=0)
    with two_tier_store(tmp_path, 100) as store:
        cache = tierflow.PagedKVCache(None, PAGE, HKV, D, batch=len(LENS), store=store)
        fill(cache, ks, vs)
        names = cache.names()
        assert len(names) == sum(n // PAGE for n in LENS) == 6
        assert {store.tier_of(n) for n in names} == {"ram"}
        assert store.info(names[0])["shape"] == [2, HKV, PAGE, D]
        store.reset_stats()
        np.testing.assert_array_equal(cache.attention(q, _isa=isa), base)  # RAM: in place
        c = store.stats()["counters"]
        assert c["hits"] == len(names) and c["misses"] == 0 and c["bytes_read"] == 0
        for n in names:  # every page to the file tier
            store.move(n, "disk")
        store.reset_stats()
        np.testing.assert_array_equal(cache.attention(q, _isa=isa), base)
        s = store.stats()
        assert s["counters"]["misses"] == len(names)
        assert s["counters"]["bytes_read"] == len(names) * PAGE_BYTES
        assert s["counters"]["streamed"]["disk"]["bytes"] == len(names) * PAGE_BYTES
        assert {store.tier_of(n) for n in names} == {"disk"}, "read in place, not promoted"
        cache.close()
        assert len(store) == 0


def test_promote_moves_file_tier_pages_back_up(tmp_path):
    rng = np.random.default_rng(6)
    ks, vs = sequences(rng, [40])
    q = rng.standard_normal((1, H, 1, D)).astype(np.float32)
    with two_tier_store(tmp_path, 100) as store:
        cache = tierflow.PagedKVCache(None, PAGE, HKV, D, store=store, tier="disk", promote=True)
        fill(cache, ks, vs)
        assert {store.tier_of(n) for n in cache.names()} == {"disk"}
        got = cache.attention(q)
        np.testing.assert_allclose(got, ref_decode(q, ks, vs), atol=2e-5, rtol=0)
        assert {store.tier_of(n) for n in cache.names()} == {"ram"}
        store.reset_stats()
        np.testing.assert_array_equal(cache.attention(q), got)
        assert store.stats()["counters"]["misses"] == 0


def test_cache_larger_than_the_ram_tier_spills_and_stays_right(tmp_path):
    """The RAM tier holds 3 pages; the cache stores 19 full ones: the store evicts the oldest
    pages to disk (LRU), the decode reads them from there, and the answer is unchanged."""
    rng = np.random.default_rng(7)
    lens = [100, 63, 161]
    ks, vs = sequences(rng, lens)
    q = rng.standard_normal((3, H, 1, D)).astype(np.float32)
    with two_tier_store(tmp_path, 3) as store:
        cache = tierflow.PagedKVCache(None, PAGE, HKV, D, batch=3, store=store)
        fill(cache, ks, vs)
        tiers = [store.tier_of(n) for n in cache.names()]
        assert tiers.count("ram") == 3 and tiers.count("disk") == len(tiers) - 3 == 16
        store.reset_stats()
        got = cache.attention(q)
        np.testing.assert_allclose(got, ref_decode(q, ks, vs), atol=2e-5, rtol=0)
        assert store.stats()["counters"]["streamed"]["disk"]["bytes"] == 16 * PAGE_BYTES
        pool = tierflow.PagedKVCache(40, PAGE, HKV, D, batch=3)
        fill(pool, ks, vs)
        np.testing.assert_array_equal(got, pool.attention(q))
        # gather (the prefill path) returns the same keys/values from either tier
        for i in range(3):
            k, v = cache.gather(i)
            np.testing.assert_array_equal(k, ks[i])
            np.testing.assert_array_equal(v, vs[i])


def test_free_close_and_names(tmp_path):
    rng = np.random.default_rng(8)
    ks, vs = sequences(rng, [33, 20])
    with two_tier_store(tmp_path, 100) as store:
        store.put("weights", np.ones(4, np.float32))
        cache = tierflow.PagedKVCache(8, PAGE, HKV, D, batch=2, store=store, prefix="kv/")
        fill(cache, ks, vs)
        assert cache.block_names(0) == ["kv/s0/p0", "kv/s0/p1"]
        assert cache.block_names(1) == ["kv/s1/p0"]
        assert cache.blocks_in_use == 5 and cache.lengths == [33, 20]
        cache.free(0)
        assert "kv/s0/p0" not in store and cache.lengths == [0, 20] and cache.blocks_in_use == 2
        q = rng.standard_normal((2, H, 1, D)).astype(np.float32)
        got = cache.attention(q)
        assert np.isnan(got[0]).all()
        np.testing.assert_allclose(got[1:], ref_decode(q[1:], ks[1:], vs[1:]), atol=2e-5)
        with pytest.raises(tierflow.InvalidArgumentError, match="already holds"):
            tierflow.PagedKVCache(8, PAGE, HKV, D, store=store, prefix="kv/")
        cache.close()
        cache.close()  # idempotent
        assert store.names() == ["weights"]
        assert cache.closed and "closed" in repr(cache)


def test_capacity_limit_with_a_store(tmp_path):
    with two_tier_store(tmp_path, 100) as store:
        cache = tierflow.PagedKVCache(2, PAGE, HKV, D, store=store)
        k = np.zeros((1, HKV, 2 * PAGE, D), np.float32)
        cache.append(k, k)
        with pytest.raises(tierflow.CapacityError):
            cache.append(k[:, :, :1], k[:, :, :1])
        assert cache.lengths == [2 * PAGE], "nothing appended"


def test_bad_input_gives_typed_errors(tmp_path):
    rng = np.random.default_rng(9)
    ks, vs = sequences(rng, [20])
    q = rng.standard_normal((1, H, 1, D)).astype(np.float32)
    with pytest.raises(tierflow.InvalidArgumentError, match="needs a store"):
        tierflow.PagedKVCache(None, PAGE, HKV, D)
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.PagedKVCache(4, 0, HKV, D)
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.PagedKVCache(4, PAGE, HKV, D, tier="ram")  # tier without a store
    with pytest.raises(tierflow.InvalidArgumentError):
        tierflow.PagedKVCache(4, PAGE, HKV, D, store="not a store")
    with two_tier_store(tmp_path, 100) as store:
        with pytest.raises(tierflow.InvalidArgumentError, match="no tier"):
            tierflow.PagedKVCache(4, PAGE, HKV, D, store=store, tier="nvme")
        cache = tierflow.PagedKVCache(None, PAGE, HKV, D, store=store)
        fill(cache, ks, vs)
        with pytest.raises(tierflow.ShapeError):
            bad = np.zeros((1, HKV, 2, D + 1), np.float32)
            cache.append(bad, bad)
        with pytest.raises(tierflow.ShapeError):
            cache.append(np.zeros((1, HKV, 2, D), np.float32), np.zeros((1, HKV, 3, D), np.float32))
        with pytest.raises(tierflow.DTypeError):
            cache.append(np.zeros((1, HKV, 2, D), np.int32), np.zeros((1, HKV, 2, D), np.int32))
        with pytest.raises(tierflow.ShapeError):
            cache.attention(np.zeros((1, H, 2, D), np.float32))
        with pytest.raises(tierflow.ShapeError):
            cache.attention(np.zeros((1, 5, 1, D), np.float32))
        with pytest.raises(tierflow.InvalidArgumentError):
            cache.append(ks[0][None], vs[0][None], seq=3)
        assert cache.lengths == [20]
        # a page deleted behind the cache's back
        store.delete(cache.names()[0])
        with pytest.raises(tierflow.TensorNotFoundError):
            cache.attention(q)
        with pytest.raises(tierflow.TensorNotFoundError):
            cache.gather(0)
        # a page replaced by a tensor of the wrong shape or dtype
        name = cache.names()[0]
        store.put(name, np.zeros((2, HKV, PAGE, D // 2), np.float32))
        with pytest.raises(tierflow.ShapeError, match="shape"):
            cache.attention(q)
        store.put(name, np.zeros((2, HKV, PAGE, D), np.float64), overwrite=True)
        with pytest.raises(tierflow.DTypeError, match="float32"):
            cache.attention(q)
        cache.close()
        with pytest.raises(tierflow.ClosedError):
            cache.attention(q)
        with pytest.raises(tierflow.ClosedError):
            cache.append(ks[0][None], vs[0][None])
        with pytest.raises(tierflow.ClosedError):
            cache.gather(0)
        with pytest.raises(tierflow.ClosedError):
            cache.free(0)


def test_closed_store_is_a_typed_error(tmp_path):
    store = two_tier_store(tmp_path, 100)
    cache = tierflow.PagedKVCache(None, PAGE, HKV, D, store=store)
    k = np.ones((1, HKV, PAGE + 1, D), np.float32)
    cache.append(k, k)
    store.close()
    with pytest.raises(tierflow.ClosedError):
        cache.attention(np.ones((1, H, 1, D), np.float32))
    cache.close()  # no error: the store's tensors went with it


def test_native_page_list_checks():
    q = np.zeros(H * D, np.float32)
    out = np.empty(H * D, np.float32)
    page = np.zeros(2 * HKV * PAGE * D, np.float32)
    sizes = (1, H, HKV, D, PAGE)
    _tierflow._paged_decode_pages(q, [page], [1], sizes, [3], 1.0, out)
    assert np.isfinite(out).all()
    with pytest.raises(tierflow.DTypeError):
        _tierflow._paged_decode_pages(q, [page.astype(np.float64)], [1], sizes, [3], 1.0, out)
    with pytest.raises(tierflow.ShapeError):
        _tierflow._paged_decode_pages(q, [page[:-1]], [1], sizes, [3], 1.0, out)
    with pytest.raises(tierflow.ShapeError):
        _tierflow._paged_decode_pages(q, [page], [1], sizes, [PAGE + 1], 1.0, out)
    with pytest.raises(tierflow.ShapeError):
        _tierflow._paged_decode_pages(q, [page], [2], sizes, [3], 1.0, out)
    with pytest.raises(tierflow.InvalidArgumentError, match="no store"):
        _tierflow._paged_decode_pages(q, ["kv/p0"], [1], sizes, [3], 1.0, out)


@settings(max_examples=25, deadline=None)
@given(
    lens=st.lists(st.integers(0, 70), min_size=1, max_size=4),
    page=st.sampled_from([1, 3, 16, 17]),
    hkv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3]),
    d=st.sampled_from([1, 8, 33]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_store_pages_match_reference(lens, page, hkv, group, d, seed):
    rng = np.random.default_rng(seed)
    ks, vs = sequences(rng, lens, hkv, d)
    h = hkv * group
    q = rng.standard_normal((len(lens), h, 1, d)).astype(np.float32)
    store = tierflow.TieredStore(tiers=[tierflow.Tier("ram", None)])
    cache = tierflow.PagedKVCache(None, page, hkv, d, batch=len(lens), store=store)
    fill(cache, ks, vs)
    got = cache.attention(q)
    want = ref_decode(q, ks, vs)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=3e-5, rtol=0)
    cache.close()
    assert len(store) == 0
