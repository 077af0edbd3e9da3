"""The tiered tensor store: named tensors in fast / RAM / file tiers (:class:`TieredStore`).

- :mod:`tierflow.store.tiered`: the store, its tiers and tensor references;
- :mod:`tierflow.store.dtypes`: the one table of element types the Python side knows;
- :mod:`tierflow.store.safetensors`: reading safetensors headers through the native reader.
"""

from __future__ import annotations

from . import tiered
from .tiered import *  # noqa: F403 (the public names are tiered.__all__)

__all__: list[str] = []
__all__ += tiered.__all__
