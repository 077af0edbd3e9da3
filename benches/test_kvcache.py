"""Paged decode attention with the KV pages in a TieredStore, against anchors in the same run.

One decode step of one layer of a TinyLlama-shaped model (32 query heads, 4 KV heads, head dim
64) over a 4096-position cache in pages of 64 positions (64 pages of 128 KiB, 8 MiB in all):

- ``pool``: the pages in two pool arrays (the cache without a store);
- ``store RAM``: every page a tensor in the store's RAM tier, read in place (zero copy);
- ``store file``: every page in the store's file tier, read by the store each step (page cache
  warm: this measures the store's read path, not the disk);
- ``gather``: what the models' cache did before: ``store.get`` every page, concatenate, then
  ``tierflow.attention`` on the contiguous keys/values;
- ``NumPy``: float32 ``softmax(q K^T / sqrt(D)) V`` on contiguous arrays (grouped by kv head).

Ratios are anchor time / tierflow time (higher is better).
Run:  pytest benches/test_kvcache.py -m bench --benchmark-enable -s
"""

from __future__ import annotations

import numpy as np
import pytest

import tierflow
from conftest import best_of, record

pytestmark = pytest.mark.bench

H, HKV, D, PAGE, N = 32, 4, 64, 64, 4096


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, HKV, N, D)).astype(np.float32)
    v = rng.standard_normal((1, HKV, N, D)).astype(np.float32)
    q = rng.standard_normal((1, H, 1, D)).astype(np.float32)
    tiers = [tierflow.Tier("ram", None), tierflow.Tier("disk", None, path="disk")]
    store = tierflow.TieredStore(tmp_path_factory.mktemp("kv") / "s", tiers=tiers)
    pool = tierflow.PagedKVCache(N // PAGE, PAGE, HKV, D)
    ram = tierflow.PagedKVCache(None, PAGE, HKV, D, store=store, prefix="ram/")
    disk = tierflow.PagedKVCache(None, PAGE, HKV, D, store=store, tier="disk", prefix="disk/")
    for c in (pool, ram, disk):
        c.append(k, v)
    yield dict(k=k, v=v, q=q, store=store, pool=pool, ram=ram, disk=disk)
    store.close()


def _numpy(q, k, v):
    g = H // HKV
    qg = q[0, :, 0].reshape(HKV, g, D)
    s = np.einsum("hgd,hnd->hgn", qg, k[0]) / np.float32(np.sqrt(D))
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hgn,hnd->hgd", p, v[0])


def _gather(cache, q):
    got = [cache.store.get(n) for n in cache.names()]
    k = np.concatenate([x[0] for x in got], axis=1)[None]
    v = np.concatenate([x[1] for x in got], axis=1)[None]
    return tierflow.attention(q, k, v)


def test_paged_decode_pages_in_store(benchmark, ratios, setup):
    s = setup
    q = s["q"]
    want = s["pool"].attention(q)
    for c in ("ram", "disk"):
        np.testing.assert_array_equal(s[c].attention(q), want)
    r = 20
    t_pool = best_of(lambda: s["pool"].attention(q), r)
    t_disk = best_of(lambda: s["disk"].attention(q), r)
    t_gather = best_of(lambda: _gather(s["ram"], q), r)
    t_np = best_of(lambda: _numpy(q, s["k"], s["v"]), r)
    benchmark.pedantic(s["ram"].attention, args=(q,), rounds=r, iterations=1, warmup_rounds=2)
    t_ram = benchmark.stats.stats.min
    shape = f"B=1 H={H} Hkv={HKV} D={D} N={N} page={PAGE}"
    note = (
        f"ms: store RAM {t_ram * 1e3:.2f}, pool {t_pool * 1e3:.2f}, store file "
        f"{t_disk * 1e3:.2f}, gather+attention {t_gather * 1e3:.2f}, NumPy {t_np * 1e3:.2f}"
    )
    record(ratios, f"paged decode {shape}: store RAM x pool arrays", t_pool / t_ram, 0.8, note=note)
    record(ratios, f"paged decode {shape}: store RAM x gather + attention", t_gather / t_ram, 1.5)
    record(ratios, f"paged decode {shape}: store RAM x NumPy f32", t_np / t_ram, 1.0)
    record(ratios, f"paged decode {shape}: store file tier x pool arrays", t_pool / t_disk, 0.2)
