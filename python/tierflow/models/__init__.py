"""Real models on tierflow: Llama / Mistral / Qwen2 / GPT-2 decoders and BERT sentence encoders.

``load(path)`` reads a Hugging Face checkpoint folder (config.json + safetensors, single or
sharded), checks every tensor against the config, registers the weights in a TieredStore in place
and returns the model, which computes on tierflow's kernels.

Example:
    >>> import tempfile, tierflow.models as tm
    >>> folder = tm.write_tiny_checkpoint(tempfile.mkdtemp(), "Qwen2ForCausalLM", vocab=256)
    >>> model = tm.load(folder, dtype="q8_0")
    >>> model([1, 2, 3]).shape
    (3, 256)
    >>> out = model.generate([1, 2, 3], max_new_tokens=5)
    >>> len(out), out[:3].tolist()
    (8, [1, 2, 3])
"""

from __future__ import annotations

from typing import Any

from .._deprecated import renamed
from ._base import CausalLM
from ._gguf_writer import write_gguf
from ._tiny import write_tiny_checkpoint
from ._weights import WEIGHT_FORMATS
from .bert import BertModel
from .coe import CoEResult, ExpertCoE, byte_tokenize
from .config import SUPPORTED_ARCHITECTURES, ModelConfig, read_config
from .encoder import SentenceEncoder, minilm_path
from .generate import sample_next
from .gpt2 import GPT2LMHeadModel
from .kvcache import KVCache, StoreKVCache
from .llama import LlamaForCausalLM, Qwen2ForCausalLM
from .loader import load

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "WEIGHT_FORMATS",
    "BertModel",
    "CausalLM",
    "CoEResult",
    "ExpertCoE",
    "GPT2LMHeadModel",
    "KVCache",
    "LlamaForCausalLM",
    "ModelConfig",
    "Qwen2ForCausalLM",
    "SentenceEncoder",
    "StoreKVCache",
    "byte_tokenize",
    "load",
    "minilm_path",
    "read_config",
    "sample_next",
    "write_gguf",
    "write_tiny_checkpoint",
]


def _demo_experts() -> Any:
    import importlib

    return importlib.import_module("tierflow.demos.experts")


# Former names, kept for one release: the demo experts moved to tierflow.demos.experts and the
# models' paged KV cache is StoreKVCache.
__getattr__ = renamed(
    __name__,
    {
        "DEMO_EXAMPLES": (
            "tierflow.demos.experts.DEMO_EXAMPLES",
            lambda: _demo_experts().DEMO_EXAMPLES,
        ),
        "write_demo_experts": (
            "tierflow.demos.experts.write_demo_experts",
            lambda: _demo_experts().write_demo_experts,
        ),
        "PagedKVCache": ("tierflow.models.StoreKVCache", lambda: StoreKVCache),
    },
)
