"""What every causal language model shares: input checks, batching of prefill, generation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import DTypeError, InvalidArgumentError, ShapeError
from ._weights import Weights
from .config import ModelConfig
from .generate import generate
from .kvcache import KVCache, StoreKVCache

__all__ = ["CausalLM", "check_token_ids"]


def check_token_ids(ids: Any, vocab_size: int, max_positions: int, extra: int = 0) -> np.ndarray:
    """A 1-D int64 array of ids, or a typed error: non-integer dtype (DTypeError), not 1-D
    (ShapeError), an id outside ``[0, vocab_size)`` or more than ``max_positions`` positions in
    all (prompt + ``extra`` new tokens) (InvalidArgumentError)."""
    a = np.asarray(ids)
    if a.size == 0:
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise DTypeError(f"token ids must be integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ShapeError(f"expected a 1-D sequence of token ids, got shape {a.shape}")
    a = a.astype(np.int64, copy=False)
    if a.size:
        bad = np.flatnonzero((a < 0) | (a >= vocab_size))
        if bad.size:
            i = int(bad[0])
            raise InvalidArgumentError(
                f"token id {int(a[i])} at position {i} is outside the vocabulary [0, {vocab_size})"
            )
    if a.size + extra > max_positions:
        what = f"{a.size} prompt tokens" + (f" + {extra} new tokens" if extra else "")
        raise InvalidArgumentError(f"{what} exceed the model's {max_positions} positions")
    return a


class CausalLM(ABC):
    """A decoder-only language model: ``model(ids) -> logits``, ``model.generate(...)``."""

    def __init__(self, config: ModelConfig, weights: Weights, store: Any = None):
        self.config = config
        self.weights = weights
        self.store = store

    def check_ids(self, ids: Any, extra: int = 0) -> np.ndarray:
        return check_token_ids(ids, self.config.vocab_size, self.config.max_positions, extra)

    def __call__(self, ids: Any) -> np.ndarray:
        """Logits of a forward pass over whole sequences (prefill, no cache kept).

        Args:
            ids: 1-D token ids ``(S,)`` or a batch ``(B, S)``.
        Returns:
            float32 logits ``(S, vocab)`` or ``(B, S, vocab)``; ``(0, vocab)`` for no tokens and
            ``(0, S, vocab)`` for an empty batch.
        """
        a = np.asarray(ids)
        v = self.config.vocab_size
        if a.ndim == 2:
            rows = [self.__call__(r) for r in a]
            return np.stack(rows) if rows else np.zeros((0, a.shape[1], v), np.float32)
        a = self.check_ids(a)
        if a.size == 0:
            return np.zeros((0, v), np.float32)
        cfg = self.config
        cache = KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, a.size)
        return self.forward(a, cache)

    @abstractmethod
    def forward(
        self, ids: np.ndarray, cache: KVCache | StoreKVCache, last_only: bool = False
    ) -> np.ndarray:
        """Run ``ids`` (checked, 1-D) after the ``cache.length`` cached positions; appends their
        keys/values to ``cache``. Returns logits ``(S, vocab)`` (``(1, vocab)`` if last_only).
        Each architecture (Llama/Qwen2, GPT-2) implements it."""

    def generate(
        self,
        ids: Any,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: int | Iterable[int] | None = None,
        *,
        kv_block: int | None = None,
        kv_tier: str | None = None,
        paged_kv: bool | None = None,
    ) -> Any:
        """Decode with a KV cache; see :func:`tierflow.models.generate.generate`."""
        return generate(
            self,
            ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            kv_block=kv_block,
            kv_tier=kv_tier,
            paged_kv=paged_kv,
        )
