"""Kernels: matmul on float and quantised weights, attention, and fused transformer ops.

Every function checks its arguments here (clear ``ShapeError`` / ``DTypeError`` /
``InvalidArgumentError``), normalises them (float16 and bfloat16 inputs are widened to float32,
non-contiguous arrays are copied), and calls the native core with the GIL released. The
instruction-set path is chosen once per process (``tierflow.info()["isa_selected"]``;
``TIERFLOW_ISA`` forces one); the private ``_isa=`` argument forces one per call (tests).

Example:
    >>> import numpy as np, tierflow
    >>> x = np.ones((2, 64), np.float32); w = np.full((64, 3), 0.5, np.float32)
    >>> tierflow.matmul(x, w).tolist()
    [[32.0, 32.0, 32.0], [32.0, 32.0, 32.0]]
    >>> q = tierflow.quantize(w, "q8_0")
    >>> (q.format, q.shape, q.nbytes)
    ('q8_0', (64, 3), 204)
    >>> round(float(tierflow.matmul(x, q)[0, 0]), 2)
    32.0
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _tierflow
from ..errors import CorruptFileError, DTypeError, InvalidArgumentError, ShapeError
from ..store import BlockTensor, TensorRef, register_block_format

__all__ = [
    "FORMATS",
    "PACKED_FORMATS",
    "ROUNDED_ACTIVATIONS_MAX_M",
    "PackedTensor",
    "QuantizedTensor",
    "attention",
    "dequantize",
    "gelu",
    "layer_norm",
    "layout_copies",
    "matmul",
    "matmul_group",
    "mlp",
    "pack",
    "packed_decode_available",
    "quantize",
    "rms_norm",
    "rope",
    "silu",
    "softmax",
]

#: Weight formats of :func:`quantize` (GGUF block layouts, see :class:`QuantizedTensor`).
FORMATS = ("f32", "f16", "bf16", "q8_0", "q4_0")

#: Up to this many rows of ``x`` (decode shapes), :func:`matmul` takes the weight-streaming
#: kernels: a ``q8_0`` / ``q4_0`` weight multiplies activations rounded to Q8 blocks with integer
#: dot products, and a plain float weight in a store is streamed (see :func:`matmul`).
ROUNDED_ACTIVATIONS_MAX_M = 32
_DECODE_MAX_M = ROUNDED_ACTIVATIONS_MAX_M

_MAX_BYTES = sys.maxsize


def _is_bf16(dt: np.dtype) -> bool:
    return dt.name == "bfloat16"


def _check_size(shape: tuple[int, ...], itemsize: int, what: str) -> None:
    total = itemsize
    for s in shape:
        total *= int(s)
        if total > _MAX_BYTES:
            raise ShapeError(f"{what} of shape {tuple(shape)} overflows the address space")


def _as_f32(a: Any, what: str) -> np.ndarray:
    """A C-contiguous float32 copy or view of ``a`` (float32, float16 or bfloat16)."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
    if a.dtype == np.float32:
        _check_size(a.shape, 4, what)
        return np.ascontiguousarray(a)
    if a.dtype == np.float16:
        _check_size(a.shape, 4, what)
        return np.ascontiguousarray(a, dtype=np.float32)
    if _is_bf16(a.dtype):
        _check_size(a.shape, 4, what)
        bits = np.ascontiguousarray(a).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    raise DTypeError(f"{what} must be float32, float16 or bfloat16, got {a.dtype}")


class QuantizedTensor(BlockTensor):
    """A weight ``W`` of logical shape ``(K, N)`` (used as ``x @ W``) in a block format.

    The data are GGUF tensor data byte for byte: ``N`` rows (one per output column) of ``K``
    elements, each row a run of blocks along ``K``:

    - ``f32`` / ``f16`` / ``bf16``: plain elements (``f32`` is the prepacked form of
      :func:`pack`);
    - ``q8_0``: 34-byte blocks of 32: an f16 scale ``d`` then 32 int8 ``q``; value ``d * q``;
    - ``q4_0``: 18-byte blocks of 32: an f16 scale ``d`` then 16 bytes, byte ``j`` holding element
      ``j`` in its low nibble and element ``j + 16`` in its high nibble; value ``d * (nibble - 8)``.

    Attributes:
        format: one of :data:`FORMATS`.
        shape: ``(K, N)``.
        data: the block bytes, a read-only 1-D uint8 array (checked at construction: length
            and finite scales, ``CorruptFileError`` otherwise; a tensor read back from a store
            has its scales checked the first time a result computed from it is not finite, so
            that every ``store.get`` is not a pass over the whole weight).
    """

    def __init__(
        self, format: str, shape: tuple[int, int], data: np.ndarray, *, _checked: bool = True
    ) -> None:
        fmt = str(format).lower()
        if fmt not in FORMATS:
            raise DTypeError(f"unknown weight format {format!r} (expected one of {FORMATS})")
        if len(shape) != 2 or any(int(s) < 0 for s in shape):
            raise ShapeError(f"a quantized weight has a 2-D shape (K, N), got {tuple(shape)}")
        k, n = (int(s) for s in shape)
        _tierflow._format_nbytes(fmt, k, n)  # ShapeError on partial blocks or overflow
        arr = np.ascontiguousarray(np.asarray(data)).reshape(-1)
        if arr.dtype != np.uint8:
            raise DTypeError(f"block data must be uint8, got {arr.dtype}")
        if _checked:
            _tierflow._check_blocks(fmt, k, n, arr)  # CorruptFileError: wrong length / bad scales
        elif arr.size != _tierflow._format_nbytes(fmt, k, n):
            raise CorruptFileError(f"{fmt} block data of {arr.size} bytes for {(k, n)}")
        # Checked once (matmul does not re-read every scale): a read-only view guards it.
        arr = arr.view()
        arr.flags.writeable = False
        self.format = fmt
        self.shape = (k, n)
        self.data = arr
        self._scales_checked = _checked

    def _check_scales(self) -> None:
        """Check every block scale (once): CorruptFileError names the first non-finite one."""
        if not self._scales_checked:
            _tierflow._check_blocks(self.format, self.shape[0], self.shape[1], self.data)
            self._scales_checked = True

    def _after(self, result: np.ndarray) -> np.ndarray:
        """A tensor from the store has its scales checked lazily: a non-finite scale always
        makes results non-finite, so they are checked the first time a result is not finite
        (rather than at every ``store.get``, a full pass over the weight)."""
        if not self._scales_checked and not np.isfinite(result).all():
            self._check_scales()
        return result

    @classmethod
    def _from_blocks(cls, format: str, shape: Sequence[int], data: np.ndarray) -> QuantizedTensor:
        """Rebuild from stored block data (the store's opaque typed byte blocks); the length is
        checked now, the scales lazily (see :meth:`_after`)."""
        return cls(format, (int(shape[0]), int(shape[1])), data, _checked=False)

    @property
    def nbytes(self) -> int:
        """Bytes of block data."""
        return int(self.data.nbytes)

    @property
    def ndim(self) -> int:
        return 2

    def dequantize(self) -> np.ndarray:
        """The float32 ``(K, N)`` array the blocks encode."""
        k, n = self.shape
        return self._after(_tierflow._dequantize(self.format, k, n, self.data))

    def __repr__(self) -> str:
        return f"QuantizedTensor(format={self.format!r}, shape={self.shape}, nbytes={self.nbytes})"


for _fmt in FORMATS:
    register_block_format(_fmt, QuantizedTensor)

#: Repacked decode layouts of :class:`PackedTensor` (see :func:`pack`), one per integer format.
PACKED_FORMATS = ("q8_0x16", "q4_0x16")


@functools.lru_cache(maxsize=1024)
def _packed_nbytes(base: str, k: int, n: int) -> int:
    return int(_tierflow._packed_nbytes(base, k, n))


class PackedTensor(BlockTensor):
    """A ``q8_0`` / ``q4_0`` weight of logical shape ``(K, N)`` repacked for the VNNI-style
    decode kernels (format ``"q8_0x16"`` / ``"q4_0x16"``), as llama.cpp's CPU buffer types
    repack GGUF weights at load. Made by :func:`pack`; :meth:`unpack` gives the GGUF blocks back
    byte for byte.

    Layout: the ``N`` rows of blocks are taken 16 at a time (a tile, the last padded with zero
    rows); a tile is stored block by block, each record holding the 16 rows' f16 scales and
    then their quants in the operand order of ``vpdpbusd`` (one row per 32-bit lane: bytes
    ``4j .. 4j+3`` of the 16 rows side by side), Q8_0 quants offset to unsigned ``q + 128``,
    Q4_0 nibbles ``j`` and ``j + 16`` of a row in one byte as in GGUF. A tile is one sequential
    stream for the kernel; no transposition or gather at run time. Size: the block data plus
    the padding rows.

    :func:`matmul` with at most :data:`ROUNDED_ACTIVATIONS_MAX_M` rows of ``x`` runs a packed
    kernel on the ``avx512`` and ``avx2`` paths (AVX-512-VNNI, AVX-VNNI, or plain AVX2
    ``vpmaddubsw``: :func:`packed_decode_available`); any other case (more rows, the scalar
    path, a non-finite ``x``) unpacks the blocks for that call (one copy of the weight, counted by
    :func:`layout_copies`) and runs what :func:`matmul` runs on the :class:`QuantizedTensor`.
    Results are bit-identical to the :class:`QuantizedTensor` in every case.

    Attributes:
        format: ``"q8_0x16"`` or ``"q4_0x16"``; ``base_format`` is ``"q8_0"`` / ``"q4_0"``.
        shape: ``(K, N)``.
        data: the packed bytes, a read-only 1-D uint8 array.
    """

    def __init__(
        self, format: str, shape: tuple[int, int], data: np.ndarray, *, _checked: bool = True
    ) -> None:
        fmt = str(format).lower()
        if fmt not in PACKED_FORMATS:
            raise DTypeError(f"unknown packed format {format!r} (expected one of {PACKED_FORMATS})")
        if len(shape) != 2 or any(int(s) < 0 for s in shape):
            raise ShapeError(f"a packed weight has a 2-D shape (K, N), got {tuple(shape)}")
        k, n = (int(s) for s in shape)
        if k % 32:
            raise ShapeError(f"a {fmt} weight has K a multiple of 32, got shape {(k, n)}")
        base = fmt[: -len("x16")]
        want = _packed_nbytes(base, k, n)  # InvalidArgumentError on an overflow
        arr = np.ascontiguousarray(np.asarray(data)).reshape(-1)
        if arr.dtype != np.uint8:
            raise DTypeError(f"packed data must be uint8, got {arr.dtype}")
        if arr.size != want:
            raise CorruptFileError(f"{fmt} data of {arr.size} bytes for {(k, n)}, expected {want}")
        arr = arr.view()
        arr.flags.writeable = False
        self.format = fmt
        self.base_format = base
        self.shape = (k, n)
        self.data = arr
        self._scales_checked = False  # checked now, or (stored data) at the first bad result
        if _checked:
            self._check_scales()

    @classmethod
    def _from_blocks(cls, format: str, shape: Sequence[int], data: np.ndarray) -> PackedTensor:
        """Rebuild from stored bytes (read-only, 1-D uint8: the store's view): the length is
        checked now, the scales lazily. A decode step rebuilds every weight it reads, so this
        skips the general constructor's conversions."""
        fmt = str(format)
        k, n = int(shape[0]), int(shape[1])
        if (
            fmt not in PACKED_FORMATS
            or data.dtype != np.uint8
            or data.ndim != 1
            or data.flags.writeable
            or k % 32
        ):
            return cls(fmt, (k, n), data, _checked=False)
        base = fmt[: -len("x16")]
        want = _packed_nbytes(base, k, n)
        if data.size != want:
            raise CorruptFileError(f"{fmt} data of {data.size} bytes for {(k, n)}, expected {want}")
        p = cls.__new__(cls)
        p.format, p.base_format, p.shape, p.data = fmt, base, (k, n), data
        p._scales_checked = False
        return p

    @classmethod
    def from_quantized(cls, q: QuantizedTensor) -> PackedTensor:
        """Repack a ``q8_0`` / ``q4_0`` :class:`QuantizedTensor` (K a multiple of 32)."""
        if q.format not in ("q8_0", "q4_0"):
            raise DTypeError(f"only q8_0 / q4_0 weights repack, not {q.format}")
        k, n = q.shape
        q._check_scales()
        p = cls(
            q.format + "x16", (k, n), _tierflow._pack_vnni(q.format, k, n, q.data), _checked=False
        )
        p._scales_checked = True
        return p

    def unpack(self) -> QuantizedTensor:
        """The GGUF blocks (a new :class:`QuantizedTensor`, byte for byte the one packed)."""
        k, n = self.shape
        blocks = _tierflow._unpack_vnni(self.base_format, k, n, self.data)
        return QuantizedTensor(self.base_format, (k, n), blocks, _checked=not self._scales_checked)

    def _check_scales(self) -> None:
        if not self._scales_checked:
            self.unpack()  # checks every block scale: CorruptFileError names the first bad one
            self._scales_checked = True

    def _after(self, result: np.ndarray) -> np.ndarray:
        """As :meth:`QuantizedTensor._after`: scales of stored data checked on a non-finite
        result."""
        if not self._scales_checked and not np.isfinite(result).all():
            self._check_scales()
        return result

    @property
    def ndim(self) -> int:
        return 2

    def dequantize(self) -> np.ndarray:
        """The float32 ``(K, N)`` array the blocks encode."""
        return self.unpack().dequantize()

    def __repr__(self) -> str:
        return f"PackedTensor(format={self.format!r}, shape={self.shape}, nbytes={self.nbytes})"


for _fmt in PACKED_FORMATS:
    register_block_format(_fmt, PackedTensor)


_packed_ok: dict[str | None, str] = {}  # TIERFLOW_ISA -> the selected instruction set


def packed_decode_available(_isa: str | None = None) -> bool:
    """True when :func:`matmul` runs :class:`PackedTensor` weights with a packed kernel at
    decode shapes: the selected instruction set is ``avx512`` (the AVX-512-VNNI body where
    the CPU has it) or ``avx2`` (the AVX-VNNI body, or plain AVX2 ``vpmaddubsw``), all
    bit-identical to the scalar reference. On the scalar path a packed weight is unpacked at
    every call, so loaders keep the GGUF blocks there."""
    if _isa is None:
        key = os.environ.get("TIERFLOW_ISA")
        _isa = _packed_ok.get(key)
        if _isa is None:
            from .._info import info

            _isa = _packed_ok[key] = str(info()["isa_selected"])
    return _isa in ("avx2", "avx512")


def quantize(w: Any, fmt: str) -> QuantizedTensor:
    """Quantise a ``(K, N)`` weight into ``fmt`` (one of :data:`FORMATS`).

    Q8_0 / Q4_0 follow ggml's reference quantisers; their per-element error is at most ``d / 2``
    (Q8_0) and ``d`` (Q4_0) with ``d`` the block's scale (``max|w| / 127`` and ``max|w| / 8``).

    Raises:
        DTypeError: unknown format or non-float input.
        ShapeError: ``w`` not 2-D, or K not a multiple of 32 for a block format.
    """
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise DTypeError(f"unknown weight format {fmt!r} (expected one of {FORMATS})")
    if isinstance(w, QuantizedTensor):
        w = w.dequantize()
    arr = np.asarray(w)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    w32 = _as_f32(arr, "w")
    if w32.ndim != 2:
        raise ShapeError(f"a weight is 2-D (K, N), got shape {w32.shape}")
    k, n = w32.shape
    _tierflow._format_nbytes(fmt, k, n)
    return QuantizedTensor(fmt, (k, n), _tierflow._quantize(w32, fmt))


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """``q.dequantize()``."""
    return q.dequantize()


def pack(w: Any, fmt: str = "f32") -> QuantizedTensor | PackedTensor:
    """Lay a static weight out once for the decode kernels, so repeated ``matmul`` calls read
    it front to back.

    - ``fmt`` one of :data:`FORMATS`: rows along K (see :class:`QuantizedTensor`), an ordinary
      ``QuantizedTensor`` (``format="f32"`` by default) that can be stored. A weight that is
      already a ``QuantizedTensor`` is returned as it is.
    - ``fmt="q8_0x16"`` / ``"q4_0x16"``: the VNNI decode layout (:class:`PackedTensor`) of the
      ``q8_0`` / ``q4_0`` blocks (a float weight is quantised first; a ``QuantizedTensor`` of
      the matching format is repacked as it is, with no requantisation). Use it where
      :func:`packed_decode_available` is true.
    """
    fmt = str(fmt).lower()
    if fmt in PACKED_FORMATS:
        if isinstance(w, PackedTensor):
            if w.format != fmt:
                raise DTypeError(f"a {w.format} weight cannot be packed as {fmt}")
            return w
        base = fmt[: -len("x16")]
        if not isinstance(w, QuantizedTensor):
            w = quantize(w, base)
        elif w.format != base:
            raise DTypeError(f"a {w.format} weight cannot be packed as {fmt} (quantize it first)")
        return PackedTensor.from_quantized(w)
    if isinstance(w, (QuantizedTensor, PackedTensor)):
        return w
    return quantize(w, fmt)


def _prep_out(out: Any, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray):
        raise InvalidArgumentError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise DTypeError(f"out must be float32, got {out.dtype}")
    if out.shape != shape:
        raise ShapeError(f"out has shape {out.shape}, expected {shape}")
    if not out.flags.writeable:
        raise InvalidArgumentError("out is read-only")
    if not out.flags.c_contiguous:
        raise InvalidArgumentError("out must be C-contiguous")
    return out


def _weight_shape(w: Any) -> tuple[int, int]:
    if isinstance(w, (QuantizedTensor, PackedTensor, TensorRef)):
        shape = tuple(w.shape)
        if len(shape) != 2:
            raise ShapeError(f"matmul weight must be 2-D (K, N), got shape {shape}")
        return int(shape[0]), int(shape[1])
    shape = tuple(np.shape(w))
    if len(shape) != 2:
        raise ShapeError(f"matmul weight must be 2-D (K, N), got shape {shape}")
    return int(shape[0]), int(shape[1])


def matmul(
    x: Any,
    w: Any,
    out: np.ndarray | None = None,
    bias: Any = None,
    *,
    panel_bytes: int = 8 << 20,
    _isa: str | None = None,
) -> np.ndarray:
    """``x @ w (+ bias)`` in float32.

    Args:
        x: ``(..., K)`` float32, float16 or bfloat16, any strides.
        w: ``(K, N)`` float32 / float16 / bfloat16 array, a :class:`QuantizedTensor`, a
            :class:`PackedTensor` (the VNNI decode layout; bit for bit its blocks' result), or a
            store's ``TensorRef`` (``store["layer0.w"]``). An array is read in place when it
            is C-contiguous or its transpose is (Fortran order; a PyTorch-layout ``(N, K)``
            weight passed as ``w_nk.T``: rows of K, the row-stored layout the dot-product
            decode kernel and the GEMM with column-major B read directly); other strides cost
            one packed copy per call, counted by :func:`layout_copies`. A stored ``QuantizedTensor`` (any
            format, including the packed ``f32`` of :func:`pack`) is streamed: it stays in its
            tier and is pulled in panels of about ``panel_bytes`` through a double buffer (the
            next panel is read while the current one is multiplied), bit-identical to the
            in-memory result; the store's statistics count the bytes. A stored plain float32 /
            float16 / bfloat16 ``(K, N)`` array streams the same way (panels of whole rows of
            K) when ``x`` has at most :data:`ROUNDED_ACTIVATIONS_MAX_M` rows (decode shapes); with
            more rows it is loaded whole (store it packed with :func:`pack` to stream it at any
            size: the large-``x`` kernel works on panels of the packed form). The transpose of a
            stored ``(N, K)`` float tensor (``store["fc.weight"].T``, a PyTorch ``Linear``
            weight) is that packed form already, and streams at any size.
        out: optional float32 C-contiguous writable ``(..., N)`` array to write into.
        bias: optional ``(N,)`` added to every row.
        panel_bytes: the streaming panel size (two such buffers are the whole fast-memory use).

    Returns:
        float32 ``(..., N)`` (``out`` when given). Rounding: a sum of K float32 products, so
        ``|err| <= ~K * eps32 * sum|x||w|``; a quantised weight adds its quantisation error.
        With a ``q8_0`` / ``q4_0`` weight and at most :data:`ROUNDED_ACTIVATIONS_MAX_M` rows of
        ``x`` (decode shapes), ``x`` is rounded to Q8 blocks of 32 along K (``dx = max|x| / 127``,
        ``qx = round_half_even(x * (127 / max|x|))`` in float32) and each block's dot product is
        an exact integer sum, as ggml does; that adds at most ``sum_blocks dx / 2 * sum_block |w|`` (about 0.4% of
        ``sum|x||w|``). An ``x`` holding an Inf or NaN is not rounded (IEEE 754 propagation), and
        more rows than that take the exact dequantised path (as ggml does with BLAS).

    Raises:
        ShapeError: K of ``x`` and ``w`` differ (the message names both shapes), bad bias/out
            shape, or sizes that overflow. DTypeError: unsupported dtypes.
            CorruptFileError: corrupt block data.
    """
    k, n = _weight_shape(w)
    xshape = tuple(np.shape(x))
    if len(xshape) == 0:
        raise ShapeError("matmul input must have at least one dimension")
    if xshape[-1] != k:
        raise ShapeError(f"matmul shapes do not match: x {xshape} and w {(k, n)} (K differs)")
    lead = xshape[:-1]
    _check_size((*lead, n), 4, "the result")
    xa = _as_f32(x, "x")
    m = math.prod(lead)  # the size check above bounds it
    res = _prep_out(out, (*lead, n))
    b = None
    if bias is not None:
        b = _as_f32(bias, "bias")
        if b.shape != (n,):
            raise ShapeError(f"bias has shape {b.shape}, expected {(n,)} for w {(k, n)}")
    x2 = xa.reshape(m, k)
    r2 = res.reshape(m, n)
    if isinstance(w, TensorRef):
        if (
            w._transposed
            and str(w.dtype) in ("float32", "float16")
            and m > _DECODE_MAX_M
            and _in_memory(w)
        ):
            # in a memory tier, the GEMM reads the (N, K) rows where they are (zero copy)
            # rather than a stream one thread shorter for its reader
            _matmul_in_memory(x2, w.store.get(w.name).T, r2, b, _isa)
            return res
        if _matmul_stored(x2, w, r2, b, panel_bytes, _isa):
            return res
        w = w.numpy()
    _matmul_in_memory(x2, w, r2, b, _isa)
    return res


def _matmul_stored(
    x2: np.ndarray,
    w: TensorRef,
    r2: np.ndarray,
    b: np.ndarray | None,
    panel_bytes: int,
    _isa: str | None,
) -> bool:
    """Stream a stored weight through the kernels' double buffer when its layout allows (see
    :func:`matmul`); False: the caller loads it whole."""
    (m, k), n = x2.shape, r2.shape[1]
    dt = w.dtype
    kind = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(str(dt))
    plain = False
    if w._transposed and kind is not None:
        fmt = kind  # (N, K) rows of K as stored: exactly the row-stored layout of the formats
    elif isinstance(dt, str) and dt.startswith("block:"):
        fmt = dt[len("block:") :]
        if fmt in PACKED_FORMATS:
            return False  # loaded whole: the packed kernel reads the tile records in place
        if fmt not in FORMATS:
            raise DTypeError(f"stored tensor {w.name!r} has block format {fmt!r}, not a weight")
    elif kind is not None and m <= _DECODE_MAX_M:
        fmt, plain = kind, True
    else:
        return False
    if panel_bytes < 1:
        raise InvalidArgumentError(f"panel_bytes must be positive, got {panel_bytes}")
    native = w.store._s
    if plain:
        _tierflow._matmul_streamed(
            x2, native, w.name, fmt, k, n, r2, b, int(panel_bytes), _isa, plain=True
        )
    else:
        _tierflow._matmul_streamed(x2, native, w.name, fmt, k, n, r2, b, int(panel_bytes), _isa)
    return True


def _matmul_in_memory(
    x2: np.ndarray, w: Any, r2: np.ndarray, b: np.ndarray | None, _isa: str | None
) -> None:
    """``r2 = x2 @ w (+ b)`` for a weight in memory: a QuantizedTensor, a PackedTensor or a
    float array."""
    if isinstance(w, PackedTensor):
        k, n = w.shape
        if x2.shape[0] > _DECODE_MAX_M or not packed_decode_available(_isa):
            global _layout_copies
            _layout_copies += 1  # the Rust side unpacks the blocks for this call
        _tierflow._matmul_packed(x2, w.base_format, k, n, w.data, r2, b, _isa)
        w._after(r2)
        return
    if isinstance(w, QuantizedTensor):
        _tierflow._matmul_blocks(x2, w.format, x2.shape[1], r2.shape[1], w.data, r2, b, _isa)
        w._after(r2)
        return
    wa = w if isinstance(w, np.ndarray) else np.asarray(w)
    if wa.dtype == np.float32:
        kind = "f32"
    elif wa.dtype == np.float16 or _is_bf16(wa.dtype):
        kind = "f16" if wa.dtype == np.float16 else "bf16"
    else:
        raise DTypeError(
            f"w must be float32, float16, bfloat16 or a QuantizedTensor, got {wa.dtype}"
        )
    wa = _kernel_layout(wa)
    if not wa.flags.c_contiguous:
        # W^T is C-contiguous: N rows of K, the kernels' row-stored layout (ggml's), read in
        # place: dot products over rows at decode shapes, the GEMM with column-major B above.
        rows = wa.T.reshape(-1).view(np.uint8)
        k, n = wa.shape
        _tierflow._matmul_blocks(x2, kind, k, n, rows, r2, b, _isa)
    elif kind == "f32":
        _tierflow._matmul_plain(x2, wa, None, "f32", r2, b, _isa)
    else:
        _tierflow._matmul_plain(x2, None, wa.view(np.uint16), kind, r2, b, _isa)


def _row_stored(w: Any) -> tuple[str, np.ndarray] | None:
    """``(format, block bytes)`` of a weight held in memory as rows of ``K`` (a
    :class:`QuantizedTensor`, or a float array whose transpose is C-contiguous: ``w_nk.T``);
    None for any other weight."""
    if isinstance(w, QuantizedTensor):
        return w.format, w.data
    if isinstance(w, np.ndarray) and w.ndim == 2 and not w.flags.c_contiguous:
        kind = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}.get(w.dtype)
        if kind is None and _is_bf16(w.dtype):
            kind = "bf16"
        if kind is not None and w.T.flags.c_contiguous:
            return kind, w.T.reshape(-1).view(np.uint8)
    return None


def matmul_group(
    x: Any,
    ws: Sequence[Any],
    biases: Sequence[Any | None] | None = None,
    *,
    _isa: str | None = None,
) -> list[np.ndarray]:
    """``[x @ w + b for w, b in zip(ws, biases)]`` in one call: several weights sharing ``x``
    (a layer's q, k and v projections; an MLP's gate and up projections).

    At decode shapes (``x`` with at most :data:`ROUNDED_ACTIVATIONS_MAX_M` rows), when every
    weight is held in memory as rows of ``K`` (a :class:`QuantizedTensor`, or a float array
    passed as the transpose of a C-contiguous ``(N, K)`` one), the row tasks of all the weights
    run as one job on the worker threads: the weights stream back to back (one start and one
    tail instead of one per weight) and ``x`` is rounded to Q8 blocks once for the q8_0 / q4_0
    ones. Each result is bit for bit what :func:`matmul` returns for that weight alone. Other
    weights or shapes: one :func:`matmul` per weight.

    Raises:
        ShapeError: a weight's K differs from ``x``'s, or a bias has the wrong shape (nothing
            is computed). Any error :func:`matmul` raises.
    """
    ws = list(ws)
    bs = [None] * len(ws) if biases is None else list(biases)
    if len(bs) != len(ws):
        raise ShapeError(f"matmul_group got {len(ws)} weights and {len(bs)} biases")
    xshape = tuple(np.shape(x))
    if (
        len(ws) > 1
        and len(xshape) > 0
        and all(isinstance(w, PackedTensor) for w in ws)
        and math.prod(xshape[:-1]) <= _DECODE_MAX_M
        and packed_decode_available(_isa)
    ):
        return _packed_group(x, xshape, ws, bs, _isa)
    rows = [_row_stored(w) for w in ws]
    if (
        not ws
        or len(xshape) == 0
        or any(r is None for r in rows)
        or math.prod(xshape[:-1]) > _DECODE_MAX_M
    ):
        return [matmul(x, w, bias=b, _isa=_isa) for w, b in zip(ws, bs, strict=True)]
    stored = [r for r in rows if r is not None]  # every weight (checked above)
    x2, outs, specs = _group_setup(x, xshape, ws, bs)
    parts = [
        (fmt, k, n, data, res, ba)
        for (fmt, data), (k, n, res, ba) in zip(stored, specs, strict=True)
    ]
    _tierflow._matmul_blocks_group(x2, parts, _isa)
    for w, (_k, _n, res, _b) in zip(ws, specs, strict=True):
        if isinstance(w, QuantizedTensor):
            w._after(res)
    return outs


def _group_setup(
    x: Any, xshape: tuple[int, ...], ws: list[Any], bs: list[Any]
) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int, np.ndarray, np.ndarray | None]]]:
    """The checks and buffers of a grouped call, before anything is computed: ``x`` as
    ``(m, K)`` float32, the results ``(*lead, N_j)``, and per weight ``(K, N_j, result as
    (m, N_j), bias as float32 or None)``. ShapeError on a K that differs or a bias shape."""
    shapes = [_weight_shape(w) for w in ws]
    for k, n in shapes:
        if xshape[-1] != k:
            raise ShapeError(f"matmul shapes do not match: x {xshape} and w {(k, n)} (K differs)")
    lead = xshape[:-1]
    for _k, n in shapes:
        _check_size((*lead, n), 4, "the result")
    xa = _as_f32(x, "x")
    m = math.prod(lead)
    x2 = xa.reshape(m, xshape[-1])
    outs, specs = [], []
    for (k, n), b in zip(shapes, bs, strict=True):
        res = np.empty((*lead, n), np.float32)
        ba = None
        if b is not None:
            ba = _as_f32(b, "bias")
            if ba.shape != (n,):
                raise ShapeError(f"bias has shape {ba.shape}, expected {(n,)} for w {(k, n)}")
        specs.append((k, n, res.reshape(m, n), ba))
        outs.append(res)
    return x2, outs, specs


def _packed_group(
    x: Any, xshape: tuple[int, ...], ws: list[Any], bs: list[Any], _isa: str | None
) -> list[np.ndarray]:
    """:func:`matmul_group` of :class:`PackedTensor` weights at decode shapes: one native job
    over every weight's tiles (``x`` rounded to Q8 blocks once)."""
    x2, outs, specs = _group_setup(x, xshape, ws, bs)
    parts = [
        (w.base_format, k, n, w.data, res, ba) for w, (k, n, res, ba) in zip(ws, specs, strict=True)
    ]
    _tierflow._matmul_packed_group(x2, parts, _isa)
    for w, (_k, _n, res, _b) in zip(ws, specs, strict=True):
        w._after(res)
    return outs


def _in_memory(ref: TensorRef) -> bool:
    tier = ref.tier
    return not any(t.file_backed for t in ref.store.tiers if t.name == tier)


_layout_copies = 0


def layout_copies() -> int:
    """How many times :func:`matmul` copied a float weight because no kernel reads its strides
    (since the process started). A weight that is C-contiguous, or whose transpose is
    (Fortran order, ``w_nk.T``), is read in place; any other strides (a slice with a step,
    negative strides) cost one packed copy per call, counted here: pass such a weight through
    :func:`pack` once to avoid it."""
    return _layout_copies


def _kernel_layout(w: np.ndarray) -> np.ndarray:
    """``w`` if it or its transpose is C-contiguous, else one packed copy (counted by
    :func:`layout_copies`) in the order its smaller stride suggests, so the copy reads memory
    mostly in order."""
    global _layout_copies
    if w.flags.c_contiguous or w.T.flags.c_contiguous:
        return w
    _layout_copies += 1
    s0, s1 = (abs(s) for s in w.strides)
    if s0 < s1:
        return np.ascontiguousarray(w.T).T
    return np.ascontiguousarray(w)


def _float_array(x: Any, what: str) -> np.ndarray:
    return _as_f32(x, what)


def attention(
    q: Any,
    k: Any,
    v: Any,
    causal: bool = False,
    scale: float | None = None,
    mask: Any = None,
    *,
    _isa: str | None = None,
) -> np.ndarray:
    """``softmax(q k^T * scale + mask) v`` per batch and head, flash style (blocked online
    softmax; extra memory O(S * D), never the ``S x S`` scores).

    Args:
        q: ``(B, H, Sq, D)``; k, v: ``(B, Hkv, Skv, D)`` with ``Hkv`` dividing ``H`` (grouped
            query attention: query head ``h`` uses key/value head ``h // (H // Hkv)``).
        causal: query ``i`` sees keys ``j <= i + Skv - Sq`` (bottom-right aligned, so a decode
            step's single query sees the whole KV cache).
        scale: default ``1 / sqrt(D)``.
        mask: boolean (True = may attend) or additive float, broadcastable to
            ``(B, H, Sq, Skv)``.

    A query row that can see no key returns NaN (as ``softmax`` of an all ``-inf`` row). With
    one query row (``Sq = 1``, a decode step) and no mask, the decode kernel of
    :class:`PagedKVCache` runs, reading each key and value once (K and V as one page each).

    Raises:
        ShapeError: mismatched shapes (named). DTypeError: non-float inputs.
    """
    qa, ka, va = (_float_array(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    if qa.ndim != 4 or ka.ndim != 4 or va.ndim != 4:
        raise ShapeError(
            f"attention takes (B, H, S, D) arrays, got q {qa.shape}, k {ka.shape}, v {va.shape}"
        )
    b, h, sq, d = qa.shape
    bk, hkv, skv, dk = ka.shape
    if ka.shape != va.shape or bk != b or dk != d or (hkv == 0 and h > 0) or (hkv and h % hkv):
        raise ShapeError(
            f"attention shapes do not match: q {qa.shape}, k {ka.shape}, v {va.shape} "
            "(need the same B and D, k and v alike, and H a multiple of Hkv)"
        )
    if scale is None:
        scale = 1.0 / float(np.sqrt(d)) if d else 1.0
    out = np.empty((b, h, sq, d), np.float32)
    mflat = None
    mbh = (1, 1)
    if mask is not None:
        ma = np.asarray(mask)
        if ma.dtype == np.bool_:
            ma = np.where(ma, np.float32(0), np.float32(-np.inf))
        else:
            ma = _as_f32(ma, "mask")
        if ma.ndim > 4:
            raise ShapeError(f"mask {ma.shape} does not broadcast to {(b, h, sq, skv)}")
        ma = ma.reshape((1,) * (4 - ma.ndim) + tuple(ma.shape))
        mshape: tuple[int, ...] = ma.shape
        mb = b if mshape[0] == b else 1
        mh = h if mshape[1] == h else 1
        try:
            ma = np.broadcast_to(ma, (mb, mh, sq, skv))
        except ValueError:
            raise ShapeError(
                f"mask {np.shape(mask)} does not broadcast to {(b, h, sq, skv)}"
            ) from None
        mflat = np.ascontiguousarray(ma, dtype=np.float32).reshape(-1)
        mbh = (mb, mh)
    if out.size == 0:
        return out
    if sq == 1 and mflat is None and skv > 0:
        # One query row per head (decode): the decode kernel reads each key and value once,
        # where the blocked kernel would work on a whole block of query rows for this one.
        # With one query row ``causal`` lets it see every key. K and V are its page pools,
        # one page of ``Skv`` slots per sequence.
        _tierflow._paged_decode(
            qa.reshape(-1),
            np.ascontiguousarray(ka).reshape(-1),
            np.ascontiguousarray(va).reshape(-1),
            (b, h, hkv, d, b, skv, 1),
            np.arange(b, dtype=np.int64),
            [skv] * b,
            float(scale),
            out.reshape(-1),
            _isa,
        )
        return out
    _tierflow._attention(
        qa.reshape(-1),
        np.ascontiguousarray(ka).reshape(-1),
        np.ascontiguousarray(va).reshape(-1),
        (b, h, hkv, sq, skv, d),
        bool(causal),
        float(scale),
        out.reshape(-1),
        mflat,
        mbh,
        _isa,
    )
    return out


def _rowwise(
    op: str,
    x: Any,
    *,
    w: Any = None,
    b: Any = None,
    aux: Any = None,
    eps: float = 1e-6,
    _isa: str | None = None,
) -> np.ndarray:
    xa = _as_f32(x, "x")
    if xa.ndim == 0:
        xa = xa.reshape(1)
    d = xa.shape[-1]
    out = np.empty(xa.shape, np.float32)
    params: list[np.ndarray | None] = []
    for arr, name in ((w, "weight"), (b, "bias")):
        if arr is None:
            params.append(None)
            continue
        pa = _as_f32(arr, name)
        if pa.shape != (d,):
            raise ShapeError(f"{name} has shape {pa.shape}, expected {(d,)} for x {xa.shape}")
        params.append(pa)
    ua = None
    if aux is not None:
        ua = _as_f32(aux, "up")
        if ua.shape != xa.shape:
            raise ShapeError(f"gate {xa.shape} and up {ua.shape} differ")
        ua = ua.reshape(-1)
    if out.size:
        _tierflow._rowwise(
            op, xa.reshape(-1), d, out.reshape(-1), params[0], params[1], ua, eps, _isa
        )
    return out


def rms_norm(
    x: Any, weight: Any = None, eps: float = 1e-6, *, _isa: str | None = None
) -> np.ndarray:
    """``x / sqrt(mean(x**2, -1) + eps) * weight`` over the last axis."""
    return _rowwise("rms_norm", x, w=weight, eps=eps, _isa=_isa)


def layer_norm(
    x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5, *, _isa: str | None = None
) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis."""
    return _rowwise("layer_norm", x, w=weight, b=bias, eps=eps, _isa=_isa)


def silu(x: Any, *, _isa: str | None = None) -> np.ndarray:
    """``x * sigmoid(x)``."""
    return _rowwise("silu", x, _isa=_isa)


def gelu(x: Any, approximate: str = "none", *, _isa: str | None = None) -> np.ndarray:
    """``x * Phi(x)`` with the exact erf form (``approximate="none"``) or the tanh form
    (``"tanh"``), as ``torch.nn.functional.gelu``."""
    if approximate not in ("none", "tanh"):
        raise InvalidArgumentError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _rowwise("gelu_erf" if approximate == "none" else "gelu_tanh", x, _isa=_isa)


def softmax(x: Any, axis: int = -1, *, _isa: str | None = None) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``."""
    xa = _as_f32(x, "x")
    if xa.ndim == 0:
        raise ShapeError("softmax needs at least one dimension")
    moved = np.moveaxis(xa, axis, -1)
    return np.moveaxis(_rowwise("softmax", moved, _isa=_isa), -1, axis)


def rope(
    x: Any,
    positions: Any = None,
    base: float = 10000.0,
    interleaved: bool = False,
    *,
    _isa: str | None = None,
) -> np.ndarray:
    """Rotary position embedding over the last axis of ``x`` ``(..., S, D)`` (D even).

    Pairs ``(i, i + D/2)`` (Llama / GPT-NeoX half split, the default) or ``(2i, 2i + 1)``
    (``interleaved=True``) are rotated by ``positions[s] * base**(-2i / D)``; ``positions``
    defaults to ``arange(S)``.
    """
    xa = _as_f32(x, "x")
    if xa.ndim < 2 or xa.shape[-1] % 2:
        raise ShapeError(f"rope takes (..., S, D) with D even, got {xa.shape}")
    s, d = xa.shape[-2:]
    pos = np.arange(s, dtype=np.float64) if positions is None else np.asarray(positions, np.float64)
    if pos.shape != (s,):
        raise ShapeError(f"positions has shape {pos.shape}, expected {(s,)} for x {xa.shape}")
    out = np.empty(xa.shape, np.float32)
    if out.size:
        _tierflow._rope(
            xa.reshape(-1),
            s,
            d,
            np.ascontiguousarray(pos),
            float(base),
            bool(interleaved),
            out.reshape(-1),
            _isa,
        )
    return out


_ACTS = {"silu": "silu", "gelu": "gelu_erf", "gelu_tanh": "gelu_tanh"}


def mlp(
    x: Any,
    w1: Any,
    w2: Any,
    w3: Any = None,
    *,
    activation: str | None = None,
    _isa: str | None = None,
) -> np.ndarray:
    """A transformer MLP with weights in any format (arrays or :class:`QuantizedTensor`).

    - ``mlp(x, w_gate, w_up, w_down)``: gated (SwiGLU, ``activation="silu"`` by default;
      ``"gelu"``/``"gelu_tanh"`` give GeGLU): ``(act(x w_gate) * (x w_up)) w_down``.
    - ``mlp(x, w1, w2, activation="gelu")``: ``act(x w1) w2`` (default ``"gelu"``, exact erf).

    The activation and gating product are one fused pass over the ``(M, I)`` intermediates,
    which stay in cache between the decode matmuls (``M * I * 4`` bytes each: 352 KiB at
    ``M = 8, I = 11008``). The gate and up products run as one :func:`matmul_group` call (one
    job over both weights at decode shapes), the down product after the activation.
    """
    act = activation or ("silu" if w3 is not None else "gelu")
    if act not in _ACTS:
        raise InvalidArgumentError(f"activation must be one of {sorted(_ACTS)}, got {act!r}")
    if w3 is not None:
        kg, ig = _weight_shape(w1)
        ku, iu = _weight_shape(w2)
        idn, nd = _weight_shape(w3)
        if (kg, ig) != (ku, iu) or idn != ig:
            raise ShapeError(
                f"mlp weights do not chain: gate {(kg, ig)}, up {(ku, iu)}, down {(idn, nd)}"
            )
        kind = {"silu": "swiglu", "gelu": "geglu_erf", "gelu_tanh": "geglu_tanh"}[act]
        xshape = tuple(np.shape(x))
        if (
            all(isinstance(w, PackedTensor) for w in (w1, w2, w3))
            and len(xshape) > 0
            and xshape[-1] == kg
            and 0 < math.prod(xshape[:-1]) <= _DECODE_MAX_M
            and packed_decode_available(_isa)
        ):
            # decode shapes, VNNI weights: the three products and the gating in one native
            # call, bit for bit the calls below
            xa = _as_f32(x, "x")
            m = math.prod(xshape[:-1])
            res = np.empty((*xshape[:-1], nd), np.float32)
            pg, pu, pd = ((w.base_format, w.shape[0], w.shape[1], w.data) for w in (w1, w2, w3))
            _tierflow._mlp_packed(xa.reshape(m, kg), pg, pu, pd, kind, res.reshape(m, nd), _isa)
            if not all(w._scales_checked for w in (w1, w2, w3)) and not np.isfinite(res).all():
                for w in (w1, w2, w3):
                    w._check_scales()
            return res
        g, u = matmul_group(x, [w1, w2], _isa=_isa)
        hid = g if g.size == 0 else _glu(kind, g, u, _isa)
        return matmul(hid, w3, _isa=_isa)
    k1, i1 = _weight_shape(w1)
    i2, _n2 = _weight_shape(w2)
    if i1 != i2:
        raise ShapeError(f"mlp weights do not chain: w1 {(k1, i1)}, w2 {_weight_shape(w2)}")
    pre = matmul(x, w1, _isa=_isa)
    hmid = np.empty_like(pre)
    if pre.size:
        d = pre.shape[-1]
        _tierflow._rowwise(
            _ACTS[act], pre.reshape(-1), d, hmid.reshape(-1), None, None, None, 0.0, _isa
        )
    return matmul(hmid, w2, _isa=_isa)


def _glu(kind: str, g: np.ndarray, u: np.ndarray, _isa: str | None) -> np.ndarray:
    h = np.empty_like(g)
    _tierflow._rowwise(
        kind, g.reshape(-1), g.shape[-1], h.reshape(-1), None, None, u.reshape(-1), 0.0, _isa
    )
    return h
