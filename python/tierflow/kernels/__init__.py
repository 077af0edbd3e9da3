"""Streaming kernels over stored tensors.

- :mod:`tierflow.kernels.ops`: matmul (dense and block-quantized weights streamed from any tier),
  attention, MLP, norms, activations, quantization;
- :mod:`tierflow.kernels.kvcache`: the paged KV cache and its paged decode kernel;
- :mod:`tierflow.kernels.bench`: machine probes for benchmarks.
"""

from __future__ import annotations

from . import bench, kvcache, ops
from .ops import *  # noqa: F403 (the public names are ops.__all__)

__all__ = ["bench", "kvcache"]
__all__ += ops.__all__
