"""The host runtime: CoE plans run for real on this machine (issue: runtime).

- :func:`schedule` -> :class:`Plan`; :meth:`Plan.run` -> a measured :class:`~tierflow.Report`.
- Experts built on tierflow kernels (:class:`TransformerExpert`), a :class:`PrototypeRouter`,
  the demo CoE (:func:`write_demo_coe`), calibration of the simulator's host model
  (:func:`calibrate`) and kernel tuning (:func:`tune`).
"""

from __future__ import annotations

from .calibrate import calibrate, host_device
from .demo_coe import DEMO_CONFIG, demo_ready, load_demo_coe, write_demo_coe
from .engine import ExpertError, Outcome, Residency
from .experts import HEAD_DIM, PrototypeRouter, TransformerExpert, demo_input
from .plan import Plan, RunReport, schedule

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
