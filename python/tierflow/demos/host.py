"""``tierflow demo``: a CoE larger than its RAM budget served for real, measured beside the
simulator's calibrated prediction, then scaled to an SN40L node in the simulator.

Steps: (1) generate the demo CoE once (cached; crash safe), (2) calibrate the simulator's host
model from a short probe, (3) serve a Zipf trace under each policy with a progress bar,
(4) print per policy p50/p99 latency, throughput, hit rate, bytes moved, stall, the Belady bound
and the simulator's prediction, (5) write PNG plots and ``report.json``, (6) simulate the same
graph and traffic with Llama2-7B-sized experts on ``sn40l(8)`` beside ``dgx_h100``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.coe import CoE
from ..sim.devices import host_cache_path
from ..sim.policies import EvictionPolicy, Policy
from ..sim.trace import Trace

__all__ = ["DEMO_POLICIES", "SMALL_CONFIG", "belady_loads", "demo_dir", "run_demo"]

DEMO_POLICIES = ["lru", "lfu", "lru+prefetch", "planned", "planned+prefetch"]
#: a tiny configuration for tests (same number of experts, small weights)
SMALL_CONFIG = {"experts": 16, "hidden": 64, "intermediate": 128, "layers": 2, "seed": 7}


def demo_dir() -> Path:
    """``<tierflow cache>/demo`` (``$TIERFLOW_CACHE_DIR`` or ``~/.cache/tierflow``)."""
    return host_cache_path().parent / "demo"


def belady_loads(seq: list[str], sizes: dict[str, int], budget: int) -> int:
    """Minimum number of expert loads for ``seq`` with ``budget`` bytes (Belady's MIN, exact for
    equal sizes), replayed with the shared :class:`EvictionPolicy`."""
    names = sorted(sizes)
    p = EvictionPolicy("belady", names)
    p.set_future(seq)
    res: set[str] = set()
    used = loads = 0
    for e in seq:
        p.on_access(e)
        if e in res:
            continue
        loads += 1
        while used + sizes[e] > budget and res:
            v = p.victim(list(res))
            assert v is not None
            res.discard(v)
            used -= sizes[v]
            p.on_evict(v)
        res.add(e)
        used += sizes[e]
        p.on_insert(e)
    return loads


def scaled_coe(g: CoE, experts: int | None = None) -> CoE:
    """The same graph shape (router -> experts) with Llama2-7B experts (6.74e9 params, BF16,
    32 layers, docs/sources.md "The CoE experiment") and router; ``experts`` names more experts than ``g`` has (the paper's
    Samba-CoE has 150); the demo's experts keep their names and come first."""
    names = list(g.experts)
    n = max(experts or len(names), len(names))
    names += [f"expert{i:03d}" for i in range(len(names), n)]
    big = CoE(g.name + "-7b")
    big.router("router", params=6.74e9, dtype="bf16", layers=32)
    for e in names:
        big.expert(e, params=6.74e9, dtype="bf16", layers=32, kv_bytes_per_token=512 * 1024)
    big.route("router", names)
    return big


def run_demo(
    folder: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    requests: int = 150,
    prompt_tokens: int = 16,
    ram_budget: int | None = None,
    config: dict[str, Any] | None = None,
    policies: list[str] | None = None,
    workers: int = 1,
    console: Any = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns the JSON report (also written to ``out/report.json``)."""
    from rich.console import Console

    from ..serving.tune import apply_tuning
    from ..store import TieredStore
    from .coe_files import DEMO_CONFIG

    con = console or Console()
    threads = apply_tuning()
    if threads:
        con.print(f"kernel threads from tierflow tune: {threads}")
    cfg = dict(config or DEMO_CONFIG)
    root = Path(folder) if folder is not None else demo_dir()
    outdir = Path(out) if out is not None else root / "report"
    policies = list(policies or DEMO_POLICIES)
    t_start = time.perf_counter()

    g = _demo_coe(root, cfg, con)
    sizes = {e: g.nbytes(e) for e in g.experts}
    total = sum(sizes.values())
    budget = int(ram_budget) if ram_budget else int(max(sizes.values()) * 4.5)
    con.print(
        f"CoE [bold]{g.name}[/]: router + {len(g.experts)} experts of "
        f"{max(sizes.values()) / 1e6:.1f} MB = {total / 1e6:.0f} MB of weights on the file tier; "
        f"RAM-tier budget {budget / 1e6:.0f} MB ({budget / total:.0%} of the experts)"
    )
    trace = Trace.closed_loop(
        g.experts,
        users=1,
        n=requests,
        prompt_tokens=prompt_tokens,
        output_tokens=1,
        zipf_s=1.0,
        seed=0,
    )
    outdir.mkdir(parents=True, exist_ok=True)
    trace.save_jsonl(outdir / "trace.jsonl")

    store = TieredStore.open(root / "store", verify="header", strict=False)
    result: dict[str, Any] = {
        "coe": g.to_dict(),
        "ram_budget": budget,
        "requests": requests,
        "policies": {},
    }
    try:
        dev = _calibrated_host(g, store, budget, workers, prompt_tokens, con, result)
        seq = [trace.experts[int(i)] for i in trace.expert]
        bound = belady_loads(seq, sizes, budget)
        reports = _serve_policies(g, store, budget, workers, trace, dev, policies, con)
        _print_policies(reports, g, requests, bound, con, result)
        if plots:
            for pol, (rep, _) in reports.items():
                rep.plot(outdir / f"latency-{pol.replace('+', '_')}.png")
            _summary_plot(reports, outdir / "policies.png")
        _print_scaled(g, con, result)
    finally:
        store.close()
    result["seconds"] = time.perf_counter() - t_start
    (outdir / "report.json").write_text(json.dumps(result, indent=2, default=_json_default))
    con.print(
        f"wrote {outdir}/report.json, trace.jsonl"
        + (" and PNG plots" if plots else "")
        + f" in {result['seconds']:.0f} s"
    )
    return result


def _progress(con: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=False,
    )


def _demo_coe(root: Path, cfg: dict[str, Any], con: Any) -> CoE:
    """Step 1: the demo CoE, generated once (reused when its files are complete)."""
    from .coe_files import demo_ready, write_demo_coe

    if demo_ready(root, cfg):
        con.print(f"[green]reusing[/] the demo CoE in {root}")
        return write_demo_coe(root, **cfg)
    with _progress(con) as pb:
        task = pb.add_task(f"generating expert weights in {root}", total=cfg["experts"])
        return write_demo_coe(root, **cfg, progress=lambda k, n: pb.update(task, completed=k))


def _calibrated_host(
    g: CoE,
    store: Any,
    budget: int,
    workers: int,
    prompt_tokens: int,
    con: Any,
    result: dict[str, Any],
) -> Any:
    """Step 2: the simulator's host model, calibrated from a probe served on ``g``."""
    from ..serving.calibrate import calibrate
    from ..serving.plan import schedule

    with schedule(g, policy="lru", store=store, ram_budget=budget, workers=workers) as probe:
        if probe.broken:
            for why in probe.broken.values():
                con.print(f"[red]{why}[/]")
        dev = calibrate(probe, prompt_tokens)
    cal = {
        "load_GBps": dev.tiers[0].bandwidth / 1e9,
        "peak_GFLOPs": dev.flops("float32") / 1e9,
    }
    con.print(
        "calibrated host model (48-request probe): expert switch file->RAM {load_GBps:.2f} GB/s, "
        "expert compute {peak_GFLOPs:.1f} GFLOP/s".format(**cal)
    )
    result["calibration"] = cal | {"device": dev.to_dict()}
    return dev


def _serve_policies(
    g: CoE,
    store: Any,
    budget: int,
    workers: int,
    trace: Trace,
    dev: Any,
    policies: list[str],
    con: Any,
) -> dict[str, tuple[Any, Any]]:
    """Step 3: serve ``trace`` under each policy; each run with the simulator's prediction."""
    from ..serving.calibrate import with_next_hint
    from ..serving.plan import schedule
    from ..sim.simulate import simulate

    reports = {}
    with _progress(con) as pb:
        for pol in policies:
            task = pb.add_task(f"serving {pol:<17}", total=len(trace))
            with schedule(g, policy=pol, store=store, ram_budget=budget, workers=workers) as plan:

                def tick(task: Any = task) -> None:
                    pb.advance(task)

                rep = plan.run(trace, progress=tick)
            pred = simulate(g, dev, with_next_hint(trace, rep.routed), Policy.parse(pol))
            reports[pol] = (rep, pred)
    return reports


def _print_policies(
    reports: dict[str, tuple[Any, Any]],
    g: CoE,
    requests: int,
    bound: int,
    con: Any,
    result: dict[str, Any],
) -> None:
    """Step 4: the table of measured and predicted figures per policy, and the Belady bound."""
    from rich.table import Table

    t = Table(
        expand=False,
        title=f"{requests} requests, Zipf(1.0) over {len(g.experts)} experts, measured on this host",
    )
    for col in (
        "policy",
        "p50",
        "p99",
        "mean",
        "req/s",
        "hit rate",
        "loads",
        "file->RAM",
        "stall",
        "sim p50",
        "sim mean",
        "mean err",
    ):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for pol, (rep, pred) in reports.items():
        s, ps = rep.summary(), pred.summary()
        err = ps["latency_mean_s"] / s["latency_mean_s"] - 1
        t.add_row(
            pol,
            f"{s['latency_p50_s'] * 1e3:.1f} ms",
            f"{s['latency_p99_s'] * 1e3:.1f} ms",
            f"{s['latency_mean_s'] * 1e3:.1f} ms",
            f"{s['throughput_rps']:.1f}",
            f"{s['hit_rate']:.0%}",
            f"{rep.loads}",
            f"{s['bytes_moved'] / 1e6:.0f} MB",
            f"{s['stall_s']:.2f} s",
            f"{ps['latency_p50_s'] * 1e3:.1f} ms",
            f"{ps['latency_mean_s'] * 1e3:.1f} ms",
            f"{err:+.0%}",
        )
        result["policies"][pol] = {
            "measured": s,
            "predicted": ps,
            "expert_loads": rep.loads,
            "mean_error": err,
            "errors": {str(k): v for k, v in rep.errors.items()},
            "store_links": rep.store_stats["counters"]["links"],
        }
    con.print(t)
    result["belady_bound_loads"] = bound
    lru = result["policies"].get("lru", {}).get("expert_loads")
    planned = result["policies"].get("planned", {}).get("expert_loads")
    con.print(
        f"Belady bound: {bound} expert loads for this trace and budget"
        + (f"; planned {planned}" if planned is not None else "")
        + (f", LRU {lru}" if lru is not None else "")
    )
    failed = {p: len(r.errors) for p, (r, _) in reports.items() if r.errors}
    if failed:
        con.print(f"[yellow]failed requests per policy: {failed}[/] (see report.json)")


def _print_scaled(g: CoE, con: Any, result: dict[str, Any]) -> None:
    """Step 6: the same graph and traffic with Llama2-7B-sized experts, simulated on an SN40L
    node beside a DGX H100."""
    from rich.table import Table

    from ..sim import devices
    from ..sim.simulate import simulate

    big = scaled_coe(g, 150)
    btrace = Trace.poisson(
        big.experts, rate=2.0, n=2000, prompt_tokens=512, output_tokens=20, zipf_s=1.0, seed=0
    )
    st = Table(
        title="the same CoE scaled to the paper's Samba-CoE: 150 Llama2-7B experts (13.5 GB each), "
        "Zipf(1.0), 2000 requests at 2 req/s, simulated"
    )
    for col in ("device", "policy", "p50", "p99", "switches", "hit rate"):
        st.add_column(col, justify="left" if col in ("device", "policy") else "right")
    result["scaled"] = {}
    for dname, d in (("sn40l(8)", devices.sn40l(8)), ("dgx_h100", devices.dgx_h100())):
        for pol in ("lru", "planned+prefetch"):
            r = simulate(big, d, btrace, pol).summary()
            st.add_row(
                dname,
                pol,
                f"{r['latency_p50_s']:.2f} s",
                f"{r['latency_p99_s']:.2f} s",
                str(r["switches"]),
                f"{r['hit_rate']:.0%}",
            )
            result["scaled"][f"{dname} {pol}"] = r
    con.print(st)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _summary_plot(reports: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = list(reports)
    meas = [reports[p][0].summary()["latency_mean_s"] * 1e3 for p in pols]
    pred = [reports[p][1].summary()["latency_mean_s"] * 1e3 for p in pols]
    stall = [reports[p][0].summary()["stall_s"] for p in pols]
    x = np.arange(len(pols))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.bar(x - 0.2, meas, 0.4, label="measured")
    a1.bar(x + 0.2, pred, 0.4, label="simulated (calibrated)")
    a1.set_xticks(x, pols, rotation=20)
    a1.set_ylabel("mean latency (ms)")
    a1.legend()
    a2.bar(x, stall, color="tab:red")
    a2.set_xticks(x, pols, rotation=20)
    a2.set_ylabel("total stall waiting for weights (s)")
    fig.suptitle("tierflow demo: policies on this host")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
