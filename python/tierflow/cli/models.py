"""``tierflow generate`` and ``tierflow route``: run a checkpoint, route a prompt."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    g = sub.add_parser("generate", help="decode from a Hugging Face checkpoint folder")
    g.add_argument("path", help="folder with config.json and model.safetensors")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated prompt token ids")
    src.add_argument(
        "--text", help="prompt text (the folder's tokenizer.json, else UTF-8 bytes as ids)"
    )
    g.add_argument("-n", "--max-new-tokens", type=int, default=16)
    g.add_argument("--dtype", choices=["f32", "bf16", "q8_0", "q4_0"], default=None)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.set_defaults(func=run_generate)

    r = sub.add_parser(
        "route", help="route prompts among the demo experts (all-MiniLM-L6-v2 kNN router)"
    )
    r.add_argument("text", nargs="+", help="prompts")
    r.add_argument("-k", type=int, default=4, help="neighbours that vote")
    r.add_argument("--min-similarity", type=float, default=0.24, help="below: the general expert")
    r.set_defaults(func=run_route)


def _tokenizer(path: str) -> Any:
    f = os.path.join(path, "tokenizer.json")
    if not os.path.exists(f):
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f)


def run_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from ..models import byte_tokenize, load

    model = load(args.path, dtype=args.dtype)
    tok = None
    if args.ids is not None:
        ids = np.asarray([int(t) for t in args.ids.split(",") if t.strip()], np.int64)
    else:
        tok = _tokenizer(args.path)
        ids = (
            np.asarray(tok.encode(args.text).ids, np.int64)
            if tok is not None
            else byte_tokenize(args.text)
        )
    out = model.generate(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    new = out[ids.size :].tolist()
    print(" ".join(map(str, new)))
    if tok is not None:
        print(tok.decode(new))
    return 0


def run_route(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..demos.experts import DEMO_EXAMPLES
    from ..models import SentenceEncoder
    from ..routers import EmbeddingRouter

    router = EmbeddingRouter(
        SentenceEncoder.load(),
        DEMO_EXAMPLES,
        k=args.k,
        fallback="general",
        min_similarity=args.min_similarity,
    )
    experts = router.experts
    t = Table(title="routes (kNN vote share; best cosine similarity)")
    t.add_column("prompt")
    t.add_column("expert")
    for e in experts:
        t.add_column(e, justify="right")
    for text, r in zip(args.text, router.route_batch(args.text), strict=True):
        cells = [
            f"{r.scores[e]:.2f} ({r.similarity[e]:+.2f})" if e in DEMO_EXAMPLES else "-"
            for e in experts
        ]
        t.add_row(text, r.expert + (" (fallback)" if r.fell_back else ""), *cells)
    Console().print(t)
    return 0
