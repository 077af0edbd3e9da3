"""Hardware in the loop: measure this host running a plan, fit the simulator's latency model to
it, then let :func:`tierflow.simulate` predict the trace.

The simulator's pass time on the host (``rust/core/src/sim/cost.rs``) is
``t(n) = max(2 * params * n / peak, bytes / read_bw) + layers * launch_overhead`` (one fused
"kernel" per layer: ``kernels_per_layer = 1``). The probe measures, on a resident expert:

- ``T1``: one pass over 1 token, ``TP``: one pass over ``P`` tokens (median of repeats);
- the file -> RAM copy bandwidth of a whole expert through the store (``disk->ram`` link).

With ``w = bytes / read_bw`` (RAM bandwidth from :func:`tierflow.devices.host`), the fixed cost
is ``c = T1 - w`` (clamped at 0) and the compute rate ``peak = 2 * params * P / (TP - c)``.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..devices import Device, Tier, host, host_cache_path

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["calibrate", "host_device"]


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
            Tier("ram", int(ram_budget), float(c.get("load_bandwidth", disk_bw)), float(c.get("load_latency", 0.0))),
            Tier("disk", 1 << 50),
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
            "calibration": "tierflow.runtime.calibrate: measured passes and expert loads"
            if calib
            else "tierflow.devices.host() probes"
        },
    )


def _median_time(f: Any, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def calibrate(plan: Plan, prompt_tokens: int, reps: int = 5, save: bool = True) -> Device:
    """Measure ``plan``'s experts on this host and return the calibrated host device (also
    written to ``<cache>/host-calibrated.json``)."""
    experts = [e for e in plan.coe.experts if e not in plan.broken]
    e = experts[0]
    m = plan.experts[e]
    hidden = int(getattr(m, "hidden", 64))
    res = plan.residency()
    # load bandwidth: whole experts from the file tier through the store's prefetch path
    loads = []
    for k in experts[1 : 1 + min(3, len(experts) - 1)] or [e]:
        names = plan.tensors[k]
        for n in names:
            if plan.store.tier_of(n) != "disk":
                plan.store.evict(n)
        t = time.perf_counter()
        plan.store.prefetch(names, "ram").wait()
        loads.append((plan.nbytes[k], time.perf_counter() - t))
        for n in names:
            plan.store.evict(n)
    bw = statistics.median(b / s for b, s in loads)
    res.acquire(e)
    try:
        rng = np.random.default_rng(0)
        x1 = rng.standard_normal((1, hidden)).astype(np.float32)
        xp = rng.standard_normal((prompt_tokens, hidden)).astype(np.float32)
        plan.compute(e, xp)  # warm up
        t1 = _median_time(lambda: plan.compute(e, x1), reps)
        tp = _median_time(lambda: plan.compute(e, xp), reps)
    finally:
        res.release(e)
    node = plan.coe.nodes[e]
    ram_bw = host().read_bandwidth
    w = node.nbytes / ram_bw
    c = max(t1 - w, 0.0)
    peak = 2 * node.params * prompt_tokens / max(tp - c, 1e-9)
    calib = {
        "load_bandwidth": bw,
        "load_latency": 0.0,
        "read_bandwidth": ram_bw,
        "peak_flops": peak,
        "launch_overhead": c / max(node.layers, 1),
        "probe": {"t1_s": t1, "tp_s": tp, "prompt_tokens": prompt_tokens, "expert_bytes": node.nbytes},
    }
    d = host_device(plan.ram_budget, calib)
    if save:
        p = host_cache_path().with_name("host-calibrated.json")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(calib, indent=2))
    return d
