"""Deprecated names kept for one release: old module paths and renamed names.

An old module path (``tierflow.coe``, ``tierflow.runtime``, ...) is a small module that calls
:func:`alias_module`: importing it warns with :class:`DeprecationWarning` and hands back the
module at the new path. A renamed name is served by a module ``__getattr__`` built with
:func:`renamed`, which warns and returns the object under its new name.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["alias_module", "renamed"]


def alias_module(old: str, new: str, submodules: dict[str, str] | None = None) -> None:
    """Make ``import <old>`` warn and give the module ``new``.

    ``submodules`` maps old submodule names (``"plan"``) to new module paths, so that
    ``import <old>.plan`` keeps working too.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    for name, target in (submodules or {}).items():
        sys.modules[f"{old}.{name}"] = importlib.import_module(target)
    sys.modules[old] = module


def renamed(module: str, names: dict[str, tuple[str, Callable[[], Any]]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving deprecated names: ``{old: (new_path, getter)}``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            new, get = names[name]
            warnings.warn(
                f"{module}.{name} is deprecated and will be removed in the next release; use {new}",
                DeprecationWarning,
                stacklevel=2,
            )
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
