"""tierflow: run and plan models that are larger than fast memory.

A tiered tensor store (fast / RAM / file tiers), streaming kernels that pull weights tile by tile
from slow tiers, and Composition-of-Experts scheduling on simulated devices or this host.
The native core is the private module ``tierflow._tierflow``; this package re-exports the public API.
"""

from __future__ import annotations

from . import errors
from ._info import get_num_threads, info, set_num_threads
from ._tierflow import __version__
from .errors import *  # noqa: F403 (every class of errors.__all__)

# --- store --------------------------------------------------------------------------------
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
from . import kernels
from .kernels import (
    FORMATS,
    PACKED_FORMATS,
    PackedTensor,
    QuantizedTensor,
    attention,
    dequantize,
    gelu,
    layer_norm,
    matmul,
    matmul_group,
    mlp,
    pack,
    packed_decode_available,
    quantize,
    rms_norm,
    rope,
    silu,
    softmax,
)
from .kernels.kvcache import PagedKVCache

# --- models and routers (import tierflow.models for the models) ----------------------------
from .routers import EmbeddingRouter

# --- simulator: composition of experts on modelled devices ---------------------------------
# isort: split
from . import sim
from .sim import devices, policies
from .sim.coe import CoE
from .sim.devices import Device
from .sim.policies import EvictionPolicy, Policy
from .sim.report import Report
from .sim.simulate import simulate
from .sim.trace import Trace

# --- serving on this host ------------------------------------------------------------------
# isort: split
from . import serving
from .serving import Plan, schedule

# --- architecture search: the package is callable as tierflow.search(space, device, ...) ------
# isort: split
from . import search

__all__ = [
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
    "PACKED_FORMATS",
    "PackedTensor",
    "PagedKVCache",
    "QuantizedTensor",
    "attention",
    "dequantize",
    "gelu",
    "kernels",
    "layer_norm",
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
    # --- simulator ---
    "CoE",
    "Device",
    "EvictionPolicy",
    "Policy",
    "Report",
    "Trace",
    "devices",
    "policies",
    "sim",
    "simulate",
    # --- models and routers ---
    "EmbeddingRouter",
    # --- serving on this host ---
    "Plan",
    "schedule",
    "serving",
    # --- architecture search ---
    "search",
]
__all__ += errors.__all__

# Old module paths reached as attributes (``tierflow.runtime``, ``tierflow.coe``, ...): deprecated
# for one release, like ``import tierflow.runtime`` (see the alias modules next to this file).
_OLD_MODULES = ("bench", "coe", "kvcache", "paper", "plan", "report", "runtime", "trace")


def __getattr__(name: str) -> object:
    if name in _OLD_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # warns DeprecationWarning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
