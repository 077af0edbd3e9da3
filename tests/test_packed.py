"""The VNNI decode layout (:class:`tierflow.PackedTensor`, ``q8_0x16`` / ``q4_0x16``): the GGUF
blocks of 16 rows interleaved in ``vpdpbusd`` operand order (``kernels/qpack.rs``). Every result
is checked bit for bit against the same weight as a :class:`tierflow.QuantizedTensor` (itself
tested against NumPy float64 and the scalar reference in test_kernels.py), on every instruction
set this CPU has: the packed kernels on the avx512 and avx2 paths (AVX-512-VNNI, AVX-VNNI or
plain AVX2; the Rust tests force each body this CPU has), the unpacking fallback on the scalar
path and above decode shapes. Also the native one-token decode step of the Llama models."""

from __future__ import annotations

import numpy as np
import pytest

import tierflow
import tierflow.models as tm
from tierflow import CorruptFileError, DTypeError, ShapeError

FMTS = ["q8_0", "q4_0"]
ISAS = tierflow.info()["isa_available"]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def weight(fmt: str, k: int, n: int, seed: int = 0) -> tierflow.QuantizedTensor:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[:, 0] *= 40.0  # a column with large scales
    return tierflow.quantize(w, fmt)


@pytest.mark.parametrize("fmt", FMTS)
def test_pack_round_trips_and_sizes(fmt):
    k, n = 256, 300  # N not a multiple of 16: the last tile is padded
    q = weight(fmt, k, n)
    p = tierflow.pack(q, fmt + "x16")
    assert isinstance(p, tierflow.PackedTensor)
    assert (p.format, p.base_format, p.shape) == (fmt + "x16", fmt, (k, n))
    assert p.nbytes == -(-n // 16) * (k // 32) * (32 + (512 if fmt == "q8_0" else 256))
    assert np.array_equal(p.unpack().data, q.data)
    assert np.array_equal(p.dequantize(), q.dequantize())
    # from floats: the same quantiser, then the same repacking
    w = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    assert np.array_equal(
        tierflow.pack(w, fmt + "x16").unpack().data, tierflow.quantize(w, fmt).data
    )
    assert tierflow.pack(p, fmt + "x16") is p
    assert tierflow.pack(p, "f32") is p  # already laid out: returned as it is
    assert not p.data.flags.writeable


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("isa", ISAS)
def test_packed_matmul_bit_identical_to_blocks(fmt, isa):
    k, n = 256, 300
    q = weight(fmt, k, n)
    p = tierflow.pack(q, fmt + "x16")
    rng = np.random.default_rng(2)
    b = rng.standard_normal(n).astype(np.float32)
    for shape in [(1, k), (3, k), (8, k), (32, k), (33, k), (40, k), (2, 4, k)]:
        x = rng.standard_normal(shape).astype(np.float32)
        for bias in (None, b):
            want = tierflow.matmul(x, q, bias=bias, _isa=isa)
            got = tierflow.matmul(x, p, bias=bias, _isa=isa)
            assert got.shape == want.shape
            assert np.array_equal(bits(got), bits(want)), (shape, bias is None)
    # a NaN in x propagates to its row as on the blocks
    x = rng.standard_normal((2, k)).astype(np.float32)
    x[1, 5] = np.nan
    got = tierflow.matmul(x, p, _isa=isa)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
    assert np.array_equal(bits(got), bits(tierflow.matmul(x, q, _isa=isa)))


def test_fallbacks_are_counted():
    """Above decode shapes, or without the packed kernel, each call unpacks the blocks: counted
    by layout_copies; the packed kernel itself copies nothing."""
    k, n = 64, 32
    p = tierflow.pack(weight("q8_0", k, n), "q8_0x16")
    before = tierflow.kernels.layout_copies()
    tierflow.matmul(np.ones((1, k), np.float32), p)
    inline = 0 if tierflow.packed_decode_available() else 1
    assert tierflow.kernels.layout_copies() == before + inline
    tierflow.matmul(np.ones((33, k), np.float32), p)
    assert tierflow.kernels.layout_copies() == before + inline + 1
    tierflow.matmul(np.ones((1, k), np.float32), p, _isa="scalar")
    assert tierflow.kernels.layout_copies() == before + inline + 2
    for isa in {"avx2", "avx512"} & set(ISAS):  # a packed kernel on both vector paths
        tierflow.matmul(np.ones((1, k), np.float32), p, _isa=isa)
        assert tierflow.kernels.layout_copies() == before + inline + 2


@pytest.mark.parametrize("isa", ISAS)
def test_packed_group_equals_separate_matmuls(isa):
    k = 256
    ws = [weight("q8_0", k, 300, 1), weight("q4_0", k, 64, 2), weight("q4_0", k, 700, 3)]
    ps = [tierflow.pack(w, w.format + "x16") for w in ws]
    rng = np.random.default_rng(4)
    bs = [rng.standard_normal(w.shape[1]).astype(np.float32) for w in ws]
    for m in (1, 5, 32, 33):
        x = rng.standard_normal((m, k)).astype(np.float32)
        for biases in (None, [bs[0], None, bs[2]]):
            got = tierflow.matmul_group(x, ps, biases, _isa=isa)
            for j, w in enumerate(ws):
                bias = None if biases is None else biases[j]
                want = tierflow.matmul(x, w, bias=bias, _isa=isa)
                assert np.array_equal(bits(got[j]), bits(want)), (m, j)
    # the gated MLP over packed weights: the same bits as over the blocks
    g, u, d = (
        weight(f, *s, i)
        for i, (f, s) in enumerate([("q4_0", (k, 96)), ("q4_0", (k, 96)), ("q8_0", (96, k))])
    )
    packed = [tierflow.pack(w, w.format + "x16") for w in (g, u, d)]
    for shape in [(1, k), (3, k), (2, 2, k), (40, k)]:
        x = rng.standard_normal(shape).astype(np.float32)
        for act in ("silu", "gelu", "gelu_tanh"):
            want = tierflow.mlp(x, g, u, d, activation=act, _isa=isa)
            got = tierflow.mlp(x, *packed, activation=act, _isa=isa)
            assert got.shape == want.shape
            assert np.array_equal(bits(got), bits(want)), (shape, act)


def test_bad_input():
    k, n = 64, 20
    q = weight("q8_0", k, n)
    p = tierflow.pack(q, "q8_0x16")
    with pytest.raises(CorruptFileError):
        tierflow.PackedTensor("q8_0x16", (k, n), p.data[:-1])
    with pytest.raises(DTypeError):
        tierflow.PackedTensor("q8_0x16", (k, n), p.data.view(np.int8))
    with pytest.raises(DTypeError):
        tierflow.PackedTensor("q5_0x16", (k, n), p.data)
    with pytest.raises(ShapeError):
        tierflow.PackedTensor("q8_0x16", (40, n), p.data)
    with pytest.raises(ShapeError):
        tierflow.PackedTensor("q8_0x16", (k,), p.data)
    with pytest.raises(DTypeError):
        tierflow.pack(q, "q4_0x16")  # q8_0 blocks are not requantised silently
    with pytest.raises(DTypeError):
        tierflow.pack(tierflow.quantize(np.ones((k, n), np.float32), "f16"), "q8_0x16")
    with pytest.raises(ShapeError):
        tierflow.matmul(np.ones((1, k + 32), np.float32), p)
    with pytest.raises(ShapeError):
        tierflow.matmul_group(
            np.ones((1, k), np.float32), [p, tierflow.pack(weight("q8_0", 96, n), "q8_0x16")]
        )
    with pytest.raises(ShapeError):
        tierflow.matmul_group(
            np.ones((1, k), np.float32), [p, p], [np.ones(n + 1, np.float32), None]
        )
    # a non-finite scale: refused when built from data, found at first use when read back
    bad = p.data.copy()
    bad[0:2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    with pytest.raises(CorruptFileError):
        tierflow.PackedTensor("q8_0x16", (k, n), bad)
    with tierflow.TieredStore() as s:
        s.put("bad", tierflow.PackedTensor._from_blocks("q8_0x16", (k, n), bad))
        got = s.get("bad")
        with pytest.raises(CorruptFileError):
            tierflow.matmul(np.ones((1, k), np.float32), got)


@pytest.mark.parametrize("k,n,m", [(64, 0, 1), (0, 16, 1), (64, 16, 0), (0, 0, 2)])
def test_empty_sizes(k, n, m):
    """Empty weights and inputs give empty (or zero) results, as with the blocks."""
    q = tierflow.quantize(np.ones((k, n), np.float32), "q8_0")
    p = tierflow.pack(q, "q8_0x16")
    assert p.nbytes == 0 or k * n > 0
    x = np.ones((m, k), np.float32)
    for isa in ISAS:
        want = tierflow.matmul(x, q, _isa=isa)
        got = tierflow.matmul(x, p, _isa=isa)
        assert got.shape == (m, n) and np.array_equal(got, want)


def test_store_round_trip(tmp_path):
    """A packed weight is an opaque block format to the store: it moves between tiers, comes
    back as a PackedTensor, and a store handle multiplies like the tensor."""
    k, n = 128, 48
    p = tierflow.pack(weight("q4_0", k, n), "q4_0x16")
    x = np.random.default_rng(5).standard_normal((2, k)).astype(np.float32)
    with tierflow.TieredStore(tmp_path) as s:
        s.put("w", p)
        assert s.info("w")["dtype"] == "block:q4_0x16"
        s.move("w", "disk")
        got = s.get("w", promote=False)
        assert isinstance(got, tierflow.PackedTensor) and np.array_equal(got.data, p.data)
        assert np.array_equal(bits(tierflow.matmul(x, s["w"])), bits(tierflow.matmul(x, p)))


def _tiny_gguf(tmp_path, fmt, tie):
    ck = tmp_path / f"ck-{tie}"
    tm.write_tiny_checkpoint(ck, "LlamaForCausalLM", tie=tie, seed=3)
    out = tmp_path / f"m-{fmt}-{tie}.gguf"
    tm.write_gguf(ck, out, fmt, embd_fmt=fmt if tie else "F32")
    return out


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("tie", [False, True])
def test_models_repack_on_load(tmp_path, monkeypatch, fmt, tie):
    """Loading repacks q8_0 / q4_0 matmul weights where the kernel runs them (one copy in
    memory, the blocks reordered, no requantisation): the logits and greedy tokens are bit for
    bit those of the blocks (TIERFLOW_REPACK=0). A tied head is repacked while the embedding
    rows still come from the file's blocks."""
    path = _tiny_gguf(tmp_path, fmt, tie)
    ids = [1, 5, 9, 200, 3]
    packed = tm.load(path)
    monkeypatch.setenv("TIERFLOW_REPACK", "0")
    blocks = tm.load(path)
    assert blocks.weights.packed == []
    if tierflow.packed_decode_available():
        assert sorted(packed.weights.packed) == sorted(packed.weights.layouts)
        for name in packed.weights.packed:
            info = packed.store.info(packed.weights.prefix + name)
            assert info["dtype"] == f"block:{fmt.lower()}x16" and info["tier"] != "disk"
    else:
        assert packed.weights.packed == []
    assert np.array_equal(bits(packed(ids)), bits(blocks(ids)))
    assert packed.generate(ids[:3], 6).tolist() == blocks.generate(ids[:3], 6).tolist()
    name = "model.layers.1.mlp.up_proj.weight"
    assert np.array_equal(packed.weights[name], blocks.weights[name])


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0"])
def test_one_token_steps_match_the_general_path(tmp_path, monkeypatch, fmt):
    """One-token decode steps over repacked weights (``LlamaForCausalLM._packed_layer``: the
    kernels called directly) give the general forward's logits bit for bit, step by step, with
    the plain and the paged KV cache."""
    from tierflow.models.kvcache import KVCache, StoreKVCache

    model = tm.load(_tiny_gguf(tmp_path, fmt, False))
    cfg = model.config
    shape = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 80)
    ids = [3, 17, 250, 9]
    for make in (lambda: KVCache(*shape), lambda: StoreKVCache(*shape, model.store, 16)):
        steps = {}
        for fast in (True, False):
            monkeypatch.setattr(type(model), "fast_decode", fast)
            cache = make()
            out = [model.forward(np.asarray(ids, np.int64), cache, last_only=True)]
            for tok in [5, 77, 1, 200, 31] * 4:  # past a 16-position page of the paged cache
                out.append(model.forward(np.asarray([tok], np.int64), cache, last_only=True))
            cache.close()
            steps[fast] = out
        assert len(steps[True]) == len(steps[False])
        for a, b in zip(steps[True], steps[False], strict=True):
            assert np.array_equal(bits(a), bits(b))
    monkeypatch.setattr(type(model), "fast_decode", True)
    assert model._packed_ready() == tierflow.packed_decode_available()


def _steps(model, make, fast, monkeypatch):
    """Logits of a prompt and 20 one-token steps (past 16-position pages) with ``fast_decode``."""
    monkeypatch.setattr(type(model), "fast_decode", fast)
    cache = make()
    try:
        out = [model.forward(np.asarray([3, 17, 250, 9], np.int64), cache, last_only=True)]
        for tok in [5, 77, 1, 200, 31] * 4:
            out.append(model.forward(np.asarray([tok], np.int64), cache, last_only=True))
    finally:
        cache.close()
    return out


def _native_vs_general(tmp_path, monkeypatch, arch, fmt, kv_tier=None, repack=True):
    from tierflow.models import llama
    from tierflow.models.kvcache import StoreKVCache

    ck = tmp_path / "ck"
    tm.write_tiny_checkpoint(ck, arch, seed=5)
    monkeypatch.setenv("TIERFLOW_REPACK", "1" if repack else "0")
    model = tm.load(ck, dtype=None if fmt == "f32" else fmt)
    w = model.weights
    assert bool(w.packed) == (repack and fmt in FMTS and tierflow.packed_decode_available())
    assert model.config.attention_bias == (arch == "Qwen2ForCausalLM")
    cfg = model.config
    shape = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 80)

    def make():
        return StoreKVCache(*shape, model.store, 16, tier=kv_tier)

    calls = []
    native = llama.LlamaForCausalLM._native_step
    monkeypatch.setattr(
        llama.LlamaForCausalLM,
        "_native_step",
        lambda self, *a: calls.append(1) or native(self, *a),
    )
    fast = _steps(model, make, True, monkeypatch)
    assert len(calls) == 20  # every one-token step, not the prompt
    slow = _steps(model, make, False, monkeypatch)
    assert len(calls) == 20
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(bits(a), bits(b))
    if kv_tier == "disk":
        c = make()
        model.forward(np.arange(1, 18, dtype=np.int64), c)
        assert c.names() and all(model.store.info(n)["tier"] == "disk" for n in c.names())
        c.close()
    # the greedy tokens of generate() agree too
    monkeypatch.setattr(type(model), "fast_decode", True)
    a = model.generate([4, 8], 24).tolist()
    monkeypatch.setattr(type(model), "fast_decode", False)
    assert model.generate([4, 8], 24).tolist() == a


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["f32", "bf16", "q8_0", "q4_0"])
def test_native_decode_step_matches_the_general_path(tmp_path, monkeypatch, isa, fmt):
    """With the KV cache paged in a store and weights read through the store, a one-token step
    is one native call (``_llama_decode_step``: all layers and the head); its logits are bit
    for bit the general forward's, step by step, past page boundaries, on every instruction
    set, with float rows, block formats and (where the CPU runs it) the decode layout."""
    monkeypatch.setenv("TIERFLOW_ISA", isa)
    assert tierflow.info()["isa_selected"] == isa
    _native_vs_general(tmp_path, monkeypatch, "LlamaForCausalLM", fmt)


@pytest.mark.parametrize(
    "arch, fmt, kv_tier, repack",
    [
        ("Qwen2ForCausalLM", "q8_0", None, True),  # q/k/v biases
        ("Qwen2ForCausalLM", "f32", None, True),
        ("LlamaForCausalLM", "q4_0", "disk", True),  # KV pages read from a file tier
        ("LlamaForCausalLM", "q8_0", None, False),  # blocks kept (TIERFLOW_REPACK=0)
    ],
)
def test_native_decode_step_variants(tmp_path, monkeypatch, arch, fmt, kv_tier, repack):
    """The native step against the general path with biases (Qwen2), KV pages in a file tier,
    and q8_0 blocks not repacked."""
    _native_vs_general(tmp_path, monkeypatch, arch, fmt, kv_tier, repack)


def test_native_decode_step_bad_input(tmp_path):
    """The native step checks every operand before it writes anything: a weight that is not in
    the decode layout, of the wrong shape or missing, a KV tail or page list of the wrong size,
    norm weights of the wrong length: typed errors, the residual stream and tails untouched."""
    from tierflow import TensorNotFoundError
    from tierflow import _tierflow as native
    from tierflow.models.kvcache import StoreKVCache

    ck = tmp_path / "ck"
    tm.write_tiny_checkpoint(ck, "LlamaForCausalLM", seed=5)
    model = tm.load(ck, dtype="q8_0")
    cfg, w = model.config, model.weights
    names, head = model._native_names()
    cache = StoreKVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 64, model.store, 16)
    slots = cache._native_slots()
    hid = cfg.hidden_size
    norm = np.ones(hid, np.float32)

    def call(layer_names=None, tail=None, pages=None, norms=norm, x=None, pos=0, head=head):
        layers = [
            (
                list(layer_names or ns),
                norms,
                norm,
                None,
                list(pages if pages is not None else pg),
                tl.reshape(-1) if tail is None else tail.copy(),
            )
            for ns, (pg, tl) in zip(names, slots, strict=True)
        ]
        xs = np.ones(hid, np.float32) if x is None else x
        logits = np.zeros(cfg.vocab_size, np.float32)
        native._llama_decode_step(
            w.store._s, cache.store._s, xs, layers, norm, head, logits,
            (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, 16, pos), 1e-6, 1e4,
        )  # fmt: skip
        return xs, logits

    x0, logits = call()  # the good call works
    assert np.isfinite(logits).all() and not np.array_equal(x0, np.ones(hid, np.float32))
    before = [tl.copy() for _, tl in slots]
    x = np.ones(hid, np.float32)
    bad_names = list(names[0])
    model.store.put("bad/int32", np.zeros((cfg.num_heads * cfg.head_dim, hid), np.int32))
    bad_names[3] = "bad/int32"
    with pytest.raises(DTypeError, match="decode layout"):
        call(layer_names=bad_names, x=x)
    bad_names[3] = w.prefix + "model.layers.0.input_layernorm.weight"  # 1-D
    with pytest.raises(ShapeError, match="not a matrix"):
        call(layer_names=bad_names, x=x)
    bad_names = list(names[0])
    bad_names[0] = names[0][1]  # k's weight for q: (hidden, kv) where (hidden, q) is needed
    with pytest.raises(ShapeError, match="the step needs"):
        call(layer_names=bad_names, x=x)
    with pytest.raises(TensorNotFoundError):
        call(layer_names=[*names[0][:6], "no/such/weight"], x=x)
    with pytest.raises(ShapeError, match="tail"):
        call(tail=np.zeros(7, np.float32), x=x)
    with pytest.raises(tierflow.InvalidArgumentError, match="already in use"):
        tl = slots[0][1].reshape(-1)
        layers = [
            (list(ns), norm, norm, None, list(pg), tl)
            for ns, (pg, _) in zip(names, slots, strict=True)
        ]
        native._llama_decode_step(
            w.store._s, cache.store._s, x, layers, norm, head, np.zeros(cfg.vocab_size, np.float32),
            (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, 16, 0), 1e-6, 1e4,
        )  # fmt: skip
    with pytest.raises(ShapeError, match="full KV pages"):
        call(pos=16, x=x)  # position 16 needs one full page, none given
    with pytest.raises(ShapeError, match="norm"):
        call(norms=np.ones(hid - 1, np.float32), x=x)
    with pytest.raises(ShapeError, match="7"):
        call(layer_names=names[0][:6], x=x)
    with pytest.raises(ShapeError):
        call(head=names[0][0], x=x)  # q's weight as the head: (hidden, q) is not (hidden, vocab)
    assert np.array_equal(x, np.ones(hid, np.float32))
    for (_, tl), b in zip(slots, before, strict=True):
        assert np.array_equal(tl, b)
    cache.close()


def test_native_decode_step_with_weights_larger_than_memory(tmp_path, monkeypatch):
    """``read="store"`` with a RAM tier holding about half the weights: the native step reads
    each weight through the store (promoting evicted ones from the disk tier, prefetching the
    next layer's), and greedy decoding gives the in-memory model's tokens."""
    from tierflow.models import llama

    ck = tmp_path / "ck"
    tm.write_tiny_checkpoint(ck, "LlamaForCausalLM", seed=5)
    ids = [4, 8, 15]
    ref = tm.load(ck, dtype="q8_0")
    want = ref.generate(ids, 20).tolist()
    size = sum(ref.weights.nbytes(n) for n in ref.weights.layouts)
    calls = []
    native = llama.LlamaForCausalLM._native_step
    monkeypatch.setattr(
        llama.LlamaForCausalLM, "_native_step", lambda self, *a: calls.append(1) or native(self, *a)
    )
    tiers = [tierflow.Tier("ram", size // 2), tierflow.Tier("disk", path="disk")]
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as s:
        m = tm.load(ck, store=s, dtype="q8_0", read="store")
        assert m.weights.read == "store" and m._native_names() is not None
        assert m.generate(ids, 20).tolist() == want
        assert len(calls) == 19
        tiers_now = {s.tier_of(m.weights.prefix + n) for n in m.weights.layouts}
        assert tiers_now == {"ram", "disk"}  # it did not fit: some weights were evicted
