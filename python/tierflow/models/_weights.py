"""A checkpoint's weights, checked against its config, registered in a TieredStore.

``Weights.open(folder, config, store, tier)`` reads every safetensors header, checks that each
tensor the config implies is present with that shape (TensorNotFoundError / ShapeError naming the
tensor otherwise), then adopts the files into the store in place (``load_safetensors``: no copy,
only headers are read) under a per-model prefix, and moves them into ``tier`` when that is a
memory tier; ``dtype`` converts the matmul weights (``tierflow.quantize``) and stores the result
in the same tier. The forward pass asks for each weight when it needs it (``Weights.mat``):

- a weight in a memory tier comes from ``store.get`` (zero copy);
- a weight in a file tier is read in one of these ways (``read=``):

  - ``"resident"``: a fixed part of the matmul weights, as much as fits the store's default
    memory tier, is moved there once and pinned; the rest is streamed from the file tier by the
    kernels (as ``"stream"``) at every step. A decode step reads the layers in the same order
    every time (a cyclic scan); for such a scan an LRU cache (the OS page cache, or the store's
    ``"store"`` mode) evicts each weight just before it is needed again and re-reads the whole
    model per step, whereas the optimal (Belady) policy keeps a fixed set resident and reads only
    the rest: ``model - budget`` bytes per step instead of ``model``. The reads of the next
    streamed weights are started ahead (``posix_fadvise(WILLNEED)``, a window of
    :data:`PREFETCH_WINDOW` bytes at most), so the disk keeps reading while the pinned weights
    are multiplied. When the memory is short (the model does not fit its memory cgroup's
    limit, or without one the streamed bytes exceed ``MemAvailable``), the file pages of both
    parts are dropped from the OS page cache (``posix_fadvise(DONTNEED)``) once read (the
    pinned ones at load, the streamed ones by the store right after each panel is read:
    :attr:`TieredStore.drop_after_read`), so the data are not held twice and the page cache
    does not take the room the memory limit gives the pinned weights;

  - ``"stream"``: the kernel streams it from its tier (``tierflow.matmul(x, store[name])``):
    panels ``pread`` into a double buffer while the previous panel is multiplied, the weight
    staying in the file tier; one copy, into a cache-sized buffer, overlapped with compute;
  - ``"store"``: ``store.get`` copies it file tier -> memory tier (the store's policy evicting),
    and the next layer is prefetched while this one computes; repeated steps then hit memory
    when the memory tiers hold the model;
  - ``"mmap"``: its file (the adopted checkpoint, or the store's own file for a converted
    weight) is memory-mapped and handed to the kernel (one pass through the OS page cache; a
    file truncated while mapped kills the process with SIGBUS: only for files nobody rewrites
    while the model runs);
  - ``"auto"`` (the default): ``"resident"`` when the matmul weights are larger than the store's
    memory tiers (caching them all there could only thrash), else ``"store"``.

  ``stream`` and ``store`` read with ``pread``, so a file changed on disk is an error, never a
  crash.

Token-embedding rows are read one row at a time from wherever the table lives (only the rows of
the tokens in play), not by loading the whole table each step.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np

from ..errors import (
    CorruptFileError,
    DTypeError,
    InvalidArgumentError,
    MissingFileError,
    ShapeError,
    TensorNotFoundError,
)
from ..kernels import PackedTensor, QuantizedTensor, pack, packed_decode_available, quantize
from ..store import TieredStore, cgroup_memory_limit
from ..store.dtypes import SAFETENSORS_NUMPY
from . import _checkpoint as ck
from .config import ModelConfig, matmul_layouts

__all__ = ["READ_MODES", "WEIGHT_FORMATS", "Weights"]

#: how matmul weights in a file tier are read (see the module docs)
READ_MODES = ("auto", "resident", "stream", "store", "mmap")
#: share of the default memory tier's free room that ``read="resident"`` fills with pinned
#: weights (the rest is room for the small weights read through the store and other tensors)
RESIDENT_FILL = 0.95
#: ``read="resident"``: bytes of the next streamed weights whose reads are started ahead of
#: the kernels (at most; a sixteenth of the RAM tier when that is less, at least 8 MiB)
PREFETCH_WINDOW = 64 << 20
#: ``read="resident"`` in a memory cgroup: bytes of its limit left to the streaming kernels'
#: panel buffers (two in flight and up to six more kept, 8 MiB each), on top of the
#: process's anonymous memory and the prefetch window (pinned weights are anonymous memory:
#: without swap, a cgroup they overfill kills the process)
STREAM_RESERVE = 64 << 20
#: ``read="store"``: steps after which groups found resident are checked again (see
#: :meth:`Weights.enter`)
HOT_RECHECK = 64
#: tensors other than matmul weights up to this size are kept after their first read
SMALL_BYTES = 1 << 20
#: formats a checkpoint may be converted to on load (None keeps the stored dtype)
WEIGHT_FORMATS = (None, "f32", "bf16", "q8_0", "q4_0")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_counter = itertools.count(1)
_ROW_FORMATS = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def _missing(name: str, folder: str) -> TensorNotFoundError:
    e = TensorNotFoundError(
        f"checkpoint {folder} lacks the tensor {name!r} that config.json implies"
    )
    e.name = name
    return e


def _close_private_store(store: TieredStore, folder: str) -> None:
    try:
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def validate(folder: str, config: ModelConfig) -> dict[str, ck.TensorInfo]:
    """Headers of the tensors the config implies; typed errors naming any bad tensor."""
    infos: dict[str, ck.TensorInfo] = {}
    for path in ck.checkpoint_files(folder):
        infos.update(ck.read_header(path))
    expected = config.expected_tensors(set(infos))
    for name, shape in expected.items():
        t = infos.get(name)
        if t is None:
            raise _missing(name, folder)
        if t.shape != shape:
            raise ShapeError(
                f"tensor {name!r} has shape {list(t.shape)} but config.json implies {list(shape)}"
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise DTypeError(f"tensor {name!r} has dtype {t.dtype}; expected a float type")
    return {n: infos[n] for n in expected}


class Weights:
    """Named tensors of one checkpoint, living in a :class:`~tierflow.TieredStore`."""

    def __init__(
        self,
        store: TieredStore,
        prefix: str,
        infos: dict[str, ck.TensorInfo],
        fmt: str | None,
        embedding_maps: dict[str, ck.TensorInfo],
    ):
        self.store = store
        self.prefix = prefix
        self.infos = infos
        self.format = fmt
        self._emb = embedding_maps
        self.layouts: dict[str, str] = {}
        self.groups: list[list[str]] = _groups(list(infos))
        self.prefetch_ahead = True
        #: how matmul weights in a file tier are read: "stream", "store" or "mmap"
        self.read = "store"
        self._refs: dict[str, Any] = {}
        self._direct: dict[str, tuple[str, Any]] = {}
        self._file_tiers = {t.name for t in store.tiers if t.file_backed}
        #: weights pinned in a memory tier by ``read="resident"`` (the rest stream)
        self.resident: list[str] = []
        #: matmul weights repacked into the VNNI decode layout at load (see :meth:`_repack`)
        self.packed: list[str] = []
        self._scales_ok: set[str] = set()
        self._fds: dict[str, int] = {}
        self._small: dict[str, np.ndarray] = {}
        self._fd_stat: dict[str, tuple[int, int]] = {}
        weakref.finalize(self, _close_fds, self._fds)
        # groups whose weights were all in the prefetch's target tier at their last check
        self._hot: set[int] = set()
        self._steps = 0
        self._drop_cache = False
        self._drop_before = False
        # read="resident": the streamed weights in execution order, the window of them whose
        # reads were started ahead (posix_fadvise WILLNEED), its size, and the next to start
        self._streamed: list[str] = []
        self._ahead: list[str] = []
        self._window = 0
        self._next_ahead = 0

    @classmethod
    def open(
        cls,
        folder: str,
        config: ModelConfig,
        *,
        store: TieredStore | None = None,
        tier: str | None = None,
        dtype: str | None = None,
        prefix: str | None = None,
        read: str = "auto",
    ) -> Weights:
        if read not in READ_MODES:
            raise InvalidArgumentError(f"read must be one of {READ_MODES}, got {read!r}")
        if dtype not in WEIGHT_FORMATS:
            raise InvalidArgumentError(
                f"unknown weight format {dtype!r}; supported: {', '.join(map(str, WEIGHT_FORMATS))}"
            )
        infos = validate(folder, config)
        private = None
        if store is None:
            private = tempfile.mkdtemp(prefix="tierflow-model-")
            store = TieredStore(private)
        adopted: list[str] = []
        try:
            if tier is not None and tier not in store.tier_names:
                raise InvalidArgumentError(f"no tier named {tier!r}; tiers: {store.tier_names}")
            if prefix is None:
                prefix = f"{os.path.basename(os.path.abspath(folder))}#{next(_counter)}/"
            file_tier = tier if tier is not None and _is_file_tier(store, tier) else None
            files = sorted({t.path for t in infos.values()})
            for f in files:
                adopted += store.load_safetensors(f, tier=file_tier, prefix=prefix)
            extra = set(adopted) - {prefix + n for n in infos}
            for n in extra:  # tensors the forward pass never reads (e.g. BERT's position_ids)
                store.delete(n)
            if tier is not None and file_tier is None:
                for n in infos:
                    store.move(prefix + n, tier)
            emb = dict(_embedding_infos(infos, config))
            w = cls(store, prefix, infos, dtype, emb)
            w.layouts = matmul_layouts(config, list(infos))
            if dtype is not None and dtype != "f32":
                w._convert(dtype, tier)
            w.read = w._auto_read() if read == "auto" else read
            if w.read == "resident":
                w._make_resident()
            elif w.read == "store":
                w._repack()
        except BaseException:
            if private is not None:
                _close_private_store(store, private)
            else:  # leave the caller's store as it was
                for n in adopted:
                    if n in store:
                        store.delete(n)
            raise
        if private is not None:
            weakref.finalize(w, _close_private_store, store, private)
        return w

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor as a float32 NumPy array (from the store; read-only). Small tensors
        other than matmul weights and embedding tables (norm weights, biases: at most
        :data:`SMALL_BYTES`) are kept after their first read: a decode step reads each of them
        once per layer, and the store lookup would cost more than the arithmetic."""
        c = self._small.get(name)
        if c is not None:
            return c
        a = self._item(name)
        if name not in self.layouts and name not in self._emb and a.nbytes <= SMALL_BYTES:
            a = a.view()
            a.flags.writeable = False
            self._small[name] = a
        return a

    def _item(self, name: str) -> np.ndarray:
        a = self.store.get(self.prefix + name)
        if isinstance(a, (QuantizedTensor, PackedTensor)):
            return a.dequantize().T if self.layouts.get(name) == "out_in" else a.dequantize()
        if a.dtype == np.float32:
            return a
        if self.infos[name].dtype == "BF16":
            return ck.as_float32(a.view(np.uint16), "BF16")
        return a.astype(np.float32)

    def mat(self, name: str) -> Any:
        """The weight as a :func:`tierflow.matmul` operand ``W`` of logical shape ``(K, N)``
        (``y = x W``), zero copy: a converted weight is the stored QuantizedTensor; a float
        ``(out, in)`` weight is exactly the kernels' row-stored layout (N rows of K), so its
        bytes are wrapped as a QuantizedTensor of format f32 / f16 / bf16; an ``(in, out)`` one
        is passed as the (K, N) array it is. In a file tier with ``read="stream"``: the store's
        handle on it (its transpose for an ``(out, in)`` float weight), which the kernel streams."""
        if self.read == "mmap":
            op = self._direct_operand(name)
            if op is not None:
                return op
        elif self.read in ("stream", "resident"):
            if self._streamed:
                self._prefetch_streamed(name)
            ref = self._streamed_operand(name)
            if ref is not None:
                return ref
        a = self.store.get(self.prefix + name)
        if isinstance(a, (QuantizedTensor, PackedTensor)):
            # Block scales are checked once per weight (CorruptFileError on a bad one), not by
            # a pass over every result (the store's copy is immutable, and CRC-checked when
            # read back from a file tier).
            if name in self._scales_ok:
                a._scales_checked = True
            else:
                a._check_scales()
                self._scales_ok.add(name)
            return a
        if self.layouts[name] == "in_out":
            return a
        n, k = a.shape
        fmt = _ROW_FORMATS[self.infos[name].dtype]
        return QuantizedTensor(fmt, (k, n), np.ascontiguousarray(a).reshape(-1).view(np.uint8))

    def _repack(self) -> None:
        """``read="store"`` on the AVX-512 or AVX2 path (:func:`tierflow.packed_decode_available`):
        replace every ``q8_0`` / ``q4_0`` matmul weight by its VNNI decode layout
        (:class:`tierflow.PackedTensor`, the same blocks reordered, no requantisation), stored in
        the memory tier the forward pass reads it from (its tier when that is a memory tier,
        else the store's default tier), so memory holds one copy. The logits stay bit-identical;
        decode reads each weight as one sequential stream per 16 rows. ``TIERFLOW_REPACK=0``
        turns it off. Names repacked are listed in :attr:`packed`."""
        if os.environ.get("TIERFLOW_REPACK", "1") == "0" or not packed_decode_available():
            return
        for name in self.layouts:
            full = self.prefix + name
            if str(self.store.info(full)["dtype"]) not in ("block:q8_0", "block:q4_0"):
                continue
            a = self.store.get(full, promote=False)
            tier = self.store.tier_of(full)
            p = pack(a, a.format + "x16")
            home = None if tier in self._file_tiers else tier  # None: the default tier
            self.store.put(full, p, tier=home, overwrite=True)
            self.packed.append(name)
            self._scales_ok.add(name)  # checked by pack()

    def _auto_read(self) -> str:
        """``"resident"`` when the matmul weights exceed the memory tiers' capacity, else
        ``"store"``."""
        caps = [t.capacity for t in self.store.tiers if not t.file_backed]
        if not caps or any(c is None for c in caps):
            return "store"
        total = sum(self.nbytes(n) for n in self.layouts)
        return "resident" if total > sum(int(c or 0) for c in caps) else "store"

    def _make_resident(self) -> None:
        """Pin a fixed set of matmul weights in the store's default memory tier (the largest
        one), filling up to :data:`RESIDENT_FILL` of its free room after leaving space for the
        weights the forward pass reads through the store (norms, biases); the rest stay in their
        file tier and are streamed. In a memory cgroup no more than :func:`_cgroup_room` is
        pinned. Weights are taken in execution order, skipping any that no longer fit. Without a
        bounded memory tier nothing moves."""
        mem = [t for t in self.store.tiers if not t.file_backed and t.capacity is not None]
        if not mem:
            return
        tier = max(mem, key=lambda t: int(t.capacity or 0))
        used = int(self.store.stats().tier(tier.name)["used"])
        small = sum(
            self.nbytes(n) for n in self.infos if n not in self.layouts and n not in self._emb
        )
        self._window = min(PREFETCH_WINDOW, max(8 << 20, int(tier.capacity or 0) // 16))
        room = int(tier.capacity or 0) - used - small
        cap = _cgroup_room(self._window)
        if cap is not None:
            room = min(room, cap)
        room = int(max(room, 0) * RESIDENT_FILL)
        ordered = [n for g in self.groups for n in g if n in self.layouts]
        ordered += [n for n in self.layouts if n not in ordered]
        streamed = 0
        for n in ordered:
            full = self.prefix + n
            if self.store.tier_of(full) not in self._file_tiers:
                continue
            size = self.nbytes(n)
            if size <= room:
                self.store.move(full, tier.name)
                self.store.pin(full)
                self.resident.append(n)
                room -= size
            else:
                streamed += size
        self._streamed = [n for n in ordered if n not in self.resident and n not in self._emb]
        self._streamed = [
            n for n in self._streamed if self.store.tier_of(self.prefix + n) in self._file_tiers
        ]
        self._drop_cache = streamed > 0 and _memory_short(streamed, self.resident_bytes())
        if self._drop_cache:
            for n in self.resident:
                self._advise(n, getattr(os, "POSIX_FADV_DONTNEED", 0))
            self._drop_before = self.store.drop_after_read
            self.store.drop_after_read = True

    def resident_bytes(self) -> int:
        """Bytes of the weights ``read="resident"`` pinned in memory."""
        return sum(self.nbytes(n) for n in self.resident)

    def release(self) -> None:
        """Unpin the weights ``read="resident"`` pinned (the store may then evict them), and
        stop streaming them ahead."""
        for n in self.resident:
            full = self.prefix + n
            if full in self.store:
                self.store.unpin(full)
        self.resident = []
        self._streamed = []
        if self._drop_cache:
            self.store.drop_after_read = self._drop_before
            self._drop_cache = False

    def _prefetch_streamed(self, name: str) -> None:
        """``read="resident"``: keep the reads of the next streamed weights (in execution
        order, wrapping to the next step) started ahead of the kernels, about ``_window`` bytes
        of them (``posix_fadvise(WILLNEED)``: the OS reads them in the background into its page
        cache, from which the streaming kernel then copies them). So the disk keeps reading while
        the pinned weights are multiplied, instead of waiting for the next streamed weight's
        kernel to ask. ``name`` is the weight the forward pass asks for now: if it is a streamed
        one, it and those before it leave the window."""
        if name in self._ahead:
            del self._ahead[: self._ahead.index(name) + 1]
        elif name in self._streamed:
            self._ahead.clear()  # out of order (another forward pass began): restart here
            self._next_ahead = (self._streamed.index(name) + 1) % len(self._streamed)
        budget = self._window - sum(min(self.nbytes(n), self._window) for n in self._ahead)
        while budget > 0 and len(self._ahead) < len(self._streamed) - 1:
            n = self._streamed[self._next_ahead]
            if n == name or n in self._ahead:
                break
            self._advise(n, getattr(os, "POSIX_FADV_WILLNEED", 0), limit=min(budget, self._window))
            self._ahead.append(n)
            budget -= min(self.nbytes(n), self._window)
            self._next_ahead = (self._next_ahead + 1) % len(self._streamed)

    def _advise(self, name: str, advice: int, limit: int | None = None) -> None:
        """``posix_fadvise(advice)`` on the bytes of weight ``name`` in the file backing it (the
        adopted checkpoint's range, or the store's own file for a converted weight; at most the
        first ``limit`` bytes). Advice only: errors are ignored (the data stay correct either
        way)."""
        if not hasattr(os, "posix_fadvise"):
            return
        info = self.store.info(self.prefix + name)
        path = info.get("file")
        if not path:
            return
        t = self.infos.get(name)
        begin, length = (t.begin, t.end - t.begin) if info.get("adopted") and t else (0, 0)
        if limit is not None:
            length = min(length, limit) if length else limit
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, begin, length, advice)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _streamed_operand(self, name: str) -> Any:
        """The store's handle on a matmul weight in a file tier (None elsewhere)."""
        full = self.prefix + name
        if self.store.tier_of(full) not in self._file_tiers:
            return None
        ref = self._refs.get(name)
        if ref is None:
            ref = self.store[full]
            if not isinstance(ref.dtype, str) and self.layouts[name] == "out_in":
                if self.infos[name].dtype not in _ROW_FORMATS:
                    return None  # e.g. float64: loaded (converted) through the store
                ref = ref.T
            self._refs[name] = ref
        return ref

    def _direct_operand(self, name: str) -> Any:
        """The operand read in place from the file backing the tensor, when it sits in a file
        tier: the kernel then reads the bytes once, through the OS page cache, instead of the
        store copying them into a memory tier first and the kernel reading that copy. The file is
        the adopted checkpoint, or the store's own file for a converted weight (found from
        ``store.info``, its safetensors header parsed here); the wrapped operand is cached per
        file, so block data are validated once, not at every step. None: use the store."""
        info = self.store.info(self.prefix + name)
        if info["tier"] not in self._file_tiers or not info.get("file"):
            return None
        cached = self._direct.get(name)
        if cached is not None and cached[0] == info["file"]:
            return cached[1]
        hdr = ck.read_header(info["file"])
        t = hdr.get(name) if info.get("adopted") else next(iter(hdr.values()), None)
        if t is None:
            return None
        raw = ck.mmap_tensors({name: t})[name]
        dt = str(info["dtype"])
        op: Any = None
        if dt.startswith("block:"):
            k, n = (int(v) for v in info["shape"])
            op = QuantizedTensor(dt[len("block:") :], (k, n), raw.reshape(-1).view(np.uint8))
        elif self.layouts[name] == "out_in" and t.dtype in _ROW_FORMATS:
            n, k = t.shape
            op = QuantizedTensor(_ROW_FORMATS[t.dtype], (k, n), raw.reshape(-1).view(np.uint8))
        elif t.dtype in ("F32", "F16"):
            op = raw
        if op is not None:
            self._direct[name] = (info["file"], op)
        return op

    def _convert(self, fmt: str, tier: str | None) -> None:
        """Replace every matmul weight by its ``fmt`` form (``tierflow.quantize`` of the
        ``(K, N)`` operand: GGUF row blocks along K), stored in ``tier`` (default: the home
        file tier, where the checkpoint was adopted)."""
        home = (
            tier if tier is not None else self.store.tier_of(self.prefix + next(iter(self.layouts)))
        )
        for name, layout in self.layouts.items():
            full = self.prefix + name
            a = self.store.get(full, promote=False)
            kn = a.T if layout == "out_in" else a
            try:
                q = quantize(kn, fmt)
            except ShapeError as e:
                raise ShapeError(f"cannot convert {name!r} to {fmt}: {e}") from None
            self.store.put(full, q, tier=home, overwrite=True)

    def enter(self, group: int) -> None:
        """The forward pass starts weight group ``group`` (a layer; the last group is what follows
        the layers). When weights are read through the store (``read`` other than ``"mmap"``): prefetch the
        next group (wrapping to layer 0 for the next step) into the store's default tier on a
        background thread, so reading the next layer from a slow tier overlaps this layer's
        arithmetic. (Streamed weights overlap their reads inside the kernel; files read in
        place are paged in by the OS.) A group found already there is not asked again for the
        next :data:`HOT_RECHECK` steps (a resident model's per-layer check costs more than it
        saves); the weights are still read through the store, which promotes any evicted one."""
        if self.prefetch_ahead and self.read == "store" and len(self.groups) > 1:
            if group == 0:
                self._steps += 1
                if self._steps % HOT_RECHECK == 0:
                    self._hot.clear()
            g = (group + 1) % len(self.groups)
            if g in self._hot:
                return
            f = self.store.prefetch([self.prefix + n for n in self.groups[g]])
            if f.done():
                self._hot.add(g)

    def fetch(self, name: str) -> Any:
        """The stored tensor as the store returns it (promoted into the store's default tier)."""
        return self.store.get(self.prefix + name)

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor as stored (after any conversion on load)."""
        return int(self.store.info(self.prefix + name)["nbytes"])

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of a token / position embedding table, float32. Only those rows are
        read, wherever the table lives (``pread`` from a file tier: a file truncated or rewritten
        meanwhile is a CorruptFileError, never a SIGBUS)."""
        t = self._emb.get(name)
        if t is None:
            return self[name][idx]
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        row_bytes = (t.end - t.begin) // max(t.shape[0], 1)
        uniq, inv = np.unique(idx, return_inverse=True)
        raw = np.empty((uniq.size, row_bytes), np.uint8)
        if self._rows_in_file(name):
            ck.pread_rows(t, uniq, raw, self._fd(t.path))
        else:
            for j, r in enumerate(uniq.tolist()):
                self.store.read_into(self.prefix + name, r * row_bytes, raw[j])
        table = raw.view(SAFETENSORS_NUMPY[t.dtype]).reshape(uniq.size, *t.shape[1:])
        return ck.as_float32(table, t.dtype)[inv]

    def _rows_in_file(self, name: str) -> bool:
        """Whether rows of table ``name`` are read from its checkpoint file: the store holds it
        there as adopted (in a file tier: the same bytes), or holds a converted / repacked
        head tied with it (the exact rows are only in the checkpoint)."""
        info = self.store.info(self.prefix + name)
        if str(info["dtype"]).startswith("block:") and not info.get("adopted"):
            return True
        return bool(info.get("adopted")) and info["tier"] in self._file_tiers

    def _fd(self, path: str) -> int:
        """A read-only descriptor of ``path``, opened once (closed with the weights). The
        file's size and modification time then are checked at every use, as the store checks
        its files: a checkpoint truncated or rewritten since is a CorruptFileError naming it."""
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise MissingFileError(f"checkpoint file {path} no longer exists") from None
            st = os.fstat(fd)
            self._fds[path] = fd
            self._fd_stat[path] = (st.st_size, st.st_mtime_ns)
            return fd
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != self._fd_stat[path]:
            raise CorruptFileError(
                f"{path} changed on disk while the model was loaded (size or modification "
                "time differs): reload the model"
            )
        return fd

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def tiers(self) -> dict[str, str]:
        """Where each weight is now (tensor name -> tier name)."""
        return {n: self.store.tier_of(self.prefix + n) for n in self.infos}


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer)\.(\d+)\.")


def _close_fds(fds: dict[str, int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _groups(names: list[str]) -> list[list[str]]:
    """Weights in execution order: one group per layer, then one for the rest (final norm,
    head); token / position embedding tables are gathered from the file and left out."""
    layers: dict[int, list[str]] = {}
    rest: list[str] = []
    for n in names:
        m = _LAYER.search(n)
        if m:
            layers.setdefault(int(m.group(1)), []).append(n)
        elif "embed" not in n and not n.endswith(("wte.weight", "wpe.weight")):
            rest.append(n)
        elif n.endswith(("embed_tokens.weight", "wte.weight")) and "lm_head.weight" not in names:
            rest.append(n)  # tied: the table is also the head
    return [layers[i] for i in sorted(layers)] + ([rest] if rest else [])


def _memory_short(streamed: int, pinned: int) -> bool:
    """Whether the page cache cannot keep the streamed weights from one step to the next:
    in a memory cgroup (which charges page cache to the group) when pinned + streamed bytes
    exceed its limit, else when the streamed bytes exceed ``MemAvailable`` (measured after
    pinning, so the pinned bytes are already out of it)."""
    limit = cgroup_memory_limit()
    if limit is not None:
        return streamed + pinned > limit
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return streamed > int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return False


def _cgroup_room(window: int) -> int | None:
    """Bytes of weights ``read="resident"`` may pin in this process's memory cgroup (None
    outside one): its limit less the process's anonymous memory now (``RssAnon``),
    :data:`STREAM_RESERVE` and the prefetch ``window``."""
    limit = cgroup_memory_limit()
    if limit is None:
        return None
    return limit - _anon_now() - STREAM_RESERVE - window


def _anon_now() -> int:
    """This process's anonymous memory now (``RssAnon`` of /proc/self/status; 0 if unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _is_file_tier(store: TieredStore, tier: str) -> bool:
    return next(t for t in store.tiers if t.name == tier).file_backed


def _embedding_infos(infos: dict[str, ck.TensorInfo], cfg: ModelConfig) -> dict[str, ck.TensorInfo]:
    names = [
        n
        for n in infos
        if n.endswith(("embed_tokens.weight", "wte.weight", "wpe.weight", "embeddings.weight"))
    ]
    return {n: infos[n] for n in names}
