"""tierflow and llama.cpp on the same GGUF file, side by side.

A random Llama of TinyLlama's shape (hidden 2048, 32 heads / 4 KV heads, intermediate 5632,
vocab 32000; ``TIERFLOW_BENCH_LAYERS`` layers, default 2) is written with ``tierflow.models.
write_tiny_checkpoint``, then to GGUF in F32, F16, Q8_0 and Q4_0 by ``tierflow.models.write_gguf``
(llama.cpp's own writer, the ``gguf`` package; q / k rows permuted as llama.cpp's converter
does; Q8_0 / Q4_0 blocks made by ``tierflow.quantize``). Each file is run by llama.cpp (llama-cpp-python, 2 threads) and
by ``tierflow.models.load(file)`` (2 threads): a 32-token prefill and 16 greedy decode steps,
alternating the two engines over 3 rounds, medians. In F32 both must greedy-decode the same
first tokens. Prints decode and prefill tok/s and the ratios tierflow / llama.cpp (targets:
decode >= 1.0x, prefill >= 0.8x).

Run (llama-cpp-python is a bench-only extra: installing it compiles llama.cpp, a few minutes):

    pip install llama-cpp-python
    TIERFLOW_NUM_THREADS=2 pytest benches/test_llamacpp.py -m bench -s

``TIERFLOW_BENCH_FORMATS=Q8_0,Q4_0`` runs only those formats; ``TIERFLOW_LLAMACPP_NO_REPACK=1``
runs llama.cpp without its repacked CPU buffers (``--no-repack``); ``TIERFLOW_LLAMACPP_BATCH=1``
makes llama.cpp evaluate the prompt a token at a time (its decode figures are then those of its
default buffers where their multi-row path crashes; its prefill figure is not comparable).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import tierflow
import tierflow.models as tm
from conftest import record as _record

pytestmark = pytest.mark.bench
llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (bench-only: pip install llama-cpp-python, "
    "which compiles llama.cpp)",
)
pytest.importorskip("gguf", reason="the gguf package (tierflow[test]) is not installed")

THREADS = 2
LAYERS = int(os.environ.get("TIERFLOW_BENCH_LAYERS", "2"))
SHAPE = dict(hidden=2048, layers=LAYERS, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
PROMPT = 32
DECODE = 16
ROUNDS = 3
FORMATS = tuple(os.environ.get("TIERFLOW_BENCH_FORMATS", "F32,F16,Q8_0,Q4_0").split(","))
#: TIERFLOW_LLAMACPP_NO_REPACK=1: llama.cpp without its repacked (extra) CPU buffer types
NO_REPACK = os.environ.get("TIERFLOW_LLAMACPP_NO_REPACK") == "1"
#: TIERFLOW_LLAMACPP_BATCH=1: llama.cpp evaluates the prompt one token at a time (so only its
#: one-row kernels run: its AMX buffer type's tile path, used from 2 rows, dies on some VMs)
BATCH = int(os.environ.get("TIERFLOW_LLAMACPP_BATCH", str(PROMPT)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("llamacpp")
    ck = str(d / "ck")
    tm.write_tiny_checkpoint(
        ck, "LlamaForCausalLM", max_positions=2048, std=0.02, seed=0, tie=False, **SHAPE
    )
    out = {}
    for fmt in FORMATS:
        out[fmt] = str(d / f"model-{fmt}.gguf")
        tm.write_gguf(ck, out[fmt], fmt)
    return out


def _llamacpp_run(llm, prompt: list[int]) -> tuple[float, float, list[int]]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    toks = []
    for _ in range(DECODE):
        # the last position's logits, as llama.cpp left them (no copy into llm.scores)
        last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        tok = int(np.argmax(last))
        toks.append(tok)
        llm.eval([tok])
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / DECODE, toks


def _tierflow_run(model, prompt: list[int]) -> tuple[float, float, list[int]]:
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1)
    t1 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=DECODE + 1)
    t2 = time.perf_counter()
    return (
        t1 - t0,
        ((t2 - t1) - (t1 - t0)) / DECODE,
        out[len(prompt) : len(prompt) + DECODE].tolist(),
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_gguf_file(benchmark, ratios, files, fmt):
    tierflow.set_num_threads(THREADS)
    prompt = [int(v) for v in np.random.default_rng(1).integers(259, SHAPE["vocab"], PROMPT)]
    default_params = llama_cpp.llama_cpp.llama_model_default_params
    if NO_REPACK:  # llama.cpp's --no-repack: weights used as mapped, no extra CPU buffer types

        def no_repack():
            p = default_params()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_cpp.llama_model_default_params = no_repack
    try:
        llm = llama_cpp.Llama(
            model_path=files[fmt],
            n_threads=THREADS,
            n_threads_batch=THREADS,
            n_ctx=128,
            n_batch=BATCH,
            n_ubatch=BATCH,
            verbose=False,
        )
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default_params
    model = tm.load(files[fmt])
    runs: dict[str, list[tuple[float, float, list[int]]]] = {"llama.cpp": [], "tierflow": []}
    _llamacpp_run(llm, prompt)  # warm-up
    _tierflow_run(model, prompt)
    for _ in range(ROUNDS):
        # a pause after each engine: both keep idle threads polling for a moment after a call
        runs["llama.cpp"].append(_llamacpp_run(llm, prompt))
        time.sleep(0.3)
        runs["tierflow"].append(_tierflow_run(model, prompt))
        time.sleep(0.3)
    benchmark.pedantic(model.generate, args=(prompt, 1), rounds=1, iterations=1)
    med = {
        k: (float(np.median([r[0] for r in v])), float(np.median([r[1] for r in v])))
        for k, v in runs.items()
    }
    toks = {k: v[-1][2] for k, v in runs.items()}
    if fmt == "F32":
        assert toks["tierflow"][:4] == toks["llama.cpp"][:4], toks
    pre = {k: PROMPT / v[0] for k, v in med.items()}
    dec = {k: 1 / v[1] for k, v in med.items()}
    agree = sum(a == b for a, b in zip(toks["tierflow"], toks["llama.cpp"], strict=True))
    print(
        f"\n{fmt}: decode tok/s tierflow {dec['tierflow']:.1f} llama.cpp {dec['llama.cpp']:.1f}"
        f" ({dec['tierflow'] / dec['llama.cpp']:.2f}x); prefill {PROMPT} tok/s tierflow "
        f"{pre['tierflow']:.1f} llama.cpp {pre['llama.cpp']:.1f} "
        f"({pre['tierflow'] / pre['llama.cpp']:.2f}x); greedy tokens equal: {agree}/{DECODE}"
    )
    note = f"{LAYERS}-layer TinyLlama shape, tok/s tierflow vs llama.cpp"
    _record(
        ratios,
        f"llama.cpp: {fmt} decode",
        dec["tierflow"] / dec["llama.cpp"],
        1.0,
        note=f"{note}: {dec['tierflow']:.1f} vs {dec['llama.cpp']:.1f}",
    )
    _record(
        ratios,
        f"llama.cpp: {fmt} prefill {PROMPT}",
        pre["tierflow"] / pre["llama.cpp"],
        0.8,
        note=f"{note}: {pre['tierflow']:.1f} vs {pre['llama.cpp']:.1f}",
    )
