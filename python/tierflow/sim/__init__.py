"""The simulator: Composition-of-Experts graphs on modelled devices under placement policies.

- :mod:`~tierflow.sim.coe` (the graph), :mod:`~tierflow.sim.devices` (devices and their memory
  tiers), :mod:`~tierflow.sim.trace` (request traces), :mod:`~tierflow.sim.policies`;
- :func:`simulate` (in :mod:`tierflow.sim.simulate`) -> :class:`~tierflow.sim.report.Report`;
- :mod:`~tierflow.sim.capacity`: the capacity sweep behind ``tierflow plan``;
- :mod:`~tierflow.sim.paper`: the published configurations the simulator is checked against.
"""

from __future__ import annotations

from . import coe, devices, policies, report, trace
from .coe import CoE
from .devices import Device, MemoryTier
from .policies import EvictionPolicy, Policy
from .report import Report
from .simulate import simulate
from .trace import Trace

__all__ = [
    "CoE",
    "Device",
    "EvictionPolicy",
    "MemoryTier",
    "Policy",
    "Report",
    "Trace",
    "coe",
    "devices",
    "policies",
    "report",
    "simulate",
    "trace",
]
