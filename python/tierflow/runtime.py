"""Deprecated: use :mod:`tierflow.serving` (serving on this host) and :mod:`tierflow.demos`
(this path and its submodules are kept for one release)."""

from __future__ import annotations

import importlib
import sys
import warnings

from .demos import DEMO_CONFIG, demo_ready, load_demo_coe, write_demo_coe
from .serving import (
    HEAD_DIM,
    ExpertError,
    Outcome,
    Plan,
    PrototypeRouter,
    Residency,
    RunReport,
    TransformerExpert,
    calibrate,
    demo_input,
    host_device,
    schedule,
)

warnings.warn(
    "tierflow.runtime is deprecated and will be removed in the next release; "
    "use tierflow.serving (and tierflow.demos for the demo CoE)",
    DeprecationWarning,
    stacklevel=2,
)

for _old, _new in {
    "plan": "tierflow.serving.plan",
    "engine": "tierflow.serving.engine",
    "experts": "tierflow.serving.experts",
    "calibrate": "tierflow.serving.calibrate",
    "tune": "tierflow.serving.tune",
    "demo": "tierflow.demos.host",
    "demo_coe": "tierflow.demos.coe_files",
}.items():
    sys.modules[f"{__name__}.{_old}"] = importlib.import_module(_new)

__all__ = [
    "DEMO_CONFIG",
    "HEAD_DIM",
    "ExpertError",
    "Outcome",
    "Plan",
    "PrototypeRouter",
    "Residency",
    "RunReport",
    "TransformerExpert",
    "calibrate",
    "demo_input",
    "demo_ready",
    "host_device",
    "load_demo_coe",
    "schedule",
    "write_demo_coe",
]
