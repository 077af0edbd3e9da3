"""The transformer operations the models call, in one place.

Every model in this package computes through these functions only, so the backing kernels can
change in one file. Shapes: activations are float32 ``(S, hidden)`` for one sequence; attention
works on ``(B, H, S, D)``.

TEMPORARY: until ``tierflow.matmul``/``attention``/... land on main, these are NumPy float32
implementations of the same maths (see each docstring).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "attention",
    "gelu_erf",
    "gelu_tanh",
    "layer_norm",
    "matmul",
    "rms_norm",
    "rope",
    "silu",
    "swiglu",
]

_f32 = np.float32


def matmul(x: np.ndarray, w, b: np.ndarray | None = None) -> np.ndarray:
    """``y = x W + b`` with ``W`` the ``(K, N)`` operand from ``Weights.mat``."""
    y = np.asarray(x, _f32) @ np.asarray(w)
    return y + b if b is not None else y


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``w * x / sqrt(mean(x^2) + eps)`` over the last axis."""
    ms = np.mean(np.square(x, dtype=_f32), axis=-1, keepdims=True)
    return (x / np.sqrt(ms + _f32(eps))) * w


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last axis (biased variance)."""
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    return xc / np.sqrt(var + _f32(eps)) * w + b


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)``."""
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (GPT-2's gelu_new)."""
    return 0.5 * x * (1.0 + np.tanh(_f32(math.sqrt(2.0 / math.pi)) * (x + _f32(0.044715) * x**3)))


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """``0.5 x (1 + erf(x / sqrt(2)))`` (exact GELU, BERT)."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(_f32))).astype(_f32)


def swiglu(x: np.ndarray, w_gate, w_up, w_down) -> np.ndarray:
    """``silu(x Wg) * (x Wu)) Wd`` with ``(K, N)`` operands."""
    return matmul(silu(matmul(x, w_gate)) * matmul(x, w_up), w_down)


def rope(x: np.ndarray, pos0: int, theta: float) -> np.ndarray:
    """Rotary embedding, half-split layout, on ``(B, H, S, D)`` for positions ``pos0 .. pos0+S-1``.

    ``out = x * cos + rotate_half(x) * sin`` with angle ``p * theta^(-2i/D)`` for pair
    ``(i, i + D/2)``; ``rotate_half(x) = [-x2, x1]``.
    """
    d = x.shape[-1]
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    ang = np.arange(pos0, pos0 + x.shape[-2], dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(_f32), np.sin(ang).astype(_f32)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """``softmax(Q K^T / sqrt(D) + mask) V`` on ``(B, H, S_q, D)`` against ``(B, H_kv, S_k, D)``.

    Query head ``h`` reads key/value head ``h // (H / H_kv)``. ``causal`` aligns the query rows
    with the LAST ``S_q`` key positions (query ``i`` sees keys ``0 .. S_k - S_q + i``).
    """
    _, h, sq, d = q.shape
    rep = h // k.shape[1]
    if rep > 1:
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
    s = (q @ k.transpose(0, 1, 3, 2)) * _f32(1.0 / math.sqrt(d))
    if causal and sq > 1:
        sk = k.shape[2]
        s = s + np.triu(np.full((sq, sk), -np.inf, _f32), sk - sq + 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return (s @ v).astype(_f32)
