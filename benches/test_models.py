"""Decode speed of a ~1B-parameter Llama against the bound set by weight traffic, same run.

A random Llama-architecture checkpoint (hidden 2048, 22 layers, 32 heads / 4 KV heads,
intermediate 5632, vocab 32000: 1.1e9 parameters, TinyLlama's shape) is written by the benchmark
and adopted into the file tier of a TieredStore whose RAM tier is smaller than the model, so every
decode step reads the weights from the file tier. Three read paths (see the test's docstring):
streamed by the kernels (what ``read="auto"`` picks), in place through the OS page cache, and
through the store's RAM tier. The bound is measured in the same run for each. Batch 1, greedy, a
16-token prompt.

Run:  pytest benches/test_models.py -m bench --benchmark-enable -s
Smaller model (quick look):  TIERFLOW_BENCH_LAYERS=4 pytest benches/test_models.py -m bench ...
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import tierflow
import tierflow.models as tm
from conftest import record

pytestmark = pytest.mark.bench

LAYERS = int(os.environ.get("TIERFLOW_BENCH_LAYERS", "22"))
SHAPE = dict(hidden=2048, layers=LAYERS, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
DECODE_TOKENS = int(os.environ.get("TIERFLOW_BENCH_TOKENS", "4"))
FORMATS = ["f32", "bf16", "q8_0", "q4_0"]
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama1b")
    t = time.perf_counter()
    tm.write_tiny_checkpoint(d, "LlamaForCausalLM", max_positions=2048, std=0.02, seed=0, **SHAPE)
    print(f"\nwrote {d} in {time.perf_counter() - t:.1f}s")
    return d


def _decode_weight_names(model) -> list[str]:
    return [n for n in model.weights.names() if "embed_tokens" not in n]


def _sweep(model, names) -> float:
    """Seconds to fetch every weight once from its tier through the store (no arithmetic)."""
    t = time.perf_counter()
    for n in names:
        model.weights.fetch(n)
    return time.perf_counter() - t


def _file_read_seconds(model, names) -> float:
    """Seconds to read every weight's bytes once from its file (warm page cache) into one
    reused 8 MiB buffer with plain ``readinto``: the file tier's read bandwidth, measured
    independently of tierflow's read path."""
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    t = time.perf_counter()
    for n in names:
        info = model.store.info(model.weights.prefix + n)
        path = info["file"]
        offset, left = _data_offset(path, info), int(info["nbytes"])
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while left > 0:
                got = f.readinto(view[: min(left, len(buf))])
                if not got:
                    break
                left -= got
    return time.perf_counter() - t


def _data_offset(path: str, info: dict) -> int:
    """Byte offset of the tensor's data in its safetensors file (from the header)."""
    import json
    import struct

    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    name = info["name"]
    # An adopted checkpoint holds it under its own name; a store-written file holds one tensor.
    entry = header.get(name) or next(v for k, v in header.items() if k != "__metadata__")
    return 8 + hlen + int(entry["data_offsets"][0])


# "store" only for f32: the converted models (1.1 GB and less) fit the RAM tier, where the
# store caches them, so that mode would not read the file tier at every step.
MODES = {
    "f32": ["stream", "mmap", "store"],
    "bf16": ["stream", "mmap"],
    "q8_0": ["stream", "mmap"],
    "q4_0": ["stream", "mmap"],
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_vs_weight_traffic_bound(benchmark, checkpoint, tmp_path, fmt, ratios):
    """Per read mode of the matmul weights in the file tier (``load(read=...)``):

    - "stream" (what ``read="auto"`` picks here: the RAM tier holds a quarter of the model):
      the kernels stream each weight from the file tier; bound: bytes per token / the file
      tier's read bandwidth (plain ``readinto`` of the same bytes, warm page cache, same run);
    - "mmap": read in place through the page cache; bound: bytes per token / RAM read
      bandwidth (``tierflow.kernels.bench.memory_bandwidth``, same run);
    - "store": every weight goes file tier -> RAM tier through the store, evicting; bound: one
      such sweep without arithmetic.
    """
    total = sum(os.path.getsize(checkpoint / f) for f in os.listdir(checkpoint))
    ram = total // 4  # the RAM tier holds a quarter of the float32 model
    tiers = [tierflow.Tier("ram", ram), tierflow.Tier("disk", None, path="disk")]
    with tierflow.TieredStore(tmp_path / "store", tiers=tiers, verify_reads=False) as store:
        model = tm.load(checkpoint, store=store, dtype=None if fmt == "f32" else fmt)
        # "auto" streams when the weights exceed the RAM tier (f32, bf16 here; the converted
        # q8_0 / q4_0 models fit it and would be cached): every mode is measured explicitly.
        names = _decode_weight_names(model)
        per_token = sum(model.weights.nbytes(n) for n in names)
        prompt = np.arange(16, dtype=np.int64) % SHAPE["vocab"]
        cfg = model.config
        for mode in MODES[fmt]:
            model.weights.read = mode
            cache = tm.KVCache(
                cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16 + DECODE_TOKENS + 1
            )
            logits = model.forward(prompt, cache, last_only=True)
            tok = [int(np.argmax(logits[-1]))]

            def bound_seconds(mode=mode) -> float:
                if mode == "store":
                    return _sweep(model, names)
                if mode == "stream":
                    return _file_read_seconds(model, names)
                return per_token / tierflow.kernels.bench.memory_bandwidth()

            bounds = [bound_seconds() for _ in range(2)]
            t = time.perf_counter()
            for _ in range(DECODE_TOKENS):
                lg = model.forward(np.asarray(tok[-1:]), cache, last_only=True)
                tok.append(int(np.argmax(lg[-1])))
            t_decode = (time.perf_counter() - t) / DECODE_TOKENS
            bounds.append(bound_seconds())
            t_bound = min(bounds)
            r = {
                "bytes_per_token": per_token,
                "bound_tok_s": 1 / t_bound,
                "decode_tok_s": 1 / t_decode,
                "ratio": t_bound / t_decode,
                "bandwidth_GBps": per_token / t_bound / 1e9,
            }
            RESULTS[f"{fmt}-{mode}"] = r
            benchmark.extra_info[mode] = r
            what = {"mmap": "RAM bandwidth", "store": "store sweep", "stream": "file read"}[mode]
            record(
                ratios,
                f"models: {LAYERS}-layer Llama ({fmt}, {mode}) decode tok/s / weight-traffic bound",
                r["ratio"],
                0.8,
                note=f"{r['decode_tok_s']:.2f} tok/s; bound {r['bound_tok_s']:.2f} tok/s "
                f"({per_token / 1e9:.2f} GB/token at {what} {r['bandwidth_GBps']:.2f} GB/s)",
            )
            print(
                f"\n{fmt} {mode}: {per_token / 1e9:.2f} GB/token, {what} "
                f"{r['bandwidth_GBps']:.2f} GB/s -> bound {r['bound_tok_s']:.2f} tok/s; decode "
                f"{r['decode_tok_s']:.2f} tok/s = {r['ratio']:.2f} x bound"
            )
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_prefill_512(benchmark, checkpoint, tmp_path, ratios):
    """Prefill of a 512-token prompt (float32 weights): tokens/s, and its FLOP rate as a ratio to
    tierflow.matmul on a square 1024^3 float32 GEMM measured in the same run (the anchor)."""
    with tierflow.TieredStore(tmp_path / "store") as store:
        model = tm.load(checkpoint, store=store, tier="ram")
        cfg = model.config
        ids = np.arange(512, dtype=np.int64) % cfg.vocab_size
        model(ids[:8])  # warm up

        def prefill():
            cache = tm.KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 512)
            model.forward(ids, cache, last_only=True)

        benchmark.pedantic(prefill, rounds=1, iterations=1)
        t = benchmark.stats.stats.mean
        params = sum(int(np.prod(model.weights.infos[n].shape)) for n in model.weights.layouts)
        flops = 2 * params * 512
        a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
        tierflow.matmul(a, a)
        t0 = time.perf_counter()
        for _ in range(3):
            tierflow.matmul(a, a)
        gemm = 3 * 2 * 1024**3 / (time.perf_counter() - t0)
        r = {"prefill_tok_s": 512 / t, "gflops": flops / t / 1e9, "gemm_gflops": gemm / 1e9}
        r["ratio_to_gemm"] = r["gflops"] / r["gemm_gflops"]
        RESULTS["prefill"] = r
        record(
            ratios,
            f"models: {LAYERS}-layer Llama prefill 512 FLOP rate / square GEMM",
            r["ratio_to_gemm"],
            0.0,
            note=f"{r['prefill_tok_s']:.1f} tok/s (no target: reported)",
        )
        benchmark.extra_info.update(r)
        print(
            f"\nprefill 512: {r['prefill_tok_s']:.1f} tok/s, {r['gflops']:.1f} GFLOP/s "
            f"= {r['ratio_to_gemm']:.2f} x square GEMM ({r['gemm_gflops']:.1f} GFLOP/s)"
        )


def test_decode_vs_transformers(checkpoint, tmp_path, ratios):
    """Where PyTorch and transformers are installed: their CPU decode speed on the same
    checkpoint (float32, 2 threads, weights in RAM) against tierflow's (float32, weights in RAM)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(tierflow.get_num_threads())
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(checkpoint), torch_dtype=torch.float32
    )
    prompt = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        hf.generate(prompt, max_new_tokens=2, do_sample=False)
        t = time.perf_counter()
        hf.generate(
            prompt,
            max_new_tokens=1 + DECODE_TOKENS,
            do_sample=False,
            min_new_tokens=1 + DECODE_TOKENS,
        )
        t_hf = time.perf_counter() - t
    with tierflow.TieredStore(tmp_path / "store") as store:
        model = tm.load(checkpoint, store=store, tier="ram")
        model.generate(np.arange(16), 2)
        t = time.perf_counter()
        model.generate(np.arange(16), 1 + DECODE_TOKENS)
        t_tf = time.perf_counter() - t
    record(ratios, "models: decode speed tierflow / transformers (f32, RAM)", t_hf / t_tf, 1.0)
    print(
        f"\ntransformers {t_hf:.2f}s, tierflow {t_tf:.2f}s for prefill 16 + {DECODE_TOKENS} tokens"
    )
