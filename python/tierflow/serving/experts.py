"""Experts and routers the host runtime runs, built on tierflow kernels.

An *expert* here is anything with ``tensors`` (the weight names it reads, relative to its store
prefix) and ``forward(x, weights, output_tokens) -> np.ndarray``; ``weights`` maps those names to
arrays (zero-copy views of the store's RAM tier while the expert is resident).

The built-in :class:`TransformerExpert` is a stack of pre-norm transformer blocks::

    h   = x + attention(rms_norm(x) Wq, rms_norm(x) Wk, rms_norm(x) Wv; causal) Wo
    out = h + (silu(rms_norm(h) W1) * (rms_norm(h) W3)) W2          (SwiGLU MLP)

with ``head_dim = 64`` (so ``heads = hidden / 64``). A request of ``P`` prompt tokens and ``n``
output tokens runs one prefill pass over the prompt, then ``n - 1`` decode passes with a KV cache;
the next input of a decode pass is ``rms_norm(last hidden state)`` (a continuous "token"). The
output is the final hidden state of every generated position, shape ``(n, hidden)``.

The built-in :class:`PrototypeRouter` scores ``mean(x) . p_e`` for one prototype ``p_e`` per
expert (a nearest-prototype classifier, as a kNN router over example embeddings).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from .. import kernels
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["HEAD_DIM", "Expert", "PrototypeRouter", "TransformerExpert"]

HEAD_DIM = 64
_LAYER_TENSORS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w1", "w2", "w3")


class Expert(Protocol):
    tensors: list[str]

    def forward(
        self, x: np.ndarray, weights: Mapping[str, Any], output_tokens: int
    ) -> np.ndarray: ...


class TransformerExpert:
    """``layers`` transformer blocks of width ``hidden`` and MLP width ``intermediate``.

    Weights (float32, ``(K, N)`` for products ``x W``): ``layers.{i}.attn_norm (D,)``,
    ``wq wk wv wo (D, D)``, ``mlp_norm (D,)``, ``w1 w3 (D, I)``, ``w2 (I, D)``.
    """

    def __init__(
        self, hidden: int, intermediate: int, layers: int, *, packed: bool = False
    ) -> None:
        if hidden % HEAD_DIM or hidden <= 0 or intermediate <= 0 or layers <= 0:
            raise InvalidArgumentError(
                f"TransformerExpert: hidden must be a positive multiple of {HEAD_DIM} and "
                f"intermediate, layers > 0; got {hidden}, {intermediate}, {layers}"
            )
        self.hidden, self.intermediate, self.layers = hidden, intermediate, layers
        self.heads = hidden // HEAD_DIM
        self.packed = packed
        self.tensors = (
            ["weights"]
            if packed
            else [f"layers.{i}.{t}" for i in range(layers) for t in _LAYER_TENSORS]
        )

    # --- description -----------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        d, m = self.hidden, self.intermediate
        per = {
            "attn_norm": (d,),
            "wq": (d, d),
            "wk": (d, d),
            "wv": (d, d),
            "wo": (d, d),
            "mlp_norm": (d,),
            "w1": (d, m),
            "w3": (d, m),
            "w2": (m, d),
        }
        return {f"layers.{i}.{t}": per[t] for i in range(self.layers) for t in _LAYER_TENSORS}

    @property
    def tags(self) -> list[str]:
        """CoE node tags that describe this expert (read back by :meth:`from_tags`)."""
        return [
            "tierflow-transformer",
            f"hidden={self.hidden}",
            f"intermediate={self.intermediate}",
            f"packed={int(self.packed)}",
        ]

    @classmethod
    def from_tags(cls, tags: list[str], layers: int) -> TransformerExpert | None:
        kv = dict(t.split("=", 1) for t in tags if "=" in t)
        if "tierflow-transformer" not in tags or "hidden" not in kv or "intermediate" not in kv:
            return None
        return cls(
            int(kv["hidden"]), int(kv["intermediate"]), layers, packed=kv.get("packed") == "1"
        )

    def pack(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """All weights in one float32 vector (layout: :meth:`shapes` order, C order each), so an
        expert switch is one large sequential read."""
        return np.concatenate(
            [np.asarray(weights[n], np.float32).reshape(-1) for n in self.shapes()]
        )

    def unpack(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of the packed vector by name (no copies)."""
        out, off = {}, 0
        if flat.shape != (self.params,):
            raise ShapeError(f"packed expert weights must be ({self.params},), got {flat.shape}")
        for n, s in self.shapes().items():
            k = int(np.prod(s))
            out[n] = flat[off : off + k].reshape(s)
            off += k
        return out

    def weights(self, get: Any) -> dict[str, Any]:
        """The weights by name, reading the stored tensors with ``get(name)``."""
        if self.packed:
            return self.unpack(get("weights"))
        return {t: get(t) for t in self.tensors}

    @property
    def params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())

    @property
    def nbytes(self) -> int:
        return 4 * self.params

    @classmethod
    def from_shapes(
        cls, shapes: Mapping[str, tuple[int, ...]], owner: str = "expert"
    ) -> TransformerExpert:
        """Infer the configuration from tensor names and shapes (e.g. a checkpoint's header)."""
        idx = {int(m.group(1)) for n in shapes if (m := re.match(r"layers\.(\d+)\.", n))}
        if not idx or "layers.0.w1" not in shapes:
            raise ShapeError(f"{owner}: not a tierflow transformer expert (no layers.0.w1 tensor)")
        d, inter = shapes["layers.0.w1"]
        e = cls(int(d), int(inter), max(idx) + 1)
        want = e.shapes()
        for n, s in want.items():
            if n not in shapes:
                raise ShapeError(f"{owner}: tensor {n!r} is missing")
            if tuple(shapes[n]) != s:
                raise ShapeError(
                    f"{owner}: tensor {n!r} has shape {tuple(shapes[n])}, expected {s}"
                )
        return e

    def init(self, seed: int) -> dict[str, np.ndarray]:
        """Random weights (std 1/sqrt(fan_in), norms 1 + N(0, 0.1^2)), generated per tensor."""
        rng = np.random.default_rng(seed)
        out = {}
        for n, s in self.shapes().items():
            if n.endswith("norm"):
                out[n] = (1.0 + 0.1 * rng.standard_normal(s)).astype(np.float32)
            else:
                out[n] = rng.standard_normal(s, dtype=np.float32) / np.float32(np.sqrt(s[0]))
        return out

    # --- compute ---------------------------------------------------------------------------
    def _block(self, x: np.ndarray, w: Mapping[str, Any], i: int, cache: list[Any]) -> np.ndarray:
        p = f"layers.{i}."
        t, h, hd = x.shape[0], self.heads, HEAD_DIM
        n = kernels.rms_norm(x, w[p + "attn_norm"])
        q = kernels.matmul(n, w[p + "wq"]).reshape(t, h, hd).transpose(1, 0, 2)[None]
        k = kernels.matmul(n, w[p + "wk"]).reshape(t, h, hd).transpose(1, 0, 2)[None]
        v = kernels.matmul(n, w[p + "wv"]).reshape(t, h, hd).transpose(1, 0, 2)[None]
        if cache[i] is not None:
            k = np.concatenate([cache[i][0], k], axis=2)
            v = np.concatenate([cache[i][1], v], axis=2)
        cache[i] = (k, v)
        a = kernels.attention(q, k, v, causal=True)  # (1, H, T, hd)
        a = np.ascontiguousarray(a[0].transpose(1, 0, 2)).reshape(t, h * hd)
        x = x + kernels.matmul(a, w[p + "wo"])
        n2 = kernels.rms_norm(x, w[p + "mlp_norm"])
        return x + kernels.mlp(n2, w[p + "w1"], w[p + "w3"], w[p + "w2"])

    def forward(
        self,
        x: np.ndarray,
        weights: Mapping[str, Any],
        output_tokens: int = 1,
        on_first: Callable[[], None] | None = None,
    ) -> np.ndarray:
        """Prefill over ``x`` (P, hidden), then ``output_tokens - 1`` decode passes;
        ``on_first()`` is called when the first output exists (time to first token)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.hidden or x.shape[0] < 1:
            raise ShapeError(f"expert input must be (tokens >= 1, {self.hidden}), got {x.shape}")
        cache: list[Any] = [None] * self.layers
        outs = []
        for step in range(max(1, int(output_tokens))):
            for i in range(self.layers):
                x = self._block(x, weights, i, cache)
            last = x[-1:]
            outs.append(last[0])
            if step == 0 and on_first is not None:
                on_first()
            if step + 1 < output_tokens:
                x = kernels.rms_norm(last)
        return np.stack(outs).astype(np.float32)


class PrototypeRouter:
    """Scores ``softmax(mean(x) P^T)`` for a ``(experts, hidden)`` prototype matrix ``P``."""

    tensors: ClassVar[list[str]] = ["prototypes"]

    def __init__(self, experts: list[str], hidden: int) -> None:
        self.experts, self.hidden = list(experts), hidden

    @staticmethod
    def init(n_experts: int, hidden: int, seed: int, scale: float = 4.0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        p = rng.standard_normal((n_experts, hidden)).astype(np.float32)
        p *= np.float32(scale) / np.linalg.norm(p, axis=1, keepdims=True).astype(np.float32)
        return p

    def scores(self, x: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
        """Probabilities over experts for one request's ``(tokens, hidden)`` input."""
        if x.ndim != 2 or x.shape[1] != self.hidden:
            raise ShapeError(f"router input must be (tokens, {self.hidden}), got {x.shape}")
        m = np.ascontiguousarray(x.mean(axis=0, keepdims=True), dtype=np.float32)
        s = kernels.matmul(m, np.ascontiguousarray(prototypes.T))[0]
        return np.asarray(kernels.softmax(s), dtype=np.float64)


def demo_input(prototype: np.ndarray, tokens: int, seed: int) -> np.ndarray:
    """A request input the prototype router sends to the prototype's expert: each token is the
    prototype plus unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, prototype.shape[0])).astype(np.float32)
    return x + prototype[None, :]
