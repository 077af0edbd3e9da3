"""tierflow and llama.cpp on the same GGUF file, side by side.

A random Llama of TinyLlama's shape (hidden 2048, 32 heads / 4 KV heads, intermediate 5632,
vocab 32000; ``TIERFLOW_BENCH_LAYERS`` layers, default 2) is written with ``tierflow.models.
write_tiny_checkpoint``, then to GGUF in F32, F16, Q8_0 and Q4_0 with llama.cpp's own writer
(the ``gguf`` package; q / k rows permuted as llama.cpp's converter does; Q8_0 / Q4_0 blocks
made by ``tierflow.quantize``). Each file is run by llama.cpp (llama-cpp-python, 2 threads) and
by ``tierflow.models.load(file)`` (2 threads): a 32-token prefill and 16 greedy decode steps,
alternating the two engines over 3 rounds, medians. In F32 both must greedy-decode the same
first tokens. Prints decode and prefill tok/s and the ratios tierflow / llama.cpp (targets:
decode >= 1.0x, prefill >= 0.8x).

Run (llama-cpp-python is a bench-only extra: installing it compiles llama.cpp, a few minutes):

    pip install llama-cpp-python
    TIERFLOW_NUM_THREADS=2 pytest benches/test_llamacpp.py -m bench -s
"""

from __future__ import annotations

import json
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
gguf = pytest.importorskip("gguf", reason="the gguf package (tierflow[test]) is not installed")

THREADS = 2
LAYERS = int(os.environ.get("TIERFLOW_BENCH_LAYERS", "2"))
SHAPE = dict(hidden=2048, layers=LAYERS, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
PROMPT = 32
DECODE = 16
ROUNDS = 3
FORMATS = ("F32", "F16", "Q8_0", "Q4_0")
_LAYER = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's q / k row permutation."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(folder: str, out: str, fmt: str) -> None:
    from safetensors.numpy import load_file

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(folder, "model.safetensors"))
    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    vocab = cfg["vocab_size"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(len(tokens), vocab)]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for i in range(cfg["num_hidden_layers"]):
        for a, b in _LAYER:
            names[f"model.layers.{i}.{a}.weight"] = f"blk.{i}.{b}.weight"
    for hf, name in names.items():
        if hf not in sd:  # a tied head
            continue
        t = sd[hf].astype(np.float32)
        if name.endswith("attn_q.weight"):
            t = _permute(t, cfg["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            t = _permute(t, cfg["num_key_value_heads"])
        f = fmt if t.ndim == 2 and name != "token_embd.weight" else "F32"
        if f in ("Q8_0", "Q4_0"):
            q = tierflow.quantize(np.ascontiguousarray(t.T), f.lower())
            raw = np.asarray(q.data).reshape(t.shape[0], -1)
            w.add_tensor(name, raw, raw_dtype=getattr(gguf.GGMLQuantizationType, f))
        elif f == "F16":
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
        write_gguf(ck, out[fmt], fmt)
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
    llm = llama_cpp.Llama(
        model_path=files[fmt],
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=128,
        n_batch=PROMPT,
        verbose=False,
    )
    model = tm.load(files[fmt])
    runs: dict[str, list[tuple[float, float, list[int]]]] = {"llama.cpp": [], "tierflow": []}
    _llamacpp_run(llm, prompt)  # warm-up
    _tierflow_run(model, prompt)
    for _ in range(ROUNDS):
        runs["llama.cpp"].append(_llamacpp_run(llm, prompt))
        runs["tierflow"].append(_tierflow_run(model, prompt))
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
