"""Write small random checkpoints in the Hugging Face layout (config.json + model.safetensors).

Used by tests, the demo (tiny experts for a CoE) and the benchmark (a ~1B-parameter Llama).
Weights are drawn ``N(0, std^2)``; norm weights are ``1 + N(0, 0.1^2)``; biases ``N(0, 0.1^2)``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ._checkpoint import write_safetensors
from .config import ModelConfig

__all__ = ["write_tiny_checkpoint"]


def _config(
    architecture: str,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab: int,
    max_positions: int,
    tie: bool,
    theta: float,
) -> dict[str, Any]:
    if architecture in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
        mt = {
            "LlamaForCausalLM": "llama",
            "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2",
        }
        return {
            "architectures": [architecture],
            "model_type": mt[architecture],
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "intermediate_size": intermediate,
            "vocab_size": vocab,
            "max_position_embeddings": max_positions,
            "rms_norm_eps": 1e-6,
            "rope_theta": theta,
            "tie_word_embeddings": tie,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        }
    if architecture == "GPT2LMHeadModel":
        return {
            "architectures": [architecture],
            "model_type": "gpt2",
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads,
            "n_inner": intermediate,
            "vocab_size": vocab,
            "n_positions": max_positions,
            "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new",
            "eos_token_id": vocab - 1,
        }
    if architecture == "BertModel":
        return {
            "architectures": [architecture],
            "model_type": "bert",
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": intermediate,
            "vocab_size": vocab,
            "max_position_embeddings": max_positions,
            "layer_norm_eps": 1e-12,
            "hidden_act": "gelu",
            "type_vocab_size": 2,
        }
    raise InvalidArgumentError(f"write_tiny_checkpoint: unsupported architecture {architecture!r}")


def write_tiny_checkpoint(
    path: str | os.PathLike[str],
    architecture: str = "LlamaForCausalLM",
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 160,
    vocab: int = 256,
    max_positions: int = 256,
    tie: bool = False,
    theta: float = 10000.0,
    std: float = 0.05,
    seed: int = 0,
) -> str:
    """Create ``path`` with a random checkpoint of the given shape; returns the folder.

    Tensors are generated and written one at a time, so a large model never sits in RAM twice.
    """
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    cfg_dict = _config(
        architecture,
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        vocab,
        max_positions,
        tie,
        theta,
    )
    cfg = ModelConfig.from_dict(cfg_dict)
    rng = np.random.default_rng(seed)

    def maker(name: str, shape: tuple[int, ...]):
        def make() -> np.ndarray:
            owner = name.split(".")[-2]
            if name.endswith(".weight") and ("norm" in owner.lower() or owner.startswith("ln_")):
                return 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            if name.endswith(".bias"):
                return 0.1 * rng.standard_normal(shape, dtype=np.float32)
            return std * rng.standard_normal(shape, dtype=np.float32)

        return make

    lazy = {n: (shape, maker(n, shape)) for n, shape in cfg.expected_tensors().items()}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg_dict, f, indent=2)
    write_safetensors(os.path.join(folder, "model.safetensors"), {}, lazy)
    return folder
