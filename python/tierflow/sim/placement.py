"""Several devices, possibly different, joined by network links: placement and simulation.

``tierflow.simulate(g, devices=[sn40l(), dgx_h100()], trace, policy)`` places every expert on the
device where its cost is lowest within capacity, then simulates each device with the native
single-device simulator and adds the network in between:

- **Links.** Each device kind has a network interface preset (:func:`interconnect`: bandwidth
  per node and latency per end, figures in ``docs/sources.md``; the host's is measured over
  loopback). The link between two devices runs at the slower interface's bandwidth, and its
  latency is the sum of both ends'. ``links=`` overrides them.
- **Router.** It runs on the device where requests arrive (``entry``, default the first),
  one request at a time, before the request is sent to its expert's device.
- **Placement** (:func:`place`). Experts in order of popularity (requests per expert in the
  trace, or ``popularity=``), each on the device with the lowest estimated cost per request
  (prefill + decode on that device by the latency model, plus the round trip from the entry
  device and the bytes of token ids both ways) among those with room in their exec tier: the
  hottest experts land on the fastest device until it is full. An expert no exec tier has room
  for any more is homed where that cost plus one load from the tier below is lowest (it is
  then swapped in and out by the device's cache policy). Afterwards, if every expert is
  resident somewhere, experts whose share of the requests exceeds ``1 / len(devices)`` (all of
  them with ``placement="replicate"``) get replicas, hottest first, on the cheapest other
  devices with room.
- **Requests** go to the replica of their expert with the earliest estimated finish.
- Each device then serves its requests through the native simulator (its own exec tier,
  eviction, prefetch and batching per ``policy``), with the arrival delayed by the router and
  the network, and the reply's transfer added to the latency.

Only open-loop traces are supported with more than one device (a closed-loop user's next
request would depend on another device's finish time).
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ScheduleError
from .coe import CoE
from .devices import Device, host_cache_path
from .policies import Policy
from .report import Report
from .trace import Trace

__all__ = [
    "ClusterReport",
    "Link",
    "Placement",
    "interconnect",
    "link_between",
    "loopback",
    "place",
    "simulate_many",
]

#: Bytes per token id carried over the network (uint32).
TOKEN_BYTES = 4


@dataclass(frozen=True)
class Link:
    """A network path: ``bandwidth`` bytes/s and ``latency`` seconds one way."""

    bandwidth: float
    latency: float
    name: str = ""

    def __post_init__(self) -> None:
        for f in ("bandwidth", "latency"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidArgumentError(f"link: {f} must be a number, got {v!r}")
        if self.bandwidth <= 0:
            raise InvalidArgumentError(f"link: bandwidth must be > 0, got {self.bandwidth!r}")
        if self.latency < 0:
            raise InvalidArgumentError(f"link: latency must be >= 0, got {self.latency!r}")

    def time(self, nbytes: float) -> float:
        """Seconds to send ``nbytes`` one way."""
        return self.latency + nbytes / self.bandwidth


# Network interface per node, by device kind (docs/sources.md, "Interconnects"):
# bandwidth in bytes/s for the whole node, latency in seconds per end.
NIC: dict[str, Link] = {
    # DGX H100 datasheet: 8x single-port ConnectX-7, 400 Gb/s InfiniBand each -> 8 x 50 GB/s
    "dgx_h100": Link(8 * 50e9, 0.6e-6, "8x ConnectX-7 NDR 400 Gb/s"),
    # DGX A100 datasheet: 8x single-port ConnectX-6, 200 Gb/s HDR InfiniBand each -> 8 x 25 GB/s
    "dgx_a100": Link(8 * 25e9, 0.6e-6, "8x ConnectX-6 HDR 200 Gb/s"),
    # no published network figure for an SN40L Node: modelled as one 100 Gb/s Ethernet port
    # (IEEE 802.3ba line rate, 12.5 GB/s) with the ConnectX-6 adapter latency (an assumption)
    "sn40l": Link(12.5e9, 0.6e-6, "100 GbE (assumed)"),
}


def _loopback_path() -> Any:
    return host_cache_path().parent / "loopback.json"


def _measure_loopback(nbytes: int = 32 << 20, pings: int = 200) -> Link:
    """TCP over 127.0.0.1: bytes/s of a bulk send and half the median round trip of 1 byte."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            got = 0
            while got < nbytes:
                b = conn.recv(1 << 20)
                if not b:
                    return
                got += len(b)
            conn.sendall(b"k")
            for _ in range(pings):
                b = conn.recv(1)
                if not b:
                    return
                conn.sendall(b)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            block = b"\0" * (1 << 20)
            t = time.perf_counter()
            for _ in range(nbytes >> 20):
                c.sendall(block)
            c.recv(1)
            bw = nbytes / (time.perf_counter() - t)
            rtt = []
            for _ in range(pings):
                t = time.perf_counter()
                c.sendall(b"p")
                c.recv(1)
                rtt.append(time.perf_counter() - t)
        th.join(5)
    finally:
        srv.close()
    return Link(bw, float(np.median(rtt)) / 2, "loopback TCP (measured)")


def loopback(*, refresh: bool = False) -> Link:
    """This machine's TCP loopback (bandwidth, one-way latency), measured once and cached next
    to :func:`tierflow.devices.host`'s probe."""
    path = _loopback_path()
    if not refresh and path.exists():
        try:
            d = json.loads(path.read_text())
            return Link(float(d["bandwidth"]), float(d["latency"]), str(d.get("name", "")))
        except (OSError, ValueError, KeyError, InvalidArgumentError):
            pass
    link = _measure_loopback()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"bandwidth": link.bandwidth, "latency": link.latency, "name": link.name})
    )
    os.replace(tmp, path)
    return link


def interconnect(device: Device) -> Link:
    """The network interface preset of ``device``'s kind (by name: ``dgx_h100``, ``dgx_a100``,
    ``sn40l(...)``; ``host`` and Ray nodes on this machine: measured loopback)."""
    name = device.name
    for kind, link in NIC.items():
        if name == kind or name.startswith(kind + "("):
            return link
    if name == "host" or name.startswith(("host", "ray:")):
        return loopback()
    raise InvalidArgumentError(
        f"no interconnect preset for device {name!r} (known: {sorted(NIC)} and host): "
        "pass links= to simulate"
    )


def link_between(a: Device, b: Device) -> Link:
    """The default link between two devices: the slower interface's bandwidth, both ends'
    latencies added."""
    la, lb = interconnect(a), interconnect(b)
    return Link(min(la.bandwidth, lb.bandwidth), la.latency + lb.latency, f"{a.name}<->{b.name}")


# --- the latency model, per node and device (same formula as rust/core/src/sim/cost.rs) ------
def _pass(node: Any, d: Device, dtype: str, n: float, ctx: float) -> float:
    bw = d.read_bandwidth * d.bw_efficiency
    coll = 2 * d.collective_latency if d.tp > 1 else 0.0
    comp = 2 * node.params * n / (d.flops(dtype) * d.compute_efficiency)
    mem = (node.nbytes + node.kv_bytes_per_token * ctx) / bw
    return max(comp, mem) + node.layers * (d.kernels_per_layer * d.launch_overhead + coll)


def service_time(node: Any, d: Device, dtype: str, prompt: float, output: int) -> float:
    """Seconds to serve one request on ``d`` once the weights are resident: prefill of ``prompt``
    tokens, then ``output - 1`` decode steps (as the native simulator counts them)."""
    t = _pass(node, d, dtype, prompt, 0.0)
    for i in range(1, max(int(output), 1)):
        t += _pass(node, d, dtype, 1.0, prompt + i)
    return t


def _expert_room(d: Device, router_bytes: int) -> int:
    return int(d.exec.capacity - d.reserved - router_bytes)


def _below_room(d: Device) -> int:
    return int(sum(t.capacity for t in d.tiers[int(d.exec_tier) + 1 :]))


@dataclass
class Placement:
    """Where each expert lives: ``homes[e]`` device indices (first = primary, more = replicas),
    ``resident[e]`` whether it fits the exec tier there for good (False: swapped in on demand),
    and the per-request cost estimates that chose it."""

    devices: list[Device]
    entry: int
    homes: dict[str, list[int]]
    resident: dict[str, bool]
    cost: dict[str, list[float]]  # expert -> estimated seconds per request on each device
    free: list[int]  # exec-tier bytes left per device

    def on(self, k: int) -> list[str]:
        """Experts placed on device ``k``."""
        return [e for e, hs in self.homes.items() if k in hs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.devices[self.entry].name,
            "devices": [d.name for d in self.devices],
            "experts": {e: [self.devices[k].name for k in hs] for e, hs in self.homes.items()},
            "resident": dict(self.resident),
        }


def _links(
    devices: Sequence[Device], links: Link | Mapping[tuple[int, int], Link] | None
) -> dict[tuple[int, int], Link]:
    n = len(devices)
    out: dict[tuple[int, int], Link] = {}
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if isinstance(links, Link):
                out[i, j] = links
            elif links is not None and ((i, j) in links or (j, i) in links):
                lk = links.get((i, j)) or links[(j, i)]
                if not isinstance(lk, Link):
                    raise InvalidArgumentError(f"links[{(i, j)}] must be a Link, got {lk!r}")
                out[i, j] = lk
            else:
                out[i, j] = link_between(devices[i], devices[j])
    return out


def place(
    g: CoE,
    devices: Sequence[Device],
    *,
    popularity: Mapping[str, float],
    prompt_tokens: float = 1.0,
    output_tokens: int = 1,
    entry: int = 0,
    links: Link | Mapping[tuple[int, int], Link] | None = None,
    replicate: str = "hot",
) -> Placement:
    """Place ``g``'s experts on ``devices`` (see the module text). ``replicate``: ``"hot"``
    (experts with more than ``1 / len(devices)`` of the requests), ``"all"`` or ``"none"``.

    Raises:
        ScheduleError: an expert fits no device (with the bytes missing), or the router does not
            fit the entry device.
    """
    devs = list(devices)
    if not devs:
        raise InvalidArgumentError("place: no devices")
    if not 0 <= entry < len(devs):
        raise InvalidArgumentError(f"place: entry {entry} is not a device index")
    lk = _links(devs, links)
    dtype = g.dtype
    router = g.router_node.nbytes if g.router_node else 0
    free = [_expert_room(d, router if k == entry else 0) for k, d in enumerate(devs)]
    if free[entry] <= 0:
        raise ScheduleError(
            f"the router ({router} bytes) does not fit device {devs[entry].name!r}: "
            f"{-free[entry] + 1} bytes missing"
        )
    below = [_below_room(d) for d in devs]
    chain = {e: _chain(g, e) for e in g.experts}
    units = [e for e in g.experts if e not in set(g.post.values())]
    size = {e: sum(g.nodes[x].nbytes for x in chain[e]) for e in units}
    io = TOKEN_BYTES * (prompt_tokens + output_tokens)

    def net(k: int) -> float:
        if k == entry:
            return 0.0
        link = lk[entry, k]
        return 2 * link.latency + io / link.bandwidth

    cost = {
        e: [
            sum(service_time(g.nodes[x], d, dtype, prompt_tokens, output_tokens) for x in chain[e])
            + net(k)
            for k, d in enumerate(devs)
        ]
        for e in units
    }
    order = sorted(units, key=lambda e: (-float(popularity.get(e, 0.0)), units.index(e)))
    homes: dict[str, list[int]] = {}
    resident: dict[str, bool] = {}
    for e in order:
        fits = [k for k in range(len(devs)) if free[k] >= size[e]]
        if fits:
            k = min(fits, key=lambda k: (cost[e][k], k))
            free[k] -= size[e]
            homes[e], resident[e] = [k], True
            continue
        # swapped in on demand: the device's exec tier must hold it, its lower tiers keep it
        room = [_expert_room(d, router if k == entry else 0) for k, d in enumerate(devs)]
        ok = [k for k in range(len(devs)) if room[k] >= size[e] and below[k] >= size[e]]
        if not ok:
            best = max(range(len(devs)), key=lambda k: min(room[k], below[k] or room[k]))
            have = min(room[best], below[best] or room[best])
            raise ScheduleError(
                f"expert {e!r} ({size[e]} bytes) fits no device: the most room is "
                f"{max(have, 0)} bytes on {devs[best].name!r}, {size[e] - max(have, 0)} bytes missing"
            )
        k = min(ok, key=lambda k: (cost[e][k] + devs[k].copy_time(size[e]), k))
        below[k] -= size[e]
        homes[e], resident[e] = [k], False
    if replicate not in ("hot", "all", "none"):
        raise InvalidArgumentError(f"place: replicate must be hot, all or none, got {replicate!r}")
    total = sum(float(popularity.get(e, 0.0)) for e in units) or 1.0
    if replicate != "none" and all(resident.values()) and len(devs) > 1:
        for e in order:
            share = float(popularity.get(e, 0.0)) / total
            if replicate == "hot" and share <= 1.0 / len(devs):
                continue
            others = [k for k in range(len(devs)) if k not in homes[e] and free[k] >= size[e]]
            for k in sorted(others, key=lambda k: (cost[e][k], k)):
                free[k] -= size[e]
                homes[e].append(k)
                if replicate == "hot" and share / len(homes[e]) <= 1.0 / len(devs):
                    break
    return Placement(devs, entry, homes, resident, cost, free)


def _chain(g: CoE, e: str) -> list[str]:
    out = [e]
    while out[-1] in g.post and len(out) <= len(g.nodes):
        out.append(g.post[out[-1]])
    return out


def _sub_coe(g: CoE, names: Sequence[str]) -> CoE:
    sub = CoE(f"{g.name}")
    keep: list[str] = []
    for e in names:
        for x in _chain(g, e):
            if x not in keep:
                keep.append(x)
    for x in g.experts:  # graph order
        if x in keep:
            sub.nodes[x] = g.nodes[x]
    sub.post = {s: d for s, d in g.post.items() if s in sub.nodes and d in sub.nodes}
    return sub


class ClusterReport(Report):
    """A :class:`~tierflow.Report` over several devices: the per-request arrays cover the whole
    trace; ``instances`` has one entry per device; plus ``per_device`` (each device's own
    Report, or None when it served nothing), ``device_of`` (device index per request),
    ``placement`` and ``network`` (bytes and messages per directed link)."""

    def __init__(
        self,
        raw: dict[str, Any],
        g: CoE,
        devices: list[Device],
        trace: Trace,
        policy: Policy,
        per_device: list[Report | None],
        placement: Placement,
        device_of: np.ndarray,
        network: dict[str, dict[str, float]],
    ) -> None:
        super().__init__(raw, g, devices[placement.entry], trace, policy)
        self.devices = devices
        self.per_device = per_device
        self.placement = placement
        self.device_of = device_of
        self.network = network

    def link_bytes(self) -> dict[str, int]:
        """Bytes over each device's tier links (``"dgx_h100:hbm<->host"``) and over each network
        link (``"net:sn40l(8)->dgx_h100"``)."""
        out: dict[str, int] = {}
        insts = [self._inst(k) for k in range(len(self.devices))]
        for d, label, inst in zip(self.devices, _labels(self.devices), insts, strict=True):
            names = [t.name for t in d.tiers]
            for i in range(len(names) - 1):
                b = inst["link_bytes"][i] if i < len(inst["link_bytes"]) else 0
                out[f"{label}:{names[i]}<->{names[i + 1]}"] = int(b)
        for k, v in self.network.items():
            out[f"net:{k}"] = int(v["bytes"])
        return out

    def _inst(self, k: int) -> dict[str, Any]:
        """Device ``k``'s counters (one device run as several instances: their sum)."""
        if len(self.instances) == len(self.devices):
            return self.instances[k]
        out = dict(self.instances[0])
        for inst in self.instances[1:]:
            for f in ("switches", "hits", "misses", "prefetches", "busy", "stall"):
                out[f] += inst[f]
            out["link_bytes"] = [
                int(a) + int(b) for a, b in zip(out["link_bytes"], inst["link_bytes"], strict=True)
            ]
        return out

    def per_device_table(self) -> list[dict[str, Any]]:
        """One row per device: requests, hits, loads (switches), bytes over its tiers, stall,
        busy seconds, the experts placed there and the p99 latency of its requests."""
        rows = []
        for k, d in enumerate(self.devices):
            inst = self._inst(k)
            lat = self.latency[self.device_of == k]
            rows.append(
                {
                    "device": d.name,
                    "requests": int(np.sum(self.device_of == k)),
                    "hits": int(inst["hits"]),
                    "loads": int(inst["switches"]),
                    "bytes_tiers": int(sum(inst["link_bytes"])),
                    "stall_s": float(inst["stall"]),
                    "busy_s": float(inst["busy"]),
                    "experts": self.placement.on(k),
                    "p99_s": float(np.percentile(lat, 99)) if len(lat) else 0.0,
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        s = super().summary()
        s["device"] = " + ".join(d.name for d in self.devices)
        s["bytes_network"] = int(sum(v["bytes"] for v in self.network.values()))
        return s

    def table(self, title: str | None = None) -> Any:
        from rich.table import Table

        t = Table(title=title or f"{self.coe.name} on {len(self.devices)} devices")
        for c in ("device", "requests", "hits", "loads", "GB tiers", "stall", "busy", "experts"):
            t.add_column(c, justify="left" if c in ("device", "experts") else "right")
        for r in self.per_device_table():
            ex = r["experts"]
            t.add_row(
                r["device"],
                str(r["requests"]),
                str(r["hits"]),
                str(r["loads"]),
                f"{r['bytes_tiers'] / 1e9:.2f}",
                f"{r['stall_s'] * 1e3:.1f} ms",
                f"{r['busy_s'] * 1e3:.1f} ms",
                ", ".join(ex[:6]) + (f" (+{len(ex) - 6})" if len(ex) > 6 else ""),
            )
        return t

    def to_dict(self, per_request: bool = False) -> dict[str, Any]:
        d = super().to_dict(per_request)
        d["devices"] = [x.to_dict() for x in self.devices]
        d["placement"] = self.placement.to_dict()
        d["network"] = self.network
        d["per_device"] = self.per_device_table()
        return d


def simulate_many(
    g: CoE,
    devices: Sequence[Device],
    trace: Trace,
    policy: str | Policy | None = "lru",
    *,
    popularity: Mapping[str, float] | None = None,
    links: Link | Mapping[tuple[int, int], Link] | None = None,
    entry: int = 0,
    homes: Mapping[str, Sequence[int]] | None = None,
    one: Callable[..., Report] | None = None,
    **overrides: Any,
) -> ClusterReport:
    """Simulate ``trace`` on ``g`` spread over ``devices`` (see the module text). ``homes``
    gives the placement instead (``{expert: [device index, ...]}``, e.g. a real cluster's).
    ``one`` is the single-device simulator (:func:`tierflow.sim.simulate`, which passes itself)."""
    if one is None:
        raise InvalidArgumentError("simulate_many: call tierflow.simulate(g, devices=[...], ...)")
    simulate = one

    devs = list(devices)
    if not devs or not all(isinstance(d, Device) for d in devs):
        raise InvalidArgumentError("simulate: devices must be a non-empty list of tierflow.Device")
    if not isinstance(trace, Trace):
        raise InvalidArgumentError(
            f"simulate: trace must be a tierflow.Trace, got {type(trace).__name__}"
        )
    if len(trace) == 0:
        raise InvalidArgumentError("simulate: the trace is empty")
    if trace.closed and len(devs) > 1:
        raise InvalidArgumentError(
            "simulate: several devices take an open-loop trace (closed-loop users would wait "
            "on another device's finish)"
        )
    g.validate()
    pol = Policy.parse(policy, **overrides)
    t = trace.with_experts(g.experts)
    counts = t.counts()
    if popularity is None:
        pop = {e: float(c) for e, c in counts.items()}
    else:
        unknown = set(popularity) - set(g.experts)
        if unknown:
            raise InvalidArgumentError(
                f"simulate: popularity names unknown expert(s) {sorted(unknown)[:5]}"
            )
        pop = {e: float(popularity.get(e, 0.0)) for e in g.experts}
    lk = _links(devs, links)
    mean_p = float(np.mean(t.prompt_tokens))
    mean_o = max(1, round(float(np.mean(t.output_tokens))))
    if homes is not None:
        pl = _given(g, devs, homes, entry)
    else:
        pl = place(
            g,
            devs,
            popularity=pop,
            prompt_tokens=mean_p,
            output_tokens=mean_o,
            entry=entry,
            links=links if links is not None else lk,
            replicate="all" if pol.placement == "replicate" else "hot",
        )
    n = len(t)
    names = t.experts
    dtype = g.dtype
    if len(devs) == 1:  # one device: the native simulator runs the router in its batches
        r = simulate(g, devs[0], t, pol, popularity=dict(pop))
        return ClusterReport(r.raw, g, devs, t, pol, [r], pl, np.zeros(n, dtype=np.int64), {})
    # 1. the router at the entry device, one request at a time
    rnode = g.router_node
    routed = np.zeros(n)
    rqueue = np.zeros(n)
    free_at = 0.0
    for i in range(n):
        start = max(float(t.arrival[i]), free_at)
        rt = _pass(rnode, devs[entry], dtype, float(t.prompt_tokens[i]), 0.0) if rnode else 0.0
        rqueue[i] = start - float(t.arrival[i])
        routed[i] = free_at = start + rt
    # 2. each request to the replica of its expert with the earliest estimated finish
    ready = [0.0] * len(devs)
    dev_of = np.zeros(n, dtype=np.int64)
    send = np.zeros(n)
    back = np.zeros(n)
    network: dict[str, dict[str, float]] = {}
    label = _labels(devs)
    for i in range(n):
        e = names[int(t.expert[i])]
        p, o = int(t.prompt_tokens[i]), int(t.output_tokens[i])
        best: tuple[float, int, float] | None = None
        for k in pl.homes[e]:
            go = 0.0 if k == entry else lk[entry, k].time(TOKEN_BYTES * p)
            svc = sum(service_time(g.nodes[x], devs[k], dtype, p, o) for x in _chain(g, e))
            fin = max(ready[k], routed[i] + go) + svc
            if best is None or fin < best[0]:
                best = (fin, k, go)
        assert best is not None
        fin, k, go = best
        ready[k] = fin
        dev_of[i] = k
        send[i] = go
        if k != entry:
            back[i] = lk[k, entry].time(TOKEN_BYTES * o)
            hops: tuple[tuple[int, int, float], ...] = (
                (entry, k, float(TOKEN_BYTES * p)),
                (k, entry, float(TOKEN_BYTES * o)),
            )
            for a, b, nb in hops:
                key = f"{label[a]}->{label[b]}"
                rec = network.setdefault(key, {"bytes": 0.0, "messages": 0.0})
                rec["bytes"] += nb
                rec["messages"] += 1
    # 3. each device through the native simulator
    latency = np.zeros(n)
    ttft = np.zeros(n)
    queue = rqueue.copy()
    per: list[Report | None] = []
    instances: list[dict[str, Any]] = []
    node_loads = np.zeros(len(g.experts))
    makespan = 0.0
    cap_total = 0
    for k, d in enumerate(devs):
        idx = np.flatnonzero(dev_of == k)
        on = pl.on(k)
        router_here = rnode.nbytes if (rnode and k == entry) else 0
        cap_total += _expert_room(d, router_here)
        if len(idx) == 0 or not on:
            per.append(None)
            instances.append(_idle_instance(d))
            continue
        sub = _sub_coe(g, on)
        dk = d.with_exec_capacity(d.exec.capacity - router_here) if router_here else d
        st = Trace(
            names,
            routed[idx] + send[idx],
            t.prompt_tokens[idx],
            t.output_tokens[idx],
            t.expert[idx],
            None if t.score_ids is None else t.score_ids[idx],
            None if t.score_probs is None else t.score_probs[idx],
        )
        r = simulate(sub, dk, st, pol)
        per.append(r)
        wait = routed[idx] + send[idx] - t.arrival[idx]
        latency[idx] = wait + r.latency + back[idx]
        ttft[idx] = wait + r.ttft + back[idx]
        queue[idx] += r.queue
        inst = dict(r.instances[0])
        for j in range(1, len(r.instances)):  # several instances of one device: sum them
            for f in ("switches", "hits", "misses", "prefetches", "busy", "stall"):
                inst[f] += r.instances[j][f]
            inst["link_bytes"] = [
                int(a) + int(b)
                for a, b in zip(inst["link_bytes"], r.instances[j]["link_bytes"], strict=True)
            ]
        instances.append(inst)
        for j, x in enumerate(sub.experts):
            node_loads[g.experts.index(x)] += float(r.node_loads[j])
        makespan = max(makespan, float(np.max(t.arrival[idx] + latency[idx])))
    raw = {
        "arrival": t.arrival.copy(),
        "ttft": ttft,
        "latency": latency,
        "queue": queue,
        "instance": dev_of.astype(np.uint32),
        "instances": instances,
        "node_loads": node_loads,
        "home": np.zeros(len(g.experts)),
        "pinned": [
            [g.experts.index(e) for e in pl.on(k) if pl.resident[e]] for k in range(len(devs))
        ],
        "exec_capacity": cap_total,
        "makespan": makespan,
        "batches": sum(int(r.raw.get("batches", 0)) for r in per if r is not None),
    }
    return ClusterReport(raw, g, devs, t, pol, per, pl, dev_of, network)


def _given(g: CoE, devs: list[Device], homes: Mapping[str, Sequence[int]], entry: int) -> Placement:
    """A placement from ``{expert: [device index, ...]}`` (every expert of ``g`` placed)."""
    units = [e for e in g.experts if e not in set(g.post.values())]
    missing = [e for e in units if e not in homes]
    if missing:
        raise InvalidArgumentError(f"simulate: homes places no device for {missing[:5]}")
    out: dict[str, list[int]] = {}
    for e, hs in homes.items():
        if e not in g.nodes:
            raise InvalidArgumentError(f"simulate: homes names unknown expert {e!r}")
        ks = [int(k) for k in hs]
        if not ks or any(not 0 <= k < len(devs) for k in ks):
            raise InvalidArgumentError(
                f"simulate: homes[{e!r}] = {list(hs)} are not device indices"
            )
        out[e] = ks
    router = g.router_node.nbytes if g.router_node else 0
    free = [_expert_room(d, router if k == entry else 0) for k, d in enumerate(devs)]
    resident = {}
    for e in units:  # resident where the experts placed on a device fit its exec tier
        size = sum(g.nodes[x].nbytes for x in _chain(g, e))
        ok = all(free[k] >= size for k in out[e])
        for k in out[e]:
            free[k] -= size
        resident[e] = ok
    return Placement(devs, entry, out, resident, {e: [0.0] * len(devs) for e in units}, free)


def _labels(devs: Sequence[Device]) -> list[str]:
    """Device names, with ``#k`` added where names repeat."""
    names = [d.name for d in devs]
    return [f"{x}#{k}" if names.count(x) > 1 else x for k, x in enumerate(names)]


def _idle_instance(d: Device) -> dict[str, Any]:
    return {
        "switches": 0,
        "hits": 0,
        "misses": 0,
        "prefetches": 0,
        "link_bytes": [0] * (len(d.tiers) - 1),
        "busy": 0.0,
        "stall": 0.0,
        "occupancy_t": np.zeros(1),
        "occupancy_bytes": np.zeros(1),
    }
