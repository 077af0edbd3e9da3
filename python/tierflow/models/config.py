"""Model configuration: parse a Hugging Face ``config.json`` and say which tensors it implies.

``ModelConfig.from_dict`` normalises the per-family key names (GPT-2's ``n_embd``/``n_head``, Llama's
``rope_parameters`` or legacy ``rope_theta``) into one record, rejects architectures tierflow does
not implement (listing the ones it does), and ``expected_tensors`` gives every tensor name with the
shape the config implies, so a loader can name the tensor that is missing or the wrong shape.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptFileError, InvalidArgumentError, MissingFileError

__all__ = ["SUPPORTED_ARCHITECTURES", "ModelConfig", "matmul_layouts", "read_config"]

#: architecture name in config.json -> model family implemented by tierflow.models
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
    "BertModel": "bert",
}

_MODEL_TYPE_TO_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertModel",
}


def _unsupported(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"unsupported architecture {what}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a checkpoint's config.json that the forward pass needs.

    Attributes:
        architecture: the Hugging Face class name (``"LlamaForCausalLM"``, ...).
        family: ``"llama"``, ``"qwen2"``, ``"gpt2"`` or ``"bert"``.
        head_dim: per-head width ``d``; attention scores are scaled by ``1/sqrt(d)``.
        num_kv_heads: key/value heads ``H_kv`` (grouped-query attention when ``< num_heads``).
        rope_theta: RoPE base; frequency ``i`` is ``theta^(-2i/d)``.
        max_positions: the longest sequence the model accepts (learned or RoPE positions).
    """

    architecture: str
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    activation: str = "silu"
    eos_token_ids: tuple[int, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Normalise a config.json dictionary; raises InvalidArgumentError on what is unsupported."""
        archs = d.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            if archs:
                raise _unsupported(", ".join(map(str, archs)))
            arch = _MODEL_TYPE_TO_ARCH.get(str(d.get("model_type")))
            if arch is None:
                raise _unsupported(f"(model_type {d.get('model_type')!r}, no 'architectures')")
        family = SUPPORTED_ARCHITECTURES[arch]
        try:
            if family == "gpt2":
                return cls._gpt2(arch, d)
            if family == "bert":
                return cls._bert(arch, d)
            return cls._llama(arch, family, d)
        except KeyError as e:
            raise InvalidArgumentError(
                f"config.json for {arch} lacks the key {e.args[0]!r}"
            ) from None

    @classmethod
    def _llama(cls, arch: str, family: str, d: dict[str, Any]) -> ModelConfig:
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        kv = int(d.get("num_key_value_heads") or heads)
        head_dim = int(d.get("head_dim") or hidden // heads)
        if heads % kv:
            raise InvalidArgumentError(
                f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            )
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise InvalidArgumentError(f"unsupported rope_type {rope_type!r}; supported: 'default'")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise InvalidArgumentError(
                f"unsupported hidden_act {act!r} for {arch}; expected 'silu'"
            )
        return cls(
            architecture=arch,
            family=family,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate_size=int(d["intermediate_size"]),
            max_positions=_llama_positions(family, d),
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=family == "qwen2" or bool(d.get("attention_bias", False)),
            activation="silu",
            eos_token_ids=_ids(d.get("eos_token_id")),
            raw=d,
        )

    @classmethod
    def _gpt2(cls, arch: str, d: dict[str, Any]) -> ModelConfig:
        hidden, heads = int(d["n_embd"]), int(d["n_head"])
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise InvalidArgumentError(f"unsupported activation_function {act!r} for GPT-2")
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise InvalidArgumentError(
                "GPT-2 options scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are unsupported"
            )
        return cls(
            architecture=arch,
            family="gpt2",
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(d["n_layer"]),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            intermediate_size=int(d.get("n_inner") or 4 * hidden),
            max_positions=int(d["n_positions"]),
            norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
            tie_word_embeddings=True,
            activation="gelu_tanh",
            eos_token_ids=_ids(d.get("eos_token_id")),
            raw=d,
        )

    @classmethod
    def _bert(cls, arch: str, d: dict[str, Any]) -> ModelConfig:
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        act = d.get("hidden_act", "gelu")
        if act != "gelu":
            raise InvalidArgumentError(f"unsupported hidden_act {act!r} for BERT; expected 'gelu'")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise InvalidArgumentError("only absolute position embeddings are supported for BERT")
        return cls(
            architecture=arch,
            family="bert",
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            intermediate_size=int(d["intermediate_size"]),
            max_positions=int(d["max_position_embeddings"]),
            norm_eps=float(d.get("layer_norm_eps", 1e-12)),
            activation="gelu_erf",
            raw=d,
        )

    def expected_tensors(self, names: set[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward pass reads, with the shape this config implies.

        ``names`` (the checkpoint's tensor names) resolves optional prefixes (GPT-2's
        ``transformer.``, BERT's ``bert.``) and whether a tied head is stored.
        """
        names = names or set()
        v, h, i, L = self.vocab_size, self.hidden_size, self.intermediate_size, self.num_layers
        out: dict[str, tuple[int, ...]] = {}
        if self.family in ("llama", "qwen2"):
            q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            out["model.embed_tokens.weight"] = (v, h)
            for n in range(L):
                p = f"model.layers.{n}."
                out[p + "input_layernorm.weight"] = (h,)
                out[p + "post_attention_layernorm.weight"] = (h,)
                out[p + "self_attn.q_proj.weight"] = (q, h)
                out[p + "self_attn.k_proj.weight"] = (kv, h)
                out[p + "self_attn.v_proj.weight"] = (kv, h)
                out[p + "self_attn.o_proj.weight"] = (h, q)
                if self.attention_bias:
                    out[p + "self_attn.q_proj.bias"] = (q,)
                    out[p + "self_attn.k_proj.bias"] = (kv,)
                    out[p + "self_attn.v_proj.bias"] = (kv,)
                out[p + "mlp.gate_proj.weight"] = (i, h)
                out[p + "mlp.up_proj.weight"] = (i, h)
                out[p + "mlp.down_proj.weight"] = (h, i)
            out["model.norm.weight"] = (h,)
            if not self.tie_word_embeddings or "lm_head.weight" in names:
                out["lm_head.weight"] = (v, h)
        elif self.family == "gpt2":
            pre = "transformer." if any(n.startswith("transformer.") for n in names) else ""
            out[pre + "wte.weight"] = (v, h)
            out[pre + "wpe.weight"] = (self.max_positions, h)
            for n in range(L):
                p = f"{pre}h.{n}."
                for ln in ("ln_1", "ln_2"):
                    out[p + ln + ".weight"] = (h,)
                    out[p + ln + ".bias"] = (h,)
                out[p + "attn.c_attn.weight"] = (h, 3 * h)
                out[p + "attn.c_attn.bias"] = (3 * h,)
                out[p + "attn.c_proj.weight"] = (h, h)
                out[p + "attn.c_proj.bias"] = (h,)
                out[p + "mlp.c_fc.weight"] = (h, i)
                out[p + "mlp.c_fc.bias"] = (i,)
                out[p + "mlp.c_proj.weight"] = (i, h)
                out[p + "mlp.c_proj.bias"] = (h,)
            out[pre + "ln_f.weight"] = (h,)
            out[pre + "ln_f.bias"] = (h,)
        else:  # bert
            pre = "bert." if any(n.startswith("bert.") for n in names) else ""
            e = pre + "embeddings."
            out[e + "word_embeddings.weight"] = (v, h)
            out[e + "position_embeddings.weight"] = (self.max_positions, h)
            out[e + "token_type_embeddings.weight"] = (int(self.raw.get("type_vocab_size", 2)), h)
            out[e + "LayerNorm.weight"] = (h,)
            out[e + "LayerNorm.bias"] = (h,)
            for n in range(L):
                p = f"{pre}encoder.layer.{n}."
                for m in ("query", "key", "value"):
                    out[p + f"attention.self.{m}.weight"] = (h, h)
                    out[p + f"attention.self.{m}.bias"] = (h,)
                out[p + "attention.output.dense.weight"] = (h, h)
                out[p + "attention.output.dense.bias"] = (h,)
                out[p + "intermediate.dense.weight"] = (i, h)
                out[p + "intermediate.dense.bias"] = (i,)
                out[p + "output.dense.weight"] = (h, i)
                out[p + "output.dense.bias"] = (h,)
                for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
                    out[p + ln + ".weight"] = (h,)
                    out[p + ln + ".bias"] = (h,)
        return out


def matmul_layouts(config: ModelConfig, names: list[str]) -> dict[str, str]:
    """The weights used as matmul operands, each with its stored layout: ``"out_in"`` (torch
    Linear, ``y = x W^T``) or ``"in_out"`` (GPT-2 Conv1D, ``y = x W``). The token embedding is
    included when it doubles as the output head (tied)."""
    out: dict[str, str] = {}
    for n in names:
        if not n.endswith(".weight") or "norm" in n.lower() or ".ln_" in n or n.startswith("ln_"):
            continue
        if config.family == "gpt2":
            if ".attn.c_" in n or ".mlp.c_" in n:
                out[n] = "in_out"
            elif n.endswith("wte.weight"):
                out[n] = "out_in"  # the tied head
        elif config.family == "bert":
            if "embeddings" not in n:
                out[n] = "out_in"
        elif n == "lm_head.weight" or "embed_tokens" not in n or "lm_head.weight" not in names:
            out[n] = "out_in"
    return out


def _llama_positions(family: str, d: dict[str, Any]) -> int:
    """max_position_embeddings, capped by a sliding attention window when one applies (Mistral's
    ``sliding_window``; Qwen2's only with ``use_sliding_window``): tierflow attends to the whole
    cache, which equals windowed attention exactly while the sequence fits in the window."""
    n = int(d.get("max_position_embeddings", 2048))
    window = d.get("sliding_window")
    applies = d.get("use_sliding_window", False) if family == "qwen2" else True
    if window and applies:
        n = min(n, int(window))
    return n


def _ids(v: Any) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v),)


def read_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read ``<path>/config.json`` (or the file itself) into a :class:`ModelConfig`."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    if not os.path.exists(p):
        raise MissingFileError(f"no config.json at {p}")
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        err = CorruptFileError(f"{p}: not valid JSON ({e})")
        err.path = p
        raise err from None
    if not isinstance(d, dict):
        raise CorruptFileError(f"{p}: expected a JSON object")
    return ModelConfig.from_dict(d)
