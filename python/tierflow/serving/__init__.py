"""Serving on this host: CoE plans run for real on this machine.

- :func:`schedule` -> :class:`Plan`; :meth:`Plan.run` -> a measured :class:`~tierflow.Report`
  (:mod:`tierflow.serving.plan`, over the engine in :mod:`tierflow.serving.engine`); with
  ``devices=tierflow.devices.ray_cluster()`` a :class:`ClusterPlan` across Ray nodes
  (:mod:`tierflow.serving.cluster`); ``tierflow serve`` on Ray Serve (:mod:`tierflow.serving.serve`).
- Experts built on tierflow kernels (:class:`TransformerExpert`) and a :class:`PrototypeRouter`
  (:mod:`tierflow.serving.experts`), calibration of the simulator's host model
  (:func:`calibrate`) and kernel tuning (:mod:`tierflow.serving.tune`).
- The demo CoE written to disk is in :mod:`tierflow.demos`.
"""

from __future__ import annotations

from .calibrate import calibrate
from .cluster import ClusterPlan, schedule
from .engine import ExpertError, Outcome, Residency
from .experts import HEAD_DIM, PrototypeRouter, TransformerExpert, demo_input
from .host import host_device
from .plan import Plan, RunReport

__all__ = [
    "HEAD_DIM",
    "ClusterPlan",
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
