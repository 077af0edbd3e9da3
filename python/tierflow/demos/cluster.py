"""``tierflow demo --cluster N``: the demo CoE served across a local Ray cluster of ``N`` nodes
(separate raylets with their own resources, started by ``ray.cluster_utils.Cluster``), measured
per node and in total, beside the simulator's prediction of that cluster.

The prediction: the host model calibrated from a 48-request probe on this machine
(:func:`tierflow.serving.calibrate`), one such device per node with the same RAM budget, joined
by the measured loopback link, placed by the same code as the cluster
(:func:`tierflow.sim.placement.place`), through :func:`tierflow.simulate`. Requests are spaced out
in the prediction, because the measured latency of a request is its service (router, wait for
its expert's weights, compute, Ray's round trip), not its wait in the queue.

On machines where Ray must stay on loopback, run it in a loopback-only network namespace:
``unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' tierflow demo --cluster 3``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.trace import Trace

__all__ = ["local_cluster", "run_cluster_demo"]


def local_cluster(nodes: int, object_store: int = 100 << 20) -> Any:
    """A local Ray cluster of ``nodes`` raylets of 1 CPU each; Ray initialised on it. Stop it
    with ``ray.shutdown(); cluster.shutdown()``."""
    from ..sim.devices import import_ray

    ray = import_ray()
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": object_store},
    )
    for _ in range(nodes - 1):
        c.add_node(num_cpus=1, object_store_memory=object_store)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, logging_level="error")
    return c


def cluster_trace(g: Any, requests: int, prompt_tokens: int, seed: int = 0) -> Trace:
    """The demo's Zipf(1.0) traffic, one output token per request."""
    return Trace.closed_loop(
        g.experts,
        users=1,
        n=requests,
        prompt_tokens=prompt_tokens,
        output_tokens=1,
        zipf_s=1.0,
        seed=seed,
    )


def predict(
    g: Any,
    dev: Any,
    nodes: int,
    trace: Trace,
    policy: str,
    sizes: dict[str, int],
    homes: dict[str, list[int]],
    rtt: float,
) -> Any:
    """The simulator's prediction of the cluster run (see the module text): device 0 is where
    requests enter (the router, no experts), devices 1..nodes the nodes (``dev`` each), with the
    cluster's placement ``homes`` (node indices) and links of the loopback's bandwidth whose
    round trip is ``rtt`` (Ray's measured cost per call)."""
    from ..sim.coe import CoE
    from ..sim.placement import Link, loopback
    from ..sim.simulate import simulate

    sized = CoE.from_dict(g.to_dict())
    for e, b in sizes.items():
        sized.nodes[e].nbytes = int(b)
    n = len(trace)
    open_loop = Trace(
        trace.experts,
        np.arange(n) * 100.0,
        trace.prompt_tokens,
        trace.output_tokens,
        trace.expert,
    )
    router = sized.router_node.nbytes if sized.router_node else 0
    entry = dev.with_exec_capacity(router + 1)
    return simulate(
        sized,
        devices=[entry] + [dev] * nodes,
        trace=open_loop,
        policy=policy,
        links=Link(loopback().bandwidth, rtt / 2),
        homes={e: [k + 1 for k in hs] for e, hs in homes.items()},
    )


def run_cluster_demo(
    nodes: int,
    folder: str | os.PathLike[str] | None = None,
    *,
    requests: int = 150,
    prompt_tokens: int = 16,
    ram_budget: int | None = None,
    config: dict[str, Any] | None = None,
    policy: str = "lru",
    console: Any = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Serve the demo CoE on a local cluster of ``nodes`` nodes (or the cluster at ``address``);
    print per-node and total measured figures beside the prediction; return them."""
    from rich.console import Console
    from rich.table import Table

    from ..serving import calibrate, schedule
    from ..sim import devices
    from ..sim.devices import import_ray
    from .coe_files import DEMO_CONFIG, write_demo_coe
    from .host import demo_dir

    con = console or Console()
    ray = import_ray()
    cfg = dict(config or DEMO_CONFIG)
    root = Path(folder) if folder is not None else demo_dir()
    g = write_demo_coe(root, **cfg)  # reused when already generated
    store = str(root / "store")
    sizes = {e: g.nbytes(e) for e in g.experts}
    budget = int(ram_budget) if ram_budget else int(max(sizes.values()) * 4.5)
    trace = cluster_trace(g, requests, prompt_tokens)
    t0 = time.perf_counter()
    with schedule(g, policy="lru", store=store, ram_budget=budget) as probe:
        dev = calibrate(probe, prompt_tokens, save=False)
        sizes = dict(probe.nbytes)
        serial = probe.run(trace)
    c = None
    if address is None:
        con.print(f"starting a local Ray cluster of {nodes} nodes (1 CPU each)")
        c = local_cluster(nodes)
    else:
        ray.init(address=address, include_dashboard=False, logging_level="error")
    try:
        devs = devices.ray_cluster()[:nodes] if address is None else devices.ray_cluster()
        nodes = len(devs)
        cplan: Any = schedule(g, devices=devs, policy=policy, store=store, ram_budget=budget)
        with cplan as plan:
            rep: Any = plan.run(trace)
            placement = plan.placement
            rtt = plan.ping()
        pred = predict(g, dev, nodes, trace, policy, sizes, placement.homes, rtt)
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
    same = all(
        a is not None and b is not None and np.array_equal(a, b)
        for a, b in zip(rep.outputs, serial.outputs, strict=True)
    )
    t = Table(
        title=f"{len(trace)} requests, Zipf(1.0) over {len(g.experts)} experts on {nodes} Ray "
        f"nodes, {budget / 1e6:.0f} MB of experts in RAM per node ({policy}); sim = prediction"
    )
    for col in (
        "node",
        "experts",
        "requests",
        "sim req",
        "hits",
        "loads",
        "sim loads",
        "file->RAM",
        "network",
        "stall",
        "busy",
    ):
        t.add_column(col, justify="left" if col in ("node", "experts") else "right")
    prow = pred.per_device_table()[1:]  # device 0: where requests enter
    out: dict[str, Any] = {"nodes": [], "budget": budget, "outputs_equal_serial": same}
    for k, r in enumerate(rep.per_device_table()):
        netb = sum(v["bytes"] for key, v in rep.network.items() if rep.devices[k].name in key)
        t.add_row(
            r["device"],
            ",".join(e.removeprefix("expert") for e in r["experts"]),
            str(r["requests"]),
            str(prow[k]["requests"]),
            str(r["hits"]),
            str(r["loads"]),
            str(prow[k]["loads"]),
            f"{r['bytes_tiers'] / 1e6:.0f} MB",
            f"{netb / 1e6:.1f} MB",
            f"{r['stall_s']:.2f} s",
            f"{r['busy_s']:.2f} s",
        )
        out["nodes"].append({**r, "network_bytes": netb, "predicted": prow[k]})
    con.print(t)
    s, ps, ss = rep.summary(), pred.summary(), serial.summary()
    tt = Table(title="total: measured on the cluster, predicted by the simulator, one host serial")
    for col in ("", "p50", "p99", "mean", "loads", "network"):
        tt.add_column(col, justify="left" if not col else "right")
    for name, x, loads in (
        ("cluster, measured", s, sum(r["loads"] for r in rep.per_device_table())),
        ("cluster, simulated", ps, pred.switches),
        ("one host (serial)", ss, serial.loads),
    ):
        tt.add_row(
            name,
            f"{x['latency_p50_s'] * 1e3:.1f} ms",
            f"{x['latency_p99_s'] * 1e3:.1f} ms",
            f"{x['latency_mean_s'] * 1e3:.1f} ms",
            str(loads),
            f"{x.get('bytes_network', 0) / 1e6:.1f} MB",
        )
    con.print(tt)
    err = ps["latency_mean_s"] / s["latency_mean_s"] - 1
    calls = sum(int(i.get("calls", 0)) for i in rep.instances)
    over = sum(float(i.get("ray_overhead", 0.0)) for i in rep.instances) / max(calls, 1)
    con.print(
        f"outputs equal the one-host serial run: {same}; prediction of the mean latency "
        f"{err:+.0%}; Ray's cost per call {over * 1e3:.1f} ms (an empty call: {rtt * 1e3:.1f} ms); "
        f"placement: {placement.to_dict()['experts']}; {time.perf_counter() - t0:.0f} s"
    )
    out |= {"measured": s, "predicted": ps, "serial": ss, "mean_error": err, "ping_s": rtt}
    return out
