"""The paged KV cache: blocks in the TieredStore (spilling to the file tier) give the same
tokens and logits as the in-memory cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import tierflow
import tierflow.models as tm

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("block", [1, 5, 64])
def test_paged_generation_token_identical(name, block):
    r = load_file(str(DATA / name / "reference.safetensors"))
    model = tm.load(DATA / name)
    out = model.generate(r["gen_prompt"], 24, kv_block=block)
    np.testing.assert_array_equal(out, r["gen_greedy"])
    assert not [n for n in model.store.names() if n.startswith("kv#")], "blocks left behind"


def test_paged_blocks_spill_to_the_file_tier(tmp_path):
    """RAM tier of 40 KiB: older KV blocks are evicted to disk and read back; logits equal the
    in-memory cache's bit for bit."""
    tiers = [tierflow.Tier("ram", 40 << 10), tierflow.Tier("disk", None, path="disk")]
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store)
        cfg = model.config
        ids = np.random.default_rng(0).integers(0, 512, 40)
        plain = tm.KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 40)
        paged = tm.PagedKVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 40, store, block=4)
        a = [model.forward(ids[:10], plain)]
        b = [model.forward(ids[:10], paged)]
        for t in range(10, 40):
            a.append(model.forward(ids[t : t + 1], plain))
            b.append(model.forward(ids[t : t + 1], paged))
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
        names = paged.names()
        assert len(names) == cfg.num_layers * 10
        tiers_now = {store.tier_of(n) for n in names}
        assert "disk" in tiers_now, tiers_now
        paged.close()
        assert not any(n in store for n in names)


def test_paged_cache_bad_arguments():
    model = tm.load(DATA / "tiny-llama")
    with pytest.raises(tierflow.InvalidArgumentError):
        model.generate([1, 2], 3, kv_block=0)
    cache = tm.PagedKVCache(2, 2, 32, 3, model.store, block=2)
    with pytest.raises(tierflow.InvalidArgumentError, match="full"):
        model.forward(np.arange(4), cache)
