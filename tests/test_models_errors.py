"""Bad checkpoints and bad inputs give typed tierflow errors that name the problem."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import tierflow
import tierflow.models as tm

DATA = Path(__file__).parent / "data"


def _copy(tmp_path: Path, name: str = "tiny-llama") -> Path:
    d = tmp_path / name
    shutil.copytree(DATA / name, d)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def llama():
    return tm.load(DATA / "tiny-llama")


def test_unknown_architecture_lists_supported(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, architectures=["FalconForCausalLM"], model_type="falcon")
    with pytest.raises(tierflow.InvalidArgumentError) as e:
        tm.load(d)
    msg = str(e.value)
    assert "FalconForCausalLM" in msg
    for arch in tm.SUPPORTED_ARCHITECTURES:
        assert arch in msg


def test_missing_tensor_is_named(tmp_path):
    d = _copy(tmp_path)
    w = load_file(str(d / "model.safetensors"))
    del w["model.layers.1.mlp.up_proj.weight"]
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(
        tierflow.TensorNotFoundError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"
    ):
        tm.load(d)


def test_untied_model_needs_lm_head(tmp_path):
    d = _copy(tmp_path)
    w = load_file(str(d / "model.safetensors"))
    del w["lm_head.weight"]
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(tierflow.TensorNotFoundError, match=r"lm_head\.weight"):
        tm.load(d)
    _edit_config(d, tie_word_embeddings=True)  # tied: the embedding serves as the head
    assert tm.load(d)([1, 2]).shape == (2, 512)


def test_shape_disagreeing_with_config_is_named(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, intermediate_size=300)
    with pytest.raises(tierflow.ShapeError, match=r"gate_proj\.weight.*\[352, 128\].*\[300, 128\]"):
        tm.load(d)
    d2 = _copy(tmp_path / "b")
    _edit_config(d2, num_key_value_heads=4)
    with pytest.raises(tierflow.ShapeError, match=r"k_proj\.weight"):
        tm.load(d2)


def test_bad_config_values(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, num_key_value_heads=3)
    with pytest.raises(tierflow.InvalidArgumentError, match="multiple"):
        tm.load(d)
    _edit_config(d, num_key_value_heads=2, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4})
    with pytest.raises(tierflow.InvalidArgumentError, match="rope_type"):
        tm.load(d)
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(tierflow.InvalidArgumentError, match="hidden_size"):
        tm.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(tierflow.CorruptFileError):
        tm.load(d)


def test_missing_files(tmp_path):
    with pytest.raises(tierflow.MissingFileError):
        tm.load(tmp_path / "nope")
    d = _copy(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(tierflow.MissingFileError, match="safetensors"):
        tm.load(d)
    (d / "config.json").unlink()
    with pytest.raises(tierflow.MissingFileError, match=r"config\.json"):
        tm.load(d)


@pytest.mark.parametrize("cut", [4, 8 + 20, -1000])
def test_truncated_safetensors(tmp_path, cut):
    d = _copy(tmp_path)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[:cut])
    with pytest.raises(tierflow.CorruptFileError):
        tm.load(d)


def test_corrupt_header(tmp_path):
    d = _copy(tmp_path)
    p = d / "model.safetensors"
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    p.write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    with pytest.raises(tierflow.CorruptFileError, match="header length"):
        tm.load(d)
    hdr = raw[8 : 8 + n].replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1)
    p.write_bytes(raw[:8] + hdr + raw[8 + n :])
    with pytest.raises(tierflow.CorruptFileError, match="offsets"):
        tm.load(d)


def test_integer_weight_rejected(tmp_path):
    d = _copy(tmp_path)
    w = load_file(str(d / "model.safetensors"))
    w["model.norm.weight"] = np.ones(128, np.int32)
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(tierflow.DTypeError, match=r"model\.norm\.weight"):
        tm.load(d)


def test_unknown_weight_format(tmp_path):
    with pytest.raises(tierflow.InvalidArgumentError, match="q3_k"):
        tm.load(DATA / "tiny-llama", dtype="q3_k")


def test_token_ids_outside_vocab(llama):
    with pytest.raises(tierflow.InvalidArgumentError, match=r"token id 512 at position 2"):
        llama([1, 2, 512])
    with pytest.raises(tierflow.InvalidArgumentError, match="-1"):
        llama.generate([-1, 3], 2)
    with pytest.raises(tierflow.InvalidArgumentError):
        llama(np.array([[1, 2], [3, 9999]]))


def test_gpt2_config_token_ids_outside_vocab_do_not_choke():
    """tiny-gpt2's config names eos 50256, outside its 512-token vocabulary: loading works."""
    m = tm.load(DATA / "tiny-gpt2")
    assert m.config.eos_token_ids == (50256,)
    assert m.generate([1, 2, 3], 4, stop=m.config.eos_token_ids).shape == (7,)


def test_prompt_longer_than_positions(llama):
    with pytest.raises(
        tierflow.InvalidArgumentError, match=r"257 prompt tokens exceed .* 256 positions"
    ):
        llama(np.zeros(257, np.int64))
    with pytest.raises(tierflow.InvalidArgumentError, match=r"250 prompt tokens \+ 10 new tokens"):
        llama.generate(np.zeros(250, np.int64), 10)
    assert llama(np.zeros(256, np.int64)).shape == (256, 512)


def test_bad_id_types_and_shapes(llama):
    with pytest.raises(tierflow.DTypeError):
        llama(np.array([1.0, 2.0]))
    with pytest.raises(tierflow.ShapeError):
        llama(np.zeros((1, 2, 3), np.int64))
    with pytest.raises(tierflow.InvalidArgumentError, match="empty prompt"):
        llama.generate(np.zeros(0, np.int64), 3)


@pytest.mark.parametrize(
    "kw",
    [
        {"max_new_tokens": -1},
        {"max_new_tokens": 2, "temperature": -0.5},
        {"max_new_tokens": 2, "temperature": float("nan")},
        {"max_new_tokens": 2, "top_k": 0},
        {"max_new_tokens": 2, "top_p": 0.0},
        {"max_new_tokens": 2, "top_p": 1.5},
    ],
)
def test_bad_sampling_arguments(llama, kw):
    with pytest.raises(tierflow.InvalidArgumentError):
        llama.generate([1, 2], **kw)


def test_sliding_window_caps_positions(tmp_path):
    d = tm.write_tiny_checkpoint(tmp_path / "m", "MistralForCausalLM")
    cfg = json.loads((d_path := Path(d)).joinpath("config.json").read_text())
    cfg["sliding_window"] = 32
    (d_path / "config.json").write_text(json.dumps(cfg))
    m = tm.load(d)
    assert m.config.max_positions == 32
    with pytest.raises(tierflow.InvalidArgumentError, match="32 positions"):
        m.generate(list(range(30)), 5)
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
    (d_path / "config.json").write_text(json.dumps(cfg))
    assert tm.read_config(d).max_positions == 256


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_headers_give_typed_errors(tmp_path, data):
    """Random edits of a safetensors header: the loader either works or raises a tierflow error
    (never KeyError/TypeError/... from inside)."""
    raw = (DATA / "tiny-llama" / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = bytearray(raw[8 : 8 + n])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(hdr) - 1))
        hdr[i] = data.draw(st.sampled_from(list(b'0123456789[]{}",:-e .abcFIU')))
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    (d / "config.json").write_bytes((DATA / "tiny-llama" / "config.json").read_bytes())
    (d / "model.safetensors").write_bytes(raw[:8] + bytes(hdr) + raw[8 + n :])
    try:
        tm.load(d)([1, 2, 3])
    except tierflow.TierflowError:
        pass


def test_failed_load_leaves_the_store_as_it_was(tmp_path):
    d = tm.write_tiny_checkpoint(tmp_path / "m", hidden=40, heads=4, kv_heads=2, intermediate=64)
    with tierflow.TieredStore(tmp_path / "s") as store:
        with pytest.raises(tierflow.ShapeError):
            tm.load(d, store=store, dtype="q4_0")  # K = 40 is no multiple of 32
        assert len(store) == 0
        assert tm.load(d, store=store)([1]).shape == (1, 256)


def test_nan_weights_propagate_and_generation_refuses(tmp_path):
    d = _copy(tmp_path)
    w = load_file(str(d / "model.safetensors"))
    w["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(w, str(d / "model.safetensors"))
    m = tm.load(d)
    assert np.isnan(m([1, 2, 3])).all()
    with pytest.raises(tierflow.InvalidArgumentError, match="NaN"):
        m.generate([1, 2, 3], 2)


def test_checkpoint_truncated_after_load_is_an_error_not_a_crash(tmp_path):
    """Weights are read through the store (pread) by default: a checkpoint truncated while the
    model is loaded gives CorruptFileError naming the file, never a SIGBUS."""
    d = _copy(tmp_path)
    m = tm.load(d)
    ids = np.array([1, 2, 3])
    before = m(ids)
    p = d / "model.safetensors"
    os.truncate(p, p.stat().st_size // 2)
    with pytest.raises(tierflow.CorruptFileError, match=r"model\.safetensors"):
        m(ids)
    assert np.isfinite(before).all()


def test_unknown_read_mode_is_an_error():
    with pytest.raises(tierflow.InvalidArgumentError, match="read must be one of"):
        tm.load(DATA / "tiny-llama", read="prefetch")
