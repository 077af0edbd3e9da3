"""Checkpoint files: find the safetensors shards of a folder, map their tensors, write test files.

Headers are read and validated by :func:`tierflow.store.safetensors.read_header` (a truncated or
corrupt file raises CorruptFileError naming the file and tensor); this module maps tensors
read-only, without copying. Sharded checkpoints are listed by ``model.safetensors.index.json``
(``weight_map``: name -> file).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import DTypeError, MissingFileError, ShapeError
from ..store.dtypes import SAFETENSORS_NUMPY
from ..store.safetensors import TensorInfo, read_header
from ..store.safetensors import corrupt as _corrupt

__all__ = ["TensorInfo", "checkpoint_files", "mmap_tensors", "read_header"]


def checkpoint_files(folder: str) -> list[str]:
    """The safetensors files of a checkpoint folder (a single file, or the shards of an index)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise _corrupt(index, f"not a safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        for fn in files:
            if not os.path.exists(os.path.join(folder, fn)):
                raise MissingFileError(f"shard {fn} listed in {index} does not exist")
        return [os.path.join(folder, fn) for fn in files]
    if os.path.exists(single):
        return [single]
    raise MissingFileError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def mmap_tensors(infos: dict[str, TensorInfo]) -> dict[str, np.ndarray]:
    """Read-only views of the tensors, memory-mapped from their files (no copy)."""
    maps: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for name, t in infos.items():
        if t.path not in maps:
            maps[t.path] = np.memmap(t.path, dtype=np.uint8, mode="r")
        buf = maps[t.path][t.begin : t.end]
        out[name] = buf.view(SAFETENSORS_NUMPY[t.dtype]).reshape(t.shape)
    return out


def pread_rows(t: TensorInfo, rows: np.ndarray, out: np.ndarray, fd: int | None = None) -> None:
    """Read rows ``rows`` of tensor ``t`` (a 2-D table) from its file into ``out`` (uint8,
    one row per line) with ``pread``: a file truncated meanwhile is a CorruptFileError. ``fd``:
    an open descriptor of ``t.path`` to use (a decode step reads one row per token: opening the
    file each time would cost more than the read)."""
    if fd is None:
        with open(t.path, "rb") as f:
            pread_rows(t, rows, out, f.fileno())
        return
    row_bytes = out.shape[1]
    size = os.fstat(fd).st_size
    if size < t.end:
        raise _corrupt(
            t.path,
            f"file has {size} bytes, tensor {t.name!r} ends at {t.end} (truncated)",
            t.name,
        )
    for j, r in enumerate(rows.tolist()):
        b = os.pread(fd, row_bytes, t.begin + r * row_bytes)
        if len(b) != row_bytes:
            raise _corrupt(t.path, "short read (file truncated while reading)", t.name)
        out[j] = np.frombuffer(b, np.uint8)


def as_float32(a: np.ndarray, st_dtype: str) -> np.ndarray:
    """A float32 array from a stored tensor: bf16 bits are widened (``bits << 16``), others cast."""
    if st_dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    if a.dtype == np.float32:
        return a
    return a.astype(np.float32)


#: the dtypes write_safetensors writes: NumPy dtype -> safetensors code
_ST_NAMES = {SAFETENSORS_NUMPY[code]: code for code in ("F32", "F16", "I64", "F64")}


def write_safetensors(
    path: str,
    tensors: Mapping[str, np.ndarray],
    lazy: Mapping[str, tuple[tuple[int, ...], Callable[[], np.ndarray]]] | None = None,
) -> None:
    """Write a safetensors file of F64/F32/F16/I64 tensors.

    ``lazy`` adds float32 tensors given as ``name -> (shape, make)``: ``make()`` is called while
    writing, one tensor at a time, so a large checkpoint never sits in memory whole.
    """
    header: dict[str, object] = {}
    off = 0
    items: list[tuple[str, Any]] = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = _ST_NAMES.get(a.dtype.newbyteorder("=") if a.dtype.byteorder == ">" else a.dtype)
        if dt is None:
            raise DTypeError(f"cannot write tensor {name!r} of dtype {a.dtype}")
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        items.append((name, a))
    for name, (shape, make) in (lazy or {}).items():
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
        items.append((name, (shape, make)))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, a in items:
            if isinstance(a, tuple):
                shape, make = a
                a = np.ascontiguousarray(make(), dtype="<f4")
                if a.shape != tuple(shape):
                    raise ShapeError(
                        f"lazy tensor {name!r}: made {a.shape}, declared {tuple(shape)}"
                    )
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
