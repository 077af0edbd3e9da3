"""tierflow: run and plan models that are larger than fast memory.

A tiered tensor store (fast / RAM / file tiers), streaming kernels that pull weights tile by tile
from slow tiers, and Composition-of-Experts scheduling on simulated devices or this host.
The native core is the private module ``tierflow._tierflow``; this package re-exports the public API.
"""

from __future__ import annotations

from . import errors
from ._info import get_num_threads, info, set_num_threads
from ._tierflow import __version__
from .errors import (
    AccessDeniedError,
    CapacityError,
    ClosedError,
    CorruptFileError,
    DTypeError,
    InternalError,
    InvalidArgumentError,
    InvalidNameError,
    MissingFileError,
    ScheduleError,
    ShapeError,
    StorageError,
    TensorExistsError,
    TensorNotFoundError,
    TierflowError,
)

# --- store (issue: foundation) -------------------------------------------------------------
from .store import (
    BlockTensor,
    Future,
    StoreStats,
    TensorRef,
    Tier,
    TieredStore,
    bfloat16_dtype,
    parse_size,
    register_block_format,
)

# --- kernels -------------------------------------------------------------------------------
# isort: split
from . import bench, kernels
from .kernels import (
    FORMATS,
    QuantizedTensor,
    attention,
    dequantize,
    gelu,
    layer_norm,
    matmul,
    mlp,
    pack,
    quantize,
    rms_norm,
    rope,
    silu,
    softmax,
)
from .kvcache import PagedKVCache

# --- composition of experts ----------------------------------------------------------------
# isort: split
from . import devices, policies
from .coe import CoE
from .devices import Device
from .policies import EvictionPolicy, Policy
from .report import Report

# --- models and routers (issue: real experts; import tierflow.models for the models) -------
from .routers import EmbeddingRouter
from .sim import simulate
from .trace import Trace

# --- host runtime (issue: runtime) ---------------------------------------------------------
# isort: split
from . import runtime
from .runtime import Plan, schedule

# --- architecture search: the package is callable as tierflow.search(space, device, ...) ------
# isort: split
from . import search

__all__ = [
    "AccessDeniedError",
    "CapacityError",
    "ClosedError",
    "CorruptFileError",
    "DTypeError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidNameError",
    "MissingFileError",
    "ScheduleError",
    "ShapeError",
    "StorageError",
    "TensorExistsError",
    "TensorNotFoundError",
    "TierflowError",
    "__version__",
    "errors",
    "get_num_threads",
    "info",
    "set_num_threads",
    # --- store ---
    "BlockTensor",
    "Future",
    "StoreStats",
    "TensorRef",
    "Tier",
    "TieredStore",
    "bfloat16_dtype",
    "parse_size",
    "register_block_format",
    # --- kernels ---
    "FORMATS",
    "PagedKVCache",
    "QuantizedTensor",
    "attention",
    "bench",
    "dequantize",
    "gelu",
    "kernels",
    "layer_norm",
    "matmul",
    "mlp",
    "pack",
    "quantize",
    "rms_norm",
    "rope",
    "silu",
    "softmax",
    # --- composition of experts ---
    "CoE",
    "Device",
    "EvictionPolicy",
    "Policy",
    "Report",
    "Trace",
    "devices",
    "policies",
    "simulate",
    # --- models and routers ---
    "EmbeddingRouter",
    # --- host runtime ---
    "Plan",
    "runtime",
    "schedule",
    # --- architecture search ---
    "search",
]
