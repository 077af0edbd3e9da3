"""The package's layout: modules import only downward.

Every module under ``python/tierflow`` is parsed with :mod:`ast`; every ``import`` and
``from ... import`` in it counts, at module level or deferred inside a function, under
``if TYPE_CHECKING:`` or not. Two rules:

1. No import cycle between modules (no two modules import each other, directly or through
   others). A ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module,
   else of ``pkg`` (its ``__init__``).
2. Pillars are layered; a module imports only from its own pillar or lower ones:

   ====  ==========================================================================
   rank  pillar
   ====  ==========================================================================
   0     ``errors``, ``_info``, ``_deprecated`` (the exception hierarchy, machine info,
         the deprecation helpers)
   1     ``store`` (the tiered store, its dtypes and its safetensors reader)
   2     ``kernels`` (streaming kernels, the paged KV cache, machine probes)
   3     ``models`` and ``routers`` (real models on the kernels and the store; routers
         pick the expert of a prompt)
   4     ``sim`` (the simulator: CoE graphs, devices, traces, policies, reports, the
         capacity sweep, the paper's configurations)
   5     ``serving`` (CoE plans served on this host; uses the simulator's types)
   6     ``search`` (architecture search: measures candidates on this host, predicts them
         with the simulator)
   7     ``demos`` (every demo)
   8     ``cli`` and ``__main__`` (argument parsing only)
   9     the package root ``tierflow`` (re-exports) and the deprecated old module paths
         (``tierflow.coe``, ``tierflow.runtime``, ...): nothing inside the package may
         import them
   ====  ==========================================================================

The deprecated aliases reach their new modules through ``importlib`` by name (they are no
imports of the package's own code and go away after one release).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "tierflow"

PILLARS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("tierflow.errors", "tierflow._info", "tierflow._deprecated")),
    (1, ("tierflow.store",)),
    (2, ("tierflow.kernels",)),
    (3, ("tierflow.models", "tierflow.routers")),
    (4, ("tierflow.sim",)),
    (5, ("tierflow.serving",)),
    (6, ("tierflow.search",)),
    (7, ("tierflow.demos",)),
    (8, ("tierflow.cli", "tierflow.__main__")),
]
NATIVE = "tierflow._tierflow"  # the compiled module: imports nothing of the package
TOP = 9


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def rank(module: str) -> int:
    for r, prefixes in PILLARS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return r
    return TOP


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports (anywhere in its body)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in known | {NATIVE} else source
                for a in node.names
            ]
        else:
            continue
        for t in targets:
            # ``import tierflow.sim.coe`` imports that module (and its parents, which import
            # nothing of it): count the deepest module of the package named
            while t and t not in known and t != NATIVE:
                t = t.rpartition(".")[0]
            if t and t != NATIVE and t != module:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_the_package():
    g = graph()
    assert len(g) > 40
    # deferred and TYPE_CHECKING imports are seen: serving.calibrate imports schedule inside a
    # function; kernels.ops imports the store at module level
    assert "tierflow.serving.plan" in g["tierflow.serving.calibrate"]
    assert "tierflow.store" in g["tierflow.kernels.ops"]


def test_the_checker_finds_a_cycle_and_an_upward_import():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert rank("tierflow.store.tiered") < rank("tierflow.sim.devices") < rank("tierflow.cli")
    assert rank("tierflow.coe") == TOP  # a deprecated path: above everything


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, f"modules importing each other: {found}"


def test_imports_only_point_down():
    g = graph()
    upward = sorted(
        f"{m} ({rank(m)}) imports {t} ({rank(t)})"
        for m, targets in g.items()
        for t in targets
        if rank(t) > rank(m) and m != "tierflow"
    )
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize(
    "old, new",
    [
        ("tierflow.bench", "tierflow.kernels.bench"),
        ("tierflow.coe", "tierflow.sim.coe"),
        ("tierflow.devices", "tierflow.sim.devices"),
        ("tierflow.kvcache", "tierflow.kernels.kvcache"),
        ("tierflow.paper", "tierflow.sim.paper"),
        ("tierflow.plan", "tierflow.sim.capacity"),
        ("tierflow.policies", "tierflow.sim.policies"),
        ("tierflow.report", "tierflow.sim.report"),
        ("tierflow.trace", "tierflow.sim.trace"),
    ],
)
def test_old_module_paths_warn_and_give_the_new_module(old, new):
    import importlib
    import sys

    import tierflow

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old):
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    # attribute access to the simulator's devices and policies stays undeprecated
    assert tierflow.devices is importlib.import_module("tierflow.sim.devices")
    assert tierflow.policies is importlib.import_module("tierflow.sim.policies")


def test_old_runtime_path_warns_and_keeps_its_names_and_submodules():
    import importlib
    import sys

    import tierflow.demos
    import tierflow.serving

    old = [n for n in sys.modules if n == "tierflow.runtime" or n.startswith("tierflow.runtime.")]
    for name in old:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="tierflow.runtime"):
        runtime = importlib.import_module("tierflow.runtime")
    assert runtime.schedule is tierflow.serving.schedule
    assert runtime.write_demo_coe is tierflow.demos.write_demo_coe
    assert importlib.import_module("tierflow.runtime.plan").Plan is tierflow.serving.Plan
    assert importlib.import_module("tierflow.runtime.demo").run_demo is not None


def test_renamed_names_warn_and_give_the_new_object():
    import tierflow
    import tierflow.models as tm
    from tierflow.demos import experts
    from tierflow.sim import capacity, devices

    cases = [
        (devices, "Tier", devices.MemoryTier),
        (capacity, "Plan", capacity.CapacitySweep),
        (capacity, "plan", capacity.sweep_capacity),
        (tm, "PagedKVCache", tm.StoreKVCache),
        (tm, "DEMO_EXAMPLES", experts.DEMO_EXAMPLES),
        (tm, "write_demo_experts", experts.write_demo_experts),
    ]
    for module, old, new in cases:
        with pytest.warns(DeprecationWarning, match=old):
            assert getattr(module, old) is new
    # an old module path as an attribute of the package
    import sys

    sys.modules.pop("tierflow.trace", None)
    vars(tierflow).pop("trace", None)
    with pytest.warns(DeprecationWarning, match="tierflow.trace"):
        assert tierflow.trace.Trace is tierflow.Trace


def test_old_kv_cache_vocabulary_warns_and_still_works(tmp_path):
    """The paged cache's former page vocabulary (keywords and attributes) and the models' cache's
    ``block=`` keep working for one release, each with a DeprecationWarning."""
    import numpy as np

    import tierflow
    import tierflow.models as tm

    with pytest.warns(DeprecationWarning, match="num_pages|page_size"):
        cache = tierflow.PagedKVCache(num_pages=4, page_size=2, num_kv_heads=1, head_dim=4)
    assert (cache.num_blocks, cache.block_size) == (4, 2)
    cache.append(np.ones((1, 1, 3, 4), np.float32), np.ones((1, 1, 3, 4), np.float32))
    for old, new in [
        ("pages_in_use", "blocks_in_use"),
        ("page_size", "block_size"),
        ("num_pages", "num_blocks"),
        ("tables", "block_tables"),
    ]:
        with pytest.warns(DeprecationWarning, match=old):
            assert getattr(cache, old) == getattr(cache, new)
    with pytest.warns(DeprecationWarning, match="page_names"):
        assert cache.page_names(0) == cache.block_names(0) == []
    with pytest.raises(TypeError, match="unexpected keyword"):
        tierflow.PagedKVCache(4, 2, 1, 4, pages=3)
    with tierflow.TieredStore(tmp_path / "s") as store:
        with pytest.warns(DeprecationWarning, match="block_size"):
            kv = tm.StoreKVCache(1, 1, 4, 8, store, block=2)
        with pytest.warns(DeprecationWarning, match="block_size"):
            assert kv.block == kv.block_size == 2
        kv.close()
