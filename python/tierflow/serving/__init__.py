"""Serving on this host: CoE plans run for real on this machine.

- :func:`schedule` -> :class:`Plan`; :meth:`Plan.run` -> a measured :class:`~tierflow.Report`
  (:mod:`tierflow.serving.plan`, over the engine in :mod:`tierflow.serving.engine`).
- Experts built on tierflow kernels (:class:`TransformerExpert`) and a :class:`PrototypeRouter`
  (:mod:`tierflow.serving.experts`), calibration of the simulator's host model
  (:func:`calibrate`) and kernel tuning (:mod:`tierflow.serving.tune`).
- The demo CoE written to disk is in :mod:`tierflow.demos`.
"""

from __future__ import annotations

from .calibrate import calibrate
from .engine import ExpertError, Outcome, Residency
from .experts import HEAD_DIM, PrototypeRouter, TransformerExpert, demo_input
from .host import host_device
from .plan import Plan, RunReport, schedule

__all__ = [
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
    "host_device",
    "schedule",
]
