"""tierflow's decode matmul against ggml's own CPU matmul (the kernel llama.cpp decodes with) on
the same weight bytes, both on 2 threads.

``y = x W``, ``x`` of ``M`` activation rows (M = 1 and M = 8), ``W`` of shape ``(K, N)`` in
q8_0, q4_0 and f32 (a sanity row), for ``(K, N)`` = (4096, 4096), (8192, 8192) and TinyLlama's
gate / up projection (2048, 5632). The weight is made once by ``tierflow.quantize`` (whose
blocks are ggml's ``block_q8_0`` / ``block_q4_0`` byte for byte: ``N`` rows of ``K``, see
``tierflow.QuantizedTensor``) and set into a ggml tensor of ``ne = (K, N)``; ggml computes
``ggml_mul_mat(W, x)`` (``x`` a float32 tensor of ``ne = (K, M)``, result ``ne = (N, M)``),
reached through ctypes in the ``libggml-base`` / ``libggml-cpu`` libraries that the
llama-cpp-python wheel ships in ``llama_cpp/lib``. ggml runs the graph with ``ggml_graph_plan``
+ ``ggml_graph_compute`` on a thread pool made once (``ggml_threadpool_new``):
``ggml_graph_compute_with_ctx`` would make a new pool per call, which in a build without OpenMP
starts and joins fresh threads, a cost llama.cpp pays once per token's graph, not per matmul
(in an OpenMP build, as llama-cpp-python 0.3.36's wheel is, the workers are libgomp's team).
Three ggml engines, by the CPU backend buffer type the weight is set into: "CPU" (the weight as
stored, ggml's ``vec_dot`` / llamafile kernels), "CPU_REPACK" (ggml interleaves the rows when the
weight is set, q4_0 as ``q4_0_8x8`` on an AVX2 / AVX-512 CPU, and multiplies with its gemv / gemm
for that layout) and "AMX" (q4_0 / q8_0 converted to ggml's AMX tile layout; its kernels use
AVX-512-VNNI at M = 1 and AMX tiles at M >= 2; built when the library has ``AMX_INT8``, listed
only where the kernel grants AMX to the process). llama.cpp loads each weight into the first of
its extra buffer types (AMX, then CPU_REPACK) that supports the multiply, else keeps it as
stored; an engine whose buffer type lacks the format (or the CPU lacks the buffer type) is
skipped, and so is AMX at M >= 2 when a probe process shows its tile kernel dying (SIGSEGV in
the VM this bench was written on, where llama-cpp-python's own ``Llama.eval`` of 2 tokens with
q8_0 / q4_0 weights dies the same way; ``--no-repack`` there means the "CPU" engine).

Correctness first: both results are checked against NumPy float64 on the dequantised weight
within the bound of the activation's rounding to Q8_0 blocks (both engines quantise ``x`` to
32-element int8 blocks for q8_0 / q4_0; see `_reference`), and against each other.

Timing: rounds alternate the engines; in each round an engine runs a block of 3 back-to-back
calls, the last 2 timed (the first wakes its threads), then a 10 ms pause before the other
engine (ggml's workers and tierflow's poll for work for a while after a call and would take a
core from the other side). Medians over the rounds. Reported: weight GB/s, time per token
(time / M) and, against each ggml engine, the ratio ggml time / tierflow time (tierflow's
per-token speed over ggml's; target 1.0 at M = 8 for q8_0 / q4_0); and tierflow's time per
token at M = 8 against the fastest ggml engine's at M = 1 (llama.cpp decoding one token at a
time; target 1.0 for q8_0 / q4_0), both M of a weight timed in one interleaved loop. The
machine's last-level cache may hold a whole weight (the 2-core VM this was written on reports
a 480 MiB L3): the rates are weight bytes per second, not a memory bandwidth.

Run:

    pip install llama-cpp-python
    TIERFLOW_NUM_THREADS=2 pytest benches/test_ggml_matmul.py -m bench -s
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import tierflow
from conftest import record

pytestmark = pytest.mark.bench
llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (bench-only: pip install llama-cpp-python, "
    "whose wheel ships the ggml libraries this bench calls)",
)

THREADS = 2
ROUNDS = 9
#: calls per block; the first one of a block is not timed
BLOCK = 3
PAUSE = max(0.01, tierflow.info()["spin_us"] * 1e-6 + 0.005)
#: ggml's `enum ggml_type` (ggml.h)
GGML_TYPE = {"f32": 0, "q4_0": 2, "q8_0": 8}
#: the formats of ``qtype_has_amx_kernels`` (ggml-cpu/amx/common.h) that this bench runs
AMX_FORMATS = ("q4_0", "q8_0")
#: engine name -> ggml CPU backend buffer type of the weight
BUFFER_TYPES = {"ggml": "CPU", "ggml repack": "CPU_REPACK", "ggml amx": "AMX"}
SHAPES = [(4096, 4096), (8192, 8192), (2048, 5632)]


class _CPlan(ctypes.Structure):
    """``struct ggml_cplan`` (ggml-cpu.h)."""

    _fields_ = [
        ("work_size", ctypes.c_size_t),
        ("work_data", ctypes.c_void_p),
        ("n_threads", ctypes.c_int),
        ("threadpool", ctypes.c_void_p),
        ("abort_callback", ctypes.c_void_p),
        ("abort_callback_data", ctypes.c_void_p),
        ("use_ref", ctypes.c_bool),
    ]


class _InitParams(ctypes.Structure):
    """``struct ggml_init_params`` (ggml.h)."""

    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


class _Tensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml.h; GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
    GGML_MAX_NAME 64), read for ``ne`` (a layout check), ``data`` and ``extra`` (the repacked
    layout's traits, NULL when the CPU_REPACK buffer has no layout for the type)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _tensor(ptr: int) -> _Tensor:
    return _Tensor.from_address(ptr)


def _load_ggml() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    lib = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    vp, sz, i64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
    sigs: list[tuple[ctypes.CDLL, str, object, list[object]]] = [
        (base, "ggml_init", vp, [_InitParams]),
        (base, "ggml_free", None, [vp]),
        (base, "ggml_new_tensor_2d", vp, [vp, ctypes.c_int, i64, i64]),
        (base, "ggml_mul_mat", vp, [vp, vp, vp]),
        (base, "ggml_new_graph", vp, [vp]),
        (base, "ggml_build_forward_expand", None, [vp, vp]),
        (base, "ggml_get_data", vp, [vp]),
        (base, "ggml_nbytes", sz, [vp]),
        (base, "ggml_tensor_overhead", sz, []),
        (base, "ggml_graph_overhead", sz, []),
        (base, "ggml_threadpool_params_init", None, [vp, ctypes.c_int]),
        (base, "ggml_backend_cpu_buffer_type", vp, []),
        (base, "ggml_backend_alloc_ctx_tensors_from_buft", vp, [vp, vp]),
        (base, "ggml_backend_buffer_set_usage", None, [vp, ctypes.c_int]),
        (base, "ggml_backend_buffer_free", None, [vp]),
        (base, "ggml_backend_tensor_set", None, [vp, vp, sz, sz]),
        (base, "ggml_backend_reg_dev_get", vp, [vp, sz]),
        (base, "ggml_backend_reg_get_proc_address", vp, [vp, ctypes.c_char_p]),
        (base, "ggml_backend_buft_name", ctypes.c_char_p, [vp]),
        (cpu, "ggml_cpu_init", None, []),
        (cpu, "ggml_backend_cpu_reg", vp, []),
        (cpu, "ggml_threadpool_new", vp, [vp]),
        (cpu, "ggml_threadpool_free", None, [vp]),
        (cpu, "ggml_graph_plan", _CPlan, [vp, ctypes.c_int, vp]),
        (cpu, "ggml_graph_compute", ctypes.c_int, [vp, ctypes.POINTER(_CPlan)]),
    ]
    for so, name, res, args in sigs:
        f = getattr(so, name)
        f.restype, f.argtypes = res, args
    cpu.ggml_cpu_init()
    return base, cpu


def _buffer_type(libs: tuple[ctypes.CDLL, ctypes.CDLL], name: str) -> int:
    """The CPU backend's buffer type ``name``: "CPU" (the weight as stored) or one of its extra
    buffer types ("CPU_REPACK": the interleaved layouts llama.cpp loads weights into by
    default)."""
    base, cpu = libs
    if name == "CPU":
        return base.ggml_backend_cpu_buffer_type()
    reg = cpu.ggml_backend_cpu_reg()
    get = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    fn = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(get)
    bufts = fn(base.ggml_backend_reg_dev_get(reg, 0))
    names = []
    i = 0
    while bufts[i]:
        names.append(base.ggml_backend_buft_name(bufts[i]).decode())
        if names[-1] == name:
            return bufts[i]
        i += 1
    pytest.skip(f"ggml's CPU backend has no {name} buffer type (it has {names})")


class GgmlMatmul:
    """``y = x W`` by ggml's CPU backend: ``W`` a ``tierflow.QuantizedTensor`` whose bytes are
    set into a ggml tensor of ``ne = (K, N)`` in a buffer of type ``buft`` ("CPU": as stored;
    "CPU_REPACK" / "AMX": converted by ggml when set, as llama.cpp loads weights; skipped when
    the buffer type is absent or lacks the format), ``x`` float32 ``(M, K)``; ``threads``
    workers on a persistent ggml thread pool. ``set_x`` copies an activation in, ``compute`` runs
    the graph, ``y`` is the ``(M, N)`` result (a view of ggml's tensor)."""

    def __init__(self, libs, w, m: int, threads: int, buft: str = "CPU"):
        self.base, self.cpu = libs
        base, cpu = libs
        k, n = w.shape
        self.m, self.k, self.n = m, k, n
        self.pool = self.ctx_w = self.ctx = self.buf_w = self.buf = None
        if buft == "AMX" and not (w.format in AMX_FORMATS and n % 32 == 0):
            # the AMX buffer type's supports_op: a format with AMX kernels, N a multiple of 32
            pytest.skip(f"ggml's AMX buffer type does not multiply {w.format} {(k, n)}")
        weight_buft = _buffer_type(libs, buft)
        meta = _InitParams(4 * base.ggml_tensor_overhead() + base.ggml_graph_overhead(), None, True)
        self.ctx_w = base.ggml_init(meta)
        self.ctx = base.ggml_init(meta)
        if not (self.ctx_w and self.ctx):
            raise MemoryError("ggml_init failed")
        self.a = base.ggml_new_tensor_2d(self.ctx_w, GGML_TYPE[w.format], k, n)
        self.b = base.ggml_new_tensor_2d(self.ctx, GGML_TYPE["f32"], k, m)
        self.c = base.ggml_mul_mat(self.ctx, self.a, self.b)
        self.graph = base.ggml_new_graph(self.ctx)
        base.ggml_build_forward_expand(self.graph, self.c)
        if tuple(_tensor(self.c).ne) != (n, m, 1, 1):
            raise AssertionError(f"ggml_tensor layout mismatch: ne {tuple(_tensor(self.c).ne)}")
        if base.ggml_nbytes(self.a) != w.nbytes:
            raise AssertionError(f"ggml's {w.format} {(k, n)} is not {w.nbytes} bytes")
        self.buf_w = base.ggml_backend_alloc_ctx_tensors_from_buft(self.ctx_w, weight_buft)
        self.buf = base.ggml_backend_alloc_ctx_tensors_from_buft(
            self.ctx, _buffer_type(libs, "CPU")
        )
        if not (self.buf_w and self.buf):
            raise MemoryError("ggml_backend_alloc_ctx_tensors_from_buft failed")
        base.ggml_backend_buffer_set_usage(self.buf_w, 1)  # GGML_BACKEND_BUFFER_USAGE_WEIGHTS
        #: ggml's tensor traits for the weight's layout (set by the extra buffer types; NULL from
        #: CPU_REPACK when it has no layout for the format)
        self.repacked = bool(_tensor(self.a).extra)
        if buft == "CPU_REPACK" and not self.repacked:
            self.close()
            pytest.skip(f"ggml has no {buft} layout for {w.format} (llama.cpp keeps it as stored)")
        base.ggml_backend_tensor_set(self.a, w.data.ctypes.data, 0, w.nbytes)
        params = ctypes.create_string_buffer(1 << 16)  # > sizeof(struct ggml_threadpool_params)
        base.ggml_threadpool_params_init(params, threads)
        self.pool = cpu.ggml_threadpool_new(params)
        self.plan = cpu.ggml_graph_plan(self.graph, threads, self.pool)
        # the work buffer (x quantised to ggml's block formats) on a 64-byte boundary, as the
        # kernels' aligned AVX-512 loads and stores need
        self.work = np.empty(self.plan.work_size + 64, np.uint8)
        self.plan.work_data = self.work.ctypes.data + (-self.work.ctypes.data) % 64
        out = ctypes.cast(base.ggml_get_data(self.c), ctypes.POINTER(ctypes.c_float))
        self.y = np.ctypeslib.as_array(out, shape=(m, n))

    def set_x(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, np.float32)
        assert x.shape == (self.m, self.k)
        ctypes.memmove(self.base.ggml_get_data(self.b), x.ctypes.data, x.nbytes)

    def compute(self) -> None:
        status = self.cpu.ggml_graph_compute(self.graph, ctypes.byref(self.plan))
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute returned status {status}")

    def close(self) -> None:
        if self.pool:
            self.cpu.ggml_threadpool_free(self.pool)
        for buf in (self.buf_w, self.buf):
            if buf:
                self.base.ggml_backend_buffer_free(buf)
        for ctx in (self.ctx_w, self.ctx):
            if ctx:
                self.base.ggml_free(ctx)
        self.pool = self.ctx_w = self.ctx = self.buf_w = self.buf = None


@pytest.fixture(scope="module")
def ggml() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    return _load_ggml()


@pytest.fixture(scope="module", autouse=True)
def _threads():
    tierflow.set_num_threads(THREADS)
    yield
    tierflow.set_num_threads(None)


def _reference(x: np.ndarray, wd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy float64 ``x Wd``, ``|x| |Wd|`` and the Q8_0 activation-rounding bound, column
    panels at a time (the (8192, 8192) weight would be 512 MB in float64)."""
    m, k = x.shape
    n = wd.shape[1]
    x64 = x.astype(np.float64)
    # Q8_0 rounds x to d_b * round(x / d_b), d_b = max_{k in block b} |x_k| / 127 stored in
    # f16: |x_k - x^_k| <= d_b / 2 (+ d_b's f16 rounding, 2^-11 relative, on |x^_k| <= 127 d_b).
    amax = np.abs(x64).reshape(m, k // 32, 32).max(-1)
    dq = amax / 127 * (0.5 + 127 * 2.0**-11)
    y = np.empty((m, n))
    mag = np.empty((m, n))
    bound = np.empty((m, n))
    for j in range(0, n, 1024):
        p = wd[:, j : j + 1024].astype(np.float64)
        y[:, j : j + 1024] = x64 @ p
        mag[:, j : j + 1024] = np.abs(x64) @ np.abs(p)
        blocksum = np.abs(p).reshape(k // 32, 32, -1).sum(1)
        bound[:, j : j + 1024] = dq @ blocksum
    return y, mag, bound


def _check(name: str, got: np.ndarray, y: np.ndarray, mag: np.ndarray, bound: np.ndarray) -> float:
    """Assert ``|got - y| <= bound + 1e-5 |x| |W|`` (the second term: float32 accumulation);
    return the largest error as a fraction of its allowance."""
    allow = bound + 1e-5 * mag
    frac = float((np.abs(got - y) / allow).max())
    assert frac <= 1.0, f"{name}: error {frac:.3g} x its allowance"
    return frac


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median time of one call of each function: rounds alternate the functions (the first one
    of a round alternates too); each runs BLOCK back-to-back calls of which the last BLOCK - 1
    are timed, then PAUSE seconds so its idle threads park before the other engine runs."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds + 1):
        for name in names if r % 2 else names[::-1]:
            f = fns[name]
            f()
            for _ in range(BLOCK - 1):
                t = time.perf_counter()
                f()
                if r:
                    times[name].append(time.perf_counter() - t)
            time.sleep(PAUSE)
    return {k: float(np.median(v)) for k, v in times.items()}


def _amx_probe() -> None:
    """Run ggml's AMX tile kernel once (M = 2, a 64 x 64 q8_0 weight) and check it; the body
    of `_amx_tiles_fail`'s child process."""
    rng = np.random.default_rng(0)
    w = tierflow.quantize(rng.standard_normal((64, 64)).astype(np.float32), "q8_0")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    try:
        g = GgmlMatmul(_load_ggml(), w, 2, 1, "AMX")
    except pytest.skip.Exception:
        return  # no AMX buffer type: nothing to probe
    g.set_x(x)
    g.compute()
    y, mag, bound = _reference(x, w.dequantize())
    _check("ggml amx M=2", g.y, y, mag, bound)


@pytest.fixture(scope="module")
def amx_tiles_fail() -> str | None:
    """Why ggml's AMX tile path (M >= 2; M = 1 runs AVX-512-VNNI) cannot run here, else None.
    Probed in a child process: on this machine (a VM whose CPU flags list amx_int8) it dies of
    SIGSEGV, as llama-cpp-python's own Llama.eval of 2 tokens does with AMX weights."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += "import test_ggml_matmul as t; t._amx_probe()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        return None
    how = signal.Signals(-r.returncode).name if r.returncode < 0 else f"exit {r.returncode}"
    return f"ggml's AMX tile kernel (M >= 2) failed in a probe process ({how})"


def _engines(ggml, w, m: int, amx_tiles_fail: str | None) -> dict[str, GgmlMatmul]:
    """The ggml engines of `BUFFER_TYPES` that take the weight's format on this CPU."""
    out = {}
    for name, buft in BUFFER_TYPES.items():
        if buft == "AMX" and m >= 2 and amx_tiles_fail:
            print(f"\nskipped {name} at M={m}: {amx_tiles_fail}")
            continue
        try:
            out[name] = GgmlMatmul(ggml, w, m, THREADS, buft)
        except pytest.skip.Exception:
            if buft == "CPU":
                raise
    return out


@pytest.mark.parametrize("kn", SHAPES, ids=lambda s: f"K{s[0]}xN{s[1]}")
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "f32"])
def test_ggml_matmul(benchmark, ratios, ggml, amx_tiles_fail, fmt, kn):
    """Both M of one weight in one interleaved loop, so that tierflow at M = 8 also compares
    with ggml's decode (M = 1) measured alongside it."""
    k, n = kn
    rng = np.random.default_rng(7)
    w = tierflow.quantize(rng.standard_normal((k, n)).astype(np.float32) * 0.02, fmt)
    wd = w.dequantize()
    ms = (1, 8)
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in ms}
    outs = {m: np.empty((m, n), np.float32) for m in ms}
    engines: dict[int, dict[str, GgmlMatmul]] = {}
    err: dict[str, float] = {}
    fns: dict[str, Callable[[], object]] = {}
    try:
        for m in ms:
            x, out = xs[m], outs[m]
            engines[m] = _engines(ggml, w, m, amx_tiles_fail)
            tierflow.matmul(x, w, out=out)
            y, mag, bound = _reference(x, wd)
            if fmt == "f32":
                bound = np.zeros_like(bound)  # no activation rounding: float32 sums only
            err[f"tierflow M={m}"] = _check(f"tierflow {fmt} M={m}", out, y, mag, bound)
            for name, g in engines[m].items():
                g.set_x(x)
                g.compute()
                err[f"{name} M={m}"] = _check(f"{name} {fmt} M={m}", g.y, y, mag, bound)
                # tierflow against ggml: within both allowances
                _check(
                    f"tierflow vs {name} {fmt} M={m}", out, g.y.astype(np.float64), mag, 2 * bound
                )
                fns[f"{name} M={m}"] = g.compute
            fns[f"tierflow M={m}"] = lambda x=x, out=out: tierflow.matmul(x, w, out=out)
        # the VNNI layout the model loaders use on this CPU (tierflow.PackedTensor)
        if fmt in ("q8_0", "q4_0") and tierflow.packed_decode_available():
            wp = tierflow.pack(w, fmt + "x16")
            for m in ms:
                got = tierflow.matmul(xs[m], wp)
                assert np.array_equal(
                    got.view(np.uint32), tierflow.matmul(xs[m], w).view(np.uint32)
                )
                fns[f"packed M={m}"] = lambda x=xs[m], out=outs[m]: tierflow.matmul(x, wp, out=out)
        load = os.getloadavg()[0]
        t = _interleaved(fns, ROUNDS)
        load = max(load, os.getloadavg()[0])
    finally:
        for es in engines.values():
            for g in es.values():
                g.close()
    tok = {e: t[e] / int(e.rsplit("=", 1)[1]) for e in t}  # seconds per token
    gbs = {e: round(w.nbytes / t[e] / 1e9, 2) for e in t}
    common = {"load_1min_max": round(load, 2), "rounds": ROUNDS}
    for m in ms:
        tf = f"tierflow M={m}"
        for name in engines[m]:
            e = f"{name} M={m}"
            label = f"ggml: decode {fmt} M={m} K={k} N={n} tierflow x {name} per token"
            target = 1.0 if fmt != "f32" and m == 8 else 0.0
            record(
                ratios,
                label,
                t[e] / t[tf],
                target,
                tierflow_us_per_token=round(tok[tf] * 1e6, 1),
                ggml_us_per_token=round(tok[e] * 1e6, 1),
                tierflow_GBps=gbs[tf],
                ggml_GBps=gbs[e],
                err_of_allowance={"tierflow": round(err[tf], 3), name: round(err[e], 3)},
                note="" if target else "reported",
                **common,
            )
            benchmark.extra_info[label] = round(t[e] / t[tf], 3)
    # The decode target's wording: tierflow's per-token time at M = 8 against ggml's best per-token time
    # at M = 1 (the one-token-at-a-time decode), any engine.
    best = min((e for e in t if e.endswith(" M=1") and e.startswith("ggml")), key=lambda e: t[e])
    label = f"ggml: decode {fmt} K={k} N={n} tierflow M=8 x fastest ggml M=1 ({best}) per token"
    record(
        ratios,
        label,
        tok[best] / tok["tierflow M=8"],
        1.0 if fmt != "f32" else 0.0,
        tierflow_us_per_token=round(tok["tierflow M=8"] * 1e6, 1),
        ggml_us_per_token=round(tok[best] * 1e6, 1),
        **common,
    )
    benchmark.extra_info[label] = round(tok[best] / tok["tierflow M=8"], 3)
    for m in ms if "packed M=1" in t else ():
        e = min(
            (e for e in t if e.endswith(f" M={m}") and e.startswith("ggml")), key=lambda e: t[e]
        )
        label = f"ggml: decode {fmt} M={m} K={k} N={n} tierflow VNNI layout x fastest ggml ({e}) per token"
        record(
            ratios,
            label,
            t[e] / t[f"packed M={m}"],
            1.0 if m == 8 else 0.0,
            tierflow_us_per_token=round(t[f"packed M={m}"] / m * 1e6, 1),
            ggml_us_per_token=round(tok[e] * 1e6, 1),
            tierflow_GBps=round(w.nbytes / t[f"packed M={m}"] / 1e9, 2),
            note="" if m == 8 else "reported",
            **common,
        )
        benchmark.extra_info[label] = round(t[e] / t[f"packed M={m}"], 3)
    benchmark.pedantic(tierflow.matmul, args=(xs[8], w), rounds=1, iterations=1)
