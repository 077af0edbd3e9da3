"""A checkpoint's weights, checked against its config, served to the forward pass.

``Weights.open(folder, config)`` reads every safetensors header, checks that each tensor the config
implies is present with that shape (TensorNotFoundError / ShapeError naming the tensor otherwise),
then maps the tensors in place (no copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DTypeError, InvalidArgumentError, ShapeError, TensorNotFoundError
from . import _checkpoint as ck
from .config import ModelConfig

__all__ = ["WEIGHT_FORMATS", "Weights"]

#: formats a checkpoint may be converted to on load (None keeps the stored dtype)
WEIGHT_FORMATS = (None, "f32", "bf16", "q8_0", "q4_0")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _missing(name: str, folder: str) -> TensorNotFoundError:
    e = TensorNotFoundError(
        f"checkpoint {folder} lacks the tensor {name!r} that config.json implies"
    )
    e.name = name
    return e


class Weights:
    """Named tensors of one checkpoint, validated against its :class:`ModelConfig`."""

    def __init__(self, arrays: dict[str, Any], infos: dict[str, ck.TensorInfo], fmt: str | None):
        self._arrays = arrays
        self.infos = infos
        self.format = fmt

    @classmethod
    def open(
        cls,
        folder: str,
        config: ModelConfig,
        *,
        store: Any = None,
        tier: str | None = None,
        dtype: str | None = None,
    ) -> Weights:
        if dtype not in WEIGHT_FORMATS:
            raise InvalidArgumentError(
                f"unknown weight format {dtype!r}; supported: {', '.join(map(str, WEIGHT_FORMATS))}"
            )
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
        used = {n: infos[n] for n in expected}
        if dtype not in (None, "f32"):
            raise InvalidArgumentError(
                f"weight format {dtype!r} needs tierflow.quantize (not built yet)"
            )
        raw = ck.mmap_tensors(used)
        arrays = {n: ck.as_float32(a, used[n].dtype) for n, a in raw.items()}
        return cls(arrays, used, dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def names(self) -> list[str]:
        return list(self._arrays)
