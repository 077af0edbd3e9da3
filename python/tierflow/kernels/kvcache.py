"""A paged KV cache for decoding: keys and values of many sequences in fixed-size blocks, found
through per-sequence block tables (vLLM's PagedAttention layout).

The blocks live in one of two places:

- without a store, in two shared pool arrays ``(num_blocks, Hkv, block_size, D)`` (``k_pool``,
  ``v_pool``), blocks handed out from a free list;
- with ``store=`` a :class:`~tierflow.TieredStore`, each full block is a stored float32 tensor
  ``(2, Hkv, block_size, D)`` (keys ``[0]``, values ``[1]``) named
  ``<prefix>s<seq>/p<index>``. Stored blocks are tensors like any other: the store's policy may
  evict them to slower tiers, down to the file tier when the memory tiers fill. They are put
  with ``durable=False``: a block put into a memory tier is not written through to the store's
  home file tier (no file, no sync; a KV cache need not outlive the store), and is written to a
  file tier only when evicted there. Only each sequence's last, partly filled block stays in the
  cache's own buffer until it fills.

:meth:`PagedKVCache.attention` runs the paged decode kernel on the blocks where they are (no
concatenation): a block in a memory tier is read in place (zero copy), a block in a file tier is
read by the store once per call (counted in :meth:`TieredStore.stats` under ``counters``:
``misses``, ``bytes_read``, ``streamed``) and, with ``promote=True``, moved up into the store's default tier.

Example:
    >>> import numpy as np, tierflow
    >>> cache = tierflow.PagedKVCache(num_blocks=8, block_size=4, num_kv_heads=2, head_dim=8, batch=1)
    >>> k = np.ones((1, 2, 6, 8), np.float32)
    >>> cache.append(k, k)
    >>> cache.lengths, cache.blocks_in_use
    ([6], 2)
    >>> cache.attention(np.ones((1, 4, 1, 8), np.float32)).shape
    (1, 4, 1, 8)
    >>> store = tierflow.TieredStore(tiers=[tierflow.Tier("ram", "1MiB")])
    >>> paged = tierflow.PagedKVCache(None, 4, 2, 8, store=store, prefix="kv/")
    >>> paged.append(k, k)
    >>> paged.block_names(0), store.info("kv/s0/p0")["shape"]
    (['kv/s0/p0'], [2, 2, 4, 8])
    >>> bool(np.allclose(paged.attention(np.ones((1, 4, 1, 8), np.float32)), 1.0))
    True
    >>> paged.close()
    >>> len(store)
    0
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from .. import _tierflow
from ..errors import CapacityError, ClosedError, InvalidArgumentError, ShapeError
from .ops import _as_f32

__all__ = ["PagedKVCache"]

_ids = itertools.count(1)


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


class PagedKVCache:
    """Keys and values of ``batch`` sequences in blocks of ``block_size`` positions.

    Args:
        num_blocks: the most blocks the cache may use (all sequences together); ``None`` (only with
            a store): no limit but the store's.
        block_size, num_kv_heads, head_dim: the block shape.
        batch: the number of sequences.
        store: a :class:`~tierflow.TieredStore` to keep the blocks in (see the module docstring);
            None: two pool arrays.
        tier: the tier new blocks are put in (default: the store's default tier).
        prefix: the store names' prefix (default ``"kvcache#<n>/"``, unique per cache).
        promote: whether reading a block from a file tier moves it up into the store's default
            tier (default False: a block that was evicted is read in place each step, so a cache
            larger than the memory tiers does not churn them).

    A sequence takes a block whenever its last block fills, so memory grows with the tokens
    actually cached, in whole blocks, never by copying the cache.
    """

    def __init__(
        self,
        num_blocks: int | None = None,
        block_size: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        batch: int = 1,
        *,
        store: Any = None,
        tier: str | int | None = None,
        prefix: str | None = None,
        promote: bool = False,
        **old_names: Any,
    ) -> None:
        num_blocks, block_size = _old_keywords(num_blocks, block_size, old_names)
        for value, what in (
            (block_size, "block_size"),
            (num_kv_heads, "num_kv_heads"),
            (head_dim, "head_dim"),
        ):
            if value is None:
                raise TypeError(f"PagedKVCache() missing required argument: {what!r}")
        self.block_size = _positive(block_size, "block_size")
        self.num_kv_heads = _positive(num_kv_heads, "num_kv_heads")
        self.head_dim = _positive(head_dim, "head_dim")
        batch = _positive(batch, "batch")
        if num_blocks is None and store is None:
            raise InvalidArgumentError("num_blocks=None (no limit) needs a store")
        self.num_blocks = None if num_blocks is None else _positive(num_blocks, "num_blocks")
        self.lengths: list[int] = [0] * batch
        self.block_tables: list[list[int]] = [[] for _ in range(batch)]
        self.store = store
        self.tier = tier
        self.promote = bool(promote)
        self._closed = False
        block_shape = (2, self.num_kv_heads, self.block_size, self.head_dim)
        if store is None:
            if tier is not None or prefix is not None or promote:
                raise InvalidArgumentError("tier, prefix and promote need a store")
            assert self.num_blocks is not None
            shape = (self.num_blocks, *block_shape[1:])
            _check_bytes(2 * int(np.prod(shape, dtype=np.float64)) * 4)
            self.k_pool: np.ndarray | None = np.zeros(shape, np.float32)
            self.v_pool: np.ndarray | None = np.zeros(shape, np.float32)
            self._free = list(range(self.num_blocks - 1, -1, -1))
            self.prefix = ""
            self._blocks: list[list[str]] = [[] for _ in range(batch)]
            self._tail: list[np.ndarray] = []
            return
        if not hasattr(store, "_s") or not hasattr(store, "put"):
            raise InvalidArgumentError(
                f"store must be a tierflow.TieredStore, got {type(store).__name__}"
            )
        store._tier(tier)  # an unknown tier fails here, not at the first full block
        self.prefix = f"kvcache#{next(_ids)}/" if prefix is None else str(prefix)
        if any(n.startswith(self.prefix) for n in store.names()):
            raise InvalidArgumentError(
                f"the store already holds tensors named {self.prefix!r}...: pick another prefix"
            )
        _check_bytes(batch * int(np.prod(block_shape, dtype=np.float64)) * 4)
        self.k_pool = self.v_pool = None
        self._free = []
        self._blocks = [[] for _ in range(batch)]
        self._tail = [np.zeros(block_shape, np.float32) for _ in range(batch)]

    # -- description ---------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def blocks_in_use(self) -> int:
        """Blocks holding positions (for a store: the stored blocks plus partly filled ones)."""
        if self.store is None:
            return sum(len(t) for t in self.block_tables)
        return sum(len(p) for p in self._blocks) + sum(
            1 for n in self.lengths if n % self.block_size
        )

    @property
    def pages_in_use(self) -> int:
        """Deprecated name of :attr:`blocks_in_use` (kept for one release)."""
        _deprecated_name("pages_in_use", "blocks_in_use")
        return self.blocks_in_use

    def page_names(self, seq: int) -> list[str]:
        """Deprecated name of :meth:`block_names` (kept for one release)."""
        _deprecated_name("page_names", "block_names")
        return self.block_names(seq)

    @property
    def page_size(self) -> int:
        """Deprecated name of :attr:`block_size` (kept for one release)."""
        _deprecated_name("page_size", "block_size")
        return self.block_size

    @property
    def num_pages(self) -> int | None:
        """Deprecated name of :attr:`num_blocks` (kept for one release)."""
        _deprecated_name("num_pages", "num_blocks")
        return self.num_blocks

    @property
    def tables(self) -> list[list[int]]:
        """Deprecated name of :attr:`block_tables` (kept for one release)."""
        _deprecated_name("tables", "block_tables")
        return self.block_tables

    @property
    def closed(self) -> bool:
        return self._closed

    def block_names(self, seq: int) -> list[str]:
        """Store names of sequence ``seq``'s full blocks, in order (empty without a store)."""
        return list(self._blocks[self._seq(seq)])

    def names(self) -> list[str]:
        """Store names of every stored block, all sequences."""
        return [n for p in self._blocks for n in p]

    def _seq(self, seq: int) -> int:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)):
            raise InvalidArgumentError(f"seq must be an integer, got {seq!r}")
        if not 0 <= seq < self.batch:
            raise InvalidArgumentError(f"seq {seq} is outside the batch of {self.batch}")
        return int(seq)

    def _open(self) -> None:
        if self._closed:
            raise ClosedError("this PagedKVCache is closed")

    # -- writing ---------------------------------------------------------------------------------
    def append(self, k: Any, v: Any, seq: int | None = None) -> None:
        """Append ``T`` positions to every sequence: ``k``, ``v`` ``(batch, Hkv, T, D)``; or,
        with ``seq``, to sequence ``seq`` only: ``k``, ``v`` ``(1, Hkv, T, D)``.

        Raises:
            ShapeError: ``k`` and ``v`` of the wrong shapes.
            CapacityError: more blocks needed than ``num_blocks`` allows (nothing is appended).
            ClosedError: the cache is closed.
        A store error while putting a full block (a full store, a closed store) is raised with
        the positions before that block appended.
        """
        self._open()
        ka, va = _as_f32(k, "k"), _as_f32(v, "v")
        rows = range(self.batch) if seq is None else [self._seq(seq)]
        want = (len(rows), self.num_kv_heads)
        if (
            ka.shape != va.shape
            or ka.ndim != 4
            or ka.shape[:2] != want
            or ka.shape[3] != self.head_dim
        ):
            raise ShapeError(
                f"k {ka.shape} and v {va.shape} must both be {(*want, 'T', self.head_dim)}"
            )
        t, p = ka.shape[2], self.block_size
        if self.num_blocks is not None:
            need = sum(-(-(self.lengths[b] + t) // p) - -(-self.lengths[b] // p) for b in rows)
            free = self.num_blocks - self.blocks_in_use
            if need > free:
                raise CapacityError(f"the KV cache needs {need} more blocks, {free} are free")
        for r, b in enumerate(rows):
            pos, i = self.lengths[b], 0
            while i < t:
                off = pos % p
                n = min(p - off, t - i)
                if self.store is None:
                    assert self.k_pool is not None and self.v_pool is not None
                    if off == 0:
                        self.block_tables[b].append(self._free.pop())
                    block = self.block_tables[b][pos // p]
                    self.k_pool[block, :, off : off + n] = ka[r, :, i : i + n]
                    self.v_pool[block, :, off : off + n] = va[r, :, i : i + n]
                else:
                    tail = self._tail[b]
                    tail[0, :, off : off + n] = ka[r, :, i : i + n]
                    tail[1, :, off : off + n] = va[r, :, i : i + n]
                    if off + n == p:  # the block is full: into the store
                        name = f"{self.prefix}s{b}/p{(pos + n) // p - 1}"
                        self.store.put(name, tail, tier=self.tier, durable=False)
                        self._blocks[b].append(name)
                i += n
                pos += n
                self.lengths[b] = pos

    def _native_slot(self, seq: int = 0) -> tuple[list[str], np.ndarray]:
        """For a native step that appends one position to sequence ``seq`` itself (it writes
        slot ``lengths[seq] % block_size`` of the partial block, then attends over the full
        blocks and that one): the full blocks' store names and the partial block. Raises what
        :meth:`append` would (CapacityError when a new block is needed and none is free).
        :meth:`_native_wrote` then does the bookkeeping of :meth:`append`."""
        self._open()
        if self.store is None:
            raise InvalidArgumentError("a native step needs a cache in a store")
        seq = self._seq(seq)
        if (
            self.num_blocks is not None
            and self.lengths[seq] % self.block_size == 0
            and self.blocks_in_use >= self.num_blocks
        ):
            raise CapacityError(f"the KV cache needs 1 more block, 0 of {self.num_blocks} are free")
        return self._blocks[seq], self._tail[seq]

    def _native_wrote(self, seq: int = 0) -> None:
        """One position was written into sequence ``seq``'s partial block (see
        :meth:`_native_slot`): count it, and put the block into the store when it is full."""
        pos = self.lengths[seq] + 1
        if pos % self.block_size == 0:
            name = f"{self.prefix}s{seq}/p{pos // self.block_size - 1}"
            self.store.put(name, self._tail[seq], tier=self.tier, durable=False)
            self._blocks[seq].append(name)
        self.lengths[seq] = pos

    def free(self, seq: int) -> None:
        """Drop sequence ``seq``'s cache: its blocks go back to the pool or leave the store."""
        self._open()
        seq = self._seq(seq)
        self._free.extend(reversed(self.block_tables[seq]))
        self.block_tables[seq] = []
        for name in self._blocks[seq]:
            if name in self.store:
                self.store.delete(name)
        self._blocks[seq] = []
        self.lengths[seq] = 0

    def close(self) -> None:
        """Free every sequence (stored blocks are deleted) and release the pools. Idempotent;
        later calls other than ``close`` raise :class:`~tierflow.ClosedError`."""
        if self._closed:
            return
        if self.store is None or not self.store.closed:
            for b in range(self.batch):
                self.free(b)
        self.k_pool = self.v_pool = None
        self._tail = []
        self._closed = True

    def __enter__(self) -> PagedKVCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------
    def gather(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of sequence ``seq`` as two new contiguous ``(Hkv, len, D)`` arrays (a
        copy: for prefill attention over all positions; decoding uses :meth:`attention`)."""
        self._open()
        seq = self._seq(seq)
        n = self.lengths[seq]
        if self.store is None:
            assert self.k_pool is not None and self.v_pool is not None
            tab = self.block_tables[seq]
            ks = [self.k_pool[i] for i in tab]
            vs = [self.v_pool[i] for i in tab]
        else:
            got = [self.store.get(name, promote=self.promote) for name in self._blocks[seq]]
            ks = [g[0] for g in got] + [self._tail[seq][0]]
            vs = [g[1] for g in got] + [self._tail[seq][1]]
        empty = np.zeros((self.num_kv_heads, 0, self.head_dim), np.float32)
        k_all = np.concatenate([empty, *ks], axis=1)[:, :n]
        v_all = np.concatenate([empty, *vs], axis=1)[:, :n]
        return np.ascontiguousarray(k_all), np.ascontiguousarray(v_all)

    def attention(
        self, q: Any, scale: float | None = None, *, _isa: str | None = None
    ) -> np.ndarray:
        """Decode attention of one new query per sequence, ``q`` ``(batch, H, 1, D)``, against
        every cached position (``H`` a multiple of ``Hkv``): ``softmax(q K^T * scale) V`` with
        ``scale`` default ``1 / sqrt(D)``. A sequence with an empty cache gets NaN.

        Raises:
            ShapeError: ``q`` of the wrong shape, or heads that ``Hkv`` does not divide.
            TensorNotFoundError: a stored block was deleted from the store behind the cache.
            ClosedError: the cache (or its store) is closed.
        """
        self._open()
        qa = _as_f32(q, "q")
        b = self.batch
        if qa.ndim != 4 or qa.shape[0] != b or qa.shape[2] != 1 or qa.shape[3] != self.head_dim:
            raise ShapeError(f"q {qa.shape} must be {(b, 'H', 1, self.head_dim)}")
        h = qa.shape[1]
        if h < 1 or h % self.num_kv_heads:
            raise ShapeError(f"{self.num_kv_heads} kv heads do not divide {h} query heads")
        out = np.empty((b, h, 1, self.head_dim), np.float32)
        if scale is None:
            scale = 1.0 / float(np.sqrt(self.head_dim))
        if self.store is not None:
            blocks: list[Any] = []
            counts = []
            for i in range(b):
                blocks.extend(self._blocks[i])
                partial = self.lengths[i] % self.block_size != 0
                if partial:
                    blocks.append(self._tail[i].reshape(-1))
                counts.append(len(self._blocks[i]) + partial)
            _tierflow._paged_decode_pages(
                qa.reshape(-1),
                blocks,
                counts,
                (b, h, self.num_kv_heads, self.head_dim, self.block_size),
                list(self.lengths),
                float(scale),
                out.reshape(-1),
                self.store._s,
                self.promote,
                _isa,
            )
            return out
        assert self.k_pool is not None and self.v_pool is not None
        width = max([len(t) for t in self.block_tables] + [1])
        table = np.full((b, width), -1, np.int64)
        for i, tab in enumerate(self.block_tables):
            table[i, : len(tab)] = tab
        sizes = (
            b,
            h,
            self.num_kv_heads,
            self.head_dim,
            self.k_pool.shape[0],
            self.block_size,
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

    def __repr__(self) -> str:
        where = "pools" if self.store is None else f"store {self.prefix!r}"
        return (
            f"PagedKVCache(batch={self.batch}, block_size={self.block_size}, "
            f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, lengths={self.lengths}, "
            f"{where}{', closed' if self._closed else ''})"
        )


def _deprecated_name(old: str, new: str) -> None:
    warnings.warn(
        f"PagedKVCache.{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def _old_keywords(
    num_blocks: int | None, block_size: int | None, old_names: dict[str, Any]
) -> tuple[int | None, int | None]:
    """Accept the cache's former keyword names ``num_pages=`` and ``page_size=`` (deprecated)."""
    unknown = set(old_names) - {"num_pages", "page_size"}
    if unknown:
        raise TypeError(f"PagedKVCache() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    if "num_pages" in old_names:
        _deprecated_name("num_pages", "num_blocks")
        if num_blocks is not None:
            raise TypeError("PagedKVCache() got both num_blocks and num_pages")
        num_blocks = old_names["num_pages"]
    if "page_size" in old_names:
        _deprecated_name("page_size", "block_size")
        if block_size is not None:
            raise TypeError("PagedKVCache() got both block_size and page_size")
        block_size = old_names["page_size"]
    return num_blocks, block_size


def _check_bytes(n: int) -> None:
    if n > 1 << 46:
        raise CapacityError(f"a KV cache of {n} bytes is too large to allocate")
