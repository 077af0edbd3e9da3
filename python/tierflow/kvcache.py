"""Deprecated: use :mod:`tierflow.kernels.kvcache` (this path is kept for one release)."""

from ._deprecated import alias_module

alias_module(__name__, "tierflow.kernels.kvcache")
