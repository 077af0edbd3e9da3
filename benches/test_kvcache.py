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

import time

import numpy as np
import pytest

import tierflow
import tierflow.models as tm
from conftest import record

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


def interleaved_best(fns, rounds):
    """The best time of each function over ``rounds`` rounds that run them in turn, so a burst of
    load from other jobs on this shared machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    order = list(range(len(fns)))
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        rng.shuffle(order)  # no function always runs after the same one (cache state)
        for i in order:
            t = time.perf_counter()
            fns[i]()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


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
    r = 30
    t_ram, t_pool, t_disk, t_gather, t_np = interleaved_best(
        [
            lambda: s["ram"].attention(q),
            lambda: s["pool"].attention(q),
            lambda: s["disk"].attention(q),
            lambda: _gather(s["ram"], q),
            lambda: _numpy(q, s["k"], s["v"]),
        ],
        r,
    )
    benchmark.pedantic(s["ram"].attention, args=(q,), rounds=3, iterations=1)
    shape = f"B=1 H={H} Hkv={HKV} D={D} N={N} page={PAGE}"
    note = (
        f"ms: store RAM {t_ram * 1e3:.2f}, pool {t_pool * 1e3:.2f}, store file "
        f"{t_disk * 1e3:.2f}, gather+attention {t_gather * 1e3:.2f}, NumPy {t_np * 1e3:.2f}"
    )
    record(ratios, f"paged decode {shape}: store RAM x pool arrays", t_pool / t_ram, 0.8, note=note)
    record(ratios, f"paged decode {shape}: store RAM x gather + attention", t_gather / t_ram, 1.5)
    record(ratios, f"paged decode {shape}: store RAM x NumPy f32", t_np / t_ram, 1.0)
    record(ratios, f"paged decode {shape}: store file tier x pool arrays", t_pool / t_disk, 0.2)


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama-kv")
    shape = dict(hidden=1024, layers=4, heads=16, kv_heads=4, intermediate=2816, vocab=4096)
    tm.write_tiny_checkpoint(d, "LlamaForCausalLM", max_positions=2048, std=0.02, **shape)
    return d


def test_decode_steps_paged_store_cache_vs_plain(benchmark, ratios, small_llama):
    """Decode steps of a model with the KV cache paged into its store (what ``generate`` uses
    by default) against the plain in-memory cache, same model, same run, steps interleaved: a
    4-layer Llama (hidden 1024, 16 / 4 heads, head dim 64), a 1024-token prompt, then 16
    single-token steps each; the same greedy tokens."""
    model = tm.load(small_llama)
    cfg = model.config
    prompt = np.random.default_rng(1).integers(0, 4096, 1024)
    n = 16
    shape = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, prompt.size + n)
    plain = tm.KVCache(*shape)
    paged = tm.StoreKVCache(*shape, model.store, block_size=64)
    tok = {}
    for name, c in (("plain", plain), ("paged", paged)):
        tok[name] = int(model.forward(prompt, c, last_only=True)[-1].argmax())
    times: dict[str, list[float]] = {"plain": [], "paged": []}
    for _ in range(n):
        for name, c in (("plain", plain), ("paged", paged)):
            t = time.perf_counter()
            logits = model.forward(np.asarray([tok[name]]), c, last_only=True)
            times[name].append(time.perf_counter() - t)
            tok[name] = int(logits[-1].argmax())
        assert tok["plain"] == tok["paged"]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    paged.close()
    t_plain, t_paged = float(np.median(times["plain"])), float(np.median(times["paged"]))
    record(
        ratios,
        "decode step, 4-layer Llama h=1024, 1024-token context: paged store cache x plain",
        t_plain / t_paged,
        0.9,
        note=f"median ms/token: paged {t_paged * 1e3:.1f}, plain {t_plain * 1e3:.1f}",
    )
