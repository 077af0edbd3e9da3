"""Larger than memory: decode in a memory cgroup smaller than the model, tierflow beside llama.cpp.

A random Llama of TinyLlama's shape (hidden 2048, 32 heads / 4 KV heads, intermediate 5632, vocab
32000; ``TIERFLOW_BENCH_LAYERS`` layers, default 8: 1.93 GB in f32) is written to GGUF in F32 and
Q8_0 by ``tierflow.models.write_gguf`` (llama.cpp's own writer). Each engine runs the
same file in a child process placed in a fresh cgroup-v1 memory group whose limit is
``TIERFLOW_BENCH_LIMIT`` (default 0.6) times the file's size; page cache is charged to the group,
so neither engine can keep the whole model in memory. The OS page cache is dropped before every
run (``/proc/sys/vm/drop_caches``), the engines alternate over ``TIERFLOW_BENCH_ROUNDS`` rounds
(default 3), both at 2 threads; each run decodes ``TIERFLOW_BENCH_TOKENS`` tokens (default 8).
Reported: decode tok/s (llama.cpp's by its own timings, and both by wall clock), the bytes each
process read from the block device per token (``/proc/self/io``), and the ratio of the medians.

- llama.cpp (llama-cpp-python, 2 threads) maps the file (``mmap``): the page cache is an LRU
  over a cyclic scan of the layers, so every token reads the whole model from disk again.
- tierflow (``tierflow.models.load(file)`` with its defaults, 2 threads): the default RAM tier
  follows the cgroup's limit, ``read="auto"`` picks ``"resident"``: a fixed part of the weights
  is pinned in the RAM tier once and only the rest is streamed per token (Belady for a cyclic
  scan), with the streamed pages dropped from the page cache after use.

Target: tierflow >= 1.6x llama.cpp's decode tok/s at a limit of ~60% of the model, f32 and q8_0.

Needs root (cgroup v1 memory controller at /sys/fs/cgroup/memory, drop_caches) and
llama-cpp-python (a bench-only extra; installing it compiles llama.cpp):

    pip install llama-cpp-python
    pytest benches/test_outofcore.py -m bench -s

``TIERFLOW_BENCH_DIR=/some/dir`` keeps the GGUF files there between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import tierflow.models as tm
from conftest import record

pytestmark = pytest.mark.bench
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (bench-only extra)")
pytest.importorskip("gguf", reason="the gguf package (tierflow[test]) is not installed")
CGROUP = "/sys/fs/cgroup/memory"
if not (os.path.isdir(CGROUP) and os.access(CGROUP, os.W_OK)):
    pytest.skip("needs root and the cgroup-v1 memory controller", allow_module_level=True)

LAYERS = int(os.environ.get("TIERFLOW_BENCH_LAYERS", "8"))
SHAPE = dict(hidden=2048, layers=LAYERS, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
LIMIT = float(os.environ.get("TIERFLOW_BENCH_LIMIT", "0.6"))
ROUNDS = int(os.environ.get("TIERFLOW_BENCH_ROUNDS", "3"))
TOKENS = int(os.environ.get("TIERFLOW_BENCH_TOKENS", "8"))
PROMPT = 8

# The child: joins its cgroup before importing anything large, loads the file, runs a warm-up
# prefill with one new token, then a prefill with one new token and one with 1 + TOKENS; the difference of the two
# wall-clock times over TOKENS is the decode time per token (measured the same way for both
# engines), and the difference of the bytes the process read from the block device
# (``read_bytes`` of /proc/self/io: cache misses, whether by read() or by a page fault on a
# mapping) over TOKENS is the bytes read per token. For llama.cpp the same difference is also
# taken from its own timings of the single-token evaluations (``llama_perf_context``).
_CHILD = r"""
import json, os, sys, time
cg, engine, path, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
prompt = [300 + 7 * i for i in range(int(sys.argv[5]))]
def read_bytes():
    with open("/proc/self/io") as f:
        return int(next(l for l in f if l.startswith("read_bytes:")).split()[1])
own = None  # llama.cpp: (single-token evaluations, their seconds) of each run
if engine == "tierflow":
    import tierflow, tierflow.models as tm
    tierflow.set_num_threads(2)
    t = time.perf_counter()
    model = tm.load(path)
    load = time.perf_counter() - t
    w = model.weights
    extra = {"read": w.read, "resident_bytes": w.resident_bytes(),
             "ram_tier": [t.capacity for t in model.store.tiers if t.name == "ram"][0]}
    def run(n):
        t = time.perf_counter()
        model.generate(prompt, max_new_tokens=n)
        return time.perf_counter() - t
else:
    import llama_cpp, numpy as np
    # no repacking into anonymous memory (llama.cpp's --no-repack): at this limit llama.cpp's
    # default CPU_REPACK copy of the Q8_0 weights is killed by the OOM killer; F32 is never
    # repacked, so this changes nothing there
    default_params = llama_cpp.llama_cpp.llama_model_default_params
    def no_repack():
        p = default_params()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama_cpp.llama_model_default_params = no_repack
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=64,
                          n_batch=len(prompt), verbose=False)
    load = time.perf_counter() - t
    extra = {}
    own = []
    def run(n):
        llm.reset()
        llama_cpp.llama_synchronize(llm._ctx.ctx)  # its timers count a step once synchronised
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        t = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n):
            last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            llm.eval([int(np.argmax(last))])
        llama_cpp.llama_synchronize(llm._ctx.ctx)
        dt = time.perf_counter() - t
        p = llama_cpp.llama_perf_context(llm._ctx.ctx)
        own.append((p.n_eval, p.t_eval_ms / 1e3))
        return dt
run(1)  # warm-up: the page cache as a step leaves it, not as loading left it
if own is not None:
    own.clear()
r0 = read_bytes()
first = run(1)
r1 = read_bytes()
full = run(1 + tokens)
r2 = read_bytes()
peak = int(open(os.path.join(cg, "memory.max_usage_in_bytes")).read())
if own is not None:  # the same difference, by llama.cpp's own timers
    assert own[1][0] - own[0][0] == tokens, own
    extra["own_decode"] = (own[1][1] - own[0][1]) / tokens
print(json.dumps({"load": load, "first": first, "decode": (full - first) / tokens,
                  "read_per_token": ((r2 - r1) - (r1 - r0)) / tokens,
                  "peak": peak, **extra}))
"""


def _run(engine: str, path: str, limit: int) -> dict:
    cg = os.path.join(CGROUP, f"tierflow-bench-{uuid.uuid4().hex[:8]}")
    os.mkdir(cg)
    try:
        with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, cg, engine, path, str(TOKENS), str(PROMPT)],
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "TIERFLOW_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
        )
        if out.returncode != 0:
            raise AssertionError(f"{engine} failed ({out.returncode}): {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.rmdir(cg)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The two GGUF files, written once into ``TIERFLOW_BENCH_DIR`` when that is set (and
    reused by later runs), else into a temporary folder."""
    keep = os.environ.get("TIERFLOW_BENCH_DIR")
    d = Path(keep) if keep else tmp_path_factory.mktemp("outofcore")
    d.mkdir(parents=True, exist_ok=True)
    ck = d / f"ck-{LAYERS}"
    out = {fmt: str(d / f"outofcore-{LAYERS}-{fmt}.gguf") for fmt in ("F32", "Q8_0")}
    if all(os.path.exists(p) for p in out.values()):
        return out
    tm.write_tiny_checkpoint(
        ck, "LlamaForCausalLM", max_positions=2048, std=0.02, seed=0, tie=False, **SHAPE
    )
    for fmt, path in out.items():
        tm.write_gguf(ck, path + ".part", fmt)
        os.replace(path + ".part", path)
    shutil.rmtree(ck)
    return out


@pytest.mark.parametrize("fmt", ["F32", "Q8_0"])
def test_decode_in_a_cgroup_smaller_than_the_model(benchmark, ratios, files, fmt):
    path = files[fmt]
    size = os.path.getsize(path)
    limit = int(size * LIMIT)
    runs: dict[str, list[dict]] = {"llama.cpp": [], "tierflow": []}
    for _ in range(ROUNDS):
        for engine in ("llama.cpp", "tierflow"):
            runs[engine].append(_run(engine, path, limit))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    def med(engine: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[engine]]))

    tf = 1 / med("tierflow", "decode")
    lc_own = 1 / med("llama.cpp", "own_decode")  # llama.cpp's own timings: the ratio's anchor
    lc_wall = 1 / med("llama.cpp", "decode")  # measured as tierflow's, a cross-check
    ratio = tf / lc_own
    t = runs["tierflow"][-1]
    gb = 1e9
    print(
        f"\n{fmt}: file {size / gb:.2f} GB, cgroup limit {limit / gb:.2f} GB ({LIMIT:.0%}); "
        f"decode tok/s, median of {ROUNDS} interleaved runs, page cache dropped before each:\n"
        f"  tierflow  {tf:.2f} tok/s, {med('tierflow', 'read_per_token') / gb:.3f} GB read/token "
        f"(read={t['read']}, {t['resident_bytes'] / gb:.2f} GB pinned, RAM tier "
        f"{t['ram_tier'] / gb:.2f} GB, cgroup peak {t['peak'] / gb:.2f} GB)\n"
        f"  llama.cpp {lc_own:.2f} tok/s (its own timings; {lc_wall:.2f} by wall clock), "
        f"{med('llama.cpp', 'read_per_token') / gb:.3f} GB read/token (cgroup peak "
        f"{max(r['peak'] for r in runs['llama.cpp']) / gb:.2f} GB)\n"
        f"  ratio {ratio:.2f}x ({tf / lc_wall:.2f}x against llama.cpp by wall clock)"
    )
    for k, v in runs.items():
        print(
            f"  {k}: "
            + ", ".join(
                f"{1 / r['decode']:.2f} tok/s {r['read_per_token'] / gb:.3f} GB/token" for r in v
            )
        )
    record(
        ratios,
        f"outofcore_decode_{fmt}",
        ratio,
        1.6,
        limit_bytes=limit,
        file_bytes=size,
        tierflow_tok_s=round(tf, 3),
        llamacpp_tok_s=round(lc_own, 3),
        llamacpp_wall_tok_s=round(lc_wall, 3),
        tierflow_read_per_token=med("tierflow", "read_per_token"),
        llamacpp_read_per_token=med("llama.cpp", "read_per_token"),
        pinned_bytes=t["resident_bytes"],
    )
