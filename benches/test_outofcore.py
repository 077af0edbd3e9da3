"""Larger than memory: decode in a memory cgroup smaller than the model, tierflow beside llama.cpp.

A random Llama of TinyLlama's shape (hidden 2048, 32 heads / 4 KV heads, intermediate 5632, vocab
32000; ``TIERFLOW_BENCH_LAYERS`` layers, default 8: 1.93 GB in f32) is written to GGUF in F32 and
Q8_0 with llama.cpp's own writer (``write_gguf`` of ``test_llamacpp.py``). Each engine runs the
same file in a child process placed in a fresh cgroup-v1 memory group whose limit is
``TIERFLOW_BENCH_LIMIT`` (default 0.6) times the file's size; page cache is charged to the group,
so neither engine can keep the whole model in memory. The OS page cache is dropped before every
run (``/proc/sys/vm/drop_caches``), the engines alternate over ``TIERFLOW_BENCH_ROUNDS`` rounds
(default 3), and the ratio of the median decode tok/s is reported.

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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

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

from test_llamacpp import write_gguf  # noqa: E402  (after the skips: it needs llama_cpp)

LAYERS = int(os.environ.get("TIERFLOW_BENCH_LAYERS", "8"))
SHAPE = dict(hidden=2048, layers=LAYERS, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
LIMIT = float(os.environ.get("TIERFLOW_BENCH_LIMIT", "0.6"))
ROUNDS = int(os.environ.get("TIERFLOW_BENCH_ROUNDS", "3"))
TOKENS = int(os.environ.get("TIERFLOW_BENCH_TOKENS", "4"))
PROMPT = 8

# The child: joins its cgroup before importing anything large, loads the file, times a prefill
# with one new token, then a prefill with 1 + TOKENS (the difference over TOKENS: decode time).
_CHILD = r"""
import json, os, sys, time
cg, engine, path, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
prompt = [300 + 7 * i for i in range(int(sys.argv[5]))]
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
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=64,
                          n_batch=len(prompt), verbose=False)
    load = time.perf_counter() - t
    extra = {}
    def run(n):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n):
            last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            llm.eval([int(np.argmax(last))])
        return time.perf_counter() - t
first = run(1)
full = run(1 + tokens)
peak = int(open(os.path.join(cg, "memory.max_usage_in_bytes")).read())
print(json.dumps({"load": load, "first": first, "decode": (full - first) / tokens,
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
            f.write("1")
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
    d = tmp_path_factory.mktemp("outofcore")
    ck = str(d / "ck")
    tm.write_tiny_checkpoint(
        ck, "LlamaForCausalLM", max_positions=2048, std=0.02, seed=0, tie=False, **SHAPE
    )
    out = {}
    for fmt in ("F32", "Q8_0"):
        out[fmt] = str(d / f"model-{fmt}.gguf")
        write_gguf(ck, out[fmt], fmt)
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
    tps = {k: float(np.median([1 / r["decode"] for r in v])) for k, v in runs.items()}
    ratio = tps["tierflow"] / tps["llama.cpp"]
    t = runs["tierflow"][-1]
    print(
        f"\n{fmt}: file {size / 1e9:.2f} GB, cgroup limit {limit / 1e9:.2f} GB "
        f"({LIMIT:.0%}); decode tok/s (median of {ROUNDS}, cold page cache each run): "
        f"tierflow {tps['tierflow']:.2f} (read={t['read']}, {t['resident_bytes'] / 1e9:.2f} GB "
        f"pinned, RAM tier {t['ram_tier'] / 1e9:.2f} GB, peak {t['peak'] / 1e9:.2f} GB) "
        f"llama.cpp {tps['llama.cpp']:.2f} (peak "
        f"{max(r['peak'] for r in runs['llama.cpp']) / 1e9:.2f} GB): {ratio:.2f}x"
    )
    for k, v in runs.items():
        print(f"  {k}: " + ", ".join(f"{1 / r['decode']:.2f}" for r in v) + " tok/s")
    record(
        ratios,
        f"outofcore_decode_{fmt}",
        ratio,
        1.6,
        limit_bytes=limit,
        file_bytes=size,
        tierflow_tok_s=round(tps["tierflow"], 3),
        llamacpp_tok_s=round(tps["llama.cpp"], 3),
        pinned_bytes=t["resident_bytes"],
    )
