"""Workloads: a :class:`Trace` of requests (arrival, prompt and output tokens, the chosen expert,
the router's top scores), with seeded generators and JSONL load/save.

Generators (all reproducible from ``seed``):

- :meth:`Trace.poisson`: open-loop Poisson arrivals at ``rate`` requests/s, optional ``bursts``
  ``[(start_s, duration_s, rate_factor), ...]``;
- :meth:`Trace.closed_loop`: ``users`` clients, each issuing its next request ``think_time``
  seconds (exponential mean) after the previous one completes (resolved by the simulator);
- popularity ``"zipf"`` (rank ``r`` with weight ``r**-zipf_s``) or ``"uniform"``; ``drift`` shifts
  the popularity ranking by that many experts per second.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, MissingFileError

__all__ = ["Trace"]


def _count(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidArgumentError(f"trace: {name} must be an integer >= 1, got {v!r}")
    return int(v)


def _tokens(name: str, v: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """A token count: an int, or (low, high) drawn uniformly."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        lo, hi = _count(name, v[0]), _count(name, v[1])
        if hi < lo:
            raise InvalidArgumentError(f"trace: {name} range {v!r} has high < low")
        return rng.integers(lo, hi + 1, size=n).astype(np.uint32)
    return np.full(n, _count(name, v), dtype=np.uint32)


@dataclass
class Trace:
    """Requests in arrival order. ``arrival`` is absolute seconds (open loop) or the think time
    before the request (closed loop, when ``user`` is given). ``expert`` indexes ``experts``;
    ``scores`` holds each request's top-k router scores as (expert index, probability) columns."""

    experts: list[str]
    arrival: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    expert: np.ndarray
    score_ids: np.ndarray | None = None
    score_probs: np.ndarray | None = None
    user: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.arrival = np.ascontiguousarray(self.arrival, dtype=np.float64)
        n = len(self.arrival)
        self.prompt_tokens = np.ascontiguousarray(self.prompt_tokens, dtype=np.uint32)
        self.output_tokens = np.ascontiguousarray(self.output_tokens, dtype=np.uint32)
        self.expert = np.ascontiguousarray(self.expert, dtype=np.uint32)
        for f in ("prompt_tokens", "output_tokens", "expert"):
            if len(getattr(self, f)) != n:
                raise InvalidArgumentError(
                    f"trace: field {f} has {len(getattr(self, f))} entries, arrival has {n}"
                )
        if n and (not np.all(np.isfinite(self.arrival)) or self.arrival.min() < 0):
            raise InvalidArgumentError("trace: field arrival must hold finite times >= 0")
        if n and self.expert.max() >= len(self.experts):
            raise InvalidArgumentError("trace: field expert indexes past the expert list")
        if self.user is not None:
            self.user = np.ascontiguousarray(self.user, dtype=np.uint32)
        elif n and np.any(np.diff(self.arrival) < 0):
            order = np.argsort(self.arrival, kind="stable")
            self._take(order)

    def _take(self, order: np.ndarray) -> None:
        for f in (
            "arrival",
            "prompt_tokens",
            "output_tokens",
            "expert",
            "score_ids",
            "score_probs",
            "user",
        ):
            v = getattr(self, f)
            if v is not None:
                setattr(self, f, np.ascontiguousarray(v[order]))

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def closed(self) -> bool:
        return self.user is not None

    def counts(self) -> dict[str, int]:
        """Requests per expert name."""
        c = np.bincount(self.expert, minlength=len(self.experts))
        return {e: int(k) for e, k in zip(self.experts, c, strict=False)}

    def alt(self) -> np.ndarray:
        """The router's second choice per request (-1 when unknown): the prefetch hint."""
        if self.score_ids is None or self.score_ids.shape[1] < 2:
            return np.full(len(self), -1, dtype=np.int32)
        return np.ascontiguousarray(self.score_ids[:, 1], dtype=np.int32)

    def __repr__(self) -> str:
        kind = (
            f"closed loop, {len(np.unique(self.user))} users"
            if self.user is not None
            else "open loop"
        )
        return f"Trace({len(self)} requests, {len(self.experts)} experts, {kind})"

    # --- generators --------------------------------------------------------------------------
    @staticmethod
    def _popularity(experts: list[str], popularity: str, zipf_s: float) -> np.ndarray:
        m = len(experts)
        if popularity == "uniform":
            return np.full(m, 1.0 / m)
        if popularity == "zipf":
            if not (math.isfinite(zipf_s) and zipf_s >= 0):
                raise InvalidArgumentError(f"trace: zipf_s must be >= 0, got {zipf_s!r}")
            w = np.arange(1, m + 1, dtype=np.float64) ** -zipf_s
            return w / w.sum()
        raise InvalidArgumentError(
            f"trace: popularity must be 'zipf' or 'uniform', got {popularity!r}"
        )

    @staticmethod
    def _choose(
        rng: np.random.Generator,
        experts: list[str],
        n: int,
        t: np.ndarray,
        popularity: str,
        zipf_s: float,
        drift: float,
        top_k: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = len(experts)
        p = Trace._popularity(experts, popularity, zipf_s)
        ranks = rng.choice(m, size=(n, top_k), p=p)
        shift = np.floor(t * drift).astype(np.int64)[:, None] if drift else 0
        ids = ((ranks + shift) % m).astype(np.int32)
        # distinct runners-up: bump duplicates of the chosen expert
        for j in range(1, top_k):
            dup = ids[:, j] == ids[:, 0]
            ids[dup, j] = (ids[dup, j] + 1 + j) % m
        # scores: the chosen expert 0.5..0.95, the rest share the remainder
        top = rng.uniform(0.5, 0.95, size=n)
        probs = np.empty((n, top_k))
        probs[:, 0] = top
        if top_k > 1:
            rest = rng.dirichlet(np.ones(top_k - 1), size=n) * (1 - top)[:, None]
            rest.sort(axis=1)
            probs[:, 1:] = rest[:, ::-1]
        return ids[:, 0].astype(np.uint32), ids, probs

    @classmethod
    def poisson(
        cls,
        experts: list[str] | int,
        *,
        rate: float,
        n: int,
        popularity: str = "zipf",
        zipf_s: float = 1.0,
        prompt_tokens: int | tuple[int, int] = 512,
        output_tokens: int | tuple[int, int] = 128,
        bursts: list[tuple[float, float, float]] | None = None,
        drift: float = 0.0,
        top_k: int = 3,
        seed: int = 0,
    ) -> Trace:
        """``n`` open-loop requests arriving as a Poisson process of ``rate``/s (times ``factor``
        inside each burst window)."""
        names = _names(experts)
        n = _count("n", n)
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise InvalidArgumentError(f"trace: rate must be > 0 requests/s, got {rate!r}")
        top_k = max(1, min(_count("top_k", top_k), len(names)))
        rng = np.random.default_rng(seed)
        # unit-rate arrivals in "work time", mapped through the inverse cumulative rate
        work = np.cumsum(rng.exponential(1.0, size=n))
        t = work / rate
        for b in bursts or []:
            if len(b) != 3 or b[1] <= 0 or b[2] <= 0 or b[0] < 0:
                raise InvalidArgumentError(
                    f"trace: burst {b!r} must be (start >= 0, duration > 0, factor > 0)"
                )
        if bursts:
            t = _warp(work, rate, bursts)
        expert, ids, probs = cls._choose(rng, names, n, t, popularity, zipf_s, float(drift), top_k)
        return cls(
            names,
            t,
            _tokens("prompt_tokens", prompt_tokens, n, rng),
            _tokens("output_tokens", output_tokens, n, rng),
            expert,
            ids,
            probs,
        )

    @classmethod
    def closed_loop(
        cls,
        experts: list[str] | int,
        *,
        users: int,
        n: int,
        think_time: float = 0.0,
        popularity: str = "zipf",
        zipf_s: float = 1.0,
        prompt_tokens: int | tuple[int, int] = 512,
        output_tokens: int | tuple[int, int] = 128,
        drift: float = 0.0,
        top_k: int = 3,
        seed: int = 0,
    ) -> Trace:
        """``n`` requests from ``users`` clients in turn; each waits an exponential think time of
        mean ``think_time`` seconds after its previous request completes."""
        names = _names(experts)
        n, users = _count("n", n), _count("users", users)
        if not (
            isinstance(think_time, (int, float)) and math.isfinite(think_time) and think_time >= 0
        ):
            raise InvalidArgumentError(
                f"trace: think_time must be >= 0 seconds, got {think_time!r}"
            )
        top_k = max(1, min(_count("top_k", top_k), len(names)))
        rng = np.random.default_rng(seed)
        think = rng.exponential(think_time, size=n) if think_time > 0 else np.zeros(n)
        user = np.arange(n, dtype=np.uint32) % users
        approx_t = np.arange(n) / users  # drift clock: request rounds
        expert, ids, probs = cls._choose(
            rng, names, n, approx_t, popularity, zipf_s, float(drift), top_k
        )
        return cls(
            names,
            think,
            _tokens("prompt_tokens", prompt_tokens, n, rng),
            _tokens("output_tokens", output_tokens, n, rng),
            expert,
            ids,
            probs,
            user,
        )

    # --- JSONL -------------------------------------------------------------------------------
    def save_jsonl(self, path: str | os.PathLike[str]) -> None:
        """One JSON object per request: ``{"t" (or "user" + "think"), "prompt_tokens",
        "output_tokens", "expert", "scores": {name: p}}``."""
        with open(path, "w") as f:
            for i in range(len(self)):
                r: dict[str, Any] = {}
                if self.user is not None:
                    r["user"] = int(self.user[i])
                    r["think"] = float(self.arrival[i])
                else:
                    r["t"] = float(self.arrival[i])
                r["prompt_tokens"] = int(self.prompt_tokens[i])
                r["output_tokens"] = int(self.output_tokens[i])
                r["expert"] = self.experts[int(self.expert[i])]
                if self.score_ids is not None and self.score_probs is not None:
                    r["scores"] = {
                        self.experts[int(j)]: round(float(p), 6)
                        for j, p in zip(self.score_ids[i], self.score_probs[i], strict=False)
                    }
                f.write(json.dumps(r) + "\n")

    @classmethod
    def load_jsonl(cls, path: str | os.PathLike[str], experts: list[str] | None = None) -> Trace:
        """Read a JSONL trace. ``experts`` fixes the name table (unknown names are an error);
        otherwise names are collected in order of first appearance. A request without
        ``expert`` takes the top-scoring one."""
        p = Path(path)
        if not p.exists():
            raise MissingFileError(2, "no such trace file", str(p))
        table: list[str] = list(experts) if experts is not None else []
        idx = {e: i for i, e in enumerate(table)}
        rows: list[dict[str, Any]] = []
        with open(p) as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidArgumentError(f"{p}:{ln}: malformed JSON ({e.msg})") from None
                if not isinstance(r, dict):
                    raise InvalidArgumentError(f"{p}:{ln}: each line must be a JSON object")
                rows.append(r)
        if not rows:
            raise InvalidArgumentError(f"{p}: the trace is empty")
        closed = "user" in rows[0]
        n = len(rows)
        arrival = np.empty(n)
        pt = np.empty(n, dtype=np.uint32)
        ot = np.empty(n, dtype=np.uint32)
        ex = np.empty(n, dtype=np.uint32)
        user = np.empty(n, dtype=np.uint32) if closed else None
        k = max((len(r.get("scores") or {}) for r in rows), default=0)
        sid = np.full((n, max(k, 1)), -1, dtype=np.int32) if k else None
        spr = np.zeros((n, max(k, 1))) if k else None

        def name_index(name: Any, ln: int, field: str) -> int:
            if not isinstance(name, str):
                raise InvalidArgumentError(f"{p}:{ln}: field {field!r} must be an expert name")
            if name not in idx:
                if experts is not None:
                    raise InvalidArgumentError(
                        f"{p}:{ln}: field {field!r}: unknown expert {name!r}"
                    )
                idx[name] = len(table)
                table.append(name)
            return idx[name]

        for i, r in enumerate(rows):
            ln = i + 1
            try:
                if closed:
                    user[i] = int(r["user"])  # type: ignore[index]
                    arrival[i] = float(r.get("think", 0.0))
                else:
                    arrival[i] = float(r["t"])
                pt[i] = int(r.get("prompt_tokens", 512))
                ot[i] = int(r.get("output_tokens", 128))
            except KeyError as e:
                raise InvalidArgumentError(f"{p}:{ln}: missing field {e.args[0]!r}") from None
            except (TypeError, ValueError, OverflowError) as e:
                raise InvalidArgumentError(f"{p}:{ln}: bad number ({e})") from None
            if not math.isfinite(arrival[i]) or arrival[i] < 0:
                raise InvalidArgumentError(
                    f"{p}:{ln}: field {'think' if closed else 't'!r} must be a time >= 0"
                )
            if pt[i] < 1 or ot[i] < 1:
                raise InvalidArgumentError(
                    f"{p}:{ln}: prompt_tokens and output_tokens must be >= 1"
                )
            scores = r.get("scores")
            if scores is not None:
                if not isinstance(scores, dict):
                    raise InvalidArgumentError(
                        f"{p}:{ln}: field 'scores' must map expert names to numbers"
                    )
                ranked = sorted(scores.items(), key=lambda kv: -float(kv[1]))
                for j, (nm, sc) in enumerate(ranked):
                    sid[i, j] = name_index(nm, ln, "scores")  # type: ignore[index]
                    spr[i, j] = float(sc)  # type: ignore[index]
            if "expert" in r:
                ex[i] = name_index(r["expert"], ln, "expert")
            elif scores:
                ex[i] = sid[i, 0]  # type: ignore[index]
            else:
                raise InvalidArgumentError(f"{p}:{ln}: missing field 'expert' (or 'scores')")
        return cls(table, arrival, pt, ot, ex, sid, spr, user)

    def with_experts(self, names: list[str]) -> Trace:
        """The same trace indexed against ``names`` (the graph's order); unknown names are an error."""
        idx = {e: i for i, e in enumerate(names)}
        unknown = sorted(
            {e for e in np.asarray(self.experts)[np.unique(self.expert)] if e not in idx}
        )
        if unknown:
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise InvalidArgumentError(
                f"trace field expert: unknown expert(s) {unknown[:5]}{more} not in the CoE"
            )
        remap = np.array([idx.get(e, -1) for e in self.experts], dtype=np.int64)
        sid = spr = None
        if self.score_ids is not None:
            sid = np.where(self.score_ids >= 0, remap[np.maximum(self.score_ids, 0)], -1).astype(
                np.int32
            )
            spr = self.score_probs
        return Trace(
            list(names),
            self.arrival,
            self.prompt_tokens,
            self.output_tokens,
            remap[self.expert].astype(np.uint32),
            sid,
            spr,
            self.user,
        )


def _names(experts: list[str] | int) -> list[str]:
    if isinstance(experts, int):
        return [f"expert{i}" for i in range(_count("experts", experts))]
    names = list(experts)
    if not names:
        raise InvalidArgumentError("trace: the expert list is empty")
    if len(set(names)) != len(names):
        raise InvalidArgumentError("trace: duplicate expert names")
    return names


def _warp(work: np.ndarray, rate: float, bursts: list[tuple[float, float, float]]) -> np.ndarray:
    """Invert the cumulative intensity Lambda(t) = integral of rate * factor(t)."""
    edges = sorted({0.0, *(b[0] for b in bursts), *(b[0] + b[1] for b in bursts)})

    def factor(t: float) -> float:
        f = 1.0
        for s, d, k in bursts:
            if s <= t < s + d:
                f *= k
        return f

    # piecewise-constant segments; the last extends to infinity
    seg_t = np.array(edges)
    seg_rate = np.array([rate * factor(t) for t in edges])
    seg_lam = np.concatenate([[0.0], np.cumsum(np.diff(seg_t) * seg_rate[:-1])])
    j = np.searchsorted(seg_lam, work, side="right") - 1
    return seg_t[j] + (work - seg_lam[j]) / seg_rate[j]
