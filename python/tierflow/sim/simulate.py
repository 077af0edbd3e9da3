"""``tierflow.simulate``: run a trace through a CoE on a device with a policy (native, GIL released).

Example:
    >>> import tierflow as tf
    >>> g = tf.CoE("demo")
    >>> for i in range(4):
    ...     _ = g.expert(f"e{i}", params=1e9, dtype="bf16")
    >>> d = tf.Device("toy", [tf.devices.MemoryTier("hbm", 5 * 10**9, 10e9), tf.devices.MemoryTier("ddr", 10**11)], exec_tier="hbm",
    ...               read_bandwidth=1e12, peak_flops={"bfloat16": 1e14})
    >>> t = tf.Trace.poisson(g.experts, rate=5, n=200, seed=1)
    >>> r = tf.simulate(g, d, t, policy="lru")
    >>> r.summary()["requests"]
    200
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _tierflow
from ..errors import InvalidArgumentError
from .coe import CoE
from .devices import Device
from .policies import Policy
from .report import Report
from .trace import Trace

__all__ = ["simulate"]


def simulate(
    g: CoE,
    device: Device | Sequence[Device] | None = None,
    trace: Trace | None = None,
    policy: str | Policy | None = "lru",
    *,
    devices: Sequence[Device] | None = None,
    links: Any = None,
    entry: int = 0,
    homes: dict[str, list[int]] | None = None,
    popularity: dict[str, float] | None = None,
    **overrides: Any,
) -> Report:
    """Simulate ``trace`` on ``g`` placed on ``device`` under ``policy``.

    Args:
        g: the graph (validated first).
        device: the device (``policy.instances`` copies of it share the traffic).
        devices: several devices, possibly different, joined by network links (or a list as
            ``device``): experts are placed across them and the result is a
            :class:`~tierflow.sim.placement.ClusterReport` (see :mod:`tierflow.sim.placement`).
        links: with ``devices``, a :class:`~tierflow.sim.placement.Link` for every pair or
            ``{(i, j): Link}`` (default: each device kind's interconnect preset).
        entry: with ``devices``, the index of the device where requests arrive (the router).
        homes: with ``devices``, a given placement ``{expert: [device index, ...]}``.
        trace: requests; its expert names must all be nodes of ``g``.
        policy: a :class:`Policy` or a name such as ``"lru"``, ``"static+belady"``, ``"prefetch"``.
        popularity: per-expert weights for placement (default: counted from the trace).
        overrides: fields of :class:`Policy` (``batch_size=8``, ``instances=4``, ...).

    Returns:
        A :class:`Report`.

    Raises:
        InvalidArgumentError: bad policy, empty trace, unknown expert names.
        ScheduleError: the CoE does not fit the device (says how much is missing).
    """
    if not isinstance(g, CoE):
        raise InvalidArgumentError(f"simulate: g must be a tierflow.CoE, got {type(g).__name__}")
    if devices is not None and device is not None:
        raise InvalidArgumentError("simulate: give device or devices, not both")
    if devices is None and isinstance(device, (list, tuple)):
        devices = device
    if devices is not None:
        from .placement import simulate_many

        if trace is None:
            raise InvalidArgumentError("simulate: no trace")
        return simulate_many(
            g,
            list(devices),
            trace,
            policy,
            popularity=popularity,
            links=links,
            entry=entry,
            homes=homes,
            one=simulate,
            **overrides,
        )
    if not isinstance(device, Device):
        raise InvalidArgumentError(
            f"simulate: device must be a tierflow.Device, got {type(device).__name__}"
        )
    if not isinstance(trace, Trace):
        raise InvalidArgumentError(
            f"simulate: trace must be a tierflow.Trace, got {type(trace).__name__}"
        )
    pol = Policy.parse(policy, **overrides)
    model = g.native()
    if len(trace) == 0:
        raise InvalidArgumentError("simulate: the trace is empty")
    t = trace if trace.experts == model["names"] else trace.with_experts(model["names"])
    pop = None
    if popularity is not None:
        unknown = set(popularity) - set(model["names"])
        if unknown:
            raise InvalidArgumentError(
                f"simulate: popularity names unknown expert(s) {sorted(unknown)[:5]}"
            )
        pop = [float(popularity.get(n, 0.0)) for n in model["names"]]
    raw = _tierflow.simulate(
        device.native(g.dtype),
        model,
        t.arrival,
        t.prompt_tokens,
        t.output_tokens,
        t.expert,
        t.alt(),
        t.user,
        pol.native(pop),
    )
    return Report(raw, g, device, t, pol)
