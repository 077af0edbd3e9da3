"""BertModel (BERT, MiniLM): the encoder that sentence embedding models are built on.

``x_0 = layer_norm(word[ids] + position[0..S-1] + token_type[0])``; per layer (post-norm)::

    x = layer_norm(x + attention(x Wq^T + bq, x Wk^T + bk, x Wv^T + bv) Wo^T + bo)
    x = layer_norm(x + gelu_erf(x W1^T + b1) W2^T + b2)

Attention is bidirectional. A padded batch is run row by row on each row's real tokens only
(mask ones must be a prefix: right padding), which equals masking the padded keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeError
from . import _ops as ops
from ._base import check_token_ids
from ._weights import Weights
from .config import ModelConfig

__all__ = ["BertModel"]


class BertModel:
    """``model(ids, attention_mask=None) -> last hidden states`` (float32)."""

    def __init__(self, config: ModelConfig, weights: Weights, store: Any = None):
        self.config = config
        self.weights = weights
        self.store = store
        self._pre = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""

    def __call__(self, ids: Any, attention_mask: Any = None) -> np.ndarray:
        """Args:
            ids: ``(S,)`` or ``(B, S)`` token ids.
            attention_mask: same shape, 1 for real tokens then 0 for padding (right padding).
        Returns:
            ``(S, hidden)`` or ``(B, S, hidden)``; padded positions are zero.
        """
        a = np.asarray(ids)
        h = self.config.hidden_size
        if a.ndim == 2:
            m = np.ones(a.shape, np.int64) if attention_mask is None else np.asarray(attention_mask)
            if m.shape != a.shape:
                raise ShapeError(f"attention_mask shape {m.shape} differs from ids shape {a.shape}")
            out = np.zeros((a.shape[0], a.shape[1], h), np.float32)
            for r in range(a.shape[0]):
                out[r] = self(a[r], m[r])
            return out
        mask = None if attention_mask is None else np.asarray(attention_mask)
        n = a.shape[0] if a.ndim == 1 else 0
        if mask is not None:
            if mask.shape != a.shape:
                raise ShapeError(
                    f"attention_mask shape {mask.shape} differs from ids shape {a.shape}"
                )
            n = int(np.count_nonzero(mask))
            if not np.all(mask[:n]) or np.any(mask[n:]):
                raise InvalidArgumentError("attention_mask must be ones then zeros (right padding)")
        out = np.zeros((a.shape[0] if a.ndim == 1 else 0, h), np.float32)
        ids_ = check_token_ids(
            a[:n] if a.ndim == 1 else a, self.config.vocab_size, self.config.max_positions
        )
        if ids_.size:
            out[: ids_.size] = self._encode(ids_)
        return out

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        cfg, w, pre = self.config, self.weights, self._pre
        s, nh, d, eps = ids.size, cfg.num_heads, cfg.head_dim, cfg.norm_eps
        e = pre + "embeddings."

        def ln(t, n):
            return ops.layer_norm(t, w[n + ".weight"], w[n + ".bias"], eps)

        def lin(t, n):
            return ops.matmul(t, w.mat(n + ".weight"), w[n + ".bias"])

        x = (
            w.rows(e + "word_embeddings.weight", ids)
            + w.rows(e + "position_embeddings.weight", np.arange(s))
            + w.rows(e + "token_type_embeddings.weight", np.zeros(1, np.int64))
        )
        x = ln(x, e + "LayerNorm")
        for i in range(cfg.num_layers):
            p = f"{pre}encoder.layer.{i}."
            q, k, v = (
                lin(x, p + f"attention.self.{n}").reshape(s, nh, d).transpose(1, 0, 2)[None]
                for n in ("query", "key", "value")
            )
            a = ops.attention(q, k, v, causal=False)[0].transpose(1, 0, 2).reshape(s, nh * d)
            x = ln(x + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            m = ops.gelu_erf(lin(x, p + "intermediate.dense"))
            x = ln(x + lin(m, p + "output.dense"), p + "output.LayerNorm")
        return x
