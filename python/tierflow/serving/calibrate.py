"""Hardware in the loop: measure this host running a plan, fit the simulator's latency model to
it, then let :func:`tierflow.simulate` predict the trace.

The simulator's pass time on the host (``rust/core/src/sim/cost.rs``) is
``t(n) = max(2 * params * n / peak, bytes / read_bw) + layers * launch_overhead``; an expert
switch costs ``bytes / bandwidth(ram <- disk)``. :func:`calibrate` serves a short probe trace on
the real plan and fits ``peak`` and the switch bandwidth to what it measured; the simulator then
predicts other traces and policies with those two numbers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ..sim.devices import Device, host, host_cache_path
from .host import host_device

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["calibrate", "host_device", "with_next_hint"]


def calibrate(
    plan: Plan, prompt_tokens: int, requests: int = 48, warmup: int = 8, save: bool = True
) -> Device:
    """Serve a short probe trace (its own seed, LRU, no prefetch) on ``plan``'s experts and fit
    the host model to it; returns the calibrated host device (also written to
    ``<cache>/host-calibrated.json``).

    The first ``warmup`` requests are served but not fitted. Fitted: the compute rate from the
    mean expert pass (``peak = 2 * params * P / t_pass``,
    no fixed term), and the file -> RAM bandwidth a request sees, from the mean stall of a
    demand load (``bytes / stall``), which includes the store's per-load overheads.
    """
    from ..sim.trace import Trace
    from .plan import Plan as _Plan

    assert isinstance(plan, _Plan)
    live = [e for e in plan.coe.experts if e not in plan.broken]
    probe = Trace.closed_loop(
        live,
        users=1,
        n=requests,
        prompt_tokens=prompt_tokens,
        output_tokens=1,
        zipf_s=0.5,
        seed=12345,
    )
    rep = plan.run(probe)
    kinds = np.array(rep.kinds)  # type: ignore[attr-defined]
    comp = np.asarray(rep.compute_s)  # type: ignore[attr-defined]
    stall = np.asarray(rep.stall_s)  # type: ignore[attr-defined]
    ok = kinds != "failed"
    ok[: min(warmup, len(ok) - 1)] = False  # first requests: cold code paths and thread pools
    t_pass = float(np.mean(comp[ok]))  # the mean: latency means are what is predicted
    miss = (kinds == "miss") & ok
    sizes = np.array([plan.nbytes.get(e, 0) for e in rep.routed])
    if miss.any():
        bw = float(sizes[miss].sum() / max(stall[miss].sum(), 1e-9))
    else:
        bw = host_device(plan.ram_budget).tiers[0].bandwidth
    node = plan.coe.nodes[live[0]]
    ram_bw = host().read_bandwidth
    peak = 2 * node.params * prompt_tokens / max(t_pass, 1e-9)
    calib = {
        "load_bandwidth": bw,
        "load_latency": 0.0,
        "read_bandwidth": ram_bw,
        "peak_flops": peak,
        "launch_overhead": 0.0,
        "probe": {
            "requests": requests,
            "t_pass_s": t_pass,
            "prompt_tokens": prompt_tokens,
            "demand_loads": int(miss.sum()),
            "expert_bytes": node.nbytes,
        },
    }
    d = host_device(plan.ram_budget, calib)
    if save:
        p = host_cache_path().with_name("host-calibrated.json")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(calib, indent=2))
    return d


def with_next_hint(trace: Any, routed: list[str] | None = None) -> Any:
    """A copy of ``trace`` whose per-request prefetch hint (the simulator's "router's second
    choice") is the expert of the next queued request: what the runtime's prefetcher looks at
    (``lookahead=1``), so :func:`tierflow.simulate` models the same prefetch."""
    from ..sim.trace import Trace

    names = trace.experts
    idx = {e: i for i, e in enumerate(names)}
    cur = (
        np.array([idx[e] for e in routed], dtype=np.uint32)
        if routed is not None
        else np.asarray(trace.expert, dtype=np.uint32)
    )
    nxt = np.append(cur[1:], cur[-1:])
    ids = np.stack([cur, nxt], axis=1).astype(np.uint32)
    probs = np.tile(np.array([[1.0, 0.0]]), (len(cur), 1))
    return Trace(
        list(names),
        trace.arrival.copy(),
        trace.prompt_tokens.copy(),
        trace.output_tokens.copy(),
        cur.copy(),
        ids,
        probs,
        None if trace.user is None else trace.user.copy(),
    )
