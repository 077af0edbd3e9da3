"""Subcommands of the ``tierflow`` CLI, one module per domain."""

from __future__ import annotations

import argparse
from typing import Any


def register_all(sub: argparse._SubParsersAction[Any]) -> None:
    from . import demo, info, store

    info.register(sub)
    store.register(sub)
    demo.register(sub)
    # --- composition of experts ---
    from . import sim

    sim.register(sub)
    # --- models and routers ---
    from . import models

    models.register(sub)
    # --- host runtime ---
    from . import runtime

    runtime.register(sub)
    # --- architecture search ---
    from . import search

    search.register(sub)
    # other domains register here
