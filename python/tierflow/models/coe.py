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
from .loader import load

__all__ = ["CoEResult", "ExpertCoE", "byte_tokenize"]


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
