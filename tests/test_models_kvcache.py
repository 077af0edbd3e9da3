"""The models' paged KV cache: pages in the TieredStore (spilling to the file tier), decode steps
by the paged decode kernel on the pages where they are, give the tokens of the in-memory cache and
of the transformers reference, and logits within float32 rounding of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import tierflow
import tierflow.models as tm

DATA = Path(__file__).parent / "data"


def _ref(name):
    return load_file(str(DATA / name / "reference.safetensors"))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("block", [None, 1, 5, 64])
def test_paged_generation_token_identical(name, block):
    """The default (paged, in the model's store) and every page size give the reference's
    greedy tokens, as does the plain in-memory cache."""
    r = _ref(name)
    model = tm.load(DATA / name)
    out = model.generate(r["gen_prompt"], 24, kv_block=block)
    np.testing.assert_array_equal(out, r["gen_greedy"])
    assert not [n for n in model.store.names() if n.startswith("kv#")], "pages left behind"
    if block is None:
        plain = model.generate(r["gen_prompt"], 24, paged_kv=False)
        np.testing.assert_array_equal(plain, out)


def test_generate_pages_spill_to_the_file_tier(tmp_path, monkeypatch):
    """A RAM tier smaller than weights + cache: KV pages are evicted to disk and read back
    from there by the decode kernel; sampled tokens equal the plain cache's for the same seed."""
    r = _ref("tiny-llama")
    tiers = [tierflow.Tier("ram", 48 << 10), tierflow.Tier("disk", None, path="disk")]
    seen: list[str] = []  # the tier of every page each decode call reads
    decode = tierflow.PagedKVCache.attention

    def spy(self, q, *a, **kw):
        seen.extend(self.store.tier_of(n) for n in self.names())
        return decode(self, q, *a, **kw)

    monkeypatch.setattr(tierflow.PagedKVCache, "attention", spy)
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store)
        prompt = r["gen_prompt"]
        want = model.generate(prompt, 40, temperature=0.8, top_k=20, seed=3, paged_kv=False)
        assert not seen
        got = model.generate(prompt, 40, temperature=0.8, top_k=20, seed=3, kv_block=4)
        np.testing.assert_array_equal(got, want)
        assert seen.count("disk") > 0 and seen.count("ram") > 0, set(seen)
        assert not [n for n in store.names() if n.startswith("kv#")]
        greedy = model.generate(prompt, 24, kv_block=4)
        np.testing.assert_array_equal(greedy, r["gen_greedy"])


def test_paged_decode_steps_match_the_plain_cache(tmp_path):
    """Step by step: prefill, then 30 single-token decode steps through the paged decode kernel
    with pages evicted to disk; logits within float32 rounding of the plain cache's, the same
    argmax, and the pages really in the file tier."""
    tiers = [tierflow.Tier("ram", 40 << 10), tierflow.Tier("disk", None, path="disk")]
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store)
        cfg = model.config
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 40)
        plain = tm.KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 40)
        paged = tm.StoreKVCache(
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 40, store, block_size=4
        )
        a = [model.forward(ids[:10], plain)]
        b = [model.forward(ids[:10], paged)]
        np.testing.assert_array_equal(a[0], b[0])  # prefill: the same attention kernel
        for t in range(10, 40):
            a.append(model.forward(ids[t : t + 1], plain))
            b.append(model.forward(ids[t : t + 1], paged))
        la, lb = np.concatenate(a), np.concatenate(b)
        np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lb.argmax(axis=1), la.argmax(axis=1))
        names = paged.names()
        assert len(names) == cfg.num_layers * 10
        assert names[0] == f"{paged.prefix}L0/s0/p0"
        assert "disk" in {store.tier_of(n) for n in names}
        paged.close()
        assert not any(n in store for n in names)


def test_paged_cache_bad_arguments():
    model = tm.load(DATA / "tiny-llama")
    for bad in (0, -4, 2.5, "16", True):
        with pytest.raises(tierflow.InvalidArgumentError):
            model.generate([1, 2], 3, kv_block=bad)
    with pytest.raises(tierflow.InvalidArgumentError, match="paged"):
        model.generate([1, 2], 3, kv_block=4, paged_kv=False)
    with pytest.raises(tierflow.InvalidArgumentError, match="no tier"):
        model.generate([1, 2], 3, kv_tier="nvme")
    cache = tm.StoreKVCache(2, 2, 32, 3, model.store, block_size=2)
    with pytest.raises(tierflow.InvalidArgumentError, match="full"):
        model.forward(np.arange(4), cache)
    with pytest.raises(tierflow.InvalidArgumentError):
        tm.StoreKVCache(2, 2, 32, 3, None)
    cache.close()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_chunked_prefill_then_decode(name):
    """Prefill in chunks of several rows (the gather path, across page boundaries), then
    single-row steps (the paged decode kernel): the same logits as one full forward pass."""
    model = tm.load(DATA / name)
    cfg = model.config
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, 30)
    full = model(ids)
    paged = tm.StoreKVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 30, model.store, 8)
    parts = [model.forward(ids[a:b], paged) for a, b in ((0, 5), (5, 19), (19, 20), (20, 23))]
    parts += [model.forward(ids[t : t + 1], paged) for t in range(23, 30)]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-4, atol=1e-4)
    assert len(paged.names()) == cfg.num_layers * 3
    paged.close()
