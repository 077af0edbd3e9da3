"""A Llama checkpoint folder written as a GGUF file, the way llama.cpp's converter writes one.

A test and benchmark utility (like :func:`~tierflow.models.write_tiny_checkpoint`): it makes the
files the GGUF tests read and the files llama.cpp and tierflow run side by side in the benchmarks.
It writes with llama.cpp's own writer, the ``gguf`` package, imported only when called, so
tierflow has no runtime dependency on it (``pip install gguf``, part of ``tierflow[test]``).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InvalidArgumentError, MissingFileError
from ..kernels import quantize
from . import _checkpoint as ck
from .config import read_config

__all__ = ["GGUF_WRITE_FORMATS", "llamacpp_permute", "write_gguf"]

#: the tensor types :func:`write_gguf` writes
GGUF_WRITE_FORMATS = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
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


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp ``convert_hf_to_gguf.py``'s ``permute`` of q / k rows (``n_head``: the heads of
    ``w``): per head, rows ``(2, head_dim / 2)`` become ``(head_dim / 2, 2)``, the pairs its
    interleaved RoPE rotates."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary llama.cpp accepts: ``<unk> <s> </s>``, the 256 byte
    tokens ``<0xNN>`` (as many as fit), then ``t<i>``; score ``-i``; llama.cpp token types
    (2 unknown, 3 control, 6 byte, 1 normal)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    tokens, types = tokens[:n], types[:n]
    tokens += [f"t{i}" for i in range(len(tokens), n)]
    types += [1] * (n - len(types))
    return tokens, [float(-i) for i in range(n)], types


def write_gguf(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str = "F32",
    *,
    embd_fmt: str = "F32",
) -> str:
    """Write the Llama checkpoint ``folder`` (config.json + safetensors, e.g. from
    :func:`~tierflow.models.write_tiny_checkpoint`) to the GGUF file ``out``; returns its path.

    The matmul weights are written in ``fmt`` (one of :data:`GGUF_WRITE_FORMATS`), the token
    table in ``embd_fmt``, norms in F32. Q8_0 / Q4_0 blocks are made by
    :func:`tierflow.quantize` of the ``(K, N)`` operand (ggml's row blocks along K), BF16 by
    truncating float32 (the high 16 bits). The q / k rows are permuted as llama.cpp's
    converter does (:func:`llamacpp_permute`); the metadata are the ``llama.*`` keys and a
    vocabulary llama.cpp loads (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, byte tokens, then ``t<i>``).
    A tied head is written as the token table only, as llama.cpp's converter does.

    Raises:
        MissingFileError: the ``gguf`` package is not installed, or the folder lacks a checkpoint.
        InvalidArgumentError: an unknown format, or a checkpoint that is not a Llama.
    """
    try:
        import gguf
    except ImportError:
        raise MissingFileError(
            "write_gguf needs llama.cpp's gguf package: pip install gguf (or 'tierflow[test]')"
        ) from None
    for f in (fmt, embd_fmt):
        if f not in GGUF_WRITE_FORMATS:
            raise InvalidArgumentError(
                f"GGUF format must be one of {GGUF_WRITE_FORMATS}, got {f!r}"
            )
    folder = os.fspath(folder)
    cfg = read_config(folder)
    if cfg.family != "llama":
        raise InvalidArgumentError(f"write_gguf writes Llama checkpoints, not {cfg.architecture}")
    infos: dict[str, ck.TensorInfo] = {}
    for path in ck.checkpoint_files(folder):
        infos.update(ck.read_header(path))
    sd = ck.mmap_tensors(infos)
    w = gguf.GGUFWriter(os.fspath(out), "llama")
    w.add_context_length(cfg.max_positions)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    tokens, scores, types = _vocab(cfg.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for i in range(cfg.num_layers):
        for a, b in _LAYER:
            names[f"model.layers.{i}.{a}.weight"] = f"blk.{i}.{b}.weight"
    for hf, name in names.items():
        if hf not in sd:  # a tied head: the token table serves as the head
            continue
        t = ck.as_float32(np.asarray(sd[hf]), infos[hf].dtype).astype(np.float32, copy=True)
        if name.endswith("attn_q.weight"):
            t = llamacpp_permute(t, cfg.num_heads)
        elif name.endswith("attn_k.weight"):
            t = llamacpp_permute(t, cfg.num_kv_heads)
        f = embd_fmt if name == "token_embd.weight" else fmt if t.ndim == 2 else "F32"
        if f in ("Q8_0", "Q4_0"):
            q = quantize(np.ascontiguousarray(t.T), f.lower())
            raw = np.asarray(q.data).reshape(t.shape[0], -1)
            w.add_tensor(name, raw, raw_dtype=getattr(gguf.GGMLQuantizationType, f))
        elif f == "F16":
            w.add_tensor(name, t.astype(np.float16))
        elif f == "BF16":
            bits = (t.view(np.uint32) >> 16).astype(np.uint16)
            w.add_tensor(name, bits, raw_shape=t.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return os.fspath(out)
