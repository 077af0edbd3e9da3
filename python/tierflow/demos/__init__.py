"""Every demo behind ``tierflow demo``.

- :mod:`tierflow.demos.host`: the default demo (:func:`run_demo`): a CoE served on this host,
  measured, and set against the simulator's prediction;
- :mod:`tierflow.demos.coe_files`: the demo CoE written to and read from disk;
- :mod:`tierflow.demos.store`: the tiered-store demo (``tierflow demo --store``);
- :mod:`tierflow.demos.experts`: real models as experts behind an embedding router;
- :mod:`tierflow.demos.search`: one space searched for this host, an SN40L node and a DGX H100
  (``tierflow demo --search``).
"""

from __future__ import annotations

from .coe_files import DEMO_CONFIG, demo_ready, load_demo_coe, write_demo_coe

__all__ = ["DEMO_CONFIG", "demo_ready", "load_demo_coe", "write_demo_coe"]
