"""The tiered tensor store: named tensors in fast / RAM / file tiers (:class:`TieredStore`).

- :mod:`tierflow.store.tiered`: the store, its tiers and tensor references;
- :mod:`tierflow.store.dtypes`: the one table of element types the Python side knows;
- :mod:`tierflow.store.safetensors`: reading safetensors headers through the native reader.
"""

from __future__ import annotations

from .tiered import (
    BlockTensor,
    Future,
    StoreStats,
    TensorRef,
    Tier,
    TieredStore,
    bfloat16_dtype,
    cgroup_memory_limit,
    parse_size,
    register_block_format,
)

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
