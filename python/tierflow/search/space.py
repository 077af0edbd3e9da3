"""The search space: expert shapes, weight format and serving knobs, each a fixed value, a list
of choices or an integer range, with the constraints ``heads | hidden`` and ``kv_heads | heads``.

A space is a mapping (Python, JSON or YAML)::

    hidden: [256, 512, 768]                  # choices
    layers: {low: 2, high: 16}               # integer range (inclusive; optional step, log)
    heads: [4, 8]
    kv_heads: [1, 2, 4]
    intermediate: {low: 512, high: 2048, step: 256}
    vocab: 4096                              # a fixed value
    format: [f32, bf16, q8_0, q4_0]
    experts: [4, 8, 16]
    fast_tier: [64MiB, 256MiB, 1GiB]         # sizes: bytes or strings such as "512MiB"
    batch: [1, 8]

``hidden`` and ``layers`` are required; the rest default to ``heads = hidden / 64``,
``kv_heads = heads``, ``intermediate`` = 8/3 hidden rounded up to 32, ``vocab`` 32000,
``format`` f32, ``experts`` 1, ``fast_tier`` unlimited and ``batch`` 1.

Optuna samples every dimension from a fixed distribution; a sample that breaks a constraint is
*repaired* to the nearest valid value (:meth:`Space.repair`: the ``heads`` choice closest to the
sample that divides ``hidden`` with an even head width, then the ``kv_heads`` choice closest to
the sample that divides ``heads``), so every trial evaluates a valid configuration. A space in
which no combination is valid is rejected when it is built. Block formats (``q8_0``, ``q4_0``)
need ``hidden`` and ``intermediate`` to be multiples of 32 (the block of 32 weights along the
input dimension).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, MissingFileError
from ..sim.coe import dtype_bytes

__all__ = ["DIMENSIONS", "FORMATS", "Config", "Dim", "Space", "load_space"]

#: weight formats a candidate may use (``tierflow.quantize`` formats plus plain float32)
FORMATS = ("f32", "bf16", "q8_0", "q4_0")
_FORMAT_DTYPE = {"f32": "float32", "bf16": "bfloat16", "q8_0": "q8_0", "q4_0": "q4_0"}
_INT_DIMS = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "experts", "batch")
#: every dimension of a space, in the order trials sample them
DIMENSIONS = (*_INT_DIMS[:6], "format", "experts", "fast_tier", "batch")
_MAX_ENUM = 200_000  # the consistency check enumerates at most this many values per dimension


@dataclass(frozen=True)
class Config:
    """One candidate: the shape of each expert, its weight format, how many experts, the fast
    tier's size for experts (bytes; 0 = unlimited) and the decode batch size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    format: str
    experts: int = 1
    fast_tier: int = 0
    batch: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def dtype(self) -> str:
        """The simulator's dtype name for :attr:`format`."""
        return _FORMAT_DTYPE[self.format]

    @property
    def params(self) -> int:
        """Parameters of one expert (a Llama decoder: untied embedding and output head)."""
        h, i, v = self.hidden, self.intermediate, self.vocab
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
        return self.layers * per_layer + 2 * v * h + h

    @property
    def matmul_params(self) -> int:
        """Parameters of the weights the kernels multiply (converted to :attr:`format`): the
        projections, the MLP and the output head. The embedding table and norms stay float32."""
        h, i, v = self.hidden, self.intermediate, self.vocab
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (h * q + 2 * h * kv + q * h + 3 * h * i) + v * h

    @property
    def nbytes(self) -> int:
        """Bytes of one expert's weights as stored."""
        other = self.params - self.matmul_params
        return round(self.matmul_params * dtype_bytes(self.dtype)) + 4 * other

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of float32 keys and values per context token, all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 4

    def shape_key(self) -> dict[str, Any]:
        """What an in-the-loop measurement depends on (not the number of experts or the tier)."""
        d = asdict(self)
        del d["experts"], d["fast_tier"]
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        return (
            f"h{self.hidden} L{self.layers} H{self.heads}/{self.kv_heads} i{self.intermediate} "
            f"v{self.vocab} {self.format}"
        )


@dataclass(frozen=True)
class Dim:
    """One dimension: ``choices`` (a tuple) or an integer range ``low..high`` (``step``, ``log``)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: int | None = None
    high: int | None = None
    step: int = 1
    log: bool = False

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def values(self) -> list[Any]:
        """Every value (ranges enumerated; at most a large bound)."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        n = (self.high - self.low) // self.step + 1
        if n > _MAX_ENUM:
            raise InvalidArgumentError(
                f"space: {self.name} range {self.low}..{self.high} has {n} values; give a step"
            )
        return list(range(self.low, self.high + 1, self.step))

    def to_spec(self) -> Any:
        if self.choices is not None:
            return list(self.choices) if len(self.choices) > 1 else self.choices[0]
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step != 1:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        return d


def _int(owner: str, v: Any, *, size: bool = False) -> int:
    if size and isinstance(v, str):
        from ..store import parse_size

        if v.strip().lower() in ("0", "unlimited", "none"):
            return 0
        n = parse_size(v)
        if n is None:
            raise InvalidArgumentError(f"space: {owner}: {v!r} is not a size such as '512MiB'")
        return int(n)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
        raise InvalidArgumentError(f"space: {owner} must be an integer, got {v!r}")
    return int(v)


def _dim(name: str, spec: Any) -> Dim:
    if name == "format":
        vals = spec if isinstance(spec, (list, tuple)) else [spec]
        if not vals:
            raise InvalidArgumentError("space: format has no choices")
        out = []
        for v in vals:
            f = str(v).lower()
            if f not in FORMATS:
                raise InvalidArgumentError(
                    f"space: unknown format {v!r} (known: {', '.join(FORMATS)})"
                )
            out.append(f)
        return Dim(name, tuple(dict.fromkeys(out)))
    size = name == "fast_tier"
    floor = 0 if size else 1
    if isinstance(spec, dict):
        extra = set(spec) - {"low", "high", "step", "log"}
        if extra or "low" not in spec or "high" not in spec:
            raise InvalidArgumentError(
                f"space: {name} range needs 'low' and 'high' (optional 'step', 'log'), got {spec!r}"
            )
        lo, hi = _int(name, spec["low"], size=size), _int(name, spec["high"], size=size)
        step = _int(name + ".step", spec.get("step", 1))
        log = bool(spec.get("log", False))
        if lo < floor or hi < lo or step < 1:
            raise InvalidArgumentError(
                f"space: {name} range must have {floor} <= low <= high and step >= 1, got {spec!r}"
            )
        if log and (step != 1 or lo < 1):
            raise InvalidArgumentError(f"space: {name}: a log range needs low >= 1 and no step")
        return Dim(name, None, lo, hi - (hi - lo) % step, step, log)
    vals = spec if isinstance(spec, (list, tuple)) else [spec]
    if not vals:
        raise InvalidArgumentError(f"space: {name} has no choices")
    ints = [_int(name, v, size=size) for v in vals]
    if min(ints) < floor:
        raise InvalidArgumentError(f"space: {name} values must be >= {floor}, got {vals!r}")
    return Dim(name, tuple(dict.fromkeys(ints)))


class Space:
    """A validated search space (see the module docs for the format)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        if isinstance(spec, Space):
            spec = spec.to_dict()
        if not isinstance(spec, dict) or not spec:
            raise InvalidArgumentError("space: empty (give at least hidden and layers)")
        unknown = set(spec) - set(DIMENSIONS)
        if unknown:
            raise InvalidArgumentError(
                f"space: unknown dimension(s) {sorted(unknown)} (known: {', '.join(DIMENSIONS)})"
            )
        for req in ("hidden", "layers"):
            if req not in spec:
                raise InvalidArgumentError(f"space: {req!r} is required")
        self.dims: dict[str, Dim] = {}
        for name in DIMENSIONS:
            if name in spec:
                self.dims[name] = _dim(name, spec[name])
        defaults = {"vocab": 32000, "format": "f32", "experts": 1, "fast_tier": 0, "batch": 1}
        for name, v in defaults.items():
            self.dims.setdefault(name, _dim(name, v))
        self._check()

    # --- validity -------------------------------------------------------------------------
    def _heads_for(self, hidden: int) -> list[int]:
        d = self.dims.get("heads")
        if d is None:
            return [max(1, hidden // 64)]
        return [h for h in d.values() if hidden % h == 0 and (hidden // h) % 2 == 0]

    def _kv_for(self, heads: int) -> list[int]:
        d = self.dims.get("kv_heads")
        if d is None:
            return [heads]
        return [k for k in d.values() if heads % k == 0]

    def _inter_for(self, hidden: int) -> list[int]:
        d = self.dims.get("intermediate")
        if d is None:
            return [((8 * hidden + 2) // 3 + 31) // 32 * 32]  # Llama's 8/3, rounded up to 32
        return d.values()

    def _check(self) -> None:
        hidden = self.dims["hidden"].values()
        block = any(f in ("q8_0", "q4_0") for f in self.dims["format"].values())
        ok_hidden = [h for h in hidden if any(self._kv_for(n) for n in self._heads_for(h))]
        if not ok_hidden:
            raise InvalidArgumentError(
                "space: inconsistent: no heads choice divides any hidden choice (with an even "
                "head width) and is divisible by a kv_heads choice"
            )
        if block:
            bad_h = [h for h in self.dims["hidden"].values() if h % 32]
            inter = self.dims.get("intermediate")
            bad_i = [i for i in inter.values() if i % 32] if inter is not None else []
            if bad_h or bad_i:
                raise InvalidArgumentError(
                    "space: q8_0/q4_0 need hidden and intermediate to be multiples of 32; "
                    f"not: hidden {bad_h[:5]} intermediate {bad_i[:5]}"
                )

    @staticmethod
    def _nearest(want: int, options: list[int]) -> int:
        return min(options, key=lambda o: (abs(math.log(o / want)) if want > 0 else o, o))

    def repair(self, raw: dict[str, Any]) -> Config:
        """The valid :class:`Config` nearest to a raw sample (see the module docs)."""
        h = int(raw["hidden"])
        heads_ok = [n for n in self._heads_for(h) if self._kv_for(n)]
        if not heads_ok:  # this hidden has no valid heads: the nearest hidden that has
            hs = [
                x
                for x in self.dims["hidden"].values()
                if any(map(self._kv_for, self._heads_for(x)))
            ]
            h = self._nearest(h, hs)
            heads_ok = [n for n in self._heads_for(h) if self._kv_for(n)]
        heads = self._nearest(int(raw.get("heads", heads_ok[0])), heads_ok)
        kvs = self._kv_for(heads)
        kv = self._nearest(int(raw.get("kv_heads", kvs[-1])), kvs)
        inter = int(raw["intermediate"]) if "intermediate" in raw else self._inter_for(h)[0]
        return Config(
            hidden=h,
            layers=int(raw["layers"]),
            heads=heads,
            kv_heads=kv,
            intermediate=inter,
            vocab=int(raw["vocab"]),
            format=str(raw["format"]),
            experts=int(raw["experts"]),
            fast_tier=int(raw["fast_tier"]),
            batch=int(raw["batch"]),
        )

    def configs(self) -> list[Config]:
        """Every valid configuration (for small spaces; tests and exhaustive checks)."""
        import itertools

        out = []
        fixed = [n for n in self.dims if n not in ("hidden", "heads", "kv_heads", "intermediate")]
        for h in self.dims["hidden"].values():
            for heads in self._heads_for(h):
                for kv in self._kv_for(heads):
                    for inter in self._inter_for(h):
                        for combo in itertools.product(*(self.dims[n].values() for n in fixed)):
                            rest = dict(zip(fixed, combo, strict=True))
                            out.append(
                                Config(
                                    hidden=h, heads=heads, kv_heads=kv, intermediate=inter, **rest
                                )
                            )
        return out

    # --- Optuna ---------------------------------------------------------------------------
    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw a raw sample from ``trial`` (an ``optuna.Trial``); fixed dimensions are not
        sampled."""
        raw: dict[str, Any] = {}
        for name, d in self.dims.items():
            if d.fixed:
                assert d.choices is not None
                raw[name] = d.choices[0]
            elif d.choices is not None:
                raw[name] = trial.suggest_categorical(name, list(d.choices))
            else:
                assert d.low is not None and d.high is not None
                raw[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        return raw

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {n: d.to_spec() for n, d in self.dims.items()}

    def __repr__(self) -> str:
        return f"Space({self.to_dict()})"


def load_space(
    src: str | os.PathLike[str] | dict[str, Any] | Space,
) -> tuple[Space, dict[str, Any]]:
    """A :class:`Space` from a dict, a Space, or a ``.json`` / ``.yaml`` / ``.yml`` file; also
    returns the file's other settings when it has a top-level ``space:`` key (``objectives``,
    ``constraints``, ``device``, ``trials``, ...)."""
    if isinstance(src, Space):
        return src, {}
    if isinstance(src, dict):
        data: Any = src
    else:
        p = Path(src)
        if not p.exists():
            raise MissingFileError(2, "no such space file", str(p))
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]  # no stubs needed: safe_load only
            except ImportError as e:  # pragma: no cover - pyyaml is in the search extra
                raise InvalidArgumentError(
                    "a YAML space needs pyyaml: pip install 'tierflow[search]'"
                ) from e
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise InvalidArgumentError(f"space: malformed YAML in {p} ({e})") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise InvalidArgumentError(f"space: malformed JSON in {p} ({e})") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"space: expected a mapping, got {type(data).__name__}")
    if "space" in data:
        rest = {k: v for k, v in data.items() if k != "space"}
        return Space(data["space"]), rest
    return Space(data), {}
