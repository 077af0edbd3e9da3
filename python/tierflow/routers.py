"""Routers: pick the expert of a Composition of Experts for a prompt.

:class:`EmbeddingRouter` is the Samba-1 style router: an embedding model plus a k-nearest-neighbour
vote over example prompts. For a prompt with unit embedding ``e`` and examples ``x_j`` (unit, labelled
``y_j``), the cosine similarities are ``s_j = e . x_j``; among the ``k`` most similar examples ``N``,

    score(expert) = sum_{j in N, y_j = expert} max(s_j, 0)  /  sum_{j in N} max(s_j, 0)

so the scores of all experts sum to 1 (all zero if no neighbour is similar at all), and
``similarity(expert) = max_{j: y_j = expert} s_j``. The best expert is the top score (ties broken
by similarity). When its score is below ``min_score`` or its similarity below ``min_similarity``
the router answers ``fallback`` (a named general expert) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import InvalidArgumentError, ShapeError

__all__ = ["EmbeddingRouter", "Encoder", "Route"]


class Encoder(Protocol):
    """Anything that turns texts into unit-length row vectors (e.g. models.SentenceEncoder)."""

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray: ...


@dataclass(frozen=True)
class Route:
    """The router's answer for one prompt.

    Attributes:
        expert: the chosen expert (``fallback`` when confidence was low).
        score: the kNN vote share of the best-scoring expert, in [0, 1].
        scores: every expert's vote share (they sum to 1 unless no neighbour was similar).
        similarity: every expert's best cosine similarity to one of its examples.
        fell_back: True when the fallback expert was chosen for low confidence.
    """

    expert: str
    score: float
    scores: dict[str, float] = field(repr=False)
    similarity: dict[str, float] = field(repr=False)
    fell_back: bool = False

    def ranking(self) -> list[str]:
        """Experts from most to least likely (for prefetching)."""
        return sorted(self.scores, key=lambda e: (-self.scores[e], -self.similarity[e], e))


class EmbeddingRouter:
    """kNN over embedded example prompts.

    Args:
        encoder: embeds texts (``encode(texts) -> (n, d)`` unit rows).
        examples: ``{expert: [prompt, ...]}``, at least one prompt per expert.
        k: neighbours that vote (clamped to the number of examples).
        fallback: the general expert to answer when confidence is low (need not have examples).
        min_score: lowest acceptable vote share of the winner, in [0, 1].
        min_similarity: lowest acceptable cosine similarity of the winner, in [-1, 1].
    """

    def __init__(
        self,
        encoder: Encoder,
        examples: Mapping[str, Sequence[str]],
        k: int = 5,
        fallback: str | None = None,
        min_score: float = 0.0,
        min_similarity: float = -1.0,
    ):
        if not examples:
            raise InvalidArgumentError("EmbeddingRouter needs examples for at least one expert")
        if int(k) != k or k < 1:
            raise InvalidArgumentError(f"k must be a positive integer, got {k}")
        if not 0.0 <= min_score <= 1.0:
            raise InvalidArgumentError(f"min_score must be in [0, 1], got {min_score}")
        if not -1.0 <= min_similarity <= 1.0:
            raise InvalidArgumentError(f"min_similarity must be in [-1, 1], got {min_similarity}")
        if (min_score > 0 or min_similarity > -1) and fallback is None:
            raise InvalidArgumentError("a confidence threshold needs a fallback expert")
        texts: list[str] = []
        labels: list[int] = []
        self.experts: list[str] = list(examples)
        for i, (name, prompts) in enumerate(examples.items()):
            if isinstance(prompts, str) or len(prompts) == 0:
                raise InvalidArgumentError(f"expert {name!r} needs a list of example prompts")
            texts.extend(prompts)
            labels.extend([i] * len(prompts))
        if fallback is not None and fallback not in self.experts:
            self.experts.append(fallback)
        self.encoder = encoder
        self.k = int(min(k, len(texts)))
        self.fallback = fallback
        self.min_score = float(min_score)
        self.min_similarity = float(min_similarity)
        self._labels = np.asarray(labels, np.int64)
        self._emb = self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        e = np.asarray(self.encoder.encode(list(texts)), np.float64)
        if e.ndim != 2 or e.shape[0] != len(texts):
            raise ShapeError(f"encoder returned shape {e.shape} for {len(texts)} texts")
        if not np.isfinite(e).all():
            raise InvalidArgumentError("encoder returned NaN or infinite embeddings")
        n = np.linalg.norm(e, axis=1, keepdims=True)
        return e / np.maximum(n, 1e-12)

    def route(self, prompt: str) -> Route:
        """Route one prompt."""
        return self.route_batch([prompt])[0]

    def route_batch(self, prompts: Sequence[str]) -> list[Route]:
        """Route several prompts (one encoder call); an empty list gives ``[]``."""
        if isinstance(prompts, str):
            raise InvalidArgumentError("route_batch expects a list of prompts, not one string")
        if len(prompts) == 0:
            return []
        sims = self._embed(prompts) @ self._emb.T  # (P, examples)
        return [self._decide(row) for row in sims]

    def scores(self, prompt: str) -> dict[str, float]:
        """Every expert's vote share for ``prompt``."""
        return self.route(prompt).scores

    def _decide(self, sims: np.ndarray) -> Route:
        n_exp = len(self.experts)
        nn = np.argsort(-sims, kind="stable")[: self.k]
        votes = np.zeros(n_exp)
        np.add.at(votes, self._labels[nn], np.maximum(sims[nn], 0.0))
        total = votes.sum()
        share = votes / total if total > 0 else votes
        best_sim = np.full(n_exp, -1.0)
        np.maximum.at(best_sim, self._labels, sims)
        order = sorted(range(n_exp), key=lambda i: (-share[i], -best_sim[i], i))
        top = order[0]
        scores = {e: float(share[i]) for i, e in enumerate(self.experts)}
        similarity = {e: float(best_sim[i]) for i, e in enumerate(self.experts)}
        low = total <= 0 or share[top] < self.min_score or best_sim[top] < self.min_similarity
        if low and self.fallback is not None:
            return Route(self.fallback, float(share[top]), scores, similarity, fell_back=True)
        return Route(self.experts[top], float(share[top]), scores, similarity)

    def __repr__(self) -> str:
        return f"EmbeddingRouter(experts={self.experts}, k={self.k}, fallback={self.fallback!r})"
