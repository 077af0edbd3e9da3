"""A Composition of Experts on real checkpoints: text in, expert chosen, tokens out.

``ExpertCoE(router, experts={name: folder_or_model})`` routes a prompt with the router (for example
an :class:`~tierflow.routers.EmbeddingRouter` on all-MiniLM-L6-v2), loads the chosen expert on
first use (only the experts actually used are ever read), tokenizes the prompt for it and decodes.
Tiny experts written by :func:`write_tiny_checkpoint` have no tokenizer of their own: the default
tokenizer is UTF-8 bytes (ids 0..255, so the expert's vocabulary must hold at least 256 ids).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..routers import Route

__all__ = ["DEMO_EXAMPLES", "CoEResult", "ExpertCoE", "byte_tokenize", "write_demo_experts"]


def byte_tokenize(text: str) -> np.ndarray:
    """UTF-8 bytes as token ids (0..255)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)


@dataclass(frozen=True)
class CoEResult:
    expert: str
    route: Route
    prompt_ids: np.ndarray
    new_ids: np.ndarray


class ExpertCoE:
    """Route, load on demand, generate."""

    def __init__(
        self,
        router: Any,
        experts: Mapping[str, str | os.PathLike[str] | Any],
        tokenize: Callable[[str], np.ndarray] = byte_tokenize,
        **load_kwargs: Any,
    ):
        missing = [e for e in router.experts if e not in experts]
        if missing:
            raise InvalidArgumentError(f"the router can pick experts with no checkpoint: {missing}")
        self.router = router
        self._sources = dict(experts)
        self._loaded: dict[str, Any] = {}
        self.tokenize = tokenize
        self.load_kwargs = load_kwargs

    def expert(self, name: str) -> Any:
        """The model of expert ``name`` (loaded on first use)."""
        if name not in self._loaded:
            src = self._sources[name]
            if isinstance(src, (str, os.PathLike)):
                from . import load

                src = load(src, **self.load_kwargs)
            self._loaded[name] = src
        return self._loaded[name]

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def run(self, text: str, max_new_tokens: int = 16, **generate_kwargs: Any) -> CoEResult:
        """Route ``text``, load the chosen expert if needed, decode ``max_new_tokens``."""
        return self.run_batch([text], max_new_tokens, **generate_kwargs)[0]

    def run_batch(
        self, texts: list[str], max_new_tokens: int = 16, **generate_kwargs: Any
    ) -> list[CoEResult]:
        """Route the whole batch at once (one encoder call), then run the prompts expert by
        expert (each expert is loaded once and serves all its prompts back to back, as a CoE
        does to amortise switching). Results come back in the order of ``texts``."""
        if isinstance(texts, str):
            raise InvalidArgumentError("run_batch expects a list of prompts, not one string")
        routes = self.router.route_batch(list(texts))
        order: dict[str, list[int]] = {}
        for i, r in enumerate(routes):
            order.setdefault(r.expert, []).append(i)
        results: list[CoEResult | None] = [None] * len(texts)
        for expert, idx in order.items():
            model = self.expert(expert)
            for i in idx:
                ids = self.tokenize(texts[i])
                out = model.generate(ids, max_new_tokens, **generate_kwargs)
                results[i] = CoEResult(expert, routes[i], ids, out[ids.size :])
        return [r for r in results if r is not None]


#: example prompts per expert for the demo CoE (an EmbeddingRouter votes among their embeddings)
DEMO_EXAMPLES: dict[str, list[str]] = {
    "code": [
        "Write a Python function that reverses a linked list.",
        "Why does my JavaScript code throw undefined is not a function?",
        "How do I fix a segmentation fault in C?",
        "Explain Rust borrow checker errors.",
        "Implement binary search over a sorted array in Java.",
        "How do I sort a list of numbers in Python?",
    ],
    "cooking": [
        "How long should I roast a chicken?",
        "Give me a recipe for chocolate chip cookies.",
        "What spices go well in a lentil curry?",
        "How do I make fresh pasta dough?",
        "How long do I bake banana bread in the oven?",
        "How do I saute vegetables without burning them?",
    ],
    "finance": [
        "Should I invest in index funds or individual stocks?",
        "How is compound interest calculated?",
        "What does a company's balance sheet show?",
        "How do bond yields react to interest rate hikes?",
        "Should I pay off debt or save for retirement?",
        "What is a good savings rate for my salary?",
    ],
}

_DEMO_ARCHS = {
    "code": "LlamaForCausalLM",
    "cooking": "Qwen2ForCausalLM",
    "finance": "GPT2LMHeadModel",
    "general": "LlamaForCausalLM",
}


def write_demo_experts(
    folder: str | os.PathLike[str], hidden: int = 64, layers: int = 2
) -> dict[str, str]:
    """Write tiny random expert checkpoints for a demo CoE (code: Llama, cooking: Qwen2,
    finance: GPT-2, general: Llama; byte vocabulary of 256) under ``folder``; returns
    ``{expert: checkpoint folder}``. Pair with ``EmbeddingRouter(encoder, DEMO_EXAMPLES,
    fallback="general", ...)``."""
    from ._tiny import write_tiny_checkpoint

    out = {}
    for i, (name, arch) in enumerate(_DEMO_ARCHS.items()):
        kv = 4 if arch == "GPT2LMHeadModel" else 2
        out[name] = write_tiny_checkpoint(
            os.path.join(os.fspath(folder), name),
            arch,
            hidden=hidden,
            layers=layers,
            heads=4,
            kv_heads=kv,
            vocab=256,
            seed=100 + i,
            std=0.3,
        )
    return out
