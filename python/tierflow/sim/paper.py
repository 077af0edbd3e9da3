"""The paper check: reproduce Table V of the SN40L paper (Prabhakar et al., arXiv 2405.07518)
with the simulator, from published figures (docs/sources.md).

Setup (paper Sec. II, V, VI-C; docs/sources.md "The CoE experiment"): 150 experts and a router, each a
Llama2-7B (6.74e9 parameters, BF16, 13.48 GB); one node, tensor parallel 8 on every platform;
router and KV cache resident in HBM, experts in DDR (DGX: host memory), loaded on demand. Per
batch: the router runs once on the batch, then each (prompt, expert) pair runs in sequence
(``batching="paper"``), copying its expert first when it is not resident. The trace cycles through
the 150 experts, so every prompt needs a switch, as in the paper's measurement.

Calibration (chosen once, the same for every row; nothing is fitted per row):

- From docs/sources.md: all capacities and bandwidths, SN40L's ~85% achieved HBM bandwidth, the copy
  bandwidths (1 TB/s SN40L DDR->HBM, 32 / 64 GB/s host-to-GPU), the BF16 peaks.
- Per-layer fixed cost (``devices.LAUNCH``, ``GPU_KERNELS_PER_LAYER``, ``GPU_ALLREDUCE``,
  ``SN40L_COLLECTIVE``): ~12 kernel launches of ~5 us plus two ~20 us NCCL all-reduces per
  Llama layer on the DGX (100 us per layer, so 3.2 ms of a 7B decode step: GPU decode at batch 1
  and TP 8 is overhead bound), one fused kernel plus two 2.5 us collectives on SN40L (10 us).
  docs/sources.md ("The CoE experiment", Fusion) reports 2x-13x from fusion; these values sit inside that range.
- Achieved fractions: DGX 80% of HBM bandwidth and 70% of BF16 peak (large GEMMs); SN40L 20% of
  BF16 peak in prefill (its advantage is bandwidth and fusion, not prefill FLOPs).
- Prompt length: 2048 tokens (the paper does not state it; with the above it sets how much of a
  20-token request is prefill). Honest accounting: the per-layer costs and these four
  constants were picked once, from a coarse grid of round values, so that the
  expert-execution-only rows (which the paper derives from NVIDIA NeMo latencies) come out near
  Table V; the overall rows then follow from the copy bandwidths, and the switching ratio, the
  footprint and the HBM spill point follow from docs/sources.md capacities and bandwidths alone.

Switching policy per platform (one choice, applied to every row): the SN40L node is a measured
system whose DMA copies DDR->HBM while compute runs, so within a batch, where the router has
named every expert up front, it loads the next pair's expert during the current pair
(``lru+prefetch``); at BS=1 nothing is known ahead and the copy is exposed. The paper's DGX
figures are NeMo latencies plus spec-sheet switching time (docs/sources.md "DGX baselines as the paper used them"), i.e. additive, so the DGX
runs use plain ``lru``. This (a modelling choice we made to explain the BS=8 rows) is what makes
the paper's BS=8 speedups larger than its BS=1 ones (6.6x vs 4.8x); ``check(sn40l_overlap=False)`` runs the same non-overlapping policy everywhere,
and the printed notes give those BS=8 figures too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import devices
from .coe import CoE
from .devices import Device
from .policies import Policy, place
from .simulate import simulate
from .trace import Trace

__all__ = ["PAPER_TABLE_V", "PaperResult", "check", "coe", "workload"]

LLAMA2_7B_PARAMS = 6.74e9  # docs/sources.md "The CoE experiment": Llama2-7B, 6.74e9 params
LLAMA2_7B_KV = 2 * 32 * 4096 * 2  # K and V, 32 layers, hidden 4096, BF16: bytes per token
PROMPT_TOKENS = 2048  # calibrated once (see the module docstring)
N_EXPERTS = 150  # docs/sources.md "The CoE experiment": Samba-CoE, 150 experts

#: Table V of the paper (docs/sources.md "The CoE experiment"): SN40L Node speedup vs DGX A100 and DGX H100.
PAPER_TABLE_V: list[tuple[str, float | str, float | str]] = [
    ("overall, BS=8, 20 tokens", 6.6, 3.7),
    ("overall, BS=1, 20 tokens", 4.8, 2.8),
    ("expert execution only, BS=1, 20 tokens", 2.0, 1.5),
    ("overall, BS=8, 200 tokens", 4.2, 2.7),
    ("overall, BS=1, 200 tokens", 3.9, 2.6),
    ("expert execution only, BS=1, 200 tokens", 3.2, 2.3),
    ("model switching time", 31.0, 15.0),
    ("more than 150 experts", "DGX out of memory", "DGX out of memory"),
]


def coe(n_experts: int = N_EXPERTS, router: bool = True) -> CoE:
    """Samba-CoE as the paper ran it: a Llama2-7B router and ``n_experts`` Llama2-7B experts."""
    g = CoE(f"samba-coe-{n_experts}")
    if router:
        g.router("router", params=LLAMA2_7B_PARAMS, dtype="bf16", kv_bytes_per_token=LLAMA2_7B_KV)
    for i in range(n_experts):
        g.expert(
            f"expert{i:03d}", params=LLAMA2_7B_PARAMS, dtype="bf16", kv_bytes_per_token=LLAMA2_7B_KV
        )
    if router:
        g.route("router", g.experts)
    return g


def workload(g: CoE, batch: int, output_tokens: int, batches: int = 20) -> Trace:
    """``batch`` users in closed loop (no think time), experts taken in turn so every prompt switches."""
    n = batch * batches
    names = g.experts
    expert = np.arange(n, dtype=np.uint32) % len(names)
    return Trace(
        names,
        np.zeros(n),
        np.full(n, PROMPT_TOKENS),
        np.full(n, output_tokens),
        expert,
        user=np.arange(n, dtype=np.uint32) % batch,
    )


def platforms() -> dict[str, Device]:
    return {
        "sn40l": devices.sn40l(8),
        "dgx_a100": devices.dgx_a100(),
        "dgx_h100": devices.dgx_h100(),
    }


def _overall(d: Device, g: CoE, batch: int, out: int, overlap: bool = False) -> float:
    """Seconds per prompt. ``overlap``: copy the batch's next expert while the current one runs."""
    t = workload(g, batch, out)
    pol = Policy(eviction="lru", batching="paper", batch_size=batch, prefetch=overlap)
    r = simulate(g, d, t, pol)
    return r.makespan / len(t)


def _exec_only(d: Device, out: int) -> float:
    """Seconds per request of one resident expert, no router, no switch (BS=1)."""
    g = coe(1, router=False)
    n = 5
    t = Trace(
        g.experts,
        np.zeros(n),
        np.full(n, PROMPT_TOKENS),
        np.full(n, out),
        np.zeros(n),
        user=np.zeros(n),
    )
    r = simulate(g, d, t, "lru")
    return float(np.median(r.latency[1:]))


def _switch_time(d: Device, g: CoE) -> float:
    """Mean stall per switch, measured by the simulator (BS=1, every prompt switches)."""
    t = workload(g, 1, 1, batches=20)
    r = simulate(g, d, t, Policy(eviction="lru", batching="paper", batch_size=1))
    return sum(i["stall"] for i in r.instances) / r.switches


def spill_point(d: Device, lo: int = 30, hi: int = 70) -> int:
    """Smallest number of experts at which a cyclic trace keeps missing on ``d``: the CoE spills
    out of the exec tier (measured by simulation, router resident)."""
    for n in range(lo, hi + 1):
        g = coe(n)
        t = workload(g, 1, 1, batches=2 * n)
        r = simulate(g, d, t, "lru")
        if r.misses > n:  # more than the cold misses
            return n
    return hi + 1


def nodes_to_hold(d: Device, n_experts: int, nbytes: int) -> int:
    """Instances of ``d`` needed to pin ``n_experts`` experts in their exec tiers (packing policy)."""
    router = int(LLAMA2_7B_PARAMS * 2)
    cap = d.exec.capacity - d.reserved - router
    sizes = {f"e{i}": nbytes for i in range(n_experts)}
    pop = dict.fromkeys(sizes, 1.0)
    k = max(1, math.ceil(n_experts * nbytes / cap))
    while True:
        pins = place("pack", sizes, pop, cap, k)
        if sum(len(p) for p in pins) == n_experts:
            return k
        k += 1


def max_experts(d: Device, nbytes: int) -> int:
    """Experts of ``nbytes`` that fit below the exec tier (where the simulator homes them)."""
    x = int(d.exec_tier)
    return sum(t.capacity // nbytes for t in d.tiers[x + 1 :])


@dataclass
class PaperResult:
    rows: list[tuple[str, Any, Any, Any, Any]]  # name, ours A100, paper A100, ours H100, paper H100
    details: dict[str, Any]
    notes: list[str]


def check(progress: Any = None, *, sn40l_overlap: bool = True) -> PaperResult:
    """Compute our Table V. ``progress()`` is called after each simulation step.

    ``sn40l_overlap``: the SN40L node copies a batch's next expert DDR->HBM while the current
    one runs (policy ``lru+prefetch``); the DGX rows add switching to execution, as the paper's
    DGX estimates do (NeMo latencies plus spec-sheet switching, docs/sources.md "DGX baselines as the paper used them"). ``False`` runs the
    same non-overlapping policy on every platform."""
    p = platforms()
    g = coe()
    nb = g.nbytes("expert000")
    tick = progress or (lambda: None)
    res: dict[str, dict[str, float]] = {k: {} for k in p}
    for k, d in p.items():
        for bs, out in ((8, 20), (1, 20), (8, 200), (1, 200)):
            res[k][f"overall{bs}_{out}"] = _overall(d, g, bs, out, sn40l_overlap and k == "sn40l")
            tick()
        for out in (20, 200):
            res[k][f"exec_{out}"] = _exec_only(d, out)
            tick()
        res[k]["switch"] = _switch_time(d, g)
        tick()
    keys = [
        "overall8_20",
        "overall1_20",
        "exec_20",
        "overall8_200",
        "overall1_200",
        "exec_200",
        "switch",
    ]
    rows: list[tuple[str, Any, Any, Any, Any]] = []
    for (name, pa, ph), key in zip(PAPER_TABLE_V, keys, strict=False):
        rows.append(
            (
                name,
                res["dgx_a100"][key] / res["sn40l"][key],
                pa,
                res["dgx_h100"][key] / res["sn40l"][key],
                ph,
            )
        )
    fit = {k: max_experts(d, nb) for k, d in p.items()}
    ours_oom = {
        k: ("fits" if fit[k] >= N_EXPERTS else "out of memory") + f" (max {fit[k]})"
        for k in ("dgx_a100", "dgx_h100")
    }
    rows.append(
        (
            "more than 150 experts",
            "DGX " + ours_oom["dgx_a100"],
            PAPER_TABLE_V[7][1],
            "DGX " + ours_oom["dgx_h100"],
            PAPER_TABLE_V[7][2],
        )
    )
    plain = {out: _overall(p["sn40l"], g, 8, out) for out in (20, 200)}
    same = {
        f"{x}{out}": res[k][f"overall8_{out}"] / plain[out]
        for out in (20, 200)
        for x, k in (("a", "dgx_a100"), ("h", "dgx_h100"))
    }
    spill = {k: spill_point(d) for k, d in p.items() if k != "sn40l"}
    tick()
    footprint = nodes_to_hold(p["dgx_a100"], 850, nb)
    sn_max = max_experts(p["sn40l"], nb)
    switch_ms = {k: v["switch"] * 1e3 for k, v in res.items()}
    details: dict[str, Any] = {
        "seconds": res,
        "switch_ms": switch_ms,
        "dgx_spill_experts": spill,
        "dgx_nodes_for_850": footprint,
        "sn40l_max_experts": sn_max,
        "expert_bytes": nb,
    }
    notes = [
        f"Switch per 13.48 GB expert: SN40L {switch_ms['sn40l']:.1f} ms, A100 {switch_ms['dgx_a100'] / 1e3:.3f} s, "
        f"H100 {switch_ms['dgx_h100'] / 1e3:.3f} s (docs/sources.md: 13.5 ms / 0.42 s / 0.21 s).",
        f"Footprint: one SN40L node holds {sn_max} experts in DDR (paper: up to 850); 850 experts need "
        f"{footprint} DGX nodes in HBM (paper: 19x).",
        f"DGX spills out of HBM at {spill['dgx_a100']} experts (paper: latency spikes near 50; 640 GB / 13.5 GB ~ 47; "
        "we also keep the router and 8 GiB of KV cache in HBM).",
        f"Disagreement: the paper says DGX runs out of memory at 150 experts. With 640 GB HBM plus 2 TiB host memory "
        f"(DGX datasheets) a DGX holds {fit['dgx_a100']} experts of 13.48 GB, so 150 (2.02 TB) fit in our model; "
        "the paper's DGX figures are estimates, and a 1 TB-host DGX (or weights pinned twice) would run out.",
        "BS=8 vs BS=1: the SN40L runs copy a batch's next expert while the current one runs (the router has named "
        "them all); at BS=1 nothing is known ahead. Without that overlap the BS=8 rows would read "
        f"{same['a20']:.1f}x / {same['h20']:.1f}x (20 tokens) and {same['a200']:.1f}x / {same['h200']:.1f}x "
        "(200 tokens), i.e. no larger than BS=1, unlike the paper.",
    ]
    return PaperResult(rows, details, notes)
