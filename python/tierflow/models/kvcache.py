"""Key/value caches for decoding.

:class:`KVCache` keeps every layer's keys and values in preallocated NumPy arrays
``(1, H_kv, capacity, D)``. :class:`PagedKVCache` pages them into a :class:`~tierflow.TieredStore`
in fixed blocks of ``block`` positions (one stored tensor ``(2, H_kv, block, D)`` = keys and values
per layer and block); only the block being filled stays outside the store, so full blocks can be
evicted to slower tiers by the store's policy like any tensor, and are read back when attention
needs them. Both expose ``update(layer, k, v) -> (K, V)`` over all cached positions, ``advance(n)``
once per step, ``length`` and ``close()``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["KVCache", "PagedKVCache"]

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

    def advance(self, n: int) -> None:
        self.length += n

    def close(self) -> None:
        """Nothing to release (kept for symmetry with PagedKVCache)."""

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)


class PagedKVCache:
    """A KV cache whose full blocks live in a TieredStore (see the module docstring).

    Args:
        layers, kv_heads, head_dim, capacity: as for :class:`KVCache`.
        store: the store holding the blocks (named ``kv#<n>/L<layer>/B<block>``).
        block: positions per block.
        tier: the tier new blocks are put in (default: the store's default tier).
    """

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        store: Any,
        block: int = 64,
        tier: str | None = None,
    ):
        if block < 1:
            raise InvalidArgumentError(f"block must be >= 1, got {block}")
        self.capacity = capacity
        self.length = 0
        self.block = int(block)
        self.store = store
        self.tier = tier
        self.prefix = f"kv#{next(_ids)}/"
        self.blocks: list[list[str]] = [[] for _ in range(layers)]
        shape = (kv_heads, self.block, head_dim)
        self._k = [np.zeros(shape, np.float32) for _ in range(layers)]
        self._v = [np.zeros(shape, np.float32) for _ in range(layers)]

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s_new = k.shape[2]
        end = self.length + s_new
        if end > self.capacity:
            raise InvalidArgumentError(f"KV cache full: {end} positions > capacity {self.capacity}")
        pk, pv, b = self._k[layer], self._v[layer], self.block
        pos, i = self.length, 0
        while i < s_new:
            off = pos % b
            n = min(b - off, s_new - i)
            pk[:, off : off + n] = k[0, :, i : i + n]
            pv[:, off : off + n] = v[0, :, i : i + n]
            i += n
            pos += n
            if off + n == b:  # block full: into the store
                name = f"{self.prefix}L{layer}/B{pos // b - 1}"
                self.store.put(name, np.stack([pk, pv]), tier=self.tier)
                self.blocks[layer].append(name)
        ks, vs = [], []
        for name in self.blocks[layer]:
            kv = self.store.get(name)
            ks.append(kv[0])
            vs.append(kv[1])
        rem = end % b
        ks.append(pk[:, :rem])
        vs.append(pv[:, :rem])
        return np.concatenate(ks, axis=1)[None], np.concatenate(vs, axis=1)[None]

    def advance(self, n: int) -> None:
        self.length += n

    def names(self) -> list[str]:
        """Store names of the full blocks, all layers."""
        return [n for layer in self.blocks for n in layer]

    def close(self) -> None:
        """Delete this cache's blocks from the store."""
        for n in self.names():
            if n in self.store:
                self.store.delete(n)
        self.blocks = [[] for _ in self.blocks]
