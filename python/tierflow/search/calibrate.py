"""The cost model of a simulated device, calibrated on this host's in-the-loop measurements.

The simulator's pass time (``rust/core/src/sim/cost.rs``, :func:`~tierflow.search.pass_time`) is

    t(n, ctx) = max(2 * params * n / (peak_flops * compute_efficiency),
                    (bytes + kv_bytes_per_token * ctx) / (read_bandwidth * bw_efficiency))
                + layers * (kernels_per_layer * launch_overhead + 2 * collective_latency [tp > 1])

A device preset gives ``read_bandwidth`` and ``peak_flops`` from published figures
(``docs/sources.md``) and one pair of efficiencies for every weight format. What the preset cannot
know is how well each *format's kernels* use the hardware: a ``q4_0`` decode step that must unpack
and scale every block may keep a smaller share of the memory bandwidth than a plain one.
:func:`calibrate` measures that share here and hands it to the device:

1. for ``f32`` and each format ``f`` of the space, measure the reference expert
   :data:`REFERENCE` in the loop (:class:`~tierflow.search.Measurer`: the same cached
   measurement a host search makes; its depth puts the full model beyond the last-level cache,
   so the measured layers are read from RAM, as a device streams weights from HBM);
2. from the steady per-layer times (``decode_layer_s``, ``prefill_layer_s``; the embedding and
   output head are left out), each format's achieved rates

       read_bw[f] = (layer_bytes[f] + kv_layer_bytes * P) / decode_layer_s[f]     (bytes/s)
       flops[f]   = 2 * layer_params * P / prefill_layer_s[f]                     (FLOP/s)

   where ``P`` is the measurement's prompt (the decode step's context and the prefill's tokens)
   and ``layer_bytes[f]`` the bytes of one decoder layer as the store holds them;
3. the share of the plain float32 rate each format keeps, ``bw_share[f] = read_bw[f] /
   read_bw[f32]`` and ``flops_share[f] = flops[f] / flops[f32]``; a candidate in format ``f`` on
   the simulated device is predicted with the device's own ``read_bandwidth``, ``peak_flops``,
   overheads and tiers, and

       bw_efficiency      = preset bw_efficiency      * min(bw_share[f], 1)
       compute_efficiency = preset compute_efficiency * min(flops_share[f], 1)

So a format whose decode step keeps 60% of the float32 step's bandwidth here is predicted at 60% of
the bandwidth the device's plain kernels reach there (the preset's efficiency of its published
HBM bandwidth, docs/sources.md: e.g. SN40L "~85% of HBM bandwidth", a GPU's 80%).

Why relative to float32 and not to a probe of the host's peak: the host's roofline probes (a numpy
copy and matmul, :func:`tierflow.devices.host`, or tierflow's own float32 matrix-vector product)
are short, single-shot and, on a shared machine, land anywhere from a third to half of what the
model's own float32 layers reach (BENCHMARKS.md, "Calibrated devices"); a ratio of two in-the-loop
measurements made the same way cancels the machine's load and the Python overheads common to all
formats. The achieved rates are kept in the calibration for reference.

What is transferred is a ratio per format, not a time: the host's per-layer overheads are folded
into the two shares, and the device keeps the launch and collective overheads of its preset, since
a fused dataflow kernel or a CUDA launch costs what it costs there, not what a Python call costs
here. The assumption: a format's layer keeps the same share of the plain rate on the device as
here. A share above 1 (a format faster than float32 per byte or per FLOP, e.g. int8 products with
VNNI in prefill) is capped: the preset's efficiency is the device's bound.
``search(..., calibrate=False)`` (``tierflow search --no-calibrate``) predicts with the preset's
efficiencies alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InvalidArgumentError
from ..sim.devices import Device
from .measure import Measurer, _nonlayer_bytes
from .space import FORMATS, Config

__all__ = ["BASELINE", "REFERENCE", "Calibration", "FormatEfficiency", "calibrate"]

#: the reference expert measured per format: Llama-style layers of a mid-size width (h1024,
#: 8/2 heads, i2816); 128 layers so the full model (even in q4_0, ~0.8 GB) exceeds the last-level
#: cache and the measured layers are read from RAM (only ``Measurer.max_layers`` are built)
REFERENCE = Config(1024, 128, 8, 2, 2816, 4096, "f32")
#: the format whose rates the others are compared with (plain float32 products)
BASELINE = "f32"


@dataclass(frozen=True)
class FormatEfficiency:
    """One format's measured rates on this host and its shares of the baseline's."""

    format: str
    bw_share: float  # decode: read_bw / the baseline's read_bw (uncapped)
    flops_share: float  # prefill: flops / the baseline's flops (uncapped)
    read_bw: float  # bytes/s one steady decoder layer of a batch-1 decode step reads
    flops: float  # FLOP/s of one steady decoder layer of the prefill
    decode_layer_s: float
    prefill_layer_s: float
    layer_bytes: float  # stored bytes of one decoder layer in this format
    layer_params: float


@dataclass(frozen=True)
class Calibration:
    """Per-format shares of the float32 rates measured on this host, applied to simulated
    devices (see the module docs)."""

    prompt_tokens: int
    reference: dict[str, Any]  # the reference expert's shape (format aside)
    formats: dict[str, FormatEfficiency]

    def apply(self, d: Device, fmt: str) -> Device:
        """``d`` with its efficiencies scaled by ``fmt``'s shares (each capped at 1)."""
        e = self.formats.get(fmt)
        if e is None:
            raise InvalidArgumentError(f"calibration: format {fmt!r} was not calibrated")
        return replace(
            d,
            bw_efficiency=d.bw_efficiency * min(e.bw_share, 1.0),
            compute_efficiency=d.compute_efficiency * min(e.flops_share, 1.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "device efficiency = preset efficiency x min(1, the format's share of the "
            "f32 rate, both measured in the loop on the reference expert on this host) "
            "(tierflow.search.calibrate)",
            "baseline": BASELINE,
            "prompt_tokens": self.prompt_tokens,
            "reference": self.reference,
            "formats": {f: asdict(e) for f, e in self.formats.items()},
            "summary": self.summary(),
        }

    def summary(self) -> str:
        """One line: the shares measured per format."""
        rows = [
            f"{f} {e.bw_share:.2f} / {e.flops_share:.2f}"
            f" ({e.read_bw / 1e9:.1f} GB/s, {e.flops / 1e9:.0f} GFLOP/s)"
            for f, e in self.formats.items()
        ]
        return (
            f"calibrated on this host: share of the {BASELINE} decode bandwidth / prefill FLOP/s "
            f"(reference expert h{self.reference['hidden']} i{self.reference['intermediate']}, "
            f"{self.prompt_tokens} tokens): " + ", ".join(rows)
        )


def calibrate(
    formats: list[str] | tuple[str, ...] = FORMATS,
    measurer: Measurer | None = None,
    *,
    reference: Config | None = None,
) -> Calibration:
    """Measure (or take from the measurement cache) the reference expert in :data:`BASELINE`
    and each of ``formats`` on this host and derive each format's shares (see the module docs).

    Args:
        formats: weight formats to calibrate.
        measurer: the in-the-loop measurer (default: a new one on the default cache).
        reference: the expert measured (default :data:`REFERENCE`; its ``format`` is replaced by
            each format).
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InvalidArgumentError(f"calibrate: formats must be among {FORMATS}, got {formats!r}")
    meas = measurer if measurer is not None else Measurer()
    ref = reference if reference is not None else REFERENCE
    p = meas.prompt_tokens
    rates: dict[str, tuple[float, float, Any, float, float]] = {}
    for f in dict.fromkeys([BASELINE, *formats]):
        c = replace(ref, format=f, batch=1, experts=1, fast_tier=0)
        m = meas.measure(c)
        layer_bytes = (m.nbytes - _nonlayer_bytes(c)) / c.layers
        layer_params = (c.params - (2 * c.vocab * c.hidden + c.hidden)) / c.layers
        kv_layer = c.kv_bytes_per_token / c.layers
        bw = (layer_bytes + kv_layer * p) / max(m.decode_layer_s, 1e-12)
        fl = 2 * layer_params * p / max(m.prefill_layer_s, 1e-12)
        rates[f] = (bw, fl, m, layer_bytes, layer_params)
    bw0, fl0 = rates[BASELINE][:2]
    out = {
        f: FormatEfficiency(
            format=f,
            bw_share=bw / bw0,
            flops_share=fl / fl0,
            read_bw=bw,
            flops=fl,
            decode_layer_s=m.decode_layer_s,
            prefill_layer_s=m.prefill_layer_s,
            layer_bytes=lb,
            layer_params=lp,
        )
        for f, (bw, fl, m, lb, lp) in rates.items()
    }
    shape = {k: v for k, v in asdict(ref).items() if k not in ("format", "experts", "fast_tier")}
    return Calibration(p, shape, out)
