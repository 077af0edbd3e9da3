"""Devices: ordered memory tiers plus the constants of the latency model.

A :class:`Device` is a list of :class:`MemoryTier` (fastest first; ``bandwidth`` is the copy bandwidth
to the next, slower tier), the tier experts execute from (``exec_tier``), the bandwidth at which
compute streams weights from it, compute peaks per dtype, and the overheads of the latency model
(see ``rust/core/src/sim/cost.rs``)::

    t(n tokens, c context) = max(2 * params * n / (peak * compute_efficiency),
                                 (weight_bytes + kv_bytes_per_token * c) / (read_bandwidth * bw_efficiency))
                             + layers * (kernels_per_layer * launch_overhead + 2 * collective_latency [tp > 1])

Presets: :func:`sn40l`, :func:`dgx_a100`, :func:`dgx_h100` (every constant cited to
``docs/sources.md`` or a datasheet), and :func:`host`, measured on this machine once and cached.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._deprecated import renamed
from ..errors import InvalidArgumentError, TierflowError

__all__ = [
    "Device",
    "MemoryTier",
    "RayMissingError",
    "dgx_a100",
    "dgx_h100",
    "host",
    "host_cache_path",
    "import_ray",
    "ray_cluster",
    "sn40l",
]

GiB = 1 << 30
TiB = 1 << 40


def _num(
    owner: str, name: str, v: Any, *, positive: bool = True, allow_zero: bool = False
) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidArgumentError(f"{owner}: {name} must be a number, got {v!r}")
    x = float(v)
    if not math.isfinite(x) or x < 0 or (positive and not allow_zero and x == 0):
        want = ">= 0" if allow_zero or not positive else "> 0"
        raise InvalidArgumentError(f"{owner}: {name} must be {want}, got {v!r}")
    return x


@dataclass(frozen=True)
class MemoryTier:
    """One memory level of a device (SRAM, HBM, DDR, disk): ``capacity`` bytes, ``bandwidth`` bytes/s to the next (slower) tier and
    ``latency`` seconds of fixed cost per copy over that link."""

    name: str
    capacity: int
    bandwidth: float = 0.0
    latency: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"tier: name must be a non-empty string, got {self.name!r}")
        cap = _num(f"tier {self.name!r}", "capacity", self.capacity)
        object.__setattr__(self, "capacity", int(cap))
        _num(f"tier {self.name!r}", "bandwidth", self.bandwidth, allow_zero=True)
        _num(f"tier {self.name!r}", "latency", self.latency, allow_zero=True)


@dataclass
class Device:
    """A device (or a node of ``tp`` chips in tensor parallel) as the simulator sees it.

    Args:
        name: label.
        tiers: fastest first. Every tier but the last needs ``bandwidth > 0``.
        exec_tier: name or index of the tier experts execute from.
        read_bandwidth: bytes/s at which compute streams weights from the exec tier (all chips).
        peak_flops: FLOP/s per dtype name (all chips), e.g. ``{"bfloat16": 5.1e15}``.
        bw_efficiency, compute_efficiency: achieved fractions of the peaks, in (0, 1].
        launch_overhead: seconds per kernel launch; kernels_per_layer: launches per layer per pass.
        collective_latency: seconds per tensor-parallel collective (2 per layer when tp > 1).
        tp: chips in tensor parallel.
        reserved: bytes of the exec tier kept for KV cache and activations (the router's weights
            are reserved on top, by the simulator).
        sources: free text, where the constants come from.

    Example:
        >>> d = Device("toy", [MemoryTier("hbm", 80 * 2**30, 32e9), MemoryTier("ddr", 2**40)], exec_tier="hbm",
        ...            read_bandwidth=2e12, peak_flops={"bfloat16": 3e14})
        >>> d.experts_fit(13.5e9)
        6
    """

    name: str
    tiers: list[MemoryTier]
    exec_tier: int | str = 0
    read_bandwidth: float = 1e12
    peak_flops: dict[str, float] = field(default_factory=lambda: {"bfloat16": 1e14})
    bw_efficiency: float = 1.0
    compute_efficiency: float = 1.0
    launch_overhead: float = 0.0
    kernels_per_layer: float = 0.0
    collective_latency: float = 0.0
    tp: int = 1
    reserved: int = 0
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = f"device {self.name!r}"
        if not isinstance(self.tiers, list) or not self.tiers:
            raise InvalidArgumentError(f"{own}: tiers must be a non-empty list of MemoryTier")
        self.tiers = [t if isinstance(t, MemoryTier) else MemoryTier(**t) for t in self.tiers]
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"{own}: duplicate tier names in {names}")
        for i, t in enumerate(self.tiers[:-1]):
            if t.bandwidth <= 0:
                raise InvalidArgumentError(
                    f"{own}: tiers[{i}].bandwidth ({t.name!r} -> {self.tiers[i + 1].name!r}) must be > 0, got {t.bandwidth!r}"
                )
        if isinstance(self.exec_tier, str):
            if self.exec_tier not in names:
                raise InvalidArgumentError(
                    f"{own}: exec_tier {self.exec_tier!r} is not one of {names}"
                )
            self.exec_tier = names.index(self.exec_tier)
        if not isinstance(self.exec_tier, int) or not 0 <= self.exec_tier < len(self.tiers):
            raise InvalidArgumentError(f"{own}: exec_tier {self.exec_tier!r} is not a tier index")
        _num(own, "read_bandwidth", self.read_bandwidth)
        if not isinstance(self.peak_flops, dict) or not self.peak_flops:
            raise InvalidArgumentError(f"{own}: peak_flops must map dtype names to FLOP/s")
        for k, v in self.peak_flops.items():
            _num(own, f"peak_flops[{k!r}]", v)
        for f in ("bw_efficiency", "compute_efficiency"):
            v = _num(own, f, getattr(self, f))
            if v > 1:
                raise InvalidArgumentError(f"{own}: {f} must be in (0, 1], got {v}")
        for f in ("launch_overhead", "kernels_per_layer", "collective_latency"):
            _num(own, f, getattr(self, f), allow_zero=True)
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise InvalidArgumentError(f"{own}: tp must be an integer >= 1, got {self.tp!r}")
        self.reserved = int(_num(own, "reserved", self.reserved, allow_zero=True))
        if self.reserved >= self.exec.capacity:
            raise InvalidArgumentError(
                f"{own}: reserved ({self.reserved} bytes) leaves no room in {self.exec.name!r}"
            )

    @property
    def exec(self) -> MemoryTier:
        """The tier experts execute from."""
        return self.tiers[int(self.exec_tier)]

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` (falls back to the bfloat16, then the largest, entry)."""
        from .coe import canonical_dtype

        d = canonical_dtype(dtype)
        if d in self.peak_flops:
            return self.peak_flops[d]
        return self.peak_flops.get("bfloat16", max(self.peak_flops.values()))

    def experts_fit(self, nbytes: float, *, router_bytes: float = 0) -> int:
        """How many experts of ``nbytes`` fit in the exec tier next to the reserve and router."""
        return int((self.exec.capacity - self.reserved - router_bytes) // nbytes)

    def copy_time(self, nbytes: float, *, src: int | str | None = None) -> float:
        """Seconds to copy ``nbytes`` from tier ``src`` (default: the one below exec) to exec."""
        names = [t.name for t in self.tiers]
        x = int(self.exec_tier)
        s = x + 1 if src is None else (names.index(src) if isinstance(src, str) else int(src))
        links = self.tiers[x:s]
        if not links:
            return 0.0
        return sum(t.latency for t in links) + nbytes / min(t.bandwidth for t in links)

    def with_exec_capacity(self, capacity: int) -> Device:
        """A copy whose exec tier holds ``capacity`` bytes (used by ``tierflow plan``)."""
        tiers = list(self.tiers)
        t = tiers[int(self.exec_tier)]
        tiers[int(self.exec_tier)] = MemoryTier(t.name, int(capacity), t.bandwidth, t.latency)
        d = Device.from_dict(self.to_dict())
        d.tiers = tiers
        return d

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiers"] = [asdict(t) for t in self.tiers]
        d["exec_tier"] = self.exec.name
        return d

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text of the device; also written to ``path`` when given."""
        s = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(s)
        return s

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"device: expected a JSON object, got {type(d).__name__}")
        if "tiers" not in d or "name" not in d:
            missing = [k for k in ("name", "tiers") if k not in d]
            raise InvalidArgumentError(f"device: missing field(s) {missing}")
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise InvalidArgumentError(f"device: unknown field(s) {sorted(extra)}")
        tiers = d["tiers"]
        if not isinstance(tiers, list):
            raise InvalidArgumentError("device: field 'tiers' must be a list")
        out = []
        for i, t in enumerate(tiers):
            if not isinstance(t, dict) or "name" not in t or "capacity" not in t:
                raise InvalidArgumentError(
                    f"device: tiers[{i}] needs at least 'name' and 'capacity'"
                )
            try:
                out.append(MemoryTier(**t))
            except TypeError as e:
                raise InvalidArgumentError(f"device: tiers[{i}]: {e}") from None
        return cls(**{**d, "tiers": out})

    @classmethod
    def from_json(cls, src: str | os.PathLike[str]) -> Device:
        """Load from a JSON file path or JSON text."""
        text = str(src)
        if not text.lstrip().startswith("{"):
            p = Path(src)
            if not p.exists():
                from ..errors import MissingFileError

                raise MissingFileError(2, "no such device file", str(p))
            text = p.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"device: malformed JSON ({e})") from None
        return cls.from_dict(d)

    def native(self, dtype: str = "bfloat16") -> dict[str, Any]:
        """The dict the native simulator takes."""
        return {
            "name": self.name,
            "tiers": [
                {
                    "name": t.name,
                    "capacity": t.capacity,
                    "bandwidth": float(t.bandwidth),
                    "latency": float(t.latency),
                }
                for t in self.tiers
            ],
            "exec_tier": int(self.exec_tier),
            "read_bandwidth": float(self.read_bandwidth),
            "bw_efficiency": float(self.bw_efficiency),
            "peak_flops": float(self.flops(dtype)),
            "compute_efficiency": float(self.compute_efficiency),
            "launch_overhead": float(self.launch_overhead),
            "kernels_per_layer": float(self.kernels_per_layer),
            "collective_latency": float(self.collective_latency),
            "tp": int(self.tp),
            "reserved": int(self.reserved),
        }


# --- calibration shared by the accelerator presets ----------------------------------------
# These overheads are NOT in the paper; they are the few calibrated constants of the latency
# model, chosen once (same for every row of Table V) and documented in tierflow/paper.py:
#  - LAUNCH: seconds per kernel launch, ~5 us for a CUDA launch on the host-driven path
#    (NVIDIA CUDA C++ Best Practices Guide: launch overhead of a few microseconds); used for both.
#  - GPU_KERNELS_PER_LAYER: an unfused Llama decoder layer in NeMo/PyTorch launches ~12 kernels
#    (2 norms, q/k/v/o, rotary, attention, gate/up/act/down); SN40L runs a decoder layer as one
#    fused dataflow kernel (docs/sources.md "The CoE experiment", Fusion: streaming dataflow fuses whole decoder blocks).
#  - GPU_ALLREDUCE: ~20 us per small NCCL all-reduce across 8 GPUs over NVLink (latency bound
#    at batch 1; 2 per layer with tensor parallel 8); SN40L peer-to-peer collectives 2.5 us.
LAUNCH = 5e-6
GPU_KERNELS_PER_LAYER = 12.0
GPU_ALLREDUCE = 20e-6
SN40L_COLLECTIVE = 2.5e-6
# Achieved fractions of peak for batch-1 decode and for prefill (see paper.py, "Calibration").
GPU_BW_EFFICIENCY = 0.8
GPU_COMPUTE_EFFICIENCY = 0.7
SN40L_COMPUTE_EFFICIENCY = 0.2
# KV cache kept in HBM per node: Llama2-7B 0.5 MiB/token x 8 sequences x 2048 tokens = 8 GiB.
KV_RESERVE = 8 * GiB


def sn40l(sockets: int = 8) -> Device:
    """SambaNova SN40L, ``sockets`` sockets in tensor parallel (8 = one SN40L Node).

    Constants: docs/sources.md "SN40L, one socket" (paper Table II, Sec. IV).
    """
    if isinstance(sockets, bool) or not isinstance(sockets, int) or sockets < 1:
        raise InvalidArgumentError(f"sn40l: sockets must be an integer >= 1, got {sockets!r}")
    s = sockets
    return Device(
        name=f"sn40l({s})",
        tiers=[
            # sources.md: 520 MiB on-chip SRAM per socket; streamed from HBM at HBM bandwidth
            MemoryTier("sram", 520 * (1 << 20) * s, 1.8e12 * s, 0.0),
            # sources.md: 64 GiB HBM per socket; DDR->HBM "over 1 TB/s in a single SN40L Node"
            MemoryTier("hbm", 64 * GiB * s, 1.0e12 * s / 8, 0.0),
            # sources.md: up to 1.5 TiB DDR per socket
            MemoryTier("ddr", int(1.5 * TiB) * s),
        ],
        exec_tier="hbm",
        read_bandwidth=1.8e12 * s,  # sources.md: HBM 1.8 TB/s per socket (Table II)
        peak_flops={"bfloat16": 638e12 * s},  # sources.md: 638 BF16 TFLOP/s per socket
        bw_efficiency=0.85,  # sources.md: "~85% of HBM bandwidth"
        compute_efficiency=SN40L_COMPUTE_EFFICIENCY,  # calibrated, see paper.py
        launch_overhead=LAUNCH,
        kernels_per_layer=1.0,  # fused decoder (sources.md, "The CoE experiment", Fusion)
        collective_latency=SN40L_COLLECTIVE,
        tp=s,
        reserved=KV_RESERVE * s // 8,
        sources={
            "all": 'docs/sources.md "SN40L, one socket" (Prabhakar et al., arXiv 2405.07518, Table II, Sec. IV)'
        },
    )


def _dgx(name: str, hbm_bw: float, pcie: float, bf16: float) -> Device:
    return Device(
        name=name,
        tiers=[
            # sources.md "DGX baselines": 8 x 80 GB HBM = 640 GB per node (datasheets); host-to-GPU copy bandwidth
            MemoryTier("hbm", 8 * 80 * 10**9, pcie, 0.0),
            # NVIDIA DGX A100 (640 GB) and DGX H100 datasheets: 2 TB system memory (not in docs/sources.md)
            MemoryTier("host", 2 * TiB),
        ],
        exec_tier="hbm",
        read_bandwidth=8 * hbm_bw,
        peak_flops={"bfloat16": 8 * bf16},
        bw_efficiency=GPU_BW_EFFICIENCY,
        compute_efficiency=GPU_COMPUTE_EFFICIENCY,
        launch_overhead=LAUNCH,
        kernels_per_layer=GPU_KERNELS_PER_LAYER,
        collective_latency=GPU_ALLREDUCE,
        tp=8,
        reserved=KV_RESERVE,
        sources={"all": 'docs/sources.md "DGX baselines as the paper used them"'},
    )


def dgx_a100() -> Device:
    """NVIDIA DGX A100 (8 x A100 80GB). docs/sources.md "DGX baselines as the paper used them": PCIe Gen4 32 GB/s host-to-GPU, ~2.0 TB/s HBM
    and 312 BF16 TFLOP/s per GPU."""
    return _dgx("dgx_a100", 2.0e12, 32e9, 312e12)


def dgx_h100() -> Device:
    """NVIDIA DGX H100 (8 x H100 SXM). docs/sources.md "DGX baselines as the paper used them": PCIe Gen5 64 GB/s host-to-GPU, 3.35 TB/s HBM and
    989 BF16 TFLOP/s per GPU."""
    return _dgx("dgx_h100", 3.35e12, 64e9, 989e12)


# --- this machine ---------------------------------------------------------------------------
def host_cache_path() -> Path:
    """Where :func:`host` caches its probe: ``$TIERFLOW_CACHE_DIR`` or ``~/.cache/tierflow``."""
    base = os.environ.get("TIERFLOW_CACHE_DIR")
    if base:
        return Path(base) / "host.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "tierflow" / "host.json"


def _cache_sizes() -> list[tuple[str, int]]:
    """Data/unified cache levels of cpu0 from /sys (name, bytes), smallest first."""
    out: dict[int, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            typ = (idx / "type").read_text().strip()
            if typ == "Instruction":
                continue
            lvl = int((idx / "level").read_text())
            size = (idx / "size").read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            n = int(size.rstrip("KMG")) * mult
            out[lvl] = max(out.get(lvl, 0), n)
        except (OSError, ValueError):
            continue
    return [(f"l{lvl}", n) for lvl, n in sorted(out.items())]


def _ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _probe_ram_bw(nbytes: int = 64 << 20, reps: int = 5) -> float:
    """Bytes/s moved by a numpy copy (read + write) of a buffer far larger than the caches."""
    import numpy as np

    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def _probe_disk_bw(folder: Path, nbytes: int = 64 << 20) -> float:
    """Bytes/s reading a temp file after asking the kernel to drop it from the page cache."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="probe-")
    try:
        block = os.urandom(1 << 20)
        with os.fdopen(fd, "wb") as f:
            for _ in range(nbytes >> 20):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        with open(name, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            buf = bytearray(4 << 20)
            t = time.perf_counter()
            while f.readinto(buf):
                pass
            dt = time.perf_counter() - t
        return nbytes / max(dt, 1e-9)
    finally:
        os.unlink(name)


def _probe_flops(n: int = 512, reps: int = 5) -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a  # warm up
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _probe_launch(reps: int = 2000) -> float:
    """Seconds per small numpy call: the per-kernel overhead of an unfused host pass."""
    import numpy as np

    x = np.ones(16, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(reps):
        np.add(x, 0.0, out=x)
    return (time.perf_counter() - t) / reps


def _measure_host() -> Device:
    cache = host_cache_path().parent
    caches = _cache_sizes()
    ram = _ram_bytes()
    ram_bw = _probe_ram_bw()
    disk_bw = _probe_disk_bw(cache)
    disk_free = shutil.disk_usage(cache).free
    flops = _probe_flops()
    launch = _probe_launch()
    tiers = [MemoryTier(name, size, ram_bw, 0.0) for name, size in caches]
    tiers += [MemoryTier("ram", ram, disk_bw, 1e-4), MemoryTier("disk", max(disk_free, 1))]
    return Device(
        name="host",
        tiers=tiers,
        exec_tier="ram",
        read_bandwidth=ram_bw,
        peak_flops={"float32": flops, "bfloat16": flops},
        bw_efficiency=1.0,
        compute_efficiency=1.0,
        launch_overhead=launch,
        kernels_per_layer=GPU_KERNELS_PER_LAYER,
        tp=1,
        reserved=ram // 4,
        sources={
            "caches": "/sys/devices/system/cpu/cpu0/cache",
            "ram": "/proc/meminfo MemTotal; bandwidth: numpy copy probe (read + write bytes)",
            "disk": "temp file read after POSIX_FADV_DONTNEED, in the cache folder",
            "compute": "float32 numpy matmul 512^3",
            "reserved": "a quarter of RAM left to the OS and the process",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def host(*, refresh: bool = False) -> Device:
    """This machine, measured by short probes (about a second) once and cached in
    :func:`host_cache_path`. ``refresh=True`` measures again."""
    path = host_cache_path()
    if not refresh and path.exists():
        try:
            return Device.from_json(path)
        except (InvalidArgumentError, OSError):
            pass  # a stale or corrupt cache: measure again
    d = _measure_host()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(d.to_json())
    os.replace(tmp, path)
    return d


__getattr__ = renamed(
    __name__, {"Tier": ("tierflow.sim.devices.MemoryTier", lambda: MemoryTier)}
)  # the old name of MemoryTier, kept for one release


# --- the nodes of a Ray cluster ---------------------------------------------------------------
RAY_NODE_PREFIX = "ray:"
_RAY_PROBES: dict[str, dict[str, Any]] = {}


class RayMissingError(TierflowError, ImportError):
    """Ray is not installed."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayMissingError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayMissingError(
            "tierflow's cluster runtime needs Ray: pip install 'tierflow[ray]'"
        ) from None
    return ray


def _ray_probe() -> dict[str, Any]:
    """Runs on a node: the host probe (cached on that node) and the node's id."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "device": host().to_dict()}


def ray_cluster(address: str | None = None, *, refresh: bool = False) -> list[Device]:
    """One :class:`Device` per alive node of the Ray cluster at ``address`` (connects if Ray is
    not initialised; None: the running cluster or a new local one). Each is :func:`host` run as
    a Ray task pinned to that node, named ``ray:<node id>``, with its RAM tier set to the memory
    Ray gives the node and the probe's file tier. Probes are cached per node id
    (``refresh=True`` measures again). Needs ``pip install 'tierflow[ray]'``."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    todo = [n for n in nodes if refresh or n["NodeID"] not in _RAY_PROBES]
    task = ray.remote(num_cpus=0)(_ray_probe)
    refs = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in todo
    ]
    for n, r in zip(todo, ray.get(refs, timeout=120), strict=True):
        _RAY_PROBES[n["NodeID"]] = r
    out = []
    for n in nodes:
        d = Device.from_dict(_RAY_PROBES[n["NodeID"]]["device"])
        mem = int(n.get("Resources", {}).get("memory", 0)) or d.exec.capacity
        d.tiers = [
            MemoryTier(
                t.name,
                min(t.capacity, mem) if t.name == "ram" else t.capacity,
                t.bandwidth,
                t.latency,
            )
            for t in d.tiers
        ]
        d.name = RAY_NODE_PREFIX + n["NodeID"][:12]
        d.reserved = 0
        d.sources = {
            **d.sources,
            "ray_node_id": n["NodeID"],
            "ray_address": n.get("NodeManagerAddress", ""),
            "ram": "Ray's memory resource of the node; probe: tierflow.devices.host() on it",
        }
        out.append(d)
    return out


def is_ray_device(d: Any) -> bool:
    """A device of :func:`ray_cluster`."""
    return (
        isinstance(d, Device) and d.name.startswith(RAY_NODE_PREFIX) and "ray_node_id" in d.sources
    )
