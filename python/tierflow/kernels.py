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

import sys
from typing import Any

import numpy as np

from . import _tierflow
from .errors import DTypeError, InvalidArgumentError, ShapeError
from .store import BlockTensor, register_block_format

__all__ = ["FORMATS", "QuantizedTensor", "dequantize", "matmul", "pack", "quantize"]

#: Weight formats of :func:`quantize` (GGUF block layouts, see :class:`QuantizedTensor`).
FORMATS = ("f32", "f16", "bf16", "q8_0", "q4_0")

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
        data: the block bytes, a 1-D uint8 array.
    """

    def __init__(self, format: str, shape: tuple[int, int], data: np.ndarray) -> None:
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
        _tierflow._check_blocks(fmt, k, n, arr)  # CorruptFileError on wrong length / bad scales
        self.format = fmt
        self.shape = (k, n)
        self.data = arr

    @classmethod
    def _from_blocks(cls, format: str, shape: tuple[int, ...], data: np.ndarray) -> QuantizedTensor:
        """Rebuild from stored block data (the store's opaque typed byte blocks)."""
        return cls(format, (int(shape[0]), int(shape[1])), data)

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
        return _tierflow._dequantize(self.format, k, n, self.data)

    def __repr__(self) -> str:
        return f"QuantizedTensor(format={self.format!r}, shape={self.shape}, nbytes={self.nbytes})"


for _fmt in FORMATS:
    register_block_format(_fmt, QuantizedTensor)


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


def pack(w: Any, fmt: str = "f32") -> QuantizedTensor:
    """Lay a static weight out once for the decode kernels (rows along K, see
    :class:`QuantizedTensor`), so repeated ``matmul`` calls read it front to back. The packed
    form is an ordinary :class:`QuantizedTensor` (``format="f32"`` by default) and can be stored.
    A weight that is already a ``QuantizedTensor`` is returned as it is."""
    if isinstance(w, QuantizedTensor):
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
    if isinstance(w, QuantizedTensor):
        return w.shape
    shape = tuple(np.shape(w))
    if len(shape) != 2:
        raise ShapeError(f"matmul weight must be 2-D (K, N), got shape {shape}")
    return int(shape[0]), int(shape[1])


def matmul(
    x: Any, w: Any, out: np.ndarray | None = None, bias: Any = None, *, _isa: str | None = None
) -> np.ndarray:
    """``x @ w (+ bias)`` in float32.

    Args:
        x: ``(..., K)`` float32, float16 or bfloat16, any strides.
        w: ``(K, N)`` float32 / float16 / bfloat16 array, or a :class:`QuantizedTensor`.
        out: optional float32 C-contiguous writable ``(..., N)`` array to write into.
        bias: optional ``(N,)`` added to every row.

    Returns:
        float32 ``(..., N)`` (``out`` when given). Rounding: a sum of K float32 products, so
        ``|err| <= ~K * eps32 * sum|x||w|``; a quantised weight adds its quantisation error.

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
    m = int(np.prod(lead, dtype=np.int64)) if lead else 1
    res = _prep_out(out, (*lead, n))
    b = None
    if bias is not None:
        b = _as_f32(bias, "bias")
        if b.shape != (n,):
            raise ShapeError(f"bias has shape {b.shape}, expected {(n,)} for w {(k, n)}")
    x2 = xa.reshape(m, k)
    r2 = res.reshape(m, n)
    if isinstance(w, QuantizedTensor):
        _tierflow._matmul_blocks(x2, w.format, k, n, w.data, r2, b, _isa)
        return res
    wa = w if isinstance(w, np.ndarray) else np.asarray(w)
    if wa.dtype == np.float32:
        _tierflow._matmul_plain(x2, np.ascontiguousarray(wa), None, "f32", r2, b, _isa)
    elif wa.dtype == np.float16 or _is_bf16(wa.dtype):
        bits = np.ascontiguousarray(wa).view(np.uint16)
        kind = "f16" if wa.dtype == np.float16 else "bf16"
        _tierflow._matmul_plain(x2, None, bits, kind, r2, b, _isa)
    else:
        raise DTypeError(
            f"w must be float32, float16, bfloat16 or a QuantizedTensor, got {wa.dtype}"
        )
    return res
