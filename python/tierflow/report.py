"""Deprecated: use :mod:`tierflow.sim.report` (this path is kept for one release)."""

from ._deprecated import alias_module

alias_module(__name__, "tierflow.sim.report")
