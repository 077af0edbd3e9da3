"""The transformer operations the models call, in one place: all on tierflow's kernels.

Every model in this package computes through these names only. Activations are float32
``(S, hidden)`` for one sequence; attention works on ``(B, H, S, D)``. Matmul operands are the
``(K, N)`` weights from ``Weights.mat`` (row-stored QuantizedTensors or plain arrays).
"""

from __future__ import annotations

import numpy as np

from .. import kernels as _k

__all__ = [
    "attention",
    "gelu_erf",
    "gelu_tanh",
    "layer_norm",
    "matmul",
    "matmul_group",
    "rms_norm",
    "rope",
    "silu",
    "swiglu",
]


def matmul(x: np.ndarray, w, b: np.ndarray | None = None) -> np.ndarray:
    """``y = x W + b`` (:func:`tierflow.matmul`)."""
    return _k.matmul(x, w, bias=b)


def matmul_group(x: np.ndarray, ws: list, bs: list | None = None) -> list[np.ndarray]:
    """``[x W_j + b_j]`` for weights sharing ``x``, in one call (:func:`tierflow.matmul_group`)."""
    return _k.matmul_group(x, ws, bs)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``w * x / sqrt(mean(x^2) + eps)`` over the last axis (:func:`tierflow.rms_norm`)."""
    return _k.rms_norm(x, w, eps)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last axis (:func:`tierflow.layer_norm`)."""
    return _k.layer_norm(x, w, b, eps)


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)``."""
    return _k.silu(x)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (GPT-2's gelu_new)."""
    return _k.gelu(x, approximate="tanh")


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """``0.5 x (1 + erf(x / sqrt(2)))`` (exact GELU, BERT)."""
    return _k.gelu(x, approximate="none")


def swiglu(x: np.ndarray, w_gate, w_up, w_down) -> np.ndarray:
    """``(silu(x Wg) * (x Wu)) Wd`` (:func:`tierflow.mlp`, gated)."""
    return _k.mlp(x, w_gate, w_up, w_down)


def rope(x: np.ndarray, pos0: int, theta: float) -> np.ndarray:
    """Rotary embedding, half-split layout, on ``(B, H, S, D)`` for positions ``pos0 ..
    pos0+S-1``: pair ``(i, i + D/2)`` rotated by ``p * theta^(-2i/D)`` (:func:`tierflow.rope`)."""
    s = x.shape[-2]
    return _k.rope(x, np.arange(pos0, pos0 + s, dtype=np.float64), base=theta)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """``softmax(Q K^T / sqrt(D) + mask) V`` on ``(B, H, S_q, D)`` against ``(B, H_kv, S_k, D)``;
    query head ``h`` reads key/value head ``h // (H / H_kv)``; ``causal`` is bottom-right
    aligned (query ``i`` sees keys ``0 .. S_k - S_q + i``) (:func:`tierflow.attention`)."""
    return _k.attention(q, k, v, causal=causal)
