"""The ``tierflow`` command line: it only parses arguments and calls library functions.

One module per domain adds its subcommands: :mod:`~tierflow.cli.info`, :mod:`~tierflow.cli.store`
(``inspect``), :mod:`~tierflow.cli.demo`, :mod:`~tierflow.cli.sim` (``simulate``, ``plan``,
``paper``, ...), :mod:`~tierflow.cli.models`, :mod:`~tierflow.cli.serving` (``run``, ``tune``) and
:mod:`~tierflow.cli.search` (``search``).
"""

from __future__ import annotations

import argparse
import sys

from .._tierflow import __version__
from ..errors import TierflowError
from . import demo, info, models, search, serving, sim, store

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tierflow",
        description="Run and plan models larger than fast memory.",
    )
    p.add_argument("--version", action="version", version=f"tierflow {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in (info, store, demo, sim, models, serving, search):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TierflowError as e:
        print(f"tierflow: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tierflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
