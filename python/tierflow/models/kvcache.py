"""Key/value caches for decoding, one interface for the models' ``forward``.

:class:`KVCache` keeps every layer's keys and values in preallocated NumPy arrays
``(1, H_kv, capacity, D)``. :class:`StoreKVCache` keeps them in a :class:`~tierflow.TieredStore`:
one :class:`tierflow.PagedKVCache` per layer, whose full blocks (``(2, H_kv, block_size, D)``
float32, named ``kv#<n>/L<layer>/s0/p<block>``) are stored tensors that the store's policy may
evict to slower tiers; a decode step (one query row) runs the paged decode kernel on the blocks
where they are, a prefill over several rows gathers the blocks and runs the ordinary attention
kernel.

Both expose ``attend(layer, q, k, v)`` (append the new keys/values, return the causal attention of
``q`` over every cached position), ``update(layer, k, v) -> (K, V)`` over all cached positions,
``advance(n)`` once per step, ``length`` and ``close()``.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from .._deprecated import renamed
from ..errors import InvalidArgumentError
from ..kernels.kvcache import PagedKVCache
from . import _ops as ops

__all__ = ["KVCache", "StoreKVCache"]

_ids = itertools.count(1)


class KVCache:
    """Keys and values of every layer for one sequence: ``(1, H_kv, capacity, D)`` float32 each.

    ``update(layer, k, v)`` appends ``(1, H_kv, S_new, D)`` and returns views of all cached
    positions. The length advances once per step with ``advance(S_new)``.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.k = [np.zeros((1, kv_heads, capacity, head_dim), np.float32) for _ in range(layers)]
        self.v = [np.zeros((1, kv_heads, capacity, head_dim), np.float32) for _ in range(layers)]

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s0, s1 = self.length, self.length + k.shape[2]
        if s1 > self.capacity:
            raise InvalidArgumentError(f"KV cache full: {s1} positions > capacity {self.capacity}")
        self.k[layer][:, :, s0:s1] = k
        self.v[layer][:, :, s0:s1] = v
        return self.k[layer][:, :, :s1], self.v[layer][:, :, :s1]

    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Append ``k``, ``v`` and return ``attention(q, K, V, causal=True)`` over the cache."""
        k_all, v_all = self.update(layer, k, v)
        return ops.attention(q, k_all, v_all, causal=True)

    def advance(self, n: int) -> None:
        self.length += n

    def close(self) -> None:
        """Nothing to release (kept for symmetry with StoreKVCache)."""

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)


class StoreKVCache:
    """A model's KV cache in a TieredStore: one :class:`tierflow.PagedKVCache` per layer (see the
    module docstring).

    Args:
        layers, kv_heads, head_dim, capacity: as for :class:`KVCache`.
        store: the store holding the blocks.
        block_size: positions per block (``block=``: its former name, deprecated).
        tier: the tier new blocks are put in (default: the store's default tier).
        promote: move blocks read from a file tier back up (see :class:`tierflow.PagedKVCache`).
    """

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        store: Any,
        block_size: int = 64,
        tier: str | None = None,
        promote: bool = False,
        *,
        block: int | None = None,
    ):
        if block is not None:
            warnings.warn(
                "StoreKVCache(block=) is deprecated and will be removed in the next release; "
                "use block_size=",
                DeprecationWarning,
                stacklevel=2,
            )
            block_size = block
        if isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1:
            raise InvalidArgumentError(f"block must be an integer >= 1, got {block_size}")
        if store is None:
            raise InvalidArgumentError("a StoreKVCache needs a store (use KVCache without one)")
        self.capacity = int(capacity)
        self.length = 0
        self.block_size = int(block_size)
        self.store = store
        self.tier = tier
        self.promote = bool(promote)
        self.prefix = f"kv#{next(_ids)}/"
        blocks = max(1, -(-self.capacity // self.block_size))
        self.layers: list[PagedKVCache] = []
        try:
            for i in range(layers):
                self.layers.append(
                    PagedKVCache(
                        blocks,
                        self.block_size,
                        kv_heads,
                        head_dim,
                        1,
                        store=store,
                        tier=tier,
                        prefix=f"{self.prefix}L{i}/",
                        promote=promote,
                    )
                )
        except BaseException:
            self.close()
            raise

    def _room(self, n: int) -> None:
        end = self.length + n
        if end > self.capacity:
            raise InvalidArgumentError(f"KV cache full: {end} positions > capacity {self.capacity}")

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append ``k``, ``v`` ``(1, H_kv, S_new, D)``; return copies of all cached positions."""
        self._room(k.shape[2])
        c = self.layers[layer]
        c.append(k, v)
        k_all, v_all = c.gather(0)
        return k_all[None], v_all[None]

    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Append ``k``, ``v`` and return the causal attention of ``q`` ``(1, H, S_new, D)``
        over every cached position: one query row by the paged decode kernel on the blocks in
        the store, several rows by gathering the blocks for the attention kernel."""
        if q.shape[2] != 1:
            k_all, v_all = self.update(layer, k, v)
            return ops.attention(q, k_all, v_all, causal=True)
        self._room(k.shape[2])
        c = self.layers[layer]
        c.append(k, v)
        return c.attention(q)

    def _native_ready(self) -> bool:
        """Every layer holds :attr:`length` positions (what a native step assumes)."""
        return all(c.lengths[0] == self.length for c in self.layers)

    def _native_slots(self) -> list[tuple[list[str], np.ndarray]]:
        """For a native one-token step (``tierflow.models.llama``): per layer, the names of the
        full blocks and the partial block whose next slot the step writes (see
        :meth:`tierflow.PagedKVCache._native_slot`). :meth:`_native_wrote` follows the step."""
        self._room(1)
        return [c._native_slot(0) for c in self.layers]

    def _native_wrote(self) -> None:
        """The native step wrote one position into every layer's partial block."""
        for c in self.layers:
            c._native_wrote(0)

    @property
    def block(self) -> int:
        """Deprecated name of :attr:`block_size` (kept for one release)."""
        warnings.warn(
            "StoreKVCache.block is deprecated and will be removed in the next release; "
            "use block_size",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.block_size

    def advance(self, n: int) -> None:
        self.length += n

    def names(self) -> list[str]:
        """Store names of the full blocks, all layers."""
        return [n for c in self.layers for n in c.names()]

    def close(self) -> None:
        """Delete this cache's blocks from the store. Idempotent."""
        for c in self.layers:
            c.close()


__getattr__ = renamed(
    __name__, {"PagedKVCache": ("tierflow.models.kvcache.StoreKVCache", lambda: StoreKVCache)}
)  # the old name of StoreKVCache, kept for one release
