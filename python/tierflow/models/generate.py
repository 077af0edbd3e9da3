"""Autoregressive decoding: a key/value cache, token sampling and the generation loop.

Decoding one prompt: a prefill pass over the prompt fills the cache and gives the logits of the
last position; then each step feeds one token, appends its keys/values, and picks the next token:
greedy (``temperature == 0``: argmax, ties to the lowest id) or sampled from
``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits and to the smallest
set of tokens whose probability reaches ``top_p`` (the token crossing the threshold is kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidArgumentError
from .config import ModelConfig
from .kvcache import KVCache, StoreKVCache

__all__ = ["DEFAULT_KV_BLOCK", "generate", "sample_next"]


class Decoder(Protocol):
    """What :func:`generate` needs of a model (:class:`~tierflow.models.CausalLM` has it)."""

    config: ModelConfig
    store: Any

    def check_ids(self, ids: Any, extra: int = 0) -> np.ndarray: ...

    def forward(
        self, ids: np.ndarray, cache: KVCache | StoreKVCache, last_only: bool = False
    ) -> np.ndarray: ...


#: Positions per page of the paged KV cache when ``kv_block`` is not given. A store with a file
#: tier writes every put through to its file (and rewrites its manifest), so a page costs a file
#: write when it fills and a delete when the cache closes: 64 positions keep that well under the
#: per-token compute of a model (in one run on tests/data/tiny-llama, 120 tokens: pages of 16
#: cost ~15% more per token than the plain cache, pages of 64 nothing measurable).
DEFAULT_KV_BLOCK = 64


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (temperature >= 0.0) or not np.isfinite(temperature):
        raise InvalidArgumentError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise InvalidArgumentError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise InvalidArgumentError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: np.ndarray,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """Pick the next token id from one row of logits (see the module docstring)."""
    _check_sampling(temperature, top_k, top_p)
    z = np.asarray(logits)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    if np.isnan(z).any():
        raise InvalidArgumentError(
            "logits contain NaN (NaN or Inf in the weights or activations): no token to pick"
        )
    if temperature == 0.0:
        return int(np.argmax(z))  # the same index in float32 as widened (exact, monotonic)
    z = z.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k is not None:
        order = order[: int(top_k)]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(order[rng.choice(len(order), p=p)])


def _stop_set(stop: int | Iterable[int] | None) -> frozenset[int]:
    if stop is None:
        return frozenset()
    if isinstance(stop, (int, np.integer)):
        return frozenset({int(stop)})
    return frozenset(int(s) for s in stop)


def generate(
    model: Decoder,
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
    """Decode from one prompt (1-D ids -> 1-D int64 array, prompt + new tokens) or a list of
    prompts (-> list of arrays; an empty list gives ``[]``). Stops after ``max_new_tokens`` or
    right after emitting a token in ``stop``.

    The KV cache: with ``paged_kv`` (the default when the model has a store, which
    :func:`tierflow.models.load` always gives it) it is paged into the model's store in pages of
    ``kv_block`` positions (default 64) put in ``kv_tier`` (default: the store's default tier),
    which the store may evict to slower tiers; decode steps run the paged decode kernel on the
    pages where they are (see :class:`StoreKVCache`). ``paged_kv=False``: plain arrays in memory
    (:class:`KVCache`)."""
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise InvalidArgumentError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens}")
    _check_sampling(temperature, top_k, top_p)
    stops = _stop_set(stop)
    rng = np.random.default_rng(seed)
    if kv_block is not None and (
        isinstance(kv_block, bool) or not isinstance(kv_block, (int, np.integer)) or kv_block < 1
    ):
        raise InvalidArgumentError(f"kv_block must be a positive integer, got {kv_block}")
    if paged_kv is None:
        paged_kv = model.store is not None
    if not paged_kv and (kv_block is not None or kv_tier is not None):
        raise InvalidArgumentError("kv_block and kv_tier apply to the paged KV cache only")
    if paged_kv and model.store is None:
        raise InvalidArgumentError("paged_kv=True needs a model with a store")
    if paged_kv and kv_tier is not None:
        model.store._tier(kv_tier)  # an unknown tier fails before any work
    kv = (int(kv_block or DEFAULT_KV_BLOCK), kv_tier) if paged_kv else None
    if isinstance(ids, np.ndarray) and ids.ndim == 2:
        return [
            _one(model, r, int(max_new_tokens), temperature, top_k, top_p, rng, stops, kv)
            for r in ids
        ]
    if isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        if len(ids) == 0:
            return []
        if not isinstance(ids[0], (int, np.integer)):
            return [
                _one(model, r, int(max_new_tokens), temperature, top_k, top_p, rng, stops, kv)
                for r in ids
            ]
    return _one(model, ids, int(max_new_tokens), temperature, top_k, top_p, rng, stops, kv)


def _one(model, prompt, n_new, temperature, top_k, top_p, rng, stops, kv) -> np.ndarray:
    ids = model.check_ids(prompt, extra=n_new)
    if ids.size == 0:
        raise InvalidArgumentError("cannot generate from an empty prompt (no tokens)")
    cfg = model.config
    out = list(ids.tolist())
    if n_new == 0:
        return np.asarray(out, np.int64)
    shape = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, ids.size + n_new)
    cache: Any = KVCache(*shape) if kv is None else StoreKVCache(*shape, model.store, *kv)
    try:
        logits = model.forward(ids, cache, last_only=True)
        for step in range(n_new):
            tok = sample_next(logits[-1], temperature, top_k, top_p, rng)
            out.append(tok)
            if tok in stops or step == n_new - 1:
                break
            logits = model.forward(np.asarray([tok], np.int64), cache, last_only=True)
    finally:
        cache.close()
    return np.asarray(out, np.int64)
