"""A paged KV cache for decoding: keys and values of many sequences in fixed-size pages of one
shared pool, found through per-sequence block tables (vLLM's PagedAttention layout).

Example:
    >>> import numpy as np, tierflow
    >>> cache = tierflow.PagedKVCache(num_pages=8, page_size=4, num_kv_heads=2, head_dim=8, batch=1)
    >>> k = np.ones((1, 2, 6, 8), np.float32)
    >>> cache.append(k, k)
    >>> cache.lengths, cache.pages_in_use
    ([6], 2)
    >>> cache.attention(np.ones((1, 4, 1, 8), np.float32)).shape
    (1, 4, 1, 8)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _tierflow
from .errors import CapacityError, InvalidArgumentError, ShapeError
from .kernels import _as_f32

__all__ = ["PagedKVCache"]


class PagedKVCache:
    """Keys and values of ``batch`` sequences in pages of ``page_size`` positions.

    The pools are ``(num_pages, num_kv_heads, page_size, head_dim)`` float32 arrays (``k_pool``,
    ``v_pool``); a sequence takes a page from the free list whenever its last page fills, so
    memory grows with the tokens actually cached, in whole pages, never by copying. The pools are
    ordinary arrays, so they can be put in a ``TieredStore``.
    """

    def __init__(
        self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, batch: int = 1
    ) -> None:
        if min(num_pages, page_size, num_kv_heads, head_dim, batch) < 1:
            raise InvalidArgumentError("PagedKVCache sizes must all be at least 1")
        shape = (num_pages, num_kv_heads, page_size, head_dim)
        self.k_pool = np.zeros(shape, np.float32)
        self.v_pool = np.zeros(shape, np.float32)
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.tables: list[list[int]] = [[] for _ in range(batch)]
        self.lengths: list[int] = [0] * batch
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def pages_in_use(self) -> int:
        return sum(len(t) for t in self.tables)

    def append(self, k: Any, v: Any) -> None:
        """Append ``T`` positions to every sequence: ``k``, ``v`` ``(batch, Hkv, T, D)``.

        Raises:
            CapacityError: the pool has no free page left (nothing is appended then).
        """
        ka, va = _as_f32(k, "k"), _as_f32(v, "v")
        want = (len(self.tables), self.num_kv_heads)
        if (
            ka.shape != va.shape
            or ka.ndim != 4
            or ka.shape[:2] != want
            or ka.shape[3] != self.head_dim
        ):
            raise ShapeError(
                f"k {ka.shape} and v {va.shape} must both be {(*want, 'T', self.head_dim)}"
            )
        t = ka.shape[2]
        need = sum(
            -(-(n + t) // self.page_size) - len(tab)
            for n, tab in zip(self.lengths, self.tables, strict=True)
        )
        if need > len(self._free):
            raise CapacityError(f"the KV cache needs {need} more pages, {len(self._free)} are free")
        for b, tab in enumerate(self.tables):
            for i in range(t):
                pos = self.lengths[b] + i
                slot = pos % self.page_size
                if slot == 0:
                    tab.append(self._free.pop())
                page = tab[pos // self.page_size]
                self.k_pool[page, :, slot] = ka[b, :, i]
                self.v_pool[page, :, slot] = va[b, :, i]
            self.lengths[b] += t

    def free(self, seq: int) -> None:
        """Drop sequence ``seq``'s cache and return its pages to the pool."""
        self._free.extend(reversed(self.tables[seq]))
        self.tables[seq] = []
        self.lengths[seq] = 0

    def attention(
        self, q: Any, scale: float | None = None, *, _isa: str | None = None
    ) -> np.ndarray:
        """Decode attention of one new query per sequence, ``q`` ``(batch, H, 1, D)``, against
        every cached position (``H`` a multiple of ``Hkv``). A sequence with an empty cache gets
        NaN."""
        qa = _as_f32(q, "q")
        b = len(self.tables)
        if qa.ndim != 4 or qa.shape[0] != b or qa.shape[2] != 1 or qa.shape[3] != self.head_dim:
            raise ShapeError(f"q {qa.shape} must be {(b, 'H', 1, self.head_dim)}")
        h = qa.shape[1]
        if h % self.num_kv_heads:
            raise ShapeError(f"{self.num_kv_heads} kv heads do not divide {h} query heads")
        width = max([len(t) for t in self.tables] + [1])
        table = np.full((b, width), -1, np.int64)
        for i, tab in enumerate(self.tables):
            table[i, : len(tab)] = tab
        out = np.empty((b, h, 1, self.head_dim), np.float32)
        if scale is None:
            scale = 1.0 / float(np.sqrt(self.head_dim))
        sizes = (
            b,
            h,
            self.num_kv_heads,
            self.head_dim,
            self.k_pool.shape[0],
            self.page_size,
            width,
        )
        _tierflow._paged_decode(
            qa.reshape(-1),
            self.k_pool.reshape(-1),
            self.v_pool.reshape(-1),
            sizes,
            table.reshape(-1),
            list(self.lengths),
            float(scale),
            out.reshape(-1),
            _isa,
        )
        return out
