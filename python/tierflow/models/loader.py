"""``load(path)``: a Hugging Face checkpoint folder (or a llama GGUF file) into the right model
class."""

from __future__ import annotations

import os
from typing import Any

from ..errors import MissingFileError
from ._weights import Weights
from .bert import BertModel
from .config import read_config
from .gpt2 import GPT2LMHeadModel
from .llama import LlamaForCausalLM, Qwen2ForCausalLM

__all__ = ["load"]

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
        read: how matmul weights that sit in a file tier are read at each step: ``"resident"``
            (as many as fit the store's default memory tier are moved there once and pinned,
            the rest streamed at every step: the optimal policy for the layers' cyclic order,
            reading ``model - budget`` bytes per step), ``"stream"``
            (the kernels stream them from the tier through a double buffer, overlapping reads
            with arithmetic; they stay in the file tier), ``"store"`` (copied into the store's
            memory tiers by its policy, the next layer prefetched), ``"mmap"`` (read in place,
            memory-mapped: one pass through the OS page cache, but a file truncated while mapped
            kills the process with SIGBUS: only for files nobody rewrites while the model runs),
            or ``"auto"`` (the default): ``"resident"`` when the matmul weights are larger than the
            store's memory tiers, else ``"store"``. The logits are bit-identical in every mode.
    Raises:
        InvalidArgumentError: an unsupported architecture (lists the supported ones) or option.
        TensorNotFoundError / ShapeError: a tensor missing or disagreeing with config.json.
        MissingFileError / CorruptFileError: missing, truncated or malformed files.
    """
    folder = os.fspath(path)
    if folder.endswith(".gguf") and not os.path.isdir(folder):
        from .gguf import load_gguf

        return load_gguf(folder, store, tier, dtype, prefix, read=read)
    if not os.path.isdir(folder):
        raise MissingFileError(f"no checkpoint folder at {folder}")
    cfg = read_config(folder)
    weights = Weights.open(
        folder,
        cfg,
        store=store,
        tier=tier,
        dtype=dtype,
        prefix=prefix,
        read=read,
    )
    store = weights.store
    return _CLASSES[cfg.family](cfg, weights, store)
