"""Llama-family decoders: LlamaForCausalLM (Llama 2/3, Mistral) and Qwen2ForCausalLM.

Per layer, with ``x`` the residual stream ``(S, hidden)``::

    h = rms_norm(x) ; q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)   # biases: Qwen2
    q, k = rope(q), rope(k)                                                # half-split, theta
    x = x + attention(q, [cache; k], [cache; v], causal) Wo^T              # GQA: H_kv | H
    x = x + down(silu(gate(rms_norm(x))) * up(rms_norm(x)))               # SwiGLU

then ``logits = rms_norm(x) W_head^T`` (W_head = the token embedding when tied).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _tierflow
from ..kernels import packed_decode_available
from . import _ops as ops
from ._base import CausalLM
from .kvcache import KVCache, StoreKVCache

__all__ = ["LlamaForCausalLM", "Qwen2ForCausalLM"]


class LlamaForCausalLM(CausalLM):
    """Llama 2/3 and Mistral (RMSNorm, RoPE, grouped-query attention, SwiGLU)."""

    #: one-token steps over repacked weights take :meth:`_packed_layer` (tests turn it off to
    #: compare it with the general path)
    fast_decode = True

    def _packed_ready(self) -> bool:
        """Every matmul weight was repacked at load and this CPU runs the packed kernel."""
        w = self.weights
        return (
            self.fast_decode
            and bool(w.packed)
            and set(w.layouts) <= set(w.packed)
            and packed_decode_available()
        )

    def _native_names(self) -> tuple[list[list[str]], str] | None:
        """Store names of every layer's seven matmul weights (q, k, v, o, gate, up, down) and
        of the head, when one-token steps can run as one native call (:meth:`_native_step`):
        ``fast_decode``, weights read through the store (``read="store"``), each held as the
        native step reads it (the decode layout, a block format, or float ``(out, in)`` rows).
        Built once, after :meth:`Weights.mat` has checked each weight's block scales (the native
        step reads them unchecked). None: the per-layer path."""
        if not self.fast_decode:
            return None
        if "_native" not in self.__dict__:
            self.__dict__["_native"] = self._build_native_names()
        names: tuple[list[list[str]], str] | None = self.__dict__["_native"]
        return names

    def _build_native_names(self) -> tuple[list[list[str]], str] | None:
        w = self.weights
        if w.read != "store":
            return None
        parts = [f"self_attn.{n}_proj" for n in "qkvo"] + [
            f"mlp.{n}_proj" for n in ("gate", "up", "down")
        ]
        layers = [
            [f"model.layers.{i}.{n}.weight" for n in parts] for i in range(self.config.num_layers)
        ]
        head = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
        every = [*(n for ls in layers for n in ls), head]
        for n in every:
            if n not in w.layouts:
                return None
            dtype = str(w.store.info(w.prefix + n)["dtype"])
            rows = dtype in ("float32", "float16", "bfloat16") and w.layouts[n] == "out_in"
            if not (dtype.startswith("block:") or rows):
                return None
        for n in every:
            w.mat(n)  # checks block scales once
        return [[w.prefix + n for n in ls] for ls in layers], w.prefix + head

    def _native_step(self, x: np.ndarray, pos0: int, cache: StoreKVCache) -> np.ndarray:
        """A one-token step as one native call (``tierflow._tierflow._llama_decode_step``):
        every layer and the head, the same kernels as :meth:`forward` on the same operands in
        the same order (bit for bit its logits, as the tests check), without returning to
        Python between them (a quarter of a small quantised model's step was those returns).
        Weights are read by name from the store, the next layer's prefetched as
        :meth:`Weights.enter` does; the KV cache's pages stay the cache's, which does the new
        position's bookkeeping afterwards."""
        cfg, w = self.config, self.weights
        native = self._native_names()
        assert native is not None
        names, head = native
        slots = cache._native_slots()
        f32 = np.float32
        layers: list[Any] = []
        for i, ((pages, tail), ws) in enumerate(zip(slots, names, strict=True)):
            p = f"model.layers.{i}."
            bias = None
            if cfg.attention_bias:
                bq, bk, bv = (
                    np.ascontiguousarray(w[p + f"self_attn.{n}_proj.bias"], f32) for n in "qkv"
                )
                bias = (bq, bk, bv)
            layers.append(
                (
                    ws,
                    np.ascontiguousarray(w[p + "input_layernorm.weight"], f32),
                    np.ascontiguousarray(w[p + "post_attention_layernorm.weight"], f32),
                    bias,
                    pages,
                    tail.reshape(-1),
                )
            )
        xs = np.array(x.reshape(-1), f32)
        logits = np.empty((1, cfg.vocab_size), f32)
        _tierflow._llama_decode_step(
            w.store._s,
            cache.store._s,
            xs,
            layers,
            np.ascontiguousarray(w["model.norm.weight"], f32),
            head,
            logits.reshape(-1),
            (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cache.block_size, pos0),
            cfg.norm_eps,
            cfg.rope_theta,
            promote=cache.promote,
            prefetch=w.prefetch_ahead,
        )
        cache._native_wrote()
        cache.advance(1)
        return logits

    def _packed_layer(
        self, x: np.ndarray, i: int, pos0: int, cache: KVCache | StoreKVCache
    ) -> np.ndarray:
        """Layer ``i`` of a one-token step over repacked weights: the kernels
        :meth:`forward` reaches through ``tierflow.rms_norm`` / ``matmul_group`` / ``rope`` /
        ``matmul`` / ``mlp``, called directly on operands whose shapes the config fixes (the
        wrappers' checks and conversions, per layer a few hundred microseconds of Python
        against ~1 ms of weights to read at 30 GB/s, are skipped). Bit for bit the general
        path (the same kernels on the same inputs, as the tests check)."""
        cfg, w, t = self.config, self.weights, _tierflow
        nh, nkv, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.norm_eps
        hid = x.shape[-1]
        p = f"model.layers.{i}."
        h = np.empty_like(x)
        t._rowwise("rms_norm", x.reshape(-1), hid, h.reshape(-1),
                   w[p + "input_layernorm.weight"], None, None, eps, None)  # fmt: skip
        names = [p + f"self_attn.{n}_proj" for n in "qkv"]
        mats = [w.mat(n + ".weight") for n in names]
        bs = [w[n + ".bias"] for n in names] if cfg.attention_bias else [None] * 3
        ys = [np.empty((1, m.shape[1]), np.float32) for m in mats]
        parts = [
            (m.base_format, m.shape[0], m.shape[1], m.data, y, b)
            for m, y, b in zip(mats, ys, bs, strict=True)
        ]
        t._matmul_packed_group(h, parts, None)
        pos = np.array([pos0], np.float64)
        q = np.empty((1, nh, 1, d), np.float32)
        k = np.empty((1, nkv, 1, d), np.float32)
        t._rope(ys[0].reshape(-1), 1, d, pos, cfg.rope_theta, False, q.reshape(-1), None)
        t._rope(ys[1].reshape(-1), 1, d, pos, cfg.rope_theta, False, k.reshape(-1), None)
        a = cache.attend(i, q, k, ys[2].reshape(1, nkv, 1, d))
        wo = w.mat(p + "self_attn.o_proj.weight")
        y = np.empty((1, wo.shape[1]), np.float32)
        ao = np.ascontiguousarray(a, np.float32).reshape(1, nh * d)
        t._matmul_packed(ao, wo.base_format, wo.shape[0], wo.shape[1], wo.data, y, None, None)
        x = x + y
        h = np.empty_like(x)
        t._rowwise("rms_norm", x.reshape(-1), hid, h.reshape(-1),
                   w[p + "post_attention_layernorm.weight"], None, None, eps, None)  # fmt: skip
        g, u, dn = (w.mat(p + f"mlp.{n}_proj.weight") for n in ("gate", "up", "down"))
        y = np.empty((1, dn.shape[1]), np.float32)
        pg, pu, pd = ((m.base_format, m.shape[0], m.shape[1], m.data) for m in (g, u, dn))
        t._mlp_packed(h, pg, pu, pd, "swiglu", y, None)
        return x + y

    def forward(
        self, ids: np.ndarray, cache: KVCache | StoreKVCache, last_only: bool = False
    ) -> np.ndarray:
        cfg, w = self.config, self.weights
        s, pos0 = ids.size, cache.length
        nh, nkv, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.norm_eps
        x = w.rows("model.embed_tokens.weight", ids)
        if (
            s == 1
            and isinstance(cache, StoreKVCache)
            and x.dtype == np.float32
            and self._native_names() is not None
            and cache._native_ready()
        ):
            return self._native_step(x, pos0, cache)
        fast = s == 1 and self._packed_ready() and x.dtype == np.float32
        for i in range(cfg.num_layers):
            w.enter(i)
            if fast:
                x = self._packed_layer(np.ascontiguousarray(x), i, pos0, cache)
                continue
            p = f"model.layers.{i}."

            def heads(y, n):
                return y.reshape(s, n, d).transpose(1, 0, 2)[None]

            h = ops.rms_norm(x, w[p + "input_layernorm.weight"], eps)
            names = [p + f"self_attn.{n}_proj" for n in "qkv"]
            bs = [w[n + ".bias"] for n in names] if cfg.attention_bias else None
            # q, k and v in one call: one job over the three weights at decode shapes
            yq, yk, yv = ops.matmul_group(h, [w.mat(n + ".weight") for n in names], bs)
            q = ops.rope(heads(yq, nh), pos0, cfg.rope_theta)
            k = ops.rope(heads(yk, nkv), pos0, cfg.rope_theta)
            v = heads(yv, nkv)
            a = cache.attend(i, q, k, v)
            x = x + ops.matmul(
                a[0].transpose(1, 0, 2).reshape(s, nh * d), w.mat(p + "self_attn.o_proj.weight")
            )
            h = ops.rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            x = x + ops.swiglu(
                h,
                w.mat(p + "mlp.gate_proj.weight"),
                w.mat(p + "mlp.up_proj.weight"),
                w.mat(p + "mlp.down_proj.weight"),
            )
        w.enter(cfg.num_layers)
        cache.advance(s)
        if last_only:
            x = x[-1:]
        x = ops.rms_norm(x, w["model.norm.weight"], eps)
        head = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
        return ops.matmul(x, w.mat(head))


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: the Llama block with biases on the q, k and v projections."""
