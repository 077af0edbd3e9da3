"""In-the-loop cost of a candidate on this host: random weights of its shape in a TieredStore,
real prefill and decode passes of a Llama decoder on tierflow's kernels, cached on disk.

What one measurement does (:meth:`Measurer.measure`):

1. write a random Llama checkpoint of the candidate's shape with ``m = min(layers, max_layers)``
   decoder layers (:func:`tierflow.models.write_tiny_checkpoint`), adopt it into a
   :class:`~tierflow.TieredStore` and convert its matmul weights to the candidate's format
   (``tierflow.models.load(..., dtype=format)``), resident in the store's RAM tier;
2. run one warm-up prefill, then ``repeats`` times: a prefill of ``prompt_tokens`` tokens (only
   the last position's logits, as serving does) and ``decode_steps`` decode steps of ``batch``
   new tokens each (a batch-``B`` step is one pass of ``B`` new rows: the matmuls are exactly a
   batch-``B`` decode step's; attention reads one shared cache instead of ``B`` caches);
3. time each pass and, inside it, when each decoder layer starts (the model's per-layer hook
   ``Weights.enter``): the *fixed* part is the pass outside the layers (embedding rows, final
   norm, output head) and the *per-layer* time that of layers ``2..m`` (the first layer, which
   follows the embedding lookup and the cache eviction below, is left out when ``m >= 2``);
4. scale to the candidate's ``layers``: ``t = fixed + layers * per_layer`` (the fastest
   of the repeats, and of all decode steps: the pass least disturbed by other processes on a
   shared machine). The cache keeps the unscaled figures, keyed by
   everything but the depth, so candidates that differ only in ``layers`` share one
   measurement.

Layers of one shape do identical work, so measuring ``m`` of them and scaling is exact up to
timing noise and cache effects. The cache effect is handled: when the full model's weights
exceed the last-level cache (so the real model reads every layer from RAM on every pass), the
caches are evicted (a buffer twice their size is read) before each timed pass, so the ``m`` measured layers are read from RAM too (the benchmark ``benches/test_search.py`` checks a scaled
measurement against a direct timing of the full-depth model, interleaved in the same run).

Results are cached as JSON in ``<cache>/search/measure`` (``$TIERFLOW_CACHE_DIR`` or
``~/.cache/tierflow``) under a hash of the shape, format, batch, workload, tierflow's version
and the kernel thread count, so a repeated shape costs nothing; :attr:`Measurer.stats` counts
measured and cached requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .space import Config

__all__ = ["Measurement", "Measurer", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``<cache>/search/measure`` next to the host probe's cache."""
    from ..sim.devices import host_cache_path

    return host_cache_path().parent / "search" / "measure"


@dataclass(frozen=True)
class Measurement:
    """Seconds on this host, scaled to the candidate's depth (see the module docs)."""

    prefill_s: float  # one prefill pass of ``prompt_tokens`` tokens
    decode_s: float  # one decode step of ``batch`` new tokens after the prompt
    prefill_fixed_s: float
    decode_fixed_s: float
    prefill_layer_s: float  # per decoder layer
    decode_layer_s: float
    measured_layers: int
    prompt_tokens: int
    batch: int
    nbytes: int  # bytes of the weights as stored, scaled to all layers
    cost_s: float  # wall time the measurement took (0 in a cached copy's first use: see stats)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scaled(self, c: Config) -> Measurement:
        """This measurement (of ``measured_layers`` layers of ``c``'s width) scaled to
        ``c.layers`` layers."""
        return replace(
            self,
            prefill_s=self.prefill_fixed_s + c.layers * self.prefill_layer_s,
            decode_s=self.decode_fixed_s + c.layers * self.decode_layer_s,
            nbytes=round(
                _nonlayer_bytes(c)
                + c.layers * (self.nbytes - _nonlayer_bytes(c)) / self.measured_layers
            ),
        )


class Measurer:
    """Measures candidates on this host (see the module docs).

    Args:
        cache_dir: where measurements are kept (default :func:`default_cache_dir`); ``None``
            with ``cache=False`` keeps nothing on disk.
        prompt_tokens: tokens of the measured prefill (also the decode steps' context).
        decode_steps: decode steps per repeat.
        repeats: timed repeats (the fastest is kept).
        max_layers: decoder layers actually built and run (the rest are scaled).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        prompt_tokens: int = 32,
        decode_steps: int = 4,
        repeats: int = 3,
        max_layers: int = 2,
        cache: bool = True,
    ) -> None:
        for name, v in (
            ("prompt_tokens", prompt_tokens),
            ("decode_steps", decode_steps),
            ("repeats", repeats),
            ("max_layers", max_layers),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"measure: {name} must be an integer >= 1, got {v!r}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache = cache
        self.prompt_tokens, self.decode_steps = prompt_tokens, decode_steps
        self.repeats, self.max_layers = repeats, max_layers
        self.stats = {"measured": 0, "cached": 0, "seconds": 0.0}
        self._memo: dict[str, Measurement] = {}

    def key(self, c: Config) -> dict[str, Any]:
        """What the cached measurement depends on: the shape but its depth (layers are
        measured one by one and scaled), the format, the batch and the workload."""
        from .._info import get_num_threads
        from .._tierflow import __version__

        shape = c.shape_key()
        del shape["layers"]
        return {
            **shape,
            "measured_layers": min(c.layers, self.max_layers),
            "cold": _cold(c),
            "prompt_tokens": self.prompt_tokens,
            "decode_steps": self.decode_steps,
            "repeats": self.repeats,
            "max_layers": self.max_layers,
            "tierflow": __version__,
            "threads": get_num_threads(),
        }

    def _path(self, key: dict[str, Any]) -> Path:
        h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.cache_dir / f"{h}.json"

    def cached(self, c: Config) -> Measurement | None:
        """The cached measurement of ``c``, or None (no measurement is made)."""
        key = self.key(c)
        k = json.dumps(key, sort_keys=True)
        if k in self._memo:
            return self._memo[k].scaled(c)
        if not self.cache:
            return None
        p = self._path(key)
        try:
            d = json.loads(p.read_text())
            if d.get("key") != key:
                return None
            m = Measurement(**d["measurement"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        self._memo[k] = m
        return m.scaled(c)

    def measure(self, c: Config) -> Measurement:
        """The in-the-loop measurement of ``c`` (from the cache when there is one)."""
        m = self.cached(c)
        if m is not None:
            self.stats["cached"] += 1
            return m
        t0 = time.perf_counter()
        m = _run(c, self.prompt_tokens, self.decode_steps, self.repeats, self.max_layers)
        cost = time.perf_counter() - t0
        m = replace(m, cost_s=cost)
        self.stats["measured"] += 1
        self.stats["seconds"] += cost
        key = self.key(c)
        self._memo[json.dumps(key, sort_keys=True)] = m
        if self.cache:
            p = self._path(key)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "measurement": m.to_dict()}, indent=1))
            os.replace(tmp, p)
        return m.scaled(c)


class Probe:
    """``c``'s model with ``layers`` decoder layers, built once (random weights in a store,
    converted to the format) and timed as often as asked; :meth:`close` removes it."""

    def __init__(self, c: Config, prompt: int, steps: int, layers: int) -> None:
        from ..models import load
        from ..store import Tier, TieredStore

        self.c, self.prompt, self.steps, self.m = c, prompt, steps, layers
        self.flush = np.ones(2 * _llc_bytes() if _cold(c) else 1, np.uint8)
        self.positions = prompt + (steps + 1) * c.batch + 1
        self.folder = tempfile.mkdtemp(prefix="tierflow-search-")
        try:
            ckpt = _write_checkpoint(
                os.path.join(self.folder, "ckpt"), c, layers, max(self.positions, 8)
            )
            self.store = TieredStore(
                os.path.join(self.folder, "store"),
                tiers=[Tier("ram", 1 << 40), Tier("disk", path="disk")],
            )
            fmt = None if c.format == "f32" else c.format
            self.model = load(ckpt, store=self.store, tier="ram", dtype=fmt)
        except BaseException:
            self.close()
            raise
        w = self.model.weights
        self.nbytes = sum(w.nbytes(n) for n in w.names())
        self.span: list[float] = []
        enter = w.enter
        m = layers

        def timed_enter(group: int) -> None:
            if group in (0, 1, m):
                self.span.append(time.perf_counter())
            enter(group)

        w.enter = timed_enter  # type: ignore[method-assign]
        self.ids = np.random.default_rng(0).integers(0, c.vocab, size=self.positions)
        self.model.forward(self.ids[:prompt], self._cache(), last_only=True)  # warm-up

    def _cache(self) -> Any:
        from ..models.kvcache import KVCache

        cfg = self.model.config
        return KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.positions)

    def _layers(self) -> tuple[float, float]:
        """(all layers, one steady layer) of the pass just run."""
        sp, m = self.span, self.m
        t0, t1, tm = sp[0], sp[1] if m >= 2 else sp[0], sp[-1]
        return tm - t0, (tm - t1) / (m - 1) if m >= 2 else tm - t0

    def run(self, repeats: int) -> tuple[Measurement, float, float]:
        """Time ``repeats`` prefills, each followed by ``steps`` decode steps; returns the
        measurement (the fastest repeat's figures) and the fastest whole prefill and decode
        step as timed (unscaled)."""
        c, model, ids, prompt = self.c, self.model, self.ids, self.prompt
        pre, pre_l, dec, dec_l = [], [], [], []
        for _ in range(repeats):
            cache = self._cache()
            self.flush.max()  # read (clean lines: no write-back inside the timed pass)
            self.span.clear()
            t = time.perf_counter()
            model.forward(ids[:prompt], cache, last_only=True)
            pre.append(time.perf_counter() - t)
            pre_l.append(self._layers())
            pos = prompt
            for _ in range(self.steps):
                self.flush.max()
                self.span.clear()
                t = time.perf_counter()
                model.forward(ids[pos : pos + c.batch], cache)
                dec.append(time.perf_counter() - t)
                dec_l.append(self._layers())
                pos += c.batch
        pl, dl = np.array(pre_l), np.array(dec_l)
        p_layer, d_layer = float(pl[:, 1].min()), float(dl[:, 1].min())
        p_fixed = max(float(np.min(np.subtract(pre, pl[:, 0]))), 0.0)
        d_fixed = max(float(np.min(np.subtract(dec, dl[:, 0]))), 0.0)
        m = self.m
        meas = Measurement(
            prefill_s=p_fixed + m * p_layer,
            decode_s=d_fixed + m * d_layer,
            prefill_fixed_s=p_fixed,
            decode_fixed_s=d_fixed,
            prefill_layer_s=p_layer,
            decode_layer_s=d_layer,
            measured_layers=m,
            prompt_tokens=prompt,
            batch=c.batch,
            nbytes=self.nbytes,
            cost_s=0.0,
        )
        return meas, float(min(pre)), float(min(dec))

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            del self.model
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _run(c: Config, prompt: int, steps: int, repeats: int, max_layers: int) -> Measurement:
    """Build, load and time ``c`` with ``min(c.layers, max_layers)`` layers (no cache)."""
    with Probe(c, prompt, steps, min(c.layers, max_layers)) as p:
        return p.run(repeats)[0]


def _llc_bytes() -> int:
    """The last-level cache of this CPU (32 MiB when /sys does not say)."""
    from ..sim.devices import _cache_sizes

    sizes = _cache_sizes()
    return max(n for _, n in sizes) if sizes else 32 << 20


#: the most last-level cache a model can count on keeping (see :func:`_cold`)
COLD_BYTES = 64 << 20


def _cold(c: Config) -> bool:
    """Whether the full model's weights exceed the last-level cache a process can count on:
    then every pass of the real model reads its weights from RAM, and the measurement evicts
    the caches (reads a buffer twice their size) before each timed pass so the measured layers
    are read from RAM too, instead of staying cache-resident as a model of ``m`` small layers
    would. The threshold is the smaller of the last-level cache and :data:`COLD_BYTES`: a large
    L3 is shared with the other cores and, in a virtual machine, with other tenants (this
    host's reports 480 MiB, yet an 8-layer f32 model of 107 MB read at RAM speed while its
    2 measured layers stayed cached, 16-21% faster: ``benches/test_search.py``)."""
    return c.nbytes > min(_llc_bytes(), COLD_BYTES)


def _write_checkpoint(folder: str, c: Config, layers: int, positions: int) -> str:
    """A Llama checkpoint of ``c``'s shape with ``layers`` layers. Weights are a tiling of one
    block of 64 Ki normal draws (std 0.02; norms 1): the timing depends on the shape and format,
    not on the values, and drawing every weight would cost more than the measurement."""
    import json

    from ..models._checkpoint import write_safetensors
    from ..models._tiny import _config
    from ..models.config import ModelConfig

    cfg_dict = _config(
        "LlamaForCausalLM",
        c.hidden,
        layers,
        c.heads,
        c.kv_heads,
        c.intermediate,
        c.vocab,
        positions,
        False,
        10000.0,
    )
    cfg = ModelConfig.from_dict(cfg_dict)
    block = 0.02 * np.random.default_rng(0).standard_normal(1 << 16, dtype=np.float32)

    def maker(name: str, shape: tuple[int, ...]) -> Any:
        def make() -> np.ndarray:
            n = int(np.prod(shape))
            if "norm" in name:
                return np.ones(shape, np.float32)
            return np.resize(block, n).reshape(shape)

        return make

    lazy = {n: (s, maker(n, s)) for n, s in cfg.expected_tensors().items()}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg_dict, f)
    write_safetensors(os.path.join(folder, "model.safetensors"), {}, lazy)
    return folder


def _nonlayer_bytes(c: Config) -> int:
    """Stored bytes outside the decoder layers: float32 embedding, output head in the format,
    final norm."""
    from ..sim.coe import dtype_bytes

    return 4 * c.vocab * c.hidden + round(c.vocab * c.hidden * dtype_bytes(c.dtype)) + 4 * c.hidden
