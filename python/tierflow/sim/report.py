"""What :func:`tierflow.simulate` returns: per-request latencies and per-device traffic, with
summaries, a rich table, comparison, JSON export and plots."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rich.table import Table

    from .coe import CoE
    from .devices import Device
    from .policies import Policy
    from .trace import Trace

__all__ = ["Report"]


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


class Report:
    """The result of one simulation.

    Attributes (NumPy arrays, one entry per request in trace order): ``arrival``, ``ttft`` (time to
    first token), ``latency`` (end to end), ``queue`` (waiting before service), ``instance``.
    Per instance (list of dicts): ``switches``, ``hits``, ``misses``, ``prefetches``,
    ``link_bytes`` (bytes per tier link), ``busy``, ``stall``, ``occupancy_t``/``occupancy_bytes``.
    """

    def __init__(
        self, raw: dict[str, Any], g: CoE, device: Device, trace: Trace, policy: Policy
    ) -> None:
        self.raw = raw
        self.coe, self.device, self.trace, self.policy = g, device, trace, policy
        self.arrival: np.ndarray = raw["arrival"]
        self.ttft: np.ndarray = raw["ttft"]
        self.latency: np.ndarray = raw["latency"]
        self.queue: np.ndarray = raw["queue"]
        self.instance: np.ndarray = raw["instance"]
        self.instances: list[dict[str, Any]] = raw["instances"]
        self.node_loads: np.ndarray = raw["node_loads"]
        self.makespan: float = float(raw["makespan"])
        self.exec_capacity: int = int(raw["exec_capacity"])
        self.pinned: list[list[str]] = [[g.experts[i] for i in p] for p in raw["pinned"]]

    # --- derived -------------------------------------------------------------------------
    @property
    def switches(self) -> int:
        return int(sum(i["switches"] for i in self.instances))

    @property
    def misses(self) -> int:
        return int(sum(i["misses"] for i in self.instances))

    @property
    def hits(self) -> int:
        return int(sum(i["hits"] for i in self.instances))

    def link_bytes(self) -> dict[str, int]:
        """Bytes over each tier link ("hbm<->ddr"), summed over instances."""
        names = [t.name for t in self.device.tiers]
        out = {f"{names[i]}<->{names[i + 1]}": 0 for i in range(len(names) - 1)}
        for inst in self.instances:
            for i, b in enumerate(inst["link_bytes"]):
                out[f"{names[i]}<->{names[i + 1]}"] += int(b)
        return out

    def utilisation(self) -> list[float]:
        span = self.makespan - float(self.arrival.min()) if len(self.arrival) else 0.0
        return [float(i["busy"]) / span if span > 0 else 0.0 for i in self.instances]

    def summary(self) -> dict[str, Any]:
        """Headline numbers (seconds, bytes)."""
        lat, ttft = self.latency, self.ttft
        acc = self.hits + self.misses
        return {
            "policy": self.policy.name,
            "device": self.device.name,
            "requests": len(lat),
            "makespan_s": self.makespan,
            "throughput_rps": len(lat) / self.makespan if self.makespan > 0 else float("inf"),
            "latency_mean_s": float(lat.mean()),
            "latency_p50_s": _pct(lat, 50),
            "latency_p99_s": _pct(lat, 99),
            "ttft_p50_s": _pct(ttft, 50),
            "ttft_p99_s": _pct(ttft, 99),
            "queue_mean_s": float(self.queue.mean()),
            "switches": self.switches,
            "hit_rate": self.hits / acc if acc else 1.0,
            "bytes_moved": int(sum(self.link_bytes().values())),
            "utilisation": float(np.mean(self.utilisation())),
            "stall_s": float(sum(i["stall"] for i in self.instances)),
        }

    def table(self, title: str | None = None) -> Table:
        """A rich table of :meth:`summary`."""
        from rich.table import Table

        t = Table(title=title or f"{self.coe.name} on {self.device.name} ({self.policy.name})")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in self.summary().items():
            t.add_row(k, _fmt(k, v))
        return t

    def compare(self, other: Report, *, names: tuple[str, str] | None = None) -> Table:
        """A rich table of this summary beside ``other``'s, with the ratio other / this."""
        from rich.table import Table

        a, b = self.summary(), other.summary()
        na, nb = names or (a["policy"] + " @ " + a["device"], b["policy"] + " @ " + b["device"])
        t = Table(title="comparison")
        t.add_column("metric")
        t.add_column(na, justify="right")
        t.add_column(nb, justify="right")
        t.add_column("ratio", justify="right")
        for k in a:
            va, vb = a[k], b[k]
            ratio = (
                f"{vb / va:.2f}x"
                if isinstance(va, float | int) and not isinstance(va, bool) and va
                else ""
            )
            t.add_row(k, _fmt(k, va), _fmt(k, vb), ratio if not isinstance(va, str) else "")
        return t

    def to_dict(self, per_request: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "summary": self.summary(),
            "policy": self.policy.native(),
            "device": self.device.to_dict(),
            "coe": self.coe.name,
            "link_bytes": self.link_bytes(),
            "instances": [
                {
                    k: (v.tolist() if isinstance(v, np.ndarray) else v)
                    for k, v in i.items()
                    if not k.startswith("occupancy")
                }
                for i in self.instances
            ],
            "node_loads": dict(zip(self.coe.experts, self.node_loads.tolist(), strict=False)),
            "pinned": self.pinned,
        }
        if per_request:
            for k in ("arrival", "ttft", "latency", "queue"):
                d[k] = getattr(self, k).tolist()
        return d

    def to_json(
        self, path: str | os.PathLike[str] | None = None, *, per_request: bool = False
    ) -> str:
        s = json.dumps(self.to_dict(per_request), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(s)
        return s

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Save a PNG: latency and TTFT CDFs, and exec-tier occupancy over time."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for arr, lab in ((self.latency, "end-to-end"), (self.ttft, "time to first token")):
            x = np.sort(arr)
            ax1.plot(x, np.arange(1, len(x) + 1) / len(x), label=lab)
        ax1.set_xscale("log")
        ax1.set_xlabel("seconds")
        ax1.set_ylabel("fraction of requests")
        ax1.set_title("latency CDF")
        ax1.legend()
        cap = self.exec_capacity / 1e9
        for k, inst in enumerate(self.instances[:8]):
            t, b = np.asarray(inst["occupancy_t"]), np.asarray(inst["occupancy_bytes"]) / 1e9
            if len(t) > 4000:
                sel = np.linspace(0, len(t) - 1, 4000).astype(int)
                t, b = t[sel], b[sel]
            ax2.step(t, b, where="post", label=f"instance {k}")
        ax2.axhline(cap, color="k", linestyle="--", label="capacity")
        ax2.set_xlabel("seconds")
        ax2.set_ylabel(f"GB of experts in {self.device.exec.name}")
        ax2.set_title("fast-tier occupancy")
        ax2.legend(loc="lower right")
        fig.suptitle(f"{self.coe.name} on {self.device.name}, {self.policy.name}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def __repr__(self) -> str:
        s = self.summary()
        return f"Report({s['requests']} requests, p99 {s['latency_p99_s']:.3g} s, {s['switches']} switches)"


def _fmt(k: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if k.endswith("_s"):
        return f"{v * 1e3:.3f} ms" if abs(v) < 1 else f"{v:.3f} s"
    if k.startswith("bytes"):
        return f"{v / 1e9:.2f} GB"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
