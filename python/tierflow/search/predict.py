"""A candidate's metrics on a device: measured on this host, or predicted by the simulator.

- **this host** (``"host"``): decode and prefill latency are the in-the-loop measurement
  (:mod:`.measure`). With a trace, the request latencies (p50/p99/mean) come from
  :func:`tierflow.simulate` on this host modelled as a RAM tier of ``fast_tier`` bytes over the
  disk (bandwidth from :func:`tierflow.devices.host`'s probe), with the cost model's compute rate
  and read bandwidth *calibrated on the candidate's measurement*: ``peak = 2 * params * P /
  t_prefill`` and ``read_bw = (bytes + kv_bytes_per_token * P) / t_decode``, so the model
  reproduces the measured prefill pass exactly and the measured decode step whenever it is
  memory bound (as :func:`tierflow.serving.calibrate` fits the demo's host);
- **a simulated device** (SN40L, DGX, any :class:`~tierflow.Device`): the simulator's cost model
  (``rust/core/src/sim/cost.rs``, mirrored by :func:`pass_time`) with the device's constants,
  for the candidate's parameters, stored bytes per format and layers; with a trace, the whole
  trace through :func:`tierflow.simulate` (the device's exec tier holding ``fast_tier`` bytes of
  experts, expert switches over its links, the candidate's batch size). By default
  (``search(..., calibrate=True)``) the device's ``bw_efficiency`` and ``compute_efficiency``
  are those the candidate's weight format reaches on this host, measured in the loop on a
  reference expert (:mod:`.calibrate`), applied to the device's published bandwidth and FLOP/s;
  ``calibrate=False`` keeps the preset's.

A trace's requests name its own experts; for a candidate with ``E`` experts its expert ``i``
becomes ``e{i mod E}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ScheduleError
from ..sim.coe import CoE
from ..sim.devices import Device
from ..sim.policies import Policy
from ..sim.trace import Trace
from .measure import Measurement
from .space import Config

__all__ = ["DEVICES", "Infeasible", "pass_time", "predict", "resolve_devices"]

#: device names :func:`resolve_devices` knows (plus ``sn40l:SOCKETS`` and device JSON files)
DEVICES = ("host", "sn40l", "dgx_h100", "dgx_a100")


class Infeasible(Exception):
    """The candidate cannot run on the device (an expert larger than the fast tier)."""


@dataclass(frozen=True)
class Target:
    """A device the search evaluates on: ``host`` (measured) or a simulated :class:`Device`."""

    name: str
    device: Device | None  # None: this host, measured in the loop

    @property
    def measured(self) -> bool:
        return self.device is None


def _one(spec: Any) -> Target:
    from ..sim import devices

    if isinstance(spec, Device):
        return Target(spec.name, spec)
    if not isinstance(spec, str) or not spec:
        raise InvalidArgumentError(f"search: a device is a name or a tierflow.Device, got {spec!r}")
    s = spec.strip().lower().replace("-", "_")
    if s == "host":
        return Target("host", None)
    presets = {"sn40l": devices.sn40l, "dgx_h100": devices.dgx_h100, "dgx_a100": devices.dgx_a100}
    if s in presets:
        d = presets[s]()
        return Target(s, d)
    if s.startswith("sn40l:"):
        try:
            n = int(s.split(":", 1)[1])
        except ValueError:
            raise InvalidArgumentError(f"search: bad device {spec!r} (sn40l:SOCKETS)") from None
        return Target(s, devices.sn40l(n))
    if spec.endswith(".json"):
        d = Device.from_json(spec)
        return Target(d.name, d)
    raise InvalidArgumentError(
        f"search: unknown device {spec!r} (known: {', '.join(DEVICES)}, sn40l:SOCKETS, "
        "a tierflow.Device or a device JSON file)"
    )


def resolve_devices(device: Any) -> list[Target]:
    """One or several devices (a list, or names joined by commas)."""
    if isinstance(device, str) and "," in device:
        device = [d for d in device.split(",") if d.strip()]
    specs = list(device) if isinstance(device, (list, tuple)) else [device]
    if not specs:
        raise InvalidArgumentError("search: no device given")
    out = [_one(s) for s in specs]
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"search: a device is named twice in {names}")
    return out


def pass_time(c: Config, d: Device, n: float, ctx: float = 0.0) -> float:
    """Seconds of one pass of ``n`` tokens with ``ctx`` of context on ``d`` (the simulator's
    formula, ``rust/core/src/sim/cost.rs``)."""
    bw = d.read_bandwidth * d.bw_efficiency
    peak = d.flops(c.dtype) * d.compute_efficiency
    coll = 2 * d.collective_latency if d.tp > 1 else 0.0
    fixed = c.layers * (d.kernels_per_layer * d.launch_overhead + coll)
    return max(2 * c.params * n / peak, (c.nbytes + c.kv_bytes_per_token * ctx) / bw) + fixed


def host_model(c: Config, m: Measurement, fast_tier: int) -> Device:
    """This host as the simulator sees it, calibrated on the measurement of ``c``."""
    from ..serving.host import host_device

    peak = 2 * c.params * m.prompt_tokens / max(m.prefill_s, 1e-12)
    bw = (m.nbytes + c.kv_bytes_per_token * m.prompt_tokens) / max(m.decode_s, 1e-12)
    return host_device(
        fast_tier, {"read_bandwidth": bw, "peak_flops": peak, "launch_overhead": 0.0}
    )


def _trace_for(trace: Trace, experts: int) -> Trace:
    names = [f"e{i}" for i in range(experts)]
    ids = None if trace.score_ids is None else (trace.score_ids % experts).astype(np.uint32)
    return Trace(
        names,
        trace.arrival.copy(),
        trace.prompt_tokens.copy(),
        trace.output_tokens.copy(),
        (trace.expert % experts).astype(np.uint32),
        ids,
        None if trace.score_probs is None else trace.score_probs.copy(),
        None if trace.user is None else trace.user.copy(),
    )


def _simulate(c: Config, d: Device, trace: Trace, policy: str | Policy | None) -> dict[str, float]:
    from ..sim.simulate import simulate

    g = CoE("candidate")
    for i in range(c.experts):
        g.expert(
            f"e{i}",
            params=float(c.params),
            dtype=c.dtype,
            nbytes=int(c.nbytes),
            layers=c.layers,
            kv_bytes_per_token=c.kv_bytes_per_token,
        )
    pol = Policy.parse(policy or "lru", batch_size=c.batch)
    try:
        r = simulate(g, d, _trace_for(trace, c.experts), pol)
    except ScheduleError as e:
        raise Infeasible(str(e)) from None
    lat = np.asarray(r.latency)
    return {
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "mean": float(lat.mean()),
    }


def predict(
    c: Config,
    target: Target,
    *,
    measurement: Measurement | None = None,
    trace: Trace | None = None,
    policy: str | Policy | None = None,
    prompt_tokens: int = 32,
) -> dict[str, float]:
    """Metrics of ``c`` on ``target`` (seconds, bytes): ``prefill``, ``decode``, and with a
    trace ``p50``, ``p99``, ``mean``. ``measurement`` is required for this host.

    Raises:
        Infeasible: one expert is larger than the fast tier.
    """
    total = c.experts * c.nbytes
    if c.fast_tier and c.nbytes > c.fast_tier:
        raise Infeasible(
            f"one expert ({c.nbytes} bytes) is larger than the fast tier ({c.fast_tier} bytes)"
        )
    fast = c.fast_tier or total
    out: dict[str, float] = {}
    if target.device is None:
        if measurement is None:
            raise InvalidArgumentError("predict: this host needs an in-the-loop measurement")
        out["prefill"], out["decode"] = measurement.prefill_s, measurement.decode_s
        if trace is not None:
            out.update(_simulate(c, host_model(c, measurement, fast), trace, policy))
        return out
    d = target.device
    out["prefill"] = pass_time(c, d, prompt_tokens)
    out["decode"] = pass_time(c, d, c.batch, prompt_tokens)
    if trace is not None:
        sim_d = d.with_exec_capacity(fast + d.reserved) if c.fast_tier else d
        if not c.fast_tier and sim_d.exec.capacity - sim_d.reserved < total:
            sim_d = d.with_exec_capacity(total + d.reserved)
        out.update(_simulate(c, sim_d, trace, policy))
    return out
