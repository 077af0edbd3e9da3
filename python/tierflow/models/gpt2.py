"""GPT2LMHeadModel: learned positions, pre-LayerNorm blocks, Conv1D ``(in, out)`` weights.

Per layer, with ``x`` the residual stream ``(S, n_embd)``::

    q | k | v = layer_norm_1(x) W_attn + b_attn            # one fused Conv1D, split in three
    x = x + attention(q, [cache; k], [cache; v], causal) W_proj + b_proj
    x = x + gelu_tanh(layer_norm_2(x) W_fc + b_fc) W_proj2 + b_proj2

``x_0 = wte[ids] + wpe[positions]``; ``logits = layer_norm_f(x) wte^T`` (tied head).
"""

from __future__ import annotations

import numpy as np

from . import _ops as ops
from ._base import CausalLM
from .kvcache import KVCache, StoreKVCache

__all__ = ["GPT2LMHeadModel"]


class GPT2LMHeadModel(CausalLM):
    """GPT-2 (and DistilGPT-2 style checkpoints)."""

    @property
    def _prefix(self) -> str:
        return "transformer." if "transformer.wte.weight" in self.weights else ""

    def forward(
        self, ids: np.ndarray, cache: KVCache | StoreKVCache, last_only: bool = False
    ) -> np.ndarray:
        cfg, w, pre = self.config, self.weights, self._prefix
        s, pos0 = ids.size, cache.length
        e, nh, d, eps = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.norm_eps
        x = w.rows(pre + "wte.weight", ids) + w.rows(pre + "wpe.weight", np.arange(pos0, pos0 + s))

        def ln(t, n):
            return ops.layer_norm(t, w[n + ".weight"], w[n + ".bias"], eps)

        def conv(t, n):
            return ops.matmul(t, w.mat(n + ".weight"), w[n + ".bias"])

        def heads(t):
            return t.reshape(s, nh, d).transpose(1, 0, 2)[None]

        for i in range(cfg.num_layers):
            w.enter(i)
            p = f"{pre}h.{i}."
            qkv = conv(ln(x, p + "ln_1"), p + "attn.c_attn")
            q, k, v = (heads(qkv[:, j * e : (j + 1) * e]) for j in range(3))
            a = cache.attend(i, q, k, v)
            x = x + conv(a[0].transpose(1, 0, 2).reshape(s, e), p + "attn.c_proj")
            m = ops.gelu_tanh(conv(ln(x, p + "ln_2"), p + "mlp.c_fc"))
            x = x + conv(m, p + "mlp.c_proj")
        w.enter(cfg.num_layers)
        cache.advance(s)
        if last_only:
            x = x[-1:]
        return ops.matmul(ln(x, pre + "ln_f"), w.mat(pre + "wte.weight"))
