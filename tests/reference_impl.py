"""Independent float64 NumPy forward passes, written from the published Hugging Face definitions.

These do NOT import ``tierflow.models``: they are the yardstick the tierflow models are measured
against (and they are themselves checked against the transformers outputs in tests/data).
Sources followed, line by line:

- Llama / Mistral / Qwen2 (``modeling_llama.py``, ``modeling_qwen2.py``): ``h = x + o(attn(rms(x)))``,
  ``x' = h + down(silu(gate(rms(h))) * up(rms(h)))``; RMSNorm ``w * x / sqrt(mean(x^2) + eps)``;
  RoPE in the half-split ("rotate_half") layout with ``inv_freq_i = theta^(-2i/d)``; grouped-query
  attention where query head ``h`` reads key/value head ``h // (H / H_kv)`` (``repeat_kv``);
  Qwen2 adds biases to q, k and v only. Linear weights are stored ``(out, in)``: ``y = x W^T + b``.
- GPT-2 (``modeling_gpt2.py``): learned positions, pre-LayerNorm blocks, Conv1D weights stored
  ``(in, out)`` (``y = x W + b``), fused ``c_attn`` split into q, k, v, ``gelu_new`` (tanh form),
  logits through the tied token embedding.
- BERT (``modeling_bert.py``): word + position + token-type embeddings, post-LayerNorm blocks,
  additive padding mask on the keys, exact (erf) GELU; sentence-transformers mean pooling.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

F = np.float64


def _w(weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(weights[name], dtype=F)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


_erf = np.vectorize(math.erf, otypes=[F])


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, key_mask=None) -> np.ndarray:
    """q (H, S, D), k/v (H_kv, S, D) -> (H, S, D); query head h reads kv head h // (H / H_kv)."""
    h, s, d = q.shape
    rep = h // k.shape[0]
    k = np.repeat(k, rep, axis=0)
    v = np.repeat(v, rep, axis=0)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    if causal:
        scores = scores + np.triu(np.full((s, s), -np.inf), 1)
    if key_mask is not None:
        scores = scores + np.where(key_mask[None, None, :] > 0, 0.0, -1e30)
    return softmax(scores) @ v


def _rope_theta(cfg: dict[str, Any]) -> float:
    rp = cfg.get("rope_parameters") or {}
    return float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def llama_forward(weights: dict[str, np.ndarray], cfg: dict[str, Any], ids) -> np.ndarray:
    """Logits (S, vocab) in float64 for one sequence of token ids (Llama, Mistral or Qwen2)."""
    ids = np.asarray(ids, dtype=np.int64)
    hidden = cfg["hidden_size"]
    n_h = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_h
    d = cfg.get("head_dim") or hidden // n_h
    eps = cfg["rms_norm_eps"]
    qwen = cfg.get("model_type") == "qwen2"
    bias = qwen or cfg.get("attention_bias", False)
    s = len(ids)
    x = _w(weights, "model.embed_tokens.weight")[ids]
    inv_freq = 1.0 / (_rope_theta(cfg) ** (np.arange(0, d, 2, dtype=F) / d))
    freqs = np.arange(s, dtype=F)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb), np.sin(emb)

    def rope(t: np.ndarray) -> np.ndarray:  # t (heads, S, d)
        t1, t2 = t[..., : d // 2], t[..., d // 2 :]
        return t * cos + np.concatenate([-t2, t1], -1) * sin

    def lin(t: np.ndarray, name: str, with_bias: bool = False) -> np.ndarray:
        y = t @ _w(weights, name + ".weight").T
        return y + _w(weights, name + ".bias") if with_bias else y

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, _w(weights, p + "input_layernorm.weight"), eps)
        q = lin(h, p + "self_attn.q_proj", bias).reshape(s, n_h, d).transpose(1, 0, 2)
        k = lin(h, p + "self_attn.k_proj", bias).reshape(s, n_kv, d).transpose(1, 0, 2)
        v = lin(h, p + "self_attn.v_proj", bias).reshape(s, n_kv, d).transpose(1, 0, 2)
        a = _attend(rope(q), rope(k), v, causal=True).transpose(1, 0, 2).reshape(s, n_h * d)
        x = x + lin(a, p + "self_attn.o_proj")
        h = rms_norm(x, _w(weights, p + "post_attention_layernorm.weight"), eps)
        m = silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj")
        x = x + lin(m, p + "mlp.down_proj")
    x = rms_norm(x, _w(weights, "model.norm.weight"), eps)
    head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    return x @ _w(weights, head).T


def gpt2_forward(weights: dict[str, np.ndarray], cfg: dict[str, Any], ids) -> np.ndarray:
    """Logits (S, vocab) in float64 for one sequence of token ids (GPT-2)."""
    ids = np.asarray(ids, dtype=np.int64)
    e = cfg["n_embd"]
    n_h = cfg["n_head"]
    d = e // n_h
    eps = cfg["layer_norm_epsilon"]
    s = len(ids)
    pre = "transformer." if "transformer.wte.weight" in weights else ""
    x = _w(weights, pre + "wte.weight")[ids] + _w(weights, pre + "wpe.weight")[np.arange(s)]

    def ln(t: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(t, _w(weights, name + ".weight"), _w(weights, name + ".bias"), eps)

    def conv1d(t: np.ndarray, name: str) -> np.ndarray:  # weight stored (in, out)
        return t @ _w(weights, name + ".weight") + _w(weights, name + ".bias")

    for i in range(cfg["n_layer"]):
        p = f"{pre}h.{i}."
        qkv = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn")
        q, k, v = (
            qkv[:, j * e : (j + 1) * e].reshape(s, n_h, d).transpose(1, 0, 2) for j in range(3)
        )
        a = _attend(q, k, v, causal=True).transpose(1, 0, 2).reshape(s, e)
        x = x + conv1d(a, p + "attn.c_proj")
        m = gelu_tanh(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc"))
        x = x + conv1d(m, p + "mlp.c_proj")
    x = ln(x, pre + "ln_f")
    head = "lm_head.weight" if "lm_head.weight" in weights else pre + "wte.weight"  # tied
    return x @ _w(weights, head).T


def round_acts_q8(x: np.ndarray) -> np.ndarray:
    """Activations rounded to Q8 blocks of 32 along the last axis, as ``tierflow.matmul`` does
    at decode shapes for q8_0 / q4_0 weights (and ggml's ``quantize_row_q8_0``): ``dx = max|x| /
    127`` and ``q = round_half_even(x * (127 / max|x|))`` in float32 (in float64 for a block with
    ``max|x| < 1e-30``), clipped to [-127, 127]; returns ``q * dx`` (float64)."""
    *lead, k = x.shape
    xb = x.reshape(*lead, k // 32, 32).astype(np.float32)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    dx = (amax / np.float32(127)).astype(np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        id32 = np.float32(127) / np.where(amax > 0, amax, np.float32(1))
        q32 = np.round(xb * id32)
        q64 = np.round(xb.astype(np.float64) * (127.0 / np.where(amax > 0, amax, 1.0)))
    q = np.clip(np.where(amax >= np.float32(1e-30), q32, q64), -127, 127)
    return (q * dx).reshape(x.shape)


def bert_forward(
    weights: dict[str, np.ndarray], cfg: dict[str, Any], ids, mask, act=None
) -> np.ndarray:
    """``act``: applied to the input of every linear layer (e.g. :func:`round_acts_q8`)."""
    """Last hidden states (S, hidden) in float64 for one padded sequence and its attention mask."""
    ids = np.asarray(ids, dtype=np.int64)
    mask = np.asarray(mask)
    hidden = cfg["hidden_size"]
    n_h = cfg["num_attention_heads"]
    d = hidden // n_h
    eps = cfg["layer_norm_eps"]
    s = len(ids)

    def ln(t: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(t, _w(weights, name + ".weight"), _w(weights, name + ".bias"), eps)

    def lin(t: np.ndarray, name: str) -> np.ndarray:
        t = t if act is None else act(t)
        return t @ _w(weights, name + ".weight").T + _w(weights, name + ".bias")

    x = (
        np.asarray(weights["embeddings.word_embeddings.weight"])[ids].astype(F)
        + _w(weights, "embeddings.position_embeddings.weight")[np.arange(s)]
        + _w(weights, "embeddings.token_type_embeddings.weight")[0]
    )
    x = ln(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (
            lin(x, p + f"attention.self.{n}").reshape(s, n_h, d).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        )
        a = _attend(q, k, v, causal=False, key_mask=mask).transpose(1, 0, 2).reshape(s, hidden)
        x = ln(x + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        m = gelu_erf(lin(x, p + "intermediate.dense"))
        x = ln(x + lin(m, p + "output.dense"), p + "output.LayerNorm")
    return x


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, dtype=F)[:, None]
    pooled = (hidden * m).sum(0) / max(m.sum(), 1e-9)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def greedy(forward, weights, cfg, prompt, n_new: int) -> list[int]:
    """Greedy decoding WITHOUT a cache (the whole sequence is recomputed at every step)."""
    seq = [int(t) for t in prompt]
    for _ in range(n_new):
        seq.append(int(np.argmax(forward(weights, cfg, seq)[-1])))
    return seq
