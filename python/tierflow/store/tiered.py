"""The tiered tensor store.

A :class:`TieredStore` knows where every tensor lives (a fast cache-sized buffer, RAM, a file on
disk), moves tensors between those tiers under capacity limits, prefetches in the background,
survives crashes, and tells what moved and what it cost (:meth:`TieredStore.stats`).

Tiers are ordered fastest first. When the store has a file tier, the slowest file tier is its
*home*: every :meth:`~TieredStore.put` is written through to a safetensors file there (atomically:
temporary file, fsync, rename; with a CRC-32 per tensor in the manifest ``tierflow-store.json``)
before ``put`` returns, so a crash never loses a completed put and evicting a tensor from memory
to disk costs no I/O. A put or move into a full tier evicts tensors, chosen by the store's
policy, one tier down; pinned tensors are never evicted.

Example:
    >>> import numpy as np, tempfile, tierflow
    >>> with tierflow.TieredStore(tempfile.mkdtemp()) as store:
    ...     store.put("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    ...     store.get("w").sum()
    np.float32(15.0)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _tierflow
from ..errors import DTypeError, InvalidArgumentError, ShapeError
from .dtypes import DTYPES, STORE_DTYPES

__all__ = [
    "BlockTensor",
    "Future",
    "StoreStats",
    "TensorRef",
    "Tier",
    "TieredStore",
    "bfloat16_dtype",
    "cgroup_memory_limit",
    "parse_size",
    "register_block_format",
]

try:  # bfloat16 as a real NumPy dtype when ml_dtypes is installed
    import ml_dtypes as _ml_dtypes

    _BF16: np.dtype[Any] | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _BF16 = None


def bfloat16_dtype() -> np.dtype[Any]:
    """The NumPy dtype bfloat16 tensors come back as: ``ml_dtypes.bfloat16`` when installed,
    else ``uint16`` holding the raw bfloat16 bits (the upper half of a float32)."""
    return _BF16 if _BF16 is not None else np.dtype(np.uint16)


_NP_TO_NAME: dict[np.dtype[Any], str] = {
    np.dtype(d.numpy).newbyteorder("="): d.name
    for d in DTYPES
    if d.in_store and d.numpy and d.name != "bfloat16"  # bfloat16: its own NumPy type, below
}
if _BF16 is not None:
    _NP_TO_NAME[_BF16] = "bfloat16"

_NAME_TO_NP: dict[str, np.dtype[Any]] = {v: k for k, v in _NP_TO_NAME.items()}
_NAME_TO_NP["bfloat16"] = bfloat16_dtype()

SUPPORTED_DTYPES = STORE_DTYPES


def parse_size(size: int | str | None) -> int | None:
    """Bytes in ``size``: an int, or a string such as ``"512MiB"``, ``"2GB"``, ``"64k"``
    (binary units KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024; kB/MB/GB/TB powers of 1000).
    ``None`` or ``"inf"`` mean unbounded. Raises ValueError (InvalidArgumentError) otherwise."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise InvalidArgumentError(
            f"capacity must be a number of bytes or a size string, not {size!r}"
        )
    if isinstance(size, (int, np.integer)):
        if size < 0:
            raise InvalidArgumentError(f"capacity must not be negative, got {size}")
        return int(size)
    if isinstance(size, float):
        if not (0 <= size < 2.0**64):
            raise InvalidArgumentError(f"capacity must be a non-negative finite number, got {size}")
        return int(size)
    if isinstance(size, str):
        return _tierflow.parse_size(size)
    raise InvalidArgumentError(
        f"capacity must be a number of bytes or a size string, not {type(size).__name__}"
    )


@dataclass(frozen=True)
class Tier:
    """One tier: a name, a capacity (bytes, a size string such as ``"512MiB"``, or None for
    unbounded) and, for a file-backed tier, a folder (relative to the store's folder, or
    absolute)."""

    name: str
    capacity: int | str | None = None
    path: str | os.PathLike[str] | None = None
    capacity_bytes: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"a tier needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "capacity_bytes", parse_size(self.capacity))

    @property
    def file_backed(self) -> bool:
        return self.path is not None


class BlockTensor:
    """An opaque typed byte block: a tensor in a format the store moves without interpreting
    (quantized weights such as GGUF Q8_0 / Q4_0). ``shape`` is the logical (dequantized) shape;
    ``data`` the bytes (uint8, 1-D). Formats register a subclass with
    :func:`register_block_format` so :meth:`TieredStore.get` returns it."""

    def __init__(self, format: str, shape: Sequence[int], data: np.ndarray) -> None:
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 1:
            raise DTypeError(f"block data must be a 1-D uint8 array, got {data.dtype} {data.shape}")
        self.format = str(format)
        self.shape = tuple(int(s) for s in shape)
        self.data = data

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @classmethod
    def _from_blocks(cls, format: str, shape: Sequence[int], data: np.ndarray) -> BlockTensor:
        return cls(format, shape, data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(format={self.format!r}, shape={self.shape}, nbytes={self.nbytes})"


_BLOCK_FORMATS: dict[str, type[BlockTensor]] = {}


def register_block_format(fmt: str, cls: type[BlockTensor]) -> None:
    """Make :meth:`TieredStore.get` return ``cls._from_blocks(fmt, shape, data)`` for tensors
    stored in block format ``fmt``."""
    _BLOCK_FORMATS[fmt] = cls


def cgroup_memory_limit(root: str | os.PathLike[str] = "/") -> int | None:
    """The memory limit (bytes) of this process's cgroup, or None when there is none.

    cgroup v2: ``memory.max`` of the process's group (``0::/path`` in ``/proc/self/cgroup``);
    cgroup v1: ``memory.limit_in_bytes`` of its ``memory`` controller group. A value of ``max``
    or a v1 "unlimited" (>= 2**60) counts as no limit. ``root`` prefixes every path (tests).
    Page cache is charged to the group, so this is the budget for data *and* cached file pages.
    """
    base = Path(root)
    try:
        lines = (base / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ctrls, rel = parts[1], parts[2].lstrip("/")
        if "memory" in ctrls.split(","):
            candidates.append(base / "sys/fs/cgroup/memory" / rel / "memory.limit_in_bytes")
        elif parts[0] == "0" and ctrls == "":
            candidates.append(base / "sys/fs/cgroup" / rel / "memory.max")
            candidates.append(base / "sys/fs/cgroup/unified" / rel / "memory.max")
    for c in candidates:
        try:
            text = c.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            continue
        value = int(text)
        if 0 < value < (1 << 60):
            return value
    return None


def _default_tiers(path: Path | None) -> list[Tier]:
    """fast: the largest CPU cache (a staging buffer for kernels); ram: a quarter of physical
    memory, or, in a memory cgroup, its limit less an eighth (at least 96 MiB) when that is
    smaller, the fast tier then taking at most 1/32 of it (the two memory tiers together stay
    within the limit less its reserve); disk: file-backed, unbounded, in ``<path>/disk`` (only
    with a path)."""
    cache = 32 << 20
    try:
        sizes = []
        base = Path("/sys/devices/system/cpu/cpu0/cache")
        for idx in base.glob("index*"):
            s = (idx / "size").read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
            sizes.append(int(s.rstrip("KMG")) * mult)
        if sizes:
            cache = max(sizes)
    except (OSError, ValueError):
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (OSError, ValueError, AttributeError):
        ram = 4 << 30
    limit = cgroup_memory_limit()
    if limit is not None:
        # in a memory cgroup (a container, a batch job) the limit, not the machine, is the RAM:
        # keep an eighth of it (at least 96 MiB) for the process, its buffers and page cache,
        # and the two memory tiers together within the rest (fast at most 1/32 of it: some
        # machines report a last-level cache of hundreds of MiB)
        budget = max(min(ram, limit - max(96 << 20, limit // 8)), 16 << 20)
        cache = min(cache, budget // 32)
        ram = budget - cache
    tiers = [Tier("fast", cache), Tier("ram", ram)]
    if path is not None:
        tiers.append(Tier("disk", None, path="disk"))
    return tiers


class Future:
    """A background prefetch: :meth:`wait` for it or ask whether it is :meth:`done`."""

    def __init__(self, native: Any, names: list[str]) -> None:
        self._native = native
        self.names = names

    def done(self) -> bool:
        return bool(self._native.done())

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait (the GIL is released) up to ``timeout`` seconds; returns how many tensors moved,
        or None on timeout. Raises the error the prefetch met."""
        return self._native.wait(timeout)

    result = wait

    def __repr__(self) -> str:
        return f"Future({len(self.names)} tensors, done={self.done()})"


class TensorRef:
    """A lazy handle on a stored tensor: name, shape, dtype, nbytes and (live) tier. Kernels take
    it to stream the tensor from its tier; :meth:`numpy` loads it.

    ``ref.T`` is the transpose of a 2-D float tensor, still lazy: a PyTorch ``Linear`` weight
    ``(out, in)`` stored as it is serves as the ``(in, out)`` operand of
    ``tierflow.matmul(x, store["fc.weight"].T)`` (``y = x W^T``), which streams its rows."""

    __slots__ = ("_meta", "_transposed", "name", "store")

    def __init__(
        self, store: TieredStore, name: str, meta: dict[str, Any], transposed: bool = False
    ) -> None:
        self.store = store
        self.name = name
        self._meta = meta
        self._transposed = transposed

    @property
    def shape(self) -> tuple[int, ...]:
        s = tuple(self._meta["shape"])
        return s[::-1] if self._transposed else s

    @property
    def T(self) -> TensorRef:
        if len(self._meta["shape"]) != 2:
            raise ShapeError(
                f"only a 2-D tensor has a transpose, {self.name!r} has shape {self.shape}"
            )
        if str(self._meta["dtype"]).startswith("block:"):
            raise DTypeError(f"{self.name!r} is a block tensor; it has no transposed view")
        return TensorRef(self.store, self.name, self._meta, not self._transposed)

    @property
    def dtype(self) -> np.dtype[Any] | str:
        """A NumPy dtype, or ``"block:<format>"`` for block formats."""
        d = self._meta["dtype"]
        return _NAME_TO_NP.get(d, d)

    @property
    def nbytes(self) -> int:
        return int(self._meta["nbytes"])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def tier(self) -> str:
        """The tier it is in now."""
        return self.store.tier_of(self.name)

    def numpy(self) -> Any:
        a = self.store.get(self.name)
        return a.T if self._transposed else a

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        a = np.asarray(self.numpy())
        if dtype is not None:
            a = a.astype(dtype)
        return a

    def __repr__(self) -> str:
        t = ".T" if self._transposed else ""
        return f"TensorRef({self.name!r}, shape={self._meta['shape']}, dtype={self._meta['dtype']}, tier={self.tier!r}){t}"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "unbounded"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v = float(n)
    i = 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{int(v)} B" if i == 0 else f"{v:.1f} {units[i]}"


class StoreStats(dict[str, Any]):
    """Store statistics (a dict): ``tiers`` (capacity, used, tensors per tier), ``counters``
    (``hits``, ``misses``, ``prefetch_hits``, ``stall_seconds``, ``evictions``,
    ``bytes_read``/``bytes_written``, ``links`` = traffic per pair of tiers ``"src->dst"`` with
    bytes, tensors and seconds, ``streamed`` = bytes read by kernels per tier). ``str()`` of it
    (or :meth:`table`) is a printable table."""

    @property
    def hits(self) -> int:
        return int(self["counters"]["hits"])

    @property
    def misses(self) -> int:
        return int(self["counters"]["misses"])

    @property
    def prefetch_hits(self) -> int:
        return int(self["counters"]["prefetch_hits"])

    @property
    def stall_seconds(self) -> float:
        return float(self["counters"]["stall_seconds"])

    def tier(self, name: str) -> dict[str, Any]:
        for t in self["tiers"]:
            if t["name"] == name:
                return dict(t)
        raise KeyError(name)

    def link(self, src: str, dst: str) -> dict[str, Any]:
        return dict(
            self["counters"]["links"].get(
                f"{src}->{dst}", {"bytes": 0, "tensors": 0, "seconds": 0.0}
            )
        )

    def tables(self) -> list[Any]:
        from rich.table import Table

        t = Table(title=f"tiers (policy {self['policy']})")
        for c in ("tier", "kind", "capacity", "used", "tensors", "pinned"):
            t.add_column(c, justify="right" if c not in ("tier", "kind") else "left")
        for x in self["tiers"]:
            t.add_row(
                x["name"],
                x["kind"],
                _fmt_bytes(x["capacity"]),
                _fmt_bytes(x["used"]),
                str(x["tensors"]),
                str(x["pinned"]),
            )
        c = self["counters"]
        m = Table(title="traffic")
        for col in ("from -> to", "bytes", "tensors", "seconds", "GB/s"):
            m.add_column(col, justify="left" if col == "from -> to" else "right")
        rows = [(k, v) for k, v in c["links"].items()] + [
            (f"{k} -> kernels (streamed)", v) for k, v in c["streamed"].items()
        ]
        for k, v in rows:
            gbs = v["bytes"] / v["seconds"] / 1e9 if v["seconds"] > 0 else float("nan")
            m.add_row(
                k.replace("->", " -> "),
                _fmt_bytes(v["bytes"]),
                str(v["tensors"]),
                f"{v['seconds']:.3f}",
                "-" if gbs != gbs else f"{gbs:.2f}",
            )
        s = Table(title="accesses")
        for col in (
            "hits",
            "misses",
            "hit rate",
            "prefetch hits",
            "stalls",
            "stall s",
            "evictions",
        ):
            s.add_column(col, justify="right")
        total = c["hits"] + c["misses"]
        s.add_row(
            str(c["hits"]),
            str(c["misses"]),
            f"{c['hits'] / total:.1%}" if total else "-",
            str(c["prefetch_hits"]),
            str(c["stalls"]),
            f"{c['stall_seconds']:.3f}",
            str(c["evictions"]),
        )
        return [t, m, s]

    def table(self) -> Any:
        from rich.console import Group

        return Group(*self.tables())

    def __str__(self) -> str:
        import io

        from rich.console import Console

        console = Console(width=100, file=io.StringIO(), color_system=None)
        console.print(self.table())
        return console.file.getvalue()  # type: ignore[attr-defined]


def _as_contiguous_bytes(array: np.ndarray) -> tuple[str, tuple[int, ...], np.ndarray]:
    a = np.asarray(array)
    name = _NP_TO_NAME.get(a.dtype.newbyteorder("=") if a.dtype.byteorder not in "=|" else a.dtype)
    if name is None:
        raise DTypeError(
            f"unsupported dtype {a.dtype}: the store holds {', '.join(SUPPORTED_DTYPES)} (and block formats)"
        )
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:  # non-contiguous, Fortran-order or negative-stride input
        a = a.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return name, tuple(int(s) for s in a.shape), a.reshape(-1).view(np.uint8)


class TieredStore:
    """A store of named tensors in tiers (fastest first).

    Args:
        path: the store's folder (created if needed; an existing store there is reopened and
            verified). None: memory tiers only, nothing persisted.
        tiers: the tiers, fastest first (default: ``fast`` = the largest CPU cache, ``ram`` = a
            quarter of physical memory (less in a memory cgroup, see
            :func:`cgroup_memory_limit`), and with a path ``disk`` = file-backed, unbounded).
        policy: eviction policy: ``"lru"``, ``"lfu"``, ``"fifo"`` or ``"planned"`` (Belady: evicts
            the tensor needed furthest in the future; give the future with :meth:`plan`).
        default_tier: the tier ``put`` uses and ``get`` promotes into (name or index; default:
            the largest memory tier).
        verify_reads: check the CRC-32 on every whole-tensor read from a file tier.

    Any number of Python threads may share a store; the GIL is released during I/O and copies,
    and the store keeps working in a child after ``fork()``. One open ``TieredStore`` per folder
    at a time (a folder lock enforces it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        tiers: Sequence[Tier] | None = None,
        policy: str = "lru",
        *,
        default_tier: str | int | None = None,
        verify_reads: bool = True,
        _native: Any = None,
    ) -> None:
        if _native is not None:
            self._s = _native
        else:
            root = Path(path) if path is not None else None
            tiers = list(tiers) if tiers is not None else _default_tiers(root)
            for t in tiers:
                if not isinstance(t, Tier):
                    raise InvalidArgumentError(
                        f"tiers must be tierflow.Tier objects, got {type(t).__name__}"
                    )
            dt = self._tier_arg(default_tier, [t.name for t in tiers])
            specs = [
                (t.name, t.capacity_bytes, Path(t.path) if t.path is not None else None)
                for t in tiers
            ]
            self._s = _tierflow.Store(
                str(root) if root is not None else None, specs, policy, dt, verify_reads
            )
        self._lock = threading.Lock()
        self._futures: list[Future] = []

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, verify: str = "full", strict: bool = True
    ) -> TieredStore:
        """Reopen the store in ``path`` with the tiers and policy it was created with, verifying
        every committed tensor: ``verify="full"`` reads every byte and checks its CRC-32,
        ``"header"`` checks files and sizes only. With ``strict`` the first bad tensor raises
        :class:`~tierflow.CorruptFileError` naming file and tensor; otherwise bad tensors are
        quarantined (see :meth:`quarantined`) and the others open."""
        return cls(_native=_tierflow.Store.open(str(path), verify, strict))

    @staticmethod
    def _tier_arg(tier: str | int | None, names: list[str]) -> int | None:
        if tier is None:
            return None
        if isinstance(tier, str):
            if tier not in names:
                raise InvalidArgumentError(f"no tier named {tier!r}; tiers: {names}")
            return names.index(tier)
        if (
            isinstance(tier, (int, np.integer))
            and not isinstance(tier, bool)
            and 0 <= tier < len(names)
        ):
            return int(tier)
        raise InvalidArgumentError(
            f"tier must be a tier name or index, got {tier!r}; tiers: {names}"
        )

    def _tier(self, tier: str | int | None) -> int | None:
        return self._tier_arg(tier, self.tier_names)

    # -- description ------------------------------------------------------------------------
    @property
    def tiers(self) -> list[Tier]:
        return [Tier(n, c, p) for n, c, p in self._s.tiers()]

    @property
    def tier_names(self) -> list[str]:
        return [t[0] for t in self._s.tiers()]

    @property
    def policy(self) -> str:
        return str(self._s.policy())

    @property
    def path(self) -> Path | None:
        r = self._s.root()
        return Path(r) if r is not None else None

    # -- tensors ----------------------------------------------------------------------------
    def put(
        self,
        name: str,
        array: Any,
        tier: str | int | None = None,
        overwrite: bool = False,
        *,
        dtype: str | None = None,
        durable: bool = True,
    ) -> None:
        """Store ``array`` under ``name`` in ``tier`` (default: the default tier).

        Any strides and memory order are accepted (copied to C order). Without ``overwrite``
        an existing name raises :class:`~tierflow.TensorExistsError` and the old tensor is
        untouched. ``dtype="bfloat16"`` stores a uint16 array of raw bfloat16 bits as bfloat16
        (for use without ml_dtypes). :class:`BlockTensor` values are stored as typed blocks.

        A put is durable: written through to the home file tier (synced) and listed in the
        manifest before it returns. ``durable=False`` is for tensors that need not outlive the
        store (the KV cache's pages): put into a memory tier, the tensor is only copied there
        (no file, no sync, not in the manifest, so gone when the store is reopened); if the
        policy evicts it into a file tier, it is written there like any other. Into a file tier
        ``durable`` changes nothing.
        """
        if not isinstance(name, str):
            raise InvalidArgumentError(f"tensor names are strings, got {type(name).__name__}")
        if not isinstance(durable, (bool, np.bool_)):
            raise InvalidArgumentError(f"durable must be True or False, got {durable!r}")
        durable = bool(durable)
        t = self._tier(tier)
        if isinstance(array, BlockTensor):
            data = np.ascontiguousarray(array.data, dtype=np.uint8).reshape(-1)
            self._s.put(
                name, f"block:{array.format}", list(array.shape), data, t, overwrite, durable
            )
            return
        if isinstance(array, TensorRef):
            array = array.numpy()
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        if array.dtype == object:
            raise DTypeError("object arrays cannot be stored")
        if dtype is not None:
            if dtype != "bfloat16" or array.dtype not in (np.uint16, bfloat16_dtype()):
                raise DTypeError(f"dtype={dtype!r} only reinterprets uint16 bits as bfloat16")
            a = np.ascontiguousarray(array).view(np.uint16)
            self._s.put(
                name, "bfloat16", list(a.shape), a.reshape(-1).view(np.uint8), t, overwrite, durable
            )
            return
        dname, shape, data = _as_contiguous_bytes(array)
        self._s.put(name, dname, list(shape), data, t, overwrite, durable)

    def get(self, name: str, *, promote: bool = True) -> Any:
        """The tensor as a read-only NumPy array (or a :class:`BlockTensor`).

        From a memory tier it is zero copy: a view of the store's buffer, which stays valid
        even if the tensor is later evicted or deleted. From a file tier the bytes are read (a
        copy, checked against the CRC-32) and, with ``promote``, the tensor moves up into the
        default tier (evicting by the policy if needed). Use ``.copy()`` for a writable array.
        """
        dname, shape, buf = self._s.get(name, promote)
        data = np.frombuffer(buf, dtype=np.uint8)
        if dname.startswith("block:"):
            fmt = dname[len("block:") :]
            cls = _BLOCK_FORMATS.get(fmt, BlockTensor)
            return cls._from_blocks(fmt, shape, data)
        return data.view(_NAME_TO_NP[dname]).reshape(shape)

    def __getitem__(self, name: str) -> TensorRef:
        return TensorRef(self, name, self.info(name))

    def info(self, name: str) -> dict[str, Any]:
        """name, dtype, shape, nbytes, tier, pinned, file, adopted, accesses."""
        return dict(json.loads(self._s.meta_json(name)))

    def read_into(self, name: str, offset: int, out: np.ndarray) -> None:
        """Copy bytes ``[offset, offset + out.nbytes)`` of ``name`` into ``out`` (a writable,
        contiguous uint8 array) from wherever it lives, without moving it (``pread`` from a file
        tier; counted as streamed traffic). Kernels and embedding lookups read slices this way."""
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 1):
            raise DTypeError("out must be a 1-D uint8 array")
        if offset < 0:
            raise InvalidArgumentError(f"offset must not be negative, got {offset}")
        self._s.read_into(name, int(offset), out)

    @property
    def drop_after_read(self) -> bool:
        """Whether bytes that :meth:`read_into` and the streaming kernels read from a file tier
        are dropped from the OS page cache right after (``posix_fadvise(DONTNEED)`` on the range
        read; advice only, off by default). For weights streamed once per step under a memory
        limit that charges the page cache (a memory cgroup): the kernels copy the bytes into
        their own panel buffers, so a cached copy would only take room the limit needs
        elsewhere. ``read="resident"`` turns it on when memory is short."""
        return bool(self._s.drop_after_read)

    @drop_after_read.setter
    def drop_after_read(self, on: bool) -> None:
        self._s.drop_after_read = bool(on)

    def tier_of(self, name: str) -> str:
        return str(self.info(name)["tier"])

    def move(self, name: str, tier: str | int) -> None:
        """Move ``name`` into ``tier`` (up or down), evicting by the policy to make room."""
        t = self._tier(tier)
        assert t is not None
        self._s.move_to(name, t)

    def evict(self, name: str) -> str:
        """Push ``name`` one tier down; returns the tier it lands in."""
        return self.tier_names[self._s.evict(name)]

    def delete(self, name: str) -> None:
        """Remove ``name`` and its files (adopted files are never deleted)."""
        self._s.delete(name)

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    def pin(self, name: str) -> None:
        """Never evict ``name`` (explicit moves still work)."""
        self._s.set_pinned(name, True)

    def unpin(self, name: str) -> None:
        self._s.set_pinned(name, False)

    def names(self) -> list[str]:
        return list(self._s.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._s.contains(name))

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def quarantined(self) -> dict[str, str]:
        """Tensors that failed verification when the store was opened with ``strict=False``."""
        return dict(self._s.quarantined())

    # -- movement ---------------------------------------------------------------------------
    def prefetch(self, names: str | Iterable[str], tier: str | int | None = None) -> Future:
        """Bring ``names`` up into ``tier`` (default: the default tier) on a background thread,
        in order; returns a :class:`Future`. Tensors already there or faster stay put."""
        if isinstance(names, str):
            names = [names]
        names = list(names)
        t = self._tier(tier)
        f = Future(self._s.prefetch(names, self._s.default_tier() if t is None else t), names)
        with self._lock:
            self._futures = [x for x in self._futures if not x.done()] + [f]
        return f

    def plan(self, sequence: Iterable[str]) -> None:
        """Tell the ``planned`` policy the future access sequence (Belady's MIN)."""
        self._s.set_future(list(sequence))

    def load_safetensors(
        self,
        path: str | os.PathLike[str],
        tier: str | int | None = None,
        prefix: str = "",
        *,
        overwrite: bool = False,
    ) -> list[str]:
        """Adopt existing safetensors files in place (no copy: only headers are read): a file,
        a folder of ``*.safetensors``, or a Hugging Face sharded checkpoint (its
        ``model.safetensors.index.json`` or its folder). Tensors are named ``prefix + name``
        and live in file tier ``tier`` (default: the home tier). All or nothing. Adopted files
        are never modified or deleted; a file changed on disk afterwards is reported as
        :class:`~tierflow.CorruptFileError` when read. Returns the new names."""
        return list(self._s.load_safetensors(str(path), self._tier(tier), prefix, overwrite))

    def load_gguf(
        self,
        path: str | os.PathLike[str],
        tier: str | int | None = None,
        prefix: str = "",
        *,
        overwrite: bool = False,
        rename: dict[str, str] | None = None,
    ) -> list[str]:
        """Adopt the tensors of a GGUF file (llama.cpp's format, versions 2 and 3) in place, like
        :meth:`load_safetensors`: only the header is read (bounds-checked), each tensor's bytes
        stay in the file. F32 / F16 / BF16 tensors are arrays of their bytes (shape: GGUF's
        ``ne`` reversed, so a weight is ``(out, in)``); Q8_0 / Q4_0 tensors are
        :class:`~tierflow.QuantizedTensor` operands of logical shape ``(ne[0], ne[1])`` =
        ``(K, N)``, their blocks used as they are. Tensors are named ``prefix + name``
        (``rename`` maps GGUF names to other names first). All or nothing: a tensor of another
        type raises :class:`~tierflow.DTypeError` naming it; a malformed file
        :class:`~tierflow.CorruptFileError` naming the problem. Returns the new names."""
        return list(
            self._s.load_gguf(str(path), self._tier(tier), prefix, overwrite, dict(rename or {}))
        )

    # -- statistics and lifetime ------------------------------------------------------------
    def stats(self) -> StoreStats:
        return StoreStats(json.loads(self._s.stats_json()))

    def reset_stats(self) -> None:
        self._s.reset_stats()

    def flush(self) -> None:
        """Make sure the manifest on disk is current and durable."""
        self._s.flush()

    def close(self) -> None:
        """Wait for prefetches, flush, release the folder. Idempotent."""
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            try:
                f.wait()
            except Exception:
                pass
        self._s.close()

    @property
    def closed(self) -> bool:
        return bool(self._s.is_closed())

    def __enter__(self) -> TieredStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return f"TieredStore({where!r}, tiers={self.tier_names}, policy={self.policy!r}, tensors={len(self) if not self.closed else 'closed'})"
