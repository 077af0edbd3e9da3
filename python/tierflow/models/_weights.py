"""A checkpoint's weights, checked against its config, registered in a TieredStore.

``Weights.open(folder, config, store, tier)`` reads every safetensors header, checks that each
tensor the config implies is present with that shape (TensorNotFoundError / ShapeError naming the
tensor otherwise), then adopts the files into the store in place (``load_safetensors``: no copy,
only headers are read) under a per-model prefix, and moves them into ``tier`` when that is a
memory tier. The forward pass then asks the store for each weight when it needs it, so a store
whose fast tiers are smaller than the model streams the weights layer by layer from the file
tier (the store's eviction policy decides what stays).

Token-embedding rows are gathered from a read-only map of the checkpoint file (only the rows of
the tokens in play are touched), not by loading the whole table from the store each step.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np

from ..errors import DTypeError, InvalidArgumentError, ShapeError, TensorNotFoundError
from ..store import TieredStore
from . import _checkpoint as ck
from .config import ModelConfig, matmul_layouts

__all__ = ["WEIGHT_FORMATS", "Weights"]

#: formats a checkpoint may be converted to on load (None keeps the stored dtype)
WEIGHT_FORMATS = (None, "f32", "bf16", "q8_0", "q4_0")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_counter = itertools.count(1)


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
        embedding_maps: dict[str, np.ndarray],
    ):
        self.store = store
        self.prefix = prefix
        self.infos = infos
        self.format = fmt
        self._emb = embedding_maps
        self.layouts: dict[str, str] = {}

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
    ) -> Weights:
        if dtype not in WEIGHT_FORMATS:
            raise InvalidArgumentError(
                f"unknown weight format {dtype!r}; supported: {', '.join(map(str, WEIGHT_FORMATS))}"
            )
        infos = validate(folder, config)
        if dtype not in (None, "f32"):
            raise InvalidArgumentError(
                f"weight format {dtype!r} needs tierflow.quantize (not built yet)"
            )
        private = None
        if store is None:
            private = tempfile.mkdtemp(prefix="tierflow-model-")
            store = TieredStore(private)
        if tier is not None and tier not in store.tier_names:
            raise InvalidArgumentError(f"no tier named {tier!r}; tiers: {store.tier_names}")
        if prefix is None:
            prefix = f"{os.path.basename(os.path.abspath(folder))}#{next(_counter)}/"
        file_tier = tier if tier is not None and _is_file_tier(store, tier) else None
        files = sorted({t.path for t in infos.values()})
        adopted: list[str] = []
        for f in files:
            adopted += store.load_safetensors(f, tier=file_tier, prefix=prefix)
        extra = set(adopted) - {prefix + n for n in infos}
        for n in extra:  # tensors the forward pass never reads (e.g. BERT's position_ids)
            store.delete(n)
        if tier is not None and file_tier is None:
            for n in infos:
                store.move(prefix + n, tier)
        emb = {n: a for n, a in ck.mmap_tensors(_embedding_infos(infos, config)).items()}
        w = cls(store, prefix, infos, dtype, emb)
        w.layouts = matmul_layouts(config, list(infos))
        if private is not None:
            weakref.finalize(w, _close_private_store, store, private)
        return w

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor as a float32 NumPy array (from the store; read-only)."""
        a = self.store.get(self.prefix + name)
        return a if a.dtype == np.float32 else np.asarray(a, np.float32)

    def mat(self, name: str) -> Any:
        """The weight as a matmul operand ``W`` of logical shape ``(K, N)`` (``y = x W``)."""
        a = self[name]
        return a.T if self.layouts[name] == "out_in" else a

    def fetch(self, name: str) -> Any:
        """The stored tensor as the store returns it (promoted into the store's default tier)."""
        return self.store.get(self.prefix + name)

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor as stored (after any conversion on load)."""
        return int(self.store.info(self.prefix + name)["nbytes"])

    def ref(self, name: str) -> Any:
        """The store's handle on the tensor (kernels stream it from its tier)."""
        return self.store[self.prefix + name]

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of a token / position embedding table, float32."""
        t = self._emb.get(name)
        if t is None:
            return self[name][idx]
        return ck.as_float32(np.asarray(t[idx]), self.infos[name].dtype)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def tiers(self) -> dict[str, str]:
        """Where each weight is now (tensor name -> tier name)."""
        return {n: self.store.tier_of(self.prefix + n) for n in self.infos}


def _is_file_tier(store: TieredStore, tier: str) -> bool:
    return next(t for t in store.tiers if t.name == tier).file_backed


def _embedding_infos(infos: dict[str, ck.TensorInfo], cfg: ModelConfig) -> dict[str, ck.TensorInfo]:
    names = [
        n
        for n in infos
        if n.endswith(("embed_tokens.weight", "wte.weight", "wpe.weight", "embeddings.weight"))
    ]
    return {n: infos[n] for n in names}
