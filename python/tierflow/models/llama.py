"""Llama-family decoders: LlamaForCausalLM (Llama 2/3, Mistral) and Qwen2ForCausalLM.

Per layer, with ``x`` the residual stream ``(S, hidden)``::

    h = rms_norm(x) ; q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)   # biases: Qwen2
    q, k = rope(q), rope(k)                                                # half-split, theta
    x = x + attention(q, [cache; k], [cache; v], causal) Wo^T              # GQA: H_kv | H
    x = x + down(silu(gate(rms_norm(x))) * up(rms_norm(x)))               # SwiGLU

then ``logits = rms_norm(x) W_head^T`` (W_head = the token embedding when tied).
"""

from __future__ import annotations

import numpy as np

from . import _ops as ops
from ._base import CausalLM
from .kvcache import KVCache, StoreKVCache

__all__ = ["LlamaForCausalLM", "Qwen2ForCausalLM"]


class LlamaForCausalLM(CausalLM):
    """Llama 2/3 and Mistral (RMSNorm, RoPE, grouped-query attention, SwiGLU)."""

    def forward(
        self, ids: np.ndarray, cache: KVCache | StoreKVCache, last_only: bool = False
    ) -> np.ndarray:
        cfg, w = self.config, self.weights
        s, pos0 = ids.size, cache.length
        nh, nkv, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.norm_eps
        x = w.rows("model.embed_tokens.weight", ids)
        for i in range(cfg.num_layers):
            w.enter(i)
            p = f"model.layers.{i}."

            def heads(y, n):
                return y.reshape(s, n, d).transpose(1, 0, 2)[None]

            h = ops.rms_norm(x, w[p + "input_layernorm.weight"], eps)
            names = [p + f"self_attn.{n}_proj" for n in "qkv"]
            bs = [w[n + ".bias"] for n in names] if cfg.attention_bias else None
            # q, k and v in one call: one job over the three weights at decode shapes
            yq, yk, yv = ops.matmul_group(h, [w.mat(n + ".weight") for n in names], bs)
            q = ops.rope(heads(yq, nh), pos0, cfg.rope_theta)
            k = ops.rope(heads(yk, nkv), pos0, cfg.rope_theta)
            v = heads(yv, nkv)
            a = cache.attend(i, q, k, v)
            x = x + ops.matmul(
                a[0].transpose(1, 0, 2).reshape(s, nh * d), w.mat(p + "self_attn.o_proj.weight")
            )
            h = ops.rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            x = x + ops.swiglu(
                h,
                w.mat(p + "mlp.gate_proj.weight"),
                w.mat(p + "mlp.up_proj.weight"),
                w.mat(p + "mlp.down_proj.weight"),
            )
        w.enter(cfg.num_layers)
        cache.advance(s)
        if last_only:
            x = x[-1:]
        x = ops.rms_norm(x, w["model.norm.weight"], eps)
        head = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
        return ops.matmul(x, w.mat(head))


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: the Llama block with biases on the q, k and v projections."""
