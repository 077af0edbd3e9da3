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

import os
from typing import Any

from ._base import CausalLM
from ._tiny import write_tiny_checkpoint
from ._weights import WEIGHT_FORMATS, Weights
from .bert import BertModel
from .coe import DEMO_EXAMPLES, CoEResult, ExpertCoE, byte_tokenize, write_demo_experts
from .config import SUPPORTED_ARCHITECTURES, ModelConfig, read_config
from .encoder import SentenceEncoder, minilm_path
from .generate import sample_next
from .gpt2 import GPT2LMHeadModel
from .kvcache import KVCache, PagedKVCache
from .llama import LlamaForCausalLM, Qwen2ForCausalLM

__all__ = [
    "DEMO_EXAMPLES",
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
    "PagedKVCache",
    "Qwen2ForCausalLM",
    "SentenceEncoder",
    "byte_tokenize",
    "load",
    "minilm_path",
    "read_config",
    "sample_next",
    "write_demo_experts",
    "write_tiny_checkpoint",
]

_CLASSES: dict[str, Any] = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "gpt2": GPT2LMHeadModel,
    "bert": BertModel,
}


def load(
    path: str | os.PathLike[str],
    store: Any = None,
    tier: str | None = None,
    dtype: str | None = None,
    prefix: str | None = None,
    mmap_files: bool = False,
    read: str = "auto",
) -> Any:
    """Load a checkpoint folder into the right model class.

    Args:
        path: folder with config.json and model.safetensors (or model.safetensors.index.json),
            or a llama-architecture ``.gguf`` file (see :mod:`tierflow.models.gguf`).
        store: the TieredStore to register the weights in; None makes a private one (default
            tiers fast / ram / disk in a temporary folder, removed with the model).
        tier: where the weights start: a file tier adopts the files there in place (None: the
            store's home file tier); a memory tier adopts them, then moves them up.
        dtype: convert weights on load: None (as stored), "f32", "bf16", "q8_0" or "q4_0".
        prefix: the store names of the weights are ``prefix + tensor name`` (default: the
            folder's name and a counter, e.g. ``"tiny-llama#1/"``), so many models share a store.
        read: how matmul weights that sit in a file tier are read at each step: ``"stream"``
            (the kernels stream them from the tier through a double buffer, overlapping reads
            with arithmetic; they stay in the file tier), ``"store"`` (copied into the store's
            memory tiers by its policy, the next layer prefetched), ``"mmap"`` (read in place,
            memory-mapped: one pass through the OS page cache, but a file truncated while mapped
            kills the process with SIGBUS: only for files nobody rewrites while the model runs),
            or ``"auto"`` (the default): ``"stream"`` when the matmul weights are larger than the
            store's memory tiers, else ``"store"``. The logits are bit-identical in every mode.
        mmap_files: the same as ``read="mmap"`` (kept from earlier versions).
    Raises:
        InvalidArgumentError: an unsupported architecture (lists the supported ones) or option.
        TensorNotFoundError / ShapeError: a tensor missing or disagreeing with config.json.
        MissingFileError / CorruptFileError: missing, truncated or malformed files.
    """
    folder = os.fspath(path)
    if folder.endswith(".gguf") and not os.path.isdir(folder):
        from .gguf import load_gguf

        return load_gguf(folder, store, tier, dtype, prefix, read="mmap" if mmap_files else read)
    if not os.path.isdir(folder):
        from ..errors import MissingFileError

        raise MissingFileError(f"no checkpoint folder at {folder}")
    cfg = read_config(folder)
    weights = Weights.open(
        folder,
        cfg,
        store=store,
        tier=tier,
        dtype=dtype,
        prefix=prefix,
        read="mmap" if mmap_files else read,
    )
    store = weights.store
    return _CLASSES[cfg.family](cfg, weights, store)
