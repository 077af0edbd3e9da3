"""tierflow.models against the transformers outputs (tests/data) and the float64 NumPy reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import reference_impl as ref
import tierflow
import tierflow.models as tm

DATA = Path(__file__).parent / "data"
CHECKPOINTS = {"tiny-llama": ref.llama_forward, "tiny-gpt2": ref.gpt2_forward}


def _ref_data(name: str) -> dict[str, np.ndarray]:
    return load_file(str(DATA / name / "reference.safetensors"))


def _weights_cfg(folder) -> tuple[dict[str, np.ndarray], dict]:
    folder = Path(folder)
    return load_file(str(folder / "model.safetensors")), json.loads(
        (folder / "config.json").read_text()
    )


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def shared(request):
    return request.param, tm.load(DATA / request.param), _ref_data(request.param)


@pytest.mark.parametrize("i", range(4))
def test_logits_match_transformers(shared, i):
    _, model, r = shared
    logits = model(r[f"input_ids_{i}"])
    assert logits.dtype == np.float32
    assert logits.shape == r[f"logits_{i}"].shape
    np.testing.assert_allclose(logits, r[f"logits_{i}"], rtol=0, atol=1e-4)


def test_greedy_generation_token_identical(shared):
    _, model, r = shared
    out = model.generate(r["gen_prompt"], max_new_tokens=24)
    np.testing.assert_array_equal(out, r["gen_greedy"])


def test_batch_prefill_equals_rows(shared):
    _, model, r = shared
    ids = r["input_ids_2"][:20]
    batch = np.stack([ids, ids[::-1]])
    out = model(batch)
    assert out.shape == (2, 20, model.config.vocab_size)
    np.testing.assert_array_equal(out[0], model(ids))
    np.testing.assert_array_equal(out[1], model(ids[::-1]))


def test_cached_decode_matches_full_prefill(shared):
    """Logits of position t computed incrementally through the KV cache equal the prefill's."""
    _, model, r = shared
    ids = r["input_ids_2"][:16]
    full = model(ids)
    cfg = model.config
    cache = tm.KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16)
    first = model.forward(ids[:10], cache)
    steps = [model.forward(ids[t : t + 1], cache)[0] for t in range(10, 16)]
    np.testing.assert_allclose(first, full[:10], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.stack(steps), full[10:], atol=1e-5, rtol=0)


def test_generate_list_of_prompts(shared):
    _, model, r = shared
    p = r["gen_prompt"]
    outs = model.generate([p.tolist(), p[:5].tolist()], max_new_tokens=3)
    assert isinstance(outs, list) and len(outs) == 2
    np.testing.assert_array_equal(outs[0], r["gen_greedy"][:15])
    np.testing.assert_array_equal(outs[1][:5], p[:5])
    assert len(outs[1]) == 8


def test_empty_inputs_give_empty_results(shared):
    _, model, _ = shared
    assert model.generate([], max_new_tokens=4) == []
    assert model(np.zeros(0, np.int64)).shape == (0, model.config.vocab_size)
    assert model(np.zeros((0, 5), np.int64)).shape == (0, 5, model.config.vocab_size)


def test_sampling_is_seeded_and_top_k_1_is_greedy(shared):
    _, model, r = shared
    p = r["gen_prompt"]
    a = model.generate(p, 10, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    b = model.generate(p, 10, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    np.testing.assert_array_equal(a, b)
    c = [model.generate(p, 10, temperature=1.5, seed=s) for s in range(4)]
    assert len({tuple(x) for x in c}) > 1, "different seeds should give different samples"
    np.testing.assert_array_equal(
        model.generate(p, 10, temperature=1.0, top_k=1, seed=3), r["gen_greedy"][:22]
    )


def test_stop_token_ends_generation(shared):
    _, model, r = shared
    g = r["gen_greedy"]
    stop_tok = int(g[12 + 5])  # the sixth generated token
    first = 12 + int(np.flatnonzero(g[12:] == stop_tok)[0])
    out = model.generate(r["gen_prompt"], 24, stop=[stop_tok])
    np.testing.assert_array_equal(out, g[: first + 1])


def test_sample_next_distribution():
    """top_k / top_p restrict the support exactly; frequencies follow softmax(z / T)."""
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = np.array([tm.sample_next(z, 1.0, rng=rng) for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    assert set(tm.sample_next(z, 1.0, top_k=2, rng=rng) for _ in range(300)) == {0, 1}
    # top_p=0.6: 0.5 < 0.6 so the token crossing the threshold (0.3) is kept too
    assert set(tm.sample_next(z, 1.0, top_p=0.6, rng=rng) for _ in range(300)) == {0, 1}
    assert set(tm.sample_next(z, 1.0, top_p=0.5, rng=rng) for _ in range(100)) == {0}


# --- tiny random checkpoints against the float64 reference ------------------------------------


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return tm.write_tiny_checkpoint(
        tmp_path_factory.mktemp("qwen2"),
        "Qwen2ForCausalLM",
        hidden=96,
        heads=6,
        kv_heads=2,
        intermediate=200,
        vocab=300,
        theta=1e6,
        tie=True,
        seed=11,
    )


def test_qwen2_matches_float64_reference(qwen2_dir):
    w, cfg = _weights_cfg(qwen2_dir)
    assert any(k.endswith("q_proj.bias") for k in w) and "lm_head.weight" not in w
    model = tm.load(qwen2_dir)
    assert isinstance(model, tm.Qwen2ForCausalLM)
    ids = np.random.default_rng(1).integers(0, 300, 40)
    np.testing.assert_allclose(model(ids), ref.llama_forward(w, cfg, ids), atol=1e-4, rtol=0)
    prompt = ids[:6]
    assert model.generate(prompt, 12).tolist() == ref.greedy(ref.llama_forward, w, cfg, prompt, 12)


def test_qwen2_biases_matter(qwen2_dir, tmp_path):
    """Zeroing the q/k/v biases changes the logits: the biases are really applied."""
    w, cfg = _weights_cfg(qwen2_dir)
    w0 = {k: (np.zeros_like(v) if k.endswith("_proj.bias") else v) for k, v in w.items()}
    save_file(w0, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ids = np.arange(10)
    assert np.abs(tm.load(tmp_path)(ids) - tm.load(qwen2_dir)(ids)).max() > 1e-3


@settings(max_examples=8, deadline=None)
@given(
    arch=st.sampled_from(["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]),
    heads_kv=st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3)]),
    head_dim=st.sampled_from([8, 16]),
    tie=st.booleans(),
    theta=st.sampled_from([1e4, 5e5]),
    n=st.integers(1, 33),
    seed=st.integers(0, 2**16),
)
def test_llama_family_property(tmp_path_factory, arch, heads_kv, head_dim, tie, theta, n, seed):
    h, kv = heads_kv
    d = tm.write_tiny_checkpoint(
        tmp_path_factory.mktemp("p"),
        arch,
        hidden=h * head_dim,
        heads=h,
        kv_heads=kv,
        intermediate=3 * head_dim + 5,
        vocab=97,
        layers=2,
        tie=tie,
        theta=theta,
        seed=seed,
        std=0.2,
    )
    w, cfg = _weights_cfg(d)
    ids = np.random.default_rng(seed).integers(0, 97, n)
    np.testing.assert_allclose(tm.load(d)(ids), ref.llama_forward(w, cfg, ids), atol=1e-4, rtol=0)


def test_gpt2_tiny_random_with_n_inner_and_greedy(tmp_path):
    d = tm.write_tiny_checkpoint(
        tmp_path,
        "GPT2LMHeadModel",
        hidden=48,
        heads=3,
        intermediate=100,
        vocab=120,
        seed=5,
        std=0.2,
    )
    w, cfg = _weights_cfg(d)
    model = tm.load(d)
    ids = np.random.default_rng(0).integers(0, 120, 30)
    np.testing.assert_allclose(model(ids), ref.gpt2_forward(w, cfg, ids), atol=1e-4, rtol=0)
    assert model.generate(ids[:4], 10).tolist() == ref.greedy(ref.gpt2_forward, w, cfg, ids[:4], 10)


def test_gpt2_without_transformer_prefix(tmp_path):
    """Original OpenAI-style GPT-2 checkpoints name tensors without 'transformer.'."""
    w, cfg = _weights_cfg(DATA / "tiny-gpt2")
    save_file(
        {k.removeprefix("transformer."): v for k, v in w.items()},
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = _ref_data("tiny-gpt2")
    np.testing.assert_allclose(
        tm.load(tmp_path)(r["input_ids_1"]), r["logits_1"], atol=1e-4, rtol=0
    )


def test_sharded_checkpoint(tmp_path):
    w, cfg = _weights_cfg(DATA / "tiny-llama")
    names = sorted(w)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for fn, ns in shards.items():
        save_file({n: w[n] for n in ns}, str(tmp_path / fn))
        weight_map.update({n: fn for n in ns})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = _ref_data("tiny-llama")
    np.testing.assert_allclose(
        tm.load(tmp_path)(r["input_ids_2"]), r["logits_2"], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_float16_and_bfloat16_checkpoints(tmp_path, name):
    """Checkpoints stored in f16/bf16 load and are computed exactly (against a float64 forward
    over the same rounded weights), read in place or through the store."""
    import ml_dtypes

    w, cfg = _weights_cfg(DATA / name)
    ids = _ref_data(name)["input_ids_2"]
    for dt in (np.float16, ml_dtypes.bfloat16):
        d = tmp_path / np.dtype(dt).name
        os.makedirs(d)
        wr = {k: v.astype(dt) for k, v in w.items()}
        save_file(wr, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(cfg))
        expect = CHECKPOINTS[name]({k: v.astype(np.float64) for k, v in wr.items()}, cfg, ids)
        for read in ("mmap", "store", "stream"):
            got = tm.load(d, read=read)(ids)
            np.testing.assert_allclose(got, expect, atol=1e-4, rtol=0)


def test_weights_are_adopted_in_place():
    model = tm.load(DATA / "tiny-llama")
    info = model.store.info(model.weights.prefix + "model.layers.0.mlp.up_proj.weight")
    assert info["adopted"] and info["tier"] == "disk"
    assert os.path.samefile(info["file"], DATA / "tiny-llama" / "model.safetensors")


@pytest.mark.parametrize("tier", ["fast", "ram", "disk"])
def test_weights_served_from_each_tier(shared, tier):
    name, base, r = shared
    model = tm.load(DATA / name, tier=tier)
    assert set(model.weights.tiers().values()) == {tier}
    logits = model(r["input_ids_2"])
    np.testing.assert_allclose(logits, r["logits_2"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(logits, base(r["input_ids_2"]))


@pytest.mark.parametrize("read", ["auto", "store", "stream", "mmap"])
@pytest.mark.parametrize("fmt", [None, "q8_0"])
def test_ram_budget_below_model_size(tmp_path, read, fmt):
    """A RAM tier of half the model. Through the store: every step reads the weights
    from the file tier again (counted), evicting. Streamed: the kernels pull every weight from
    the file tier at every step (counted as streamed traffic), none passes through the RAM tier.
    Resident (what "auto" picks here): a fixed set is pinned in the RAM tier, only the rest is
    streamed. Read in place: none passes through the store at all.
    The results are bit-identical every way."""
    r = _ref_data("tiny-llama")
    ram = (1 << 20) if fmt is None else (192 << 10)  # about half the weights
    tiers = [tierflow.Tier("ram", ram), tierflow.Tier("disk", None, path="disk")]
    with tierflow.TieredStore(tmp_path / "store", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store, dtype=fmt, read=read)
        assert model.weights.read == ("resident" if read == "auto" else read)
        base = tm.load(DATA / "tiny-llama", dtype=fmt, tier="ram")
        store.reset_stats()
        ids = r["input_ids_1"]
        np.testing.assert_array_equal(model(ids), base(ids))
        np.testing.assert_array_equal(
            model.generate(r["gen_prompt"], 24), base.generate(r["gen_prompt"], 24)
        )
        moved = store.stats().link("disk", "ram").get("bytes", 0)
        streamed = store.stats()["counters"]["streamed"].get("disk", {}).get("bytes", 0)
        per_step = sum(model.weights.nbytes(n) for n in model.weights.layouts)
        if read == "store":
            assert moved > 24 * per_step * 0.4
            assert store.stats()["counters"]["evictions"] > 0
        else:
            assert moved < per_step  # only norms went through the store
        if read == "stream":
            assert streamed >= 25 * per_step * 0.95  # prefill + 24 steps, every matmul weight
        if read == "auto":  # resident: a fixed set pinned in RAM, only the rest streamed
            w = model.weights
            pinned = w.resident_bytes()
            assert 0 < pinned <= ram and w.resident
            assert all(store.info(w.prefix + n)["pinned"] for n in w.resident)
            assert all(store.tier_of(w.prefix + n) == "ram" for n in w.resident)
            # prefill + 24 steps read exactly the non-resident weights, every step; the only
            # other streamed bytes are the embedding rows of the tokens in play (row by row)
            rows = streamed - 25 * (per_step - pinned)
            row_bytes = model.config.hidden_size * 4
            assert rows % row_bytes == 0 and 0 <= rows <= 64 * row_bytes
    # A model that fits the memory tiers is cached there ("auto" -> "store").
    assert tm.load(DATA / "tiny-llama").weights.read == "store"


def test_two_models_share_one_store(tmp_path):
    with tierflow.TieredStore(tmp_path / "s") as store:
        a = tm.load(DATA / "tiny-llama", store=store)
        b = tm.load(DATA / "tiny-llama", store=store)
        g = tm.load(DATA / "tiny-gpt2", store=store)
        assert a.weights.prefix != b.weights.prefix
        np.testing.assert_array_equal(a([1, 2, 3]), b([1, 2, 3]))
        assert g([1, 2]).shape == (2, 512)
        with pytest.raises(tierflow.TensorExistsError):
            tm.load(DATA / "tiny-llama", store=store, prefix=a.weights.prefix)


def test_docstring_examples():
    import doctest

    import tierflow.models

    res = doctest.testmod(tierflow.models, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 4 and res.failed == 0


def test_resident_drops_page_cache_when_memory_is_short(tmp_path, monkeypatch):
    """In a memory cgroup too small for the model, "resident" advises the OS to drop the file
    pages of the pinned weights once (they are held in the RAM tier) and turns on the store's
    drop_after_read (the streamed bytes leave the page cache once the kernels have them); the
    logits stay bit-identical. Outside a cgroup with plenty of memory nothing is dropped (the
    page cache may keep the streamed part warm). Either way the next streamed weights' reads
    are started ahead (WILLNEED), each before the forward pass asks for it, in a bounded window."""
    import tierflow.models._weights as wmod

    calls: list[tuple[str, int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    r = _ref_data("tiny-llama")
    base = tm.load(DATA / "tiny-llama", tier="ram")
    tiers = [tierflow.Tier("ram", 1 << 20), tierflow.Tier("disk", None, path="disk")]
    ck = os.path.realpath(DATA / "tiny-llama" / "model.safetensors")
    monkeypatch.setattr(wmod, "cgroup_memory_limit", lambda: None)
    with tierflow.TieredStore(tmp_path / "a", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store)
        w = model.weights
        assert w.read == "resident" and not w._drop_cache and not store.drop_after_read
        asked: list[tuple[str, int]] = []  # (weight, WILLNEED calls made before it was asked)
        mat = w.mat
        monkeypatch.setattr(w, "mat", lambda n: (asked.append((n, len(calls))), mat(n))[1])
        np.testing.assert_array_equal(model(r["input_ids_1"]), base(r["input_ids_1"]))
    assert calls and all(a == os.POSIX_FADV_WILLNEED for *_, a in calls)
    streamed = [n for n in w.layouts if n not in w.resident]
    assert streamed and set(w._streamed) == set(streamed)
    begins = {w.infos[n].begin: n for n in streamed}
    hinted = [begins[o] for p, o, _, _ in calls if os.path.realpath(p) == ck]
    for n, before in asked:  # every streamed weight was hinted before it was asked for
        if n in streamed and n != streamed[0]:
            assert n in hinted[:before], n
    assert all(0 < length <= w._window for *_, length, _ in calls)
    calls.clear()
    model_bytes = os.path.getsize(DATA / "tiny-llama" / "model.safetensors")
    monkeypatch.setattr(wmod, "cgroup_memory_limit", lambda: model_bytes // 2)
    monkeypatch.setattr(wmod, "_cgroup_room", lambda window: None)
    with tierflow.TieredStore(tmp_path / "b", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store)
        w = model.weights
        assert w._drop_cache and w.resident and store.drop_after_read
        dropped = [(p, o) for p, o, n, a in calls if a == os.POSIX_FADV_DONTNEED]
        assert len(dropped) == len(calls) == len(w.resident)
        assert {o for _, o in dropped} == {w.infos[n].begin for n in w.resident}
        assert all(os.path.realpath(p) == ck for p, _ in dropped)
        np.testing.assert_array_equal(model(r["input_ids_1"]), base(r["input_ids_1"]))
        w.release()
        assert not any(store.info(w.prefix + n)["pinned"] for n in w.layouts)
        assert not store.drop_after_read


def test_resident_leaves_the_cgroup_room_for_the_process(tmp_path, monkeypatch):
    """In a memory cgroup, the pinned weights (anonymous memory: without swap, a cgroup they
    overfill kills the process) stay within its limit less the process's anonymous memory,
    the streaming reserve and the prefetch window, however large the RAM tier."""
    import tierflow.models._weights as wmod

    room = 300 << 10
    monkeypatch.setattr(
        wmod,
        "cgroup_memory_limit",
        lambda: wmod._anon_now() + wmod.STREAM_RESERVE + (8 << 20) + room,
    )
    tiers = [tierflow.Tier("ram", 1 << 20), tierflow.Tier("disk", None, path="disk")]
    r = _ref_data("tiny-llama")
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as store:
        model = tm.load(DATA / "tiny-llama", store=store)
        w = model.weights
        assert w.read == "resident" and w._window == 8 << 20
        assert 0 < w.resident_bytes() <= room
        np.testing.assert_array_equal(
            model(r["input_ids_1"]), tm.load(DATA / "tiny-llama", tier="ram")(r["input_ids_1"])
        )
