"""Hardware-in-the-loop architecture search: the expert shapes that serve best on a given device.

``tierflow.search(space, device, ...)`` (see :func:`tierflow.search.study.search`) runs a
multi-objective Optuna study (NSGA-II) over a :class:`Space` of expert shapes, weight formats and
serving knobs; each candidate is measured on this host (:class:`Measurer`) or predicted for a
simulated device (:mod:`tierflow.search.predict`), and the result is the Pareto front
(:class:`SearchResult`: a table, JSON, a PNG) and the largest expert that meets the constraints.
Simulated devices are calibrated on this host's measurements by default
(:mod:`tierflow.search.calibrate`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .calibrate import Calibration
from .measure import Measurement, Measurer
from .objectives import OBJECTIVES, Constraint, Objective
from .predict import DEVICES, pass_time
from .result import Record, SearchResult
from .space import DIMENSIONS, FORMATS, Config, Space, load_space
from .study import search

__all__ = [
    "DEVICES",
    "Calibration",
    "DIMENSIONS",
    "FORMATS",
    "OBJECTIVES",
    "Config",
    "Constraint",
    "Measurement",
    "Measurer",
    "Objective",
    "Record",
    "SearchResult",
    "Space",
    "load_space",
    "pass_time",
    "search",
]


class _CallableModule(types.ModuleType):
    """``tierflow.search`` is this package and, called, :func:`search` (so both
    ``tierflow.search(space, device)`` and ``tierflow.search.Space`` work)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
