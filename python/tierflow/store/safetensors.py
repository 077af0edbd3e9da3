"""Reading safetensors files: the one place the Python side parses their headers.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name ->
``dtype``, ``shape``, ``data_offsets`` relative to the data section, and ``__metadata__``), then
the data. :func:`read_json_header` reads and bounds-checks that header; :func:`read_header` checks
every entry against its dtype and the file (the models' loader); :func:`tensor_table` lists a file
through the store's native reader (``tierflow inspect``).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from .. import _tierflow
from ..errors import CorruptFileError, DTypeError, MissingFileError
from .dtypes import SAFETENSORS_NUMPY

__all__ = [
    "MAX_HEADER_BYTES",
    "TensorInfo",
    "read_header",
    "read_json_header",
    "tensor_table",
]

#: the largest header accepted (the native reader's limit too)
MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype string ("F32", "BF16", ...)
    shape: tuple[int, ...]
    path: str
    begin: int  # absolute byte offset in the file
    end: int


def corrupt(path: str, msg: str, tensor: str | None = None) -> CorruptFileError:
    """A :class:`~tierflow.CorruptFileError` naming the file (and the tensor, when known)."""
    e = CorruptFileError(f"{path}: {msg}")
    e.path = path
    e.tensor = tensor
    return e


def read_json_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int]:
    """``(header, data_start, file_size)``: the JSON header of a safetensors file (a dict, with
    its ``__metadata__`` if any), the byte offset of its data section and the file's size.

    Raises:
        MissingFileError: no such file.
        CorruptFileError: a truncated file, a header length beyond the file (or 100 MiB), a
            header that is not a JSON object.
    """
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise corrupt(p, f"truncated: {size} bytes, no header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise corrupt(p, f"header length {n} exceeds the file size {size}")
            raw = f.read(n)
    except FileNotFoundError:
        raise MissingFileError(f"no such file: {p}") from None
    try:
        hdr = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt(p, f"malformed header: not valid JSON ({e})") from None
    if not isinstance(hdr, dict):
        raise corrupt(p, "header is not a JSON object")
    return hdr, 8 + n, size


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors header; every tensor's offsets are checked against its
    dtype and shape and against the file size."""
    hdr, base, size = read_json_header(path)
    out: dict[str, TensorInfo] = {}
    for name, entry in hdr.items():
        if name == "__metadata__":
            continue
        try:
            dt, shape = entry["dtype"], tuple(int(s) for s in entry["shape"])
            b, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: 1e400 -> inf
            raise corrupt(path, f"bad header entry for {name!r}", name) from None
        if dt not in SAFETENSORS_NUMPY:
            raise DTypeError(f"{path}: tensor {name!r} has unsupported dtype {dt}")
        nbytes = math.prod(shape) * SAFETENSORS_NUMPY[dt].itemsize  # Python ints: no overflow
        if any(s < 0 for s in shape) or not (0 <= b <= end) or end - b != nbytes:
            raise corrupt(
                path, f"tensor {name!r}: offsets {b}..{end} disagree with {dt}{list(shape)}", name
            )
        if base + end > size:
            raise corrupt(
                path, f"truncated: tensor {name!r} ends at {base + end} > {size} bytes", name
            )
        out[name] = TensorInfo(name, dt, shape, path, base + b, base + end)
    return out


def tensor_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The tensors of a safetensors file as the store's native reader sees them: one dict per
    tensor with ``name``, ``dtype``, ``shape`` and the byte range ``start``, ``end`` (GIL
    released while reading)."""
    return list(json.loads(_tierflow.read_safetensors_header(os.fspath(path)))["tensors"])
