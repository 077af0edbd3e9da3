"""GGUF files: tierflow's reader, ``TieredStore.load_gguf``, ``tierflow.models.load("x.gguf")``
and ``tierflow inspect``. Files are written by ``tierflow.models.write_gguf`` (the ``gguf`` package,
llama.cpp's own writer, with q / k rows permuted as llama.cpp's converter does) from the tiny
Llama checkpoint in tests/data; the reference is that checkpoint loaded from its safetensors folder."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file

import tierflow
import tierflow.models as tm
from tierflow import CorruptFileError, DTypeError, TierflowError
from tierflow.cli import main
from tierflow.models.gguf import qk_rows, read_gguf

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny-llama")
IDS = [1, 5, 9, 200, 3, 7, 511, 0]


def write_tiny_gguf(out: str, fmt: str = "F32", embd_fmt: str = "F32") -> None:
    """The tiny Llama as a GGUF file (:func:`tierflow.models.write_gguf`)."""
    tm.write_gguf(TINY, out, fmt, embd_fmt=embd_fmt)


@pytest.fixture(scope="module")
def ref_logits():
    return tm.load(TINY)(IDS)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    for fmt in ("F32", "Q8_0", "Q4_0", "F16", "BF16"):
        write_tiny_gguf(str(d / f"tiny-{fmt}.gguf"), fmt)
    return d


@pytest.mark.parametrize("fmt", ["F32", "Q8_0", "Q4_0"])
def test_logits_bit_identical_to_safetensors(gguf_dir, ref_logits, fmt):
    want = ref_logits if fmt == "F32" else tm.load(TINY, dtype=fmt.lower())(IDS)
    model = tm.load(gguf_dir / f"tiny-{fmt}.gguf")
    got = model(IDS)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    if fmt != "F32":  # adopted as the blocks they are: no requantisation
        w = model.weights.mat("model.layers.1.mlp.down_proj.weight")
        if tierflow.packed_decode_available():  # repacked on load for the VNNI kernel
            assert isinstance(w, tierflow.PackedTensor) and w.base_format == fmt.lower()
            assert "model.layers.1.mlp.down_proj.weight" in model.weights.packed
            w = w.unpack()
        else:
            assert model.weights.packed == []
        assert isinstance(w, tierflow.QuantizedTensor) and w.format == fmt.lower()
    # greedy decoding through the KV cache agrees too
    a = model.generate(IDS[:3], max_new_tokens=6)
    b = (tm.load(TINY) if fmt == "F32" else tm.load(TINY, dtype=fmt.lower())).generate(
        IDS[:3], max_new_tokens=6
    )
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("fmt,tol", [("F16", 2e-3), ("BF16", 2e-2)])
def test_half_formats_within_tolerance(gguf_dir, ref_logits, fmt, tol):
    got = tm.load(gguf_dir / f"tiny-{fmt}.gguf")(IDS)
    err = np.abs(got - ref_logits).max()
    assert 0 < err <= tol * np.abs(ref_logits).max()


@pytest.mark.parametrize("read", ["stream", "mmap", "store"])
def test_read_modes_and_tiers(gguf_dir, ref_logits, read, tmp_path):
    tiers = [tierflow.Tier("ram", "64MB"), tierflow.Tier("disk", path="disk")]
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as s:
        m = tm.load(gguf_dir / "tiny-F32.gguf", store=s, tier="disk", read=read, prefix="g/")
        assert np.array_equal(m(IDS), ref_logits)
        assert "g/model.layers.0.mlp.up_proj.weight" in s
    with tierflow.TieredStore(tmp_path / "s2", tiers=tiers) as s:
        m = tm.load(gguf_dir / "tiny-Q8_0.gguf", store=s, tier="ram", prefix="g/")
        assert s.tier_of("g/lm_head.weight") == "ram"
        assert np.array_equal(m(IDS), tm.load(TINY, dtype="q8_0")(IDS))


@pytest.mark.parametrize("fmt", ["F32", "Q8_0"])
def test_resident_when_larger_than_ram(gguf_dir, fmt, tmp_path):
    """A GGUF model larger than the RAM tier: ``read="auto"`` pins a fixed part of the matmul
    weights in RAM and streams only the rest, every step; logits equal the in-memory model's."""
    want = tm.load(gguf_dir / f"tiny-{fmt}.gguf", tier="ram")
    ram = (1 << 20) if fmt == "F32" else (320 << 10)  # about half the matmul weights
    tiers = [tierflow.Tier("ram", ram), tierflow.Tier("disk", path="disk")]
    with tierflow.TieredStore(tmp_path / "s", tiers=tiers) as s:
        m = tm.load(gguf_dir / f"tiny-{fmt}.gguf", store=s)
        w = m.weights
        assert w.read == "resident" and w.resident
        pinned = w.resident_bytes()
        per_step = sum(w.nbytes(n) for n in w.layouts)
        assert 0 < pinned <= ram and pinned < per_step
        assert all(
            s.info(w.prefix + n)["pinned"] and s.tier_of(w.prefix + n) == "ram" for n in w.resident
        )
        s.reset_stats()
        assert np.array_equal(m(IDS), want(IDS))
        streamed = s.stats()["counters"]["streamed"]["disk"]["bytes"]
        rows = streamed - (per_step - pinned)  # the rest: the token rows, read one at a time
        assert 0 <= rows <= len(IDS) * 128 * 4


def test_write_gguf_bad_input(tmp_path, monkeypatch):
    with pytest.raises(tierflow.InvalidArgumentError, match="Q5_K"):
        tm.write_gguf(TINY, tmp_path / "x.gguf", "Q5_K")
    gpt2 = os.path.join(os.path.dirname(__file__), "data", "tiny-gpt2")
    with pytest.raises(tierflow.InvalidArgumentError, match="Llama"):
        tm.write_gguf(gpt2, tmp_path / "x.gguf")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # not installed
    with pytest.raises(tierflow.MissingFileError, match="pip install gguf"):
        tm.write_gguf(TINY, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_quantized_token_table(tmp_path, ref_logits):
    """A Q8_0 token table (as llama.cpp writes one) gives its rows dequantised."""
    p = tmp_path / "e.gguf"
    write_tiny_gguf(str(p), "F32", embd_fmt="Q8_0")
    m = tm.load(p)
    emb = load_file(os.path.join(TINY, "model.safetensors"))["model.embed_tokens.weight"]
    want = tierflow.quantize(np.ascontiguousarray(emb.T), "q8_0").dequantize().T
    idx = np.array([3, 0, 511, 3])
    assert np.array_equal(m.weights.rows("model.embed_tokens.weight", idx), want[idx])
    assert np.abs(m(IDS) - ref_logits).max() < 0.05


def test_metadata_config_and_tokenizer(gguf_dir):
    m = tm.load(gguf_dir / "tiny-Q4_0.gguf")
    cfg = m.config
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (128, 2, 4, 2)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.head_dim, cfg.max_positions) == (
        512,
        352,
        32,
        256,
    )
    assert cfg.eos_token_ids == (2,) and not cfg.tie_word_embeddings
    tok = m.gguf.tokenizer
    assert (
        tok.model == "llama"
        and tok.tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
        and len(tok.tokens) == 512
    )
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2) and tok.scores[3] == -3.0
    g = read_gguf(gguf_dir / "tiny-Q4_0.gguf")
    assert g.version == 3 and g.alignment == 32 and g.metadata["general.architecture"] == "llama"
    assert g.metadata_types["tokenizer.ggml.tokens"] == "array[str]"
    t = g.tensors["blk.0.ffn_down.weight"]
    assert t.type == "Q4_0" and t.ne == (352, 128) and t.nbytes == 128 * 11 * 18
    assert t.offset % 32 == 0 and t.offset >= g.data_offset


def test_store_load_gguf_in_place(gguf_dir, tmp_path):
    sd = load_file(os.path.join(TINY, "model.safetensors"))
    with tierflow.TieredStore(tmp_path / "s") as s:
        names = s.load_gguf(gguf_dir / "tiny-Q8_0.gguf", prefix="m.")
        assert len(names) == 3 + 2 * 9 and "m.blk.1.ffn_up.weight" in names
        up = s.get("m.blk.1.ffn_up.weight")
        want = tierflow.quantize(
            np.ascontiguousarray(sd["model.layers.1.mlp.up_proj.weight"].T), "q8_0"
        )
        assert isinstance(up, tierflow.QuantizedTensor) and up.shape == (128, 352)
        assert np.array_equal(np.asarray(up.data), np.asarray(want.data))
        emb = s.get("m.token_embd.weight")
        assert emb.shape == (512, 128) and np.array_equal(emb, sd["model.embed_tokens.weight"])
        assert s.info("m.token_embd.weight")["adopted"]
        # q rows as llama.cpp stores them; qk_rows undoes the permutation
        q = s.get("m.blk.0.attn_k.weight")
        assert q.shape == (128, 64)
        q_hf = np.asarray(q.data).reshape(64, -1)[qk_rows(64, 2)]
        wq = tierflow.quantize(
            np.ascontiguousarray(sd["model.layers.0.self_attn.k_proj.weight"].T), "q8_0"
        )
        assert np.array_equal(q_hf.reshape(-1), np.asarray(wq.data))
        with pytest.raises(tierflow.TensorExistsError):
            s.load_gguf(gguf_dir / "tiny-Q8_0.gguf", prefix="m.")
        x = np.random.default_rng(0).standard_normal((3, 128), dtype=np.float32)
        assert np.array_equal(
            tierflow.matmul(x, s["m.blk.1.ffn_up.weight"]), tierflow.matmul(x, want)
        )


def test_inspect_cli(gguf_dir, capsys):
    assert main(["inspect", str(gguf_dir / "tiny-F16.gguf"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in d["tensors"]}
    assert rows["blk.0.attn_q.weight"]["dtype"] == "F16"
    assert rows["blk.0.attn_q.weight"]["shape"] == [128, 128]
    assert d["metadata"]["llama.block_count"] == 2
    assert d["metadata"]["tokenizer.ggml.tokens"][-1] == "... (512 items)"
    assert main(["inspect", str(gguf_dir / "tiny-F16.gguf")]) == 0
    out = capsys.readouterr().out
    assert "llama.embedding_length" in out and "blk.1.ffn_down.weight" in out


# -- bad input ---------------------------------------------------------------------------------


def _s(v: str | bytes) -> bytes:
    b = v.encode() if isinstance(v, str) else v
    return struct.pack("<Q", len(b)) + b


_ARCH = ((_s("general.architecture"), 8, _s("llama")),)


def craft(
    tensors=(("w", (32, 2), 0, 0),),
    kv=_ARCH,
    version=3,
    magic=b"GGUF",
    data=256,
    n_tensors=None,
    align=32,
) -> bytes:
    """A GGUF file byte by byte: tensors as (name, ne, ggml type, relative offset)."""
    out = magic + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kv)
    )
    for key, ty, val in kv:
        out += key + struct.pack("<I", ty) + val
    for name, ne, ty, off in tensors:
        out += _s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        out += struct.pack("<IQ", ty, off)
    out += b"\0" * (-len(out) % align)
    return out + bytes(data)


def _raises(tmp_path, data: bytes, cls, *words):
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    for f in (read_gguf, lambda p: tierflow.TieredStore(tmp_path / "st").load_gguf(p), tm.load):
        with pytest.raises(cls) as e:
            f(p)
        msg = str(e.value)
        for w in words:
            assert w in msg, (w, msg)


def test_crafted_file_is_valid(tmp_path):
    p = tmp_path / "ok.gguf"
    p.write_bytes(craft())
    g = read_gguf(p)
    assert g.tensors["w"].ne == (32, 2) and g.tensors["w"].nbytes == 256


def test_bad_magic_and_version(tmp_path):
    _raises(tmp_path, craft(magic=b"GGML"), CorruptFileError, "not a GGUF file")
    _raises(tmp_path, craft(version=1), CorruptFileError, "version 1")
    _raises(tmp_path, craft(version=4), CorruptFileError, "version 4")
    assert read_gguf_ok(tmp_path, craft(version=2))


def read_gguf_ok(tmp_path, data: bytes) -> bool:
    p = tmp_path / "ok.gguf"
    p.write_bytes(data)
    return read_gguf(p).version in (2, 3)


def test_truncated_at_many_cut_points(tmp_path, gguf_dir):
    full = (gguf_dir / "tiny-Q8_0.gguf").read_bytes()
    g = read_gguf(gguf_dir / "tiny-Q8_0.gguf")
    cuts = [0, 3, 4, 7, 8, 15, 23, 24, 40, 100, 1000, 5000, g.data_offset - 1, g.data_offset]
    cuts += [g.data_offset + 1, len(full) // 2, len(full) - 1]
    for cut in cuts:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(full[:cut])
        with pytest.raises(CorruptFileError) as e:
            read_gguf(p)
        assert any(w in str(e.value) for w in ("truncated", "beyond the end", "bytes left")), cut


def test_unsupported_tensor_type(tmp_path):
    data = craft(tensors=(("blk.0.x", (256, 2), 12, 0),), data=288)  # Q4_K
    p = tmp_path / "k.gguf"
    p.write_bytes(data)
    assert read_gguf(p).tensors["blk.0.x"].type == "Q4_K"  # listed, not used
    with tierflow.TieredStore(tmp_path / "s") as s:
        with pytest.raises(DTypeError, match=r'"blk.0.x".*Q4_K'):
            s.load_gguf(p)
        assert len(s) == 0
    _raises(tmp_path, craft(tensors=(("w", (32,), 99, 0),)), CorruptFileError, "type id 99")


def test_misaligned_overlapping_and_beyond_eof(tmp_path):
    _raises(tmp_path, craft(tensors=(("w", (32, 2), 0, 16),)), CorruptFileError, "alignment")
    two = (("a", (32, 2), 0, 0), ("b", (32, 2), 0, 128))
    _raises(tmp_path, craft(tensors=two, data=512), CorruptFileError, "overlaps")
    _raises(tmp_path, craft(data=255), CorruptFileError, "beyond the end")
    _raises(
        tmp_path, craft(tensors=(("w", (32, 2), 0, 1 << 63),)), CorruptFileError, "beyond the end"
    )
    _raises(
        tmp_path,
        craft(tensors=(("w", (1 << 40, 1 << 40), 0, 0),)),
        CorruptFileError,
        "absurdly large",
    )
    _raises(tmp_path, craft(tensors=(("w", (30, 2), 8, 0),)), CorruptFileError, "whole blocks")
    _raises(
        tmp_path, craft(tensors=(("w", (32, 2, 1, 1, 1), 0, 0),)), CorruptFileError, "dimensions"
    )
    _raises(
        tmp_path,
        craft(tensors=(("w", (32,), 0, 0), ("w", (32,), 0, 128))),
        CorruptFileError,
        "second tensor",
    )
    bad_align = ((_s("general.alignment"), 4, struct.pack("<I", 24)),)
    _raises(tmp_path, craft(kv=bad_align), CorruptFileError, "power of two")


def test_absurd_counts_and_lengths(tmp_path):
    _raises(tmp_path, craft(n_tensors=1 << 60), CorruptFileError, "tensor count")
    huge_key = struct.pack("<Q", 1 << 62) + b"x"
    _raises(tmp_path, craft(kv=((huge_key, 8, _s("a")),)), CorruptFileError, "truncated")
    huge_val = struct.pack("<Q", 1 << 62)
    _raises(tmp_path, craft(kv=((_s("k"), 8, huge_val),)), CorruptFileError, "truncated")
    arr = struct.pack("<IQ", 8, 1 << 61)  # an array of 2^61 strings
    _raises(tmp_path, craft(kv=((_s("k"), 9, arr),)), CorruptFileError, "element count")
    _raises(tmp_path, craft(kv=((_s("k"), 13, b""),)), CorruptFileError, "unknown value type 13")


def test_unsupported_architecture_and_missing_tensor(tmp_path):
    data = craft(kv=((_s("general.architecture"), 8, _s("gpt2")),))
    p = tmp_path / "g.gguf"
    p.write_bytes(data)
    with pytest.raises(tierflow.InvalidArgumentError, match="gpt2"):
        tm.load(p)


_FUZZ: dict[str, bytes] = {}


def _fuzz_source(tmp_path_factory) -> bytes:
    if "src" not in _FUZZ:
        p = tmp_path_factory.mktemp("fz") / "src.gguf"
        write_tiny_gguf(str(p), "Q8_0")
        _FUZZ["src"] = p.read_bytes()
        _FUZZ["head"] = struct.pack("<Q", read_gguf(p).data_offset)
    return _FUZZ["src"]


@given(
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=0, max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_flips_and_truncations(tmp_path_factory, flips, cut):
    """Random byte changes (mostly in the header) and truncations: a model, a typed tierflow
    error, never a crash or a foreign exception."""
    src = bytearray(_fuzz_source(tmp_path_factory))
    head = struct.unpack("<Q", _FUZZ["head"])[0]
    for pos, val in flips:
        src[int(pos * (head + 64)) % len(src)] = val
    if cut is not None:
        src = src[: int(cut * len(src))]
    d = tmp_path_factory.mktemp("f")
    p = d / "f.gguf"
    p.write_bytes(bytes(src))
    try:
        m = tm.load(p)
        m(IDS[:2])
    except TierflowError:
        pass
