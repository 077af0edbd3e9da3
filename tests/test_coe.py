"""tierflow.sim.coe: the CoE graph builder."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tierflow as tf
from tierflow.sim.coe import safetensors_sizes


def small() -> tf.CoE:
    g = tf.CoE("small")
    g.router("r", params=1e9, dtype="bf16")
    g.expert("a", params=2e9, dtype="bf16", tags=["x"])
    g.expert("b", params=2e9, dtype="int8")
    g.route("r", ["a", "b"])
    return g


def test_sizes_from_params_and_dtype():
    g = small()
    assert g.nbytes("a") == 4_000_000_000
    assert g.nbytes("b") == 2_000_000_000
    g.expert("q", params=32e6, dtype="q4_0")
    assert (
        g.nbytes("q") == 18_000_000
    )  # docs/sources.md "Other anchors": Q4_0 = 18 bytes / 32 weights
    assert g.experts == ["a", "b", "q"]


def test_json_roundtrip(tmp_path):
    g = small()
    g.stage("safety", params=1e8, after=["a", "b"])
    p = tmp_path / "g.json"
    g.to_json(p)
    h = tf.CoE.from_json(p)
    assert h.to_dict() == g.to_dict()
    assert tf.CoE.from_json(g.to_json()).native() == g.native()


def test_summary_and_mermaid():
    g = small()
    s = g.summary()
    assert "2 experts" in s and "router: r" in s and "x (1)" in s
    m = g.to_mermaid()
    assert m.startswith("flowchart LR") and "nr --> na" in m and "nr --> nb" in m


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda g: g.expert("a", params=1e9), "duplicate"),
        (lambda g: g.route("r", ["zzz"]).validate(), "unknown node 'zzz'"),
        (lambda g: g.route("nope", ["a"]).validate(), "unknown router"),
        (lambda g: g.then("a", "b").then("b", "a").validate(), "cycle: a -> b -> a"),
        (lambda g: g.expert("c", params=-1.0), "params must be > 0"),
        (lambda g: g.expert("c", params=1e9, dtype="float128"), "unknown 'float128'"),
        (lambda g: g.expert("c"), "give params="),
        (lambda g: g.router("r2", params=1e9), "has a router already"),
    ],
)
def test_validation_errors(build, match):
    with pytest.raises(tf.InvalidArgumentError, match=match):
        build(small())


def test_malformed_json(tmp_path):
    with pytest.raises(tf.InvalidArgumentError, match="malformed JSON"):
        tf.CoE.from_json("{not json")
    with pytest.raises(tf.InvalidArgumentError, match=r"nodes\[0\] misses field"):
        tf.CoE.from_json(json.dumps({"nodes": [{"name": "a"}]}))
    with pytest.raises(tf.MissingFileError):
        tf.CoE.from_json(tmp_path / "missing.json")


def test_sizes_from_safetensors_headers(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "w1": rng.standard_normal((64, 32)).astype(np.float16),
        "w2": rng.standard_normal((7,)).astype(np.float16),
        "b": rng.standard_normal((5, 3)).astype(np.float32),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ref = load_file(str(tmp_path / "model.safetensors"))  # independent reader
    nbytes, params, dtype = safetensors_sizes(tmp_path)
    assert nbytes == sum(v.nbytes for v in ref.values())
    assert params == sum(v.size for v in ref.values())
    assert dtype == "float16"
    g = tf.CoE()
    g.expert("ck", checkpoint=tmp_path / "model.safetensors")
    assert g.nbytes("ck") == nbytes and g.nodes["ck"].params == params


def test_corrupt_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(tf.CorruptFileError, match="truncated"):
        safetensors_sizes(p)
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(tf.CorruptFileError, match="exceeds the file"):
        safetensors_sizes(p)
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(tf.CorruptFileError, match="malformed"):
        safetensors_sizes(p)
    hdr = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 999]}}).encode()
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    with pytest.raises(tf.CorruptFileError, match="outside the file"):
        safetensors_sizes(p)


class FakeStore:
    """The store protocol: names() and info(name) -> {'nbytes', 'shape'}."""

    def __init__(self) -> None:
        self.t = {"e1.w": (100, 10), "e1.b": (10,), "e2.w": (4, 4)}

    def names(self):
        return list(self.t)

    def info(self, name):
        shape = self.t[name]
        return {"nbytes": int(np.prod(shape)) * 2, "shape": list(shape), "dtype": "bfloat16"}


def test_sizes_from_a_store():
    g = tf.CoE()
    g.expert("e1", store=FakeStore(), prefix="e1.")
    assert g.nbytes("e1") == 2020 and g.nodes["e1"].params == 1010
    with pytest.raises(tf.InvalidArgumentError, match="no tensors"):
        g.expert("e3", store=FakeStore(), prefix="e3.")


def test_sizes_from_the_tiered_store():
    s = tf.TieredStore()
    try:
        s.put("e1.w", np.ones((64, 16), dtype=np.float32))
        s.put("e1.b", np.ones(16, dtype=np.float32))
        s.put("e2.w", np.ones((8, 8), dtype=np.float32))
        g = tf.CoE()
        g.expert("e1", store=s, prefix="e1.", dtype="float32")
        assert g.nbytes("e1") == (64 * 16 + 16) * 4 and g.nodes["e1"].params == 64 * 16 + 16
    finally:
        s.close()
