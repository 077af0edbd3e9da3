"""Composition of Experts: a graph of a router, experts and optional later stages.

Example:
    >>> import tierflow as tf
    >>> g = tf.CoE("demo")
    >>> _ = g.router("router", params=6.74e9, dtype="bf16")
    >>> _ = g.expert("math", params=6.74e9, dtype="bf16", tags=["stem"])
    >>> _ = g.expert("code", params=6.74e9, dtype="bf16")
    >>> _ = g.route("router", ["math", "code"])
    >>> g.nbytes("math")
    13480000000
    >>> tf.CoE.from_json(g.to_json()).experts
    ['math', 'code']
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import CorruptFileError, InvalidArgumentError, MissingFileError
from ..store.dtypes import SIM_ALIASES, SIM_BYTES
from ..store.safetensors import read_json_header

__all__ = ["CoE", "Node", "canonical_dtype", "dtype_bytes", "safetensors_sizes"]


def canonical_dtype(dtype: str) -> str:
    """Normalise a dtype name (``bf16`` -> ``bfloat16``, safetensors ``BF16`` too)."""
    if not isinstance(dtype, str):
        raise InvalidArgumentError(f"dtype must be a string, got {dtype!r}")
    d = dtype.lower()
    d = SIM_ALIASES.get(d, d)
    if d not in SIM_BYTES:
        raise InvalidArgumentError(f"dtype: unknown {dtype!r} (known: {sorted(SIM_BYTES)})")
    return d


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``."""
    return SIM_BYTES[canonical_dtype(dtype)]


class StoreLike(Protocol):
    def names(self) -> Any: ...
    def info(self, name: str) -> Any: ...


def safetensors_sizes(path: str | os.PathLike[str]) -> tuple[int, int, str]:
    """(bytes, parameters, most common dtype) of a safetensors file or a folder of them, read
    from the headers only (:func:`tierflow.store.safetensors.read_json_header`)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files or not files[0].exists():
        raise MissingFileError(2, "no safetensors file", str(p))
    total = params = 0
    by_dtype: dict[str, int] = {}
    for f in files:
        header, data_start, size = read_json_header(f)
        for name, t in header.items():
            if name == "__metadata__":
                continue
            try:
                a, b = t["data_offsets"]
                numel = 1
                for s in t["shape"]:
                    numel *= int(s)
                dt = str(t["dtype"])
            except (KeyError, TypeError, ValueError):
                raise CorruptFileError(
                    f"{f}: tensor {name!r} has a malformed header entry"
                ) from None
            if not 0 <= a <= b <= size - data_start:
                raise CorruptFileError(
                    f"{f}: tensor {name!r} data_offsets {a}..{b} outside the file"
                )
            total += b - a
            params += numel
            by_dtype[dt] = by_dtype.get(dt, 0) + (b - a)
    dtype = max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else "float32"
    try:
        dtype = canonical_dtype(dtype)
    except InvalidArgumentError:
        dtype = "float32"
    return total, params, dtype


@dataclass
class Node:
    """A router, expert or later stage. ``nbytes`` of weights, ``params`` parameters,
    ``layers`` transformer layers, ``kv_bytes_per_token`` of KV cache per context token."""

    name: str
    kind: str
    params: float
    dtype: str
    nbytes: int
    layers: int = 32
    kv_bytes_per_token: int = 0
    tags: list[str] = field(default_factory=list)
    source: str | None = None


class CoE:
    """A Composition of Experts: ``router -> experts [-> later stage]``."""

    def __init__(self, name: str = "coe") -> None:
        self.name = name
        self.nodes: dict[str, Node] = {}
        self.routes: dict[str, list[str]] = {}
        self.post: dict[str, str] = {}

    # --- building ------------------------------------------------------------------------
    def _add(
        self,
        kind: str,
        name: str,
        params: float | None,
        dtype: str,
        nbytes: int | None,
        layers: int,
        kv_bytes_per_token: int,
        tags: list[str] | tuple[str, ...] | None,
        checkpoint: str | os.PathLike[str] | None,
        store: StoreLike | None,
        prefix: str | None,
    ) -> CoE:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"{kind}: name must be a non-empty string, got {name!r}")
        if name in self.nodes:
            raise InvalidArgumentError(f"{kind} {name!r}: duplicate node name")
        source = None
        dtype = canonical_dtype(dtype)
        if checkpoint is not None:
            nbytes, p, dtype = safetensors_sizes(checkpoint)
            params = params if params is not None else p
            source = f"safetensors:{checkpoint}"
        elif store is not None:
            nbytes, pf = _store_sizes(store, prefix, dtype)
            params = params if params is not None else pf
            source = f"store:{prefix or ''}"
        if params is None and nbytes is None:
            raise InvalidArgumentError(
                f"{kind} {name!r}: give params=, nbytes=, checkpoint= or store="
            )
        if params is not None and (
            not isinstance(params, (int, float)) or isinstance(params, bool) or not params > 0
        ):
            raise InvalidArgumentError(f"{kind} {name!r}: params must be > 0, got {params!r}")
        if nbytes is None:
            nbytes = round(float(params) * dtype_bytes(dtype))  # type: ignore[arg-type]
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
            raise InvalidArgumentError(
                f"{kind} {name!r}: nbytes must be a positive integer, got {nbytes!r}"
            )
        if params is None:
            params = nbytes / dtype_bytes(dtype)
        if not isinstance(layers, int) or layers < 1:
            raise InvalidArgumentError(
                f"{kind} {name!r}: layers must be an integer >= 1, got {layers!r}"
            )
        if not isinstance(kv_bytes_per_token, int) or kv_bytes_per_token < 0:
            raise InvalidArgumentError(
                f"{kind} {name!r}: kv_bytes_per_token must be an integer >= 0"
            )
        self.nodes[name] = Node(
            name,
            kind,
            float(params),
            dtype,
            int(nbytes),
            layers,
            kv_bytes_per_token,
            list(tags or []),
            source,
        )
        return self

    def router(
        self,
        name: str,
        params: float | None = None,
        dtype: str = "bfloat16",
        *,
        nbytes: int | None = None,
        layers: int = 32,
        kv_bytes_per_token: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        store: StoreLike | None = None,
        prefix: str | None = None,
    ) -> CoE:
        """Add the router (one per graph; it stays resident in the fast tier)."""
        if any(n.kind == "router" for n in self.nodes.values()):
            raise InvalidArgumentError(f"router {name!r}: the graph has a router already")
        return self._add(
            "router",
            name,
            params,
            dtype,
            nbytes,
            layers,
            kv_bytes_per_token,
            None,
            checkpoint,
            store,
            prefix,
        )

    def expert(
        self,
        name: str,
        params: float | None = None,
        dtype: str = "bfloat16",
        *,
        nbytes: int | None = None,
        layers: int = 32,
        kv_bytes_per_token: int = 0,
        tags: list[str] | tuple[str, ...] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        store: StoreLike | None = None,
        prefix: str | None = None,
    ) -> CoE:
        """Add an expert. Sizes: ``params`` x ``dtype``, or ``nbytes``, or read from a safetensors
        ``checkpoint`` (file or folder, headers only), or from a ``store`` (anything with
        ``names()`` and ``info(name) -> {"nbytes": ...}``, such as a ``tierflow.TieredStore``),
        counting the tensors whose names start with ``prefix``."""
        return self._add(
            "expert",
            name,
            params,
            dtype,
            nbytes,
            layers,
            kv_bytes_per_token,
            tags,
            checkpoint,
            store,
            prefix,
        )

    def stage(
        self,
        name: str,
        params: float | None = None,
        dtype: str = "bfloat16",
        *,
        after: list[str] | None = None,
        nbytes: int | None = None,
        layers: int = 32,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> CoE:
        """Add a later stage (e.g. a post-processor) run after each expert in ``after``."""
        self._add("stage", name, params, dtype, nbytes, layers, 0, None, checkpoint, None, None)
        for a in after or []:
            self.then(a, name)
        return self

    def route(self, router: str, experts: list[str] | str) -> CoE:
        """The router may choose among ``experts``."""
        if isinstance(experts, str):
            experts = [experts]
        self.routes.setdefault(router, [])
        for e in experts:
            if e not in self.routes[router]:
                self.routes[router].append(e)
        return self

    def then(self, src: str, dst: str) -> CoE:
        """Run ``dst`` after ``src`` for the same request."""
        if src in self.post and self.post[src] != dst:
            raise InvalidArgumentError(
                f"node {src!r} already runs {self.post[src]!r} next (one later stage per node)"
            )
        self.post[src] = dst
        return self

    # --- queries -------------------------------------------------------------------------
    @property
    def experts(self) -> list[str]:
        """Expert and stage names, in insertion order (the simulator's node order)."""
        return [n for n, v in self.nodes.items() if v.kind != "router"]

    @property
    def router_node(self) -> Node | None:
        return next((v for v in self.nodes.values() if v.kind == "router"), None)

    def nbytes(self, name: str) -> int:
        return self.nodes[name].nbytes

    def total_bytes(self) -> int:
        return sum(n.nbytes for n in self.nodes.values())

    def validate(self) -> CoE:
        """Check edges name known nodes of the right kind and that the graph has no cycle."""
        for r, es in self.routes.items():
            if r not in self.nodes:
                raise InvalidArgumentError(f"route: unknown router {r!r}")
            if self.nodes[r].kind != "router":
                raise InvalidArgumentError(f"route: {r!r} is a {self.nodes[r].kind}, not a router")
            for e in es:
                if e not in self.nodes:
                    raise InvalidArgumentError(f"route {r!r} -> {e!r}: unknown node {e!r}")
                if self.nodes[e].kind == "router":
                    raise InvalidArgumentError(f"route {r!r} -> {e!r}: cannot route to a router")
        for s, d in self.post.items():
            for x in (s, d):
                if x not in self.nodes:
                    raise InvalidArgumentError(f"stage edge {s!r} -> {d!r}: unknown node {x!r}")
            if self.nodes[d].kind == "router":
                raise InvalidArgumentError(
                    f"stage edge {s!r} -> {d!r}: a router cannot be a later stage"
                )
        for start in self.post:
            seen = [start]
            cur = start
            while cur in self.post:
                cur = self.post[cur]
                if cur in seen:
                    cyc = " -> ".join([*seen[seen.index(cur) :], cur])
                    raise InvalidArgumentError(f"the graph has a cycle: {cyc}")
                seen.append(cur)
        if not self.experts:
            raise InvalidArgumentError(f"CoE {self.name!r} has no experts")
        return self

    def summary(self) -> str:
        """A short text summary."""
        self.validate()
        ex = [n for n in self.nodes.values() if n.kind == "expert"]
        st = [n for n in self.nodes.values() if n.kind == "stage"]
        r = self.router_node
        lines = [
            f"CoE {self.name!r}: {len(ex)} experts, {len(st)} later stages, router: {r.name if r else 'none'}"
        ]
        lines.append(f"  total weights {self.total_bytes() / 1e9:.2f} GB")
        if ex:
            sizes = sorted(n.nbytes for n in ex)
            lines.append(
                f"  expert sizes {sizes[0] / 1e9:.2f} .. {sizes[-1] / 1e9:.2f} GB ({ex[0].dtype})"
            )
        if r:
            lines.append(
                f"  router {r.name!r}: {r.nbytes / 1e9:.2f} GB, routes to {len(self.routes.get(r.name, []))} experts"
            )
        tags: dict[str, int] = {}
        for n in ex:
            for t in n.tags:
                tags[t] = tags.get(t, 0) + 1
        if tags:
            lines.append("  tags: " + ", ".join(f"{k} ({v})" for k, v in sorted(tags.items())))
        return "\n".join(lines)

    def to_mermaid(self, max_experts: int = 20) -> str:
        """A Mermaid flowchart of the graph (experts beyond ``max_experts`` are folded)."""
        self.validate()

        def nid(s: str) -> str:
            return "n" + "".join(c if c.isalnum() else "_" for c in s)

        out = ["flowchart LR"]
        for n in self.nodes.values():
            shape = (
                ("{{", "}}")
                if n.kind == "router"
                else ("[", "]")
                if n.kind == "expert"
                else ("([", "])")
            )
            out.append(f'  {nid(n.name)}{shape[0]}"{n.name}<br/>{n.nbytes / 1e9:.1f} GB"{shape[1]}')
        for r, es in self.routes.items():
            for e in es[:max_experts]:
                out.append(f"  {nid(r)} --> {nid(e)}")
            if len(es) > max_experts:
                out.append(f'  {nid(r)} --> more["... {len(es) - max_experts} more experts"]')
        for s, d in self.post.items():
            out.append(f"  {nid(s)} --> {nid(d)}")
        return "\n".join(out)

    # --- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "routes": self.routes,
            "post": self.post,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        s = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(s)
        return s

    save = to_json

    @classmethod
    def from_dict(cls, d: Any) -> CoE:
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"CoE: expected a JSON object, got {type(d).__name__}")
        for k in ("nodes",):
            if k not in d:
                raise InvalidArgumentError(f"CoE: missing field {k!r}")
        g = cls(str(d.get("name", "coe")))
        if not isinstance(d["nodes"], list):
            raise InvalidArgumentError("CoE: field 'nodes' must be a list")
        for i, n in enumerate(d["nodes"]):
            if not isinstance(n, dict):
                raise InvalidArgumentError(f"CoE: nodes[{i}] must be an object")
            missing = [k for k in ("name", "kind", "nbytes") if k not in n]
            if missing:
                raise InvalidArgumentError(f"CoE: nodes[{i}] misses field(s) {missing}")
            kind = n["kind"]
            if kind not in ("router", "expert", "stage"):
                raise InvalidArgumentError(
                    f"CoE: nodes[{i}].kind must be router, expert or stage, got {kind!r}"
                )
            g._add(
                kind,
                n["name"],
                n.get("params"),
                n.get("dtype", "bfloat16"),
                n["nbytes"],
                n.get("layers", 32),
                n.get("kv_bytes_per_token", 0),
                n.get("tags"),
                None,
                None,
                None,
            )
            g.nodes[n["name"]].source = n.get("source")
        routes = d.get("routes", {})
        post = d.get("post", {})
        if not isinstance(routes, dict) or not isinstance(post, dict):
            raise InvalidArgumentError("CoE: fields 'routes' and 'post' must be objects")
        for r, es in routes.items():
            g.route(r, es)
        for s, t in post.items():
            g.then(s, t)
        return g.validate()

    @classmethod
    def from_json(cls, src: str | os.PathLike[str]) -> CoE:
        """Load from a JSON file path or JSON text."""
        text = str(src)
        if not text.lstrip().startswith("{"):
            p = Path(src)
            if not p.exists():
                raise MissingFileError(2, "no such CoE file", str(p))
            text = p.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"CoE: malformed JSON ({e})") from None
        return cls.from_dict(d)

    load = from_json

    def native(self) -> dict[str, Any]:
        """The dict the native simulator takes (experts and stages in :attr:`experts` order)."""
        self.validate()
        names = self.experts
        idx = {n: i for i, n in enumerate(names)}

        def spec(n: Node) -> dict[str, Any]:
            return {
                "bytes": n.nbytes,
                "params": n.params,
                "layers": n.layers,
                "kv_bytes_per_token": float(n.kv_bytes_per_token),
            }

        r = self.router_node
        return {
            "names": names,
            "nodes": [spec(self.nodes[n]) for n in names],
            "post": [idx[self.post[n]] if n in self.post else -1 for n in names],
            "router": spec(r) if r else None,
        }

    @property
    def dtype(self) -> str:
        """The dtype of most expert bytes (selects the device's compute peak)."""
        by: dict[str, int] = {}
        for n in self.nodes.values():
            by[n.dtype] = by.get(n.dtype, 0) + n.nbytes
        return max(by, key=lambda k: by[k]) if by else "bfloat16"

    def __repr__(self) -> str:
        return f"CoE({self.name!r}, {len(self.experts)} experts, {self.total_bytes() / 1e9:.1f} GB)"


def _store_sizes(store: StoreLike, prefix: str | None, dtype: str) -> tuple[int, float]:
    if not hasattr(store, "names") or not hasattr(store, "info"):
        raise InvalidArgumentError("store= needs an object with names() and info(name)")
    total = 0
    params = 0.0
    n = 0
    for name in store.names():
        if prefix and not str(name).startswith(prefix):
            continue
        info = store.info(name)
        nb = info.get("nbytes") if isinstance(info, dict) else getattr(info, "nbytes", None)
        if not isinstance(nb, int) or nb < 0:
            raise InvalidArgumentError(f"store: info({name!r}) has no integer 'nbytes'")
        total += nb
        shape = info.get("shape") if isinstance(info, dict) else getattr(info, "shape", None)
        if shape is not None:
            k = 1
            for s in shape:
                k *= int(s)
            params += k
        else:
            params += nb / dtype_bytes(dtype)
        n += 1
    if n == 0 or total == 0:
        raise InvalidArgumentError(f"store: no tensors with prefix {prefix!r}")
    return total, params
