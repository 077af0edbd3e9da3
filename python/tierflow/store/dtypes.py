"""The element types the Python side knows, in one table.

Each row: the canonical name, its bytes per element (per weight for the block formats), its
safetensors code, the NumPy dtype a file's bytes are viewed as, and the simulator's name for it
(the simulator models only the width and the arithmetic, so integer types count as the float type
of the same width). :mod:`tierflow.store`, the models' checkpoint reader and the simulator's
:func:`~tierflow.sim.coe.canonical_dtype` all read from here. Block formats follow
docs/sources.md "Other anchors" (Q8_0: 34 bytes / 32 weights, Q4_0: 18 bytes / 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DTYPES", "SAFETENSORS_NUMPY", "SIM_ALIASES", "SIM_BYTES", "STORE_DTYPES", "DType"]


@dataclass(frozen=True)
class DType:
    name: str
    nbytes: float  # bytes per element (per weight for block formats)
    safetensors: str | None  # the safetensors dtype code, if the format has one
    numpy: str | None  # the NumPy dtype a file's bytes are viewed as (bf16: its raw bits)
    sim: str  # the simulator's name (same width and arithmetic)
    aliases: tuple[str, ...] = ()  # spellings the simulator accepts besides its names (lower case)
    in_store: bool = False  # a TieredStore holds it


DTYPES: tuple[DType, ...] = (
    # the types a TieredStore holds, in the order its messages list them
    DType("float32", 4, "F32", "<f4", "float32", ("f32", "fp32"), True),
    DType("float64", 8, "F64", "<f8", "float64", ("f64", "fp64"), True),
    DType("float16", 2, "F16", "<f2", "float16", ("f16", "fp16", "half"), True),
    DType("bfloat16", 2, "BF16", "<u2", "bfloat16", ("bf16",), True),
    DType("int8", 1, "I8", "i1", "int8", ("i8",), True),
    DType("uint8", 1, "U8", "u1", "int8", ("u8",), True),
    DType("int32", 4, "I32", "<i4", "float32", ("i32",), True),
    DType("int64", 8, "I64", "<i8", "float64", ("i64",), True),
    DType("bool", 1, "BOOL", "?", "int8", ("bool",), True),
    # known to the checkpoint reader or the simulator only
    DType("int16", 2, "I16", "<i2", "float16", ("i16",)),
    DType("uint16", 2, None, None, "float16", ("u16",)),
    DType("uint32", 4, None, None, "float32", ("u32",)),
    DType("uint64", 8, None, None, "float64", ("u64",)),
    DType("float8", 1, None, None, "float8", ("fp8", "f8", "f8_e4m3", "f8_e5m2")),
    DType("int4", 0.5, None, None, "int4", ("i4",)),
    DType("q8_0", 34 / 32, None, None, "q8_0"),
    DType("q4_0", 18 / 32, None, None, "q4_0"),
)

#: the dtypes a TieredStore holds (besides registered block formats)
STORE_DTYPES: tuple[str, ...] = tuple(d.name for d in DTYPES if d.in_store)
#: safetensors code -> the NumPy dtype its bytes are viewed as (BF16: raw uint16 bits)
SAFETENSORS_NUMPY: dict[str, np.dtype[Any]] = {
    d.safetensors: np.dtype(d.numpy) for d in DTYPES if d.safetensors and d.numpy
}
#: the simulator's dtypes -> bytes per element
SIM_BYTES: dict[str, float] = {d.name: d.nbytes for d in DTYPES if d.sim == d.name}
#: the other spellings the simulator accepts (lower case) -> its simulator dtype
SIM_ALIASES: dict[str, str] = {a: d.sim for d in DTYPES for a in d.aliases}
