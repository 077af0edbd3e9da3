"""Llama-architecture GGUF files (llama.cpp's format) as tierflow models.

``read_gguf(path)`` parses a GGUF header with tierflow's own reader (Rust, ``pread``, every count
and length checked against the file size before anything is allocated): metadata, tensor infos,
alignment. ``load_gguf(path)`` (what :func:`tierflow.models.load` calls for a ``.gguf`` file)
builds the :class:`~tierflow.models.ModelConfig` from the ``llama.*`` metadata, adopts the
tensors into a :class:`~tierflow.TieredStore` in place (``TieredStore.load_gguf``: F32 / F16 /
BF16 as arrays of their bytes, Q8_0 / Q4_0 as the :class:`~tierflow.QuantizedTensor` blocks they
already are: ggml's block layouts are tierflow's, so nothing is requantised) under the Hugging
Face tensor names, and returns the model.

llama.cpp's converter permutes the rows of every ``attn_q`` / ``attn_k`` weight (per head,
``(2, head_dim / 2)`` rows become ``(head_dim / 2, 2)``, so its interleaved RoPE sees the pairs
Hugging Face's rotate-half RoPE uses). The loader undoes that permutation: those two weights per
layer are read once, their rows (whole rows of blocks for Q8_0 / Q4_0, which is exact because
blocks run along the row) put back in Hugging Face order, and stored in the same tier as a copy
owned by the store; every other tensor stays in the file.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _tierflow
from ..errors import InvalidArgumentError, ShapeError, TensorNotFoundError
from ..kernels import PackedTensor, QuantizedTensor
from ..store import TieredStore
from . import _checkpoint as ck
from ._weights import READ_MODES, WEIGHT_FORMATS, Weights, _embedding_infos, _is_file_tier
from .config import ModelConfig, matmul_layouts

__all__ = ["GGUFFile", "GGUFTokenizer", "GGUFWeights", "gguf_config", "load_gguf", "read_gguf"]

#: GGUF tensor types tierflow computes with, and their formats as QuantizedTensors
_BLOCK_FORMATS = {"Q8_0": "q8_0", "Q4_0": "q4_0"}
_FLOAT_TYPES = ("F32", "F16", "BF16")

#: llama.cpp tensor names -> Hugging Face Llama names ({n}: layer number)
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{n}.attn_norm.weight": "model.layers.{n}.input_layernorm.weight",
    "blk.{n}.attn_q.weight": "model.layers.{n}.self_attn.q_proj.weight",
    "blk.{n}.attn_k.weight": "model.layers.{n}.self_attn.k_proj.weight",
    "blk.{n}.attn_v.weight": "model.layers.{n}.self_attn.v_proj.weight",
    "blk.{n}.attn_output.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "blk.{n}.ffn_norm.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "blk.{n}.ffn_gate.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "blk.{n}.ffn_up.weight": "model.layers.{n}.mlp.up_proj.weight",
    "blk.{n}.ffn_down.weight": "model.layers.{n}.mlp.down_proj.weight",
}
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_counter = itertools.count(1)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: ggml type name, ``ne`` (innermost dimension first), absolute
    byte offset and size of its data."""

    name: str
    type: str
    ne: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The NumPy / PyTorch shape: ``ne`` reversed (a weight ``ne = [K, N]`` is ``(N, K)``)."""
        return tuple(reversed(self.ne))


@dataclass(frozen=True)
class GGUFTokenizer:
    """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata (not a tokenizer
    implementation: the vocabulary and special ids, for a caller's own tokenizer)."""

    model: str | None
    tokens: list[str]
    scores: list[float] | None
    token_types: list[int] | None
    merges: list[str] | None
    bos_token_id: int | None
    eos_token_id: int | None
    unknown_token_id: int | None
    padding_token_id: int | None


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF header (see :func:`read_gguf`)."""

    path: str
    version: int
    alignment: int
    data_offset: int
    file_size: int
    metadata: dict[str, Any]
    metadata_types: dict[str, str]
    tensors: dict[str, GGUFTensor] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None

    @property
    def tokenizer(self) -> GGUFTokenizer:
        m = self.metadata

        def ids(key: str) -> int | None:
            v = m.get(f"tokenizer.ggml.{key}")
            return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

        def lst(key: str) -> list[Any] | None:
            v = m.get(f"tokenizer.ggml.{key}")
            return list(v) if isinstance(v, list) else None

        model = m.get("tokenizer.ggml.model")
        return GGUFTokenizer(
            model=model if isinstance(model, str) else None,
            tokens=lst("tokens") or [],
            scores=lst("scores"),
            token_types=lst("token_type"),
            merges=lst("merges"),
            bos_token_id=ids("bos_token_id"),
            eos_token_id=ids("eos_token_id"),
            unknown_token_id=ids("unknown_token_id"),
            padding_token_id=ids("padding_token_id"),
        )


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and validate the header of a GGUF file (versions 2 and 3).

    Raises:
        MissingFileError: no such file.
        CorruptFileError: bad magic or version, a truncated header, an absurd count or length,
            an unknown value or tensor type, misaligned, overlapping or out-of-file tensor data
            (names the problem and, when known, the tensor).
    """
    d = _tierflow.read_gguf(os.fspath(path))
    tensors = {
        t["name"]: GGUFTensor(t["name"], t["type"], tuple(t["ne"]), t["offset"], t["nbytes"])
        for t in d["tensors"]
    }
    return GGUFFile(
        path=os.path.abspath(os.fspath(path)),
        version=d["version"],
        alignment=d["alignment"],
        data_offset=d["data_offset"],
        file_size=d["file_size"],
        metadata=d["metadata"],
        metadata_types=d["metadata_types"],
        tensors=tensors,
    )


def hf_name(name: str) -> str | None:
    """The Hugging Face Llama name of a llama.cpp tensor name (None: not a Llama weight)."""
    m = _BLK.match(name)
    if m:
        out = _NAMES.get("blk.{n}." + m.group(2))
        return out.format(n=m.group(1)) if out else None
    return _NAMES.get(name)


def gguf_config(g: GGUFFile) -> ModelConfig:
    """The model config from a llama-architecture GGUF's ``llama.*`` metadata."""
    arch = g.architecture
    if arch != "llama":
        raise InvalidArgumentError(
            f"{g.path}: GGUF architecture {arch!r} is not supported; supported: 'llama'"
        )
    m = g.metadata

    def key(k: str, default: Any = None) -> Any:
        v = m.get(f"llama.{k}", default)
        if v is None:
            raise InvalidArgumentError(f"{g.path}: GGUF metadata lacks the key 'llama.{k}'")
        return v

    scaling = m.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise InvalidArgumentError(
            f"{g.path}: unsupported llama.rope.scaling.type {scaling!r}; supported: none"
        )
    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    head_dim = int(m.get("llama.attention.key_length") or hidden // max(heads, 1))
    rot = m.get("llama.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise InvalidArgumentError(
            f"{g.path}: partial rotary embeddings (llama.rope.dimension_count {rot}, head "
            f"dimension {head_dim}) are not supported"
        )
    emb = g.tensors.get("token_embd.weight")
    vocab = m.get("llama.vocab_size") or (emb.ne[-1] if emb else None)
    if vocab is None:
        tokens = m.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) else key("vocab_size")
    d: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m.get("llama.attention.head_count_kv") or heads),
        "head_dim": head_dim,
        "intermediate_size": int(key("feed_forward_length")),
        "max_position_embeddings": int(key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(m.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "hidden_act": "silu",
        "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
        "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
    }
    return ModelConfig.from_dict(d)


def qk_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's ``permute`` of a q / k weight with ``n_head`` heads
    (the key-value head count for k): ``hf = gguf[qk_rows(...)]``."""
    if n_head <= 0 or n_rows % (2 * n_head):
        raise ShapeError(f"{n_rows} rows are not {n_head} heads of an even size")
    fwd = np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(fwd)


def _unpermute(a: Any, rows: np.ndarray) -> Any:
    """``a`` (an ``(N, K)`` array, or a QuantizedTensor of logical ``(K, N)``: N rows of blocks)
    with its rows reordered."""
    if isinstance(a, QuantizedTensor):
        k, n = a.shape
        data = a.data.reshape(n, -1)[rows].reshape(-1)
        return QuantizedTensor(a.format, (k, n), data)
    return np.ascontiguousarray(np.asarray(a)[rows])


def _tensor_info(g: GGUFFile, t: GGUFTensor, name: str) -> ck.TensorInfo:
    return ck.TensorInfo(name, t.type, t.shape, g.path, t.offset, t.offset + t.nbytes)


class GGUFWeights(Weights):
    """:class:`~tierflow.models._weights.Weights` adopted from a GGUF file (see the module)."""

    gguf: GGUFFile

    @classmethod
    def open_gguf(
        cls,
        g: GGUFFile,
        config: ModelConfig,
        *,
        store: TieredStore | None = None,
        tier: str | None = None,
        dtype: str | None = None,
        prefix: str | None = None,
        read: str = "auto",
    ) -> GGUFWeights:
        if read not in READ_MODES:
            raise InvalidArgumentError(f"read must be one of {READ_MODES}, got {read!r}")
        if dtype not in WEIGHT_FORMATS:
            raise InvalidArgumentError(
                f"unknown weight format {dtype!r}; supported: {', '.join(map(str, WEIGHT_FORMATS))}"
            )
        rename = {n: h for n in g.tensors if (h := hf_name(n)) is not None}
        infos = {h: _tensor_info(g, g.tensors[n], h) for n, h in rename.items()}
        expected = config.expected_tensors(set(infos))
        for name, shape in expected.items():
            t = infos.get(name)
            if t is None:
                e = TensorNotFoundError(
                    f"GGUF file {g.path} lacks the tensor {name!r} its metadata implies"
                )
                e.name = name
                raise e
            if t.shape != shape:
                raise ShapeError(
                    f"tensor {name!r} has shape {list(t.shape)} but the GGUF metadata implies {list(shape)}"
                )
        infos = {n: infos[n] for n in expected}
        if dtype is not None and any(t.dtype in _BLOCK_FORMATS for t in infos.values()):
            raise InvalidArgumentError(
                "this GGUF file holds Q8_0 / Q4_0 weights, used as they are: dtype must be None"
            )
        private = None
        if store is None:
            private = tempfile.mkdtemp(prefix="tierflow-model-")
            store = TieredStore(private)
        adopted: list[str] = []
        try:
            if tier is not None and tier not in store.tier_names:
                raise InvalidArgumentError(f"no tier named {tier!r}; tiers: {store.tier_names}")
            if prefix is None:
                prefix = f"{os.path.basename(g.path)}#{next(_counter)}/"
            file_tier = tier if tier is not None and _is_file_tier(store, tier) else None
            adopted = store.load_gguf(g.path, tier=file_tier, prefix=prefix, rename=rename)
            for n in set(adopted) - {prefix + n for n in infos}:
                store.delete(n)  # tensors the forward pass never reads (rope_freqs, ...)
            home = store.tier_of(prefix + next(iter(infos)))
            for i in range(config.num_layers):
                for proj, heads in (("q", config.num_heads), ("k", config.num_kv_heads)):
                    name = f"model.layers.{i}.self_attn.{proj}_proj.weight"
                    a = store.get(prefix + name, promote=False)
                    n_rows = a.shape[1] if isinstance(a, QuantizedTensor) else a.shape[0]
                    fixed = _unpermute(a, qk_rows(n_rows, heads))
                    store.put(prefix + name, fixed, tier=home, overwrite=True)
            if tier is not None and file_tier is None:
                for n in infos:
                    store.move(prefix + n, tier)
            emb = dict(_embedding_infos(infos, config))
            w = cls(store, prefix, infos, dtype, emb)
            w.gguf = g
            w.layouts = matmul_layouts(config, list(infos))
            if dtype is not None and dtype != "f32":
                w._convert(dtype, tier)
            w.read = w._auto_read() if read == "auto" else read
            if w.read == "resident":
                w._make_resident()
            elif w.read == "store":
                w._repack()
        except BaseException:
            if private is not None:
                store.close()
                shutil.rmtree(private, ignore_errors=True)
            else:
                for n in adopted:
                    if n in store:
                        store.delete(n)
            raise
        if private is not None:
            weakref.finalize(w, _close, store, private)
        return w

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of the token embedding table, float32; a Q8_0 / Q4_0 table's rows are
        read (``pread``, only those rows) and dequantised one row of blocks at a time."""
        t = self._emb.get(name)
        if t is None or t.dtype not in _BLOCK_FORMATS:
            return super().rows(name, idx)
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n, k = t.shape
        row_bytes = (t.end - t.begin) // max(n, 1)
        uniq, inv = np.unique(idx, return_inverse=True)
        out = np.empty((uniq.size, k), np.float32)
        raw = np.empty((uniq.size, row_bytes), np.uint8)
        full = self.prefix + name
        if self._rows_in_file(name):  # adopted in a file tier, or tied with a repacked head
            ck.pread_rows(t, uniq, raw, self._fd(t.path))
        else:
            for j, r in enumerate(uniq.tolist()):
                self.store.read_into(full, r * row_bytes, raw[j])
        for j in range(uniq.size):
            out[j] = QuantizedTensor(_BLOCK_FORMATS[t.dtype], (k, 1), raw[j]).dequantize()[:, 0]
        return out[inv]

    def __getitem__(self, name: str) -> np.ndarray:
        if self.infos[name].dtype in _FLOAT_TYPES or name in self.layouts:
            return super().__getitem__(name)
        a = self.store.get(self.prefix + name)  # a block-format table: (N, K) float32
        if isinstance(a, (QuantizedTensor, PackedTensor)):
            return a.dequantize().T
        return np.asarray(a)

    def _direct_operand(self, name: str) -> Any:
        """Read in place (memory-mapped) from the GGUF file for adopted tensors; the permuted
        q / k copies are in the store's own files (the base class's case)."""
        info = self.store.info(self.prefix + name)
        if info["tier"] not in self._file_tiers or not info.get("adopted"):
            return super()._direct_operand(name)
        cached = self._direct.get(name)
        if cached is not None:
            return cached[1]
        t = self.infos[name]
        raw = np.memmap(t.path, np.uint8, "r", offset=t.begin, shape=(t.end - t.begin,))
        n, k = t.shape
        fmt = _BLOCK_FORMATS.get(t.dtype) or {"F32": "f32", "F16": "f16", "BF16": "bf16"}[t.dtype]
        op = QuantizedTensor(fmt, (k, n), np.asarray(raw))
        self._direct[name] = (t.path, op)
        return op


def _close(store: TieredStore, folder: str) -> None:
    try:
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_gguf(
    path: str | os.PathLike[str],
    store: Any = None,
    tier: str | None = None,
    dtype: str | None = None,
    prefix: str | None = None,
    read: str = "auto",
) -> Any:
    """A llama-architecture GGUF file as a :class:`~tierflow.models.LlamaForCausalLM` (see the
    module). The model's ``gguf`` attribute is the parsed :class:`GGUFFile` (metadata and
    ``tokenizer``); ``config`` the model config built from it."""
    from .llama import LlamaForCausalLM

    g = read_gguf(path)
    cfg = gguf_config(g)
    w = GGUFWeights.open_gguf(g, cfg, store=store, tier=tier, dtype=dtype, prefix=prefix, read=read)
    model: Any = LlamaForCausalLM(cfg, w, w.store)
    model.gguf = g
    return model
