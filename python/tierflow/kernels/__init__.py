"""Streaming kernels over stored tensors.

- :mod:`tierflow.kernels.ops`: matmul (dense and block-quantized weights streamed from any tier),
  attention, MLP, norms, activations, quantization;
- :mod:`tierflow.kernels.kvcache`: the paged KV cache and its paged decode kernel;
- :mod:`tierflow.kernels.bench`: machine probes for benchmarks.
"""

from __future__ import annotations

from . import bench, kvcache
from .ops import (
    FORMATS,
    ROUNDED_ACTIVATIONS_MAX_M,
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

__all__ = [
    "FORMATS",
    "ROUNDED_ACTIVATIONS_MAX_M",
    "QuantizedTensor",
    "attention",
    "dequantize",
    "gelu",
    "layer_norm",
    "matmul",
    "mlp",
    "pack",
    "quantize",
    "rms_norm",
    "rope",
    "silu",
    "softmax",
    "bench",
    "kvcache",
]
