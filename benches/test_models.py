"""Decode speed of a ~1B-parameter Llama against the bound set by weight traffic, same run.

A random Llama-architecture checkpoint (hidden 2048, 22 layers, 32 heads / 4 KV heads,
intermediate 5632, vocab 32000: 1.1e9 parameters, TinyLlama's shape) is written by the benchmark
and adopted into the file tier of a TieredStore whose RAM tier is smaller than the model, so every
decode step streams the weights from the file tier. The bound is measured in the same run: the
time for one sweep that reads every weight a decode step reads, through the same store, without
any arithmetic (bytes per token / that bandwidth). We report decode tokens/s and its ratio to the
bound. Batch 1, greedy, a 16-token prompt.

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


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_vs_weight_traffic_bound(benchmark, checkpoint, tmp_path, fmt):
    total = sum(os.path.getsize(checkpoint / f) for f in os.listdir(checkpoint))
    ram = total // 4  # the RAM tier holds a quarter of the float32 model
    tiers = [tierflow.Tier("ram", ram), tierflow.Tier("disk", None, path="disk")]
    with tierflow.TieredStore(tmp_path / "store", tiers=tiers, verify_reads=False) as store:
        try:
            model = tm.load(checkpoint, store=store, dtype=None if fmt == "f32" else fmt)
        except tierflow.InvalidArgumentError as e:
            pytest.skip(f"{fmt}: {e}")
        names = _decode_weight_names(model)
        per_token = sum(model.weights.nbytes(n) for n in names)
        prompt = np.arange(16, dtype=np.int64) % SHAPE["vocab"]
        cfg = model.config
        cache = tm.KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16 + DECODE_TOKENS + 1)
        logits = model.forward(prompt, cache, last_only=True)
        tok = [int(np.argmax(logits[-1]))]
        sweeps = [_sweep(model, names) for _ in range(2)]

        def decode():
            for _ in range(DECODE_TOKENS):
                lg = model.forward(np.asarray(tok[-1:]), cache, last_only=True)
                tok.append(int(np.argmax(lg[-1])))

        benchmark.pedantic(decode, rounds=1, iterations=1)
        sweeps.append(_sweep(model, names))
        t_decode = benchmark.stats.stats.mean / DECODE_TOKENS
        t_bound = min(sweeps)
        RESULTS[fmt] = {
            "bytes_per_token": per_token,
            "bound_tok_s": 1 / t_bound,
            "decode_tok_s": 1 / t_decode,
            "ratio": t_bound / t_decode,
            "bandwidth_GBps": per_token / t_bound / 1e9,
        }
        benchmark.extra_info.update(RESULTS[fmt])
        r = RESULTS[fmt]
        print(
            f"\n{fmt}: {per_token / 1e9:.2f} GB/token, weight sweep {r['bandwidth_GBps']:.2f} GB/s "
            f"-> bound {r['bound_tok_s']:.2f} tok/s; decode {r['decode_tok_s']:.2f} tok/s "
            f"= {r['ratio']:.2f} x bound"
        )
