"""The built-in demo CoE: a prototype router and ``experts`` transformer-block experts with real
random weights (each expert's weights packed in one tensor, so a switch is one large read), written once into a persistent :class:`~tierflow.TieredStore` (file tier, CRC-32
per tensor) next to ``coe.json``.

Writing is crash safe: everything goes to ``<folder>/.tmp-<pid>`` and is renamed into place as a
whole, and ``<folder>/READY`` is written last; a folder without ``READY`` (a run killed while
generating) is regenerated from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..serving.experts import PrototypeRouter, TransformerExpert
from ..sim.coe import CoE
from ..store import Tier, TieredStore

__all__ = ["DEMO_CONFIG", "demo_ready", "load_demo_coe", "write_demo_coe"]

#: 16 experts x 3 blocks of width 256 (MLP 768): 2.56 M params, 10.2 MB float32 each, 164 MB total.
DEMO_CONFIG: dict[str, Any] = {
    "experts": 16,
    "hidden": 256,
    "intermediate": 768,
    "layers": 3,
    "seed": 7,
}


def _kv_bytes(e: TransformerExpert) -> int:
    return 2 * e.hidden * 4 * e.layers


def demo_ready(folder: str | os.PathLike[str], config: dict[str, Any] | None = None) -> bool:
    """True when ``folder`` holds a complete demo CoE of this configuration."""
    config = {**(config or DEMO_CONFIG), "layout": "packed-v1"}
    p = Path(folder)
    r = p / "READY"
    if not r.exists():
        return False
    try:
        return bool(json.loads(r.read_text()) == config)
    except (OSError, json.JSONDecodeError):
        return False


def load_demo_coe(folder: str | os.PathLike[str]) -> CoE:
    return CoE.from_json(Path(folder) / "coe.json")


def write_demo_coe(
    folder: str | os.PathLike[str],
    experts: int = DEMO_CONFIG["experts"],
    hidden: int = DEMO_CONFIG["hidden"],
    intermediate: int = DEMO_CONFIG["intermediate"],
    layers: int = DEMO_CONFIG["layers"],
    seed: int = DEMO_CONFIG["seed"],
    progress: Callable[[int, int], None] | None = None,
) -> CoE:
    """Write the demo CoE into ``folder`` (``store/`` and ``coe.json``) unless it is already
    complete there with the same configuration; returns the graph."""
    if isinstance(experts, bool) or not isinstance(experts, int) or experts < 2:
        raise InvalidArgumentError(
            f"write_demo_coe: experts must be an integer >= 2, got {experts!r}"
        )
    cfg = {
        "experts": experts,
        "hidden": hidden,
        "intermediate": intermediate,
        "layers": layers,
        "seed": seed,
        "layout": "packed-v1",
    }
    root = Path(folder)
    if demo_ready(root, cfg):
        return load_demo_coe(root)
    root.mkdir(parents=True, exist_ok=True)
    # leftovers of an interrupted run
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for name in ("READY", "coe.json"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "store", ignore_errors=True)
    tmp = root / f".tmp-{os.getpid()}"
    model = TransformerExpert(hidden, intermediate, layers, packed=True)
    names = [f"expert{i:02d}" for i in range(experts)]
    tiers = [Tier("fast", "64MiB"), Tier("ram", None), Tier("disk", None, path="disk")]
    with TieredStore(tmp / "store", tiers, default_tier="ram") as store:
        store.put("router/prototypes", PrototypeRouter.init(experts, hidden, seed), tier="disk")
        for k, e in enumerate(names):
            store.put(f"{e}/weights", model.pack(model.init(seed * 1000 + k)), tier="disk")
            if progress:
                progress(k + 1, experts)
        g = CoE("demo")
        g.router(
            "router",
            nbytes=4 * experts * hidden,
            params=float(experts * hidden),
            dtype="float32",
            layers=1,
        )
        for e in names:
            g.expert(
                e,
                store=store,
                prefix=e + "/",
                dtype="float32",
                layers=layers,
                kv_bytes_per_token=_kv_bytes(model),
                tags=model.tags,
            )
        g.route("router", names)
    g.to_json(tmp / "coe.json")
    os.replace(tmp / "store", root / "store")
    os.replace(tmp / "coe.json", root / "coe.json")
    shutil.rmtree(tmp, ignore_errors=True)
    (root / "READY.tmp").write_text(json.dumps(cfg))
    os.replace(root / "READY.tmp", root / "READY")
    return g
