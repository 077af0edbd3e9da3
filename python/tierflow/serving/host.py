"""This host as a simulator device: the model :func:`tierflow.simulate` predicts it with, from the
probes of :func:`tierflow.devices.host` or from a calibration (:mod:`tierflow.serving.calibrate`)."""

from __future__ import annotations

from typing import Any

from ..sim.devices import Device, MemoryTier, host

__all__ = ["host_device"]


def host_device(ram_budget: int, calib: dict[str, Any] | None = None) -> Device:
    """This host as a two-tier device: ``ram`` (``ram_budget`` bytes of experts, the exec tier)
    over ``disk`` (the file tier), with the probe's figures (or the calibration's)."""
    h = host()
    ram_bw = h.read_bandwidth
    disk = next((t for t in h.tiers if t.name == "ram"), None)
    disk_bw = disk.bandwidth if disk is not None else 1e9
    c = calib or {}
    return Device(
        name="host" + (" (calibrated)" if calib else ""),
        tiers=[
            MemoryTier(
                "ram",
                int(ram_budget),
                float(c.get("load_bandwidth", disk_bw)),
                float(c.get("load_latency", 0.0)),
            ),
            MemoryTier("disk", 1 << 50),
        ],
        exec_tier="ram",
        read_bandwidth=float(c.get("read_bandwidth", ram_bw)),
        peak_flops={"float32": float(c.get("peak_flops", h.flops("float32")))},
        bw_efficiency=1.0,
        compute_efficiency=1.0,
        launch_overhead=float(c.get("launch_overhead", h.launch_overhead)),
        kernels_per_layer=1.0,
        tp=1,
        reserved=0,
        sources={
            "calibration": "tierflow.serving.calibrate: measured passes and expert loads"
            if calib
            else "tierflow.devices.host() probes"
        },
    )
