"""File tier: safetensors adoption, corrupt and changed files, full disk (tierflow/store.py)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tierflow
from tierflow import Tier, TieredStore


def store(path, **kw):
    return TieredStore(
        path, tiers=[Tier("fast", "1MiB"), Tier("ram", "8MiB"), Tier("disk", path="disk")], **kw
    )


def write_raw(path, header: dict, data: bytes, length_word: int | None = None):
    h = json.dumps(header).encode()
    n = len(h) if length_word is None else length_word
    path.write_bytes(struct.pack("<Q", n) + h + data)


def test_adopt_single_file_without_copy(tmp_path):
    f = tmp_path / "m.safetensors"
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    save_file(tensors, str(f))
    s = store(tmp_path / "s")
    names = s.load_safetensors(f, prefix="m.")
    assert sorted(names) == ["m.a", "m.b"]
    assert s.tier_of("m.a") == "disk" and s.info("m.a")["adopted"]
    assert not any(
        p.suffix == ".safetensors" for p in (tmp_path / "s" / "disk").iterdir()
    )  # no copy
    for k, v in tensors.items():
        np.testing.assert_array_equal(s.get("m." + k), v)
    with pytest.raises(tierflow.TensorExistsError):
        s.load_safetensors(f, prefix="m.")
    s.delete("m.b")
    assert f.exists()  # adopted files are never deleted
    s.close()
    with TieredStore.open(tmp_path / "s") as s2:  # adoption survives reopen
        np.testing.assert_array_equal(s2.get("m.a"), tensors["a"])


def test_adopt_hf_sharded_checkpoint(tmp_path):
    ck = tmp_path / "ckpt"
    ck.mkdir()
    rng = np.random.default_rng(0)
    shards = {
        "model-00001-of-00002.safetensors": {
            "embed.weight": rng.standard_normal((8, 4)).astype(np.float32)
        },
        "model-00002-of-00002.safetensors": {
            "layers.0.w": rng.standard_normal((4, 4)).astype(np.float16),
            "lm_head.weight": rng.standard_normal((8, 4)).astype(np.float32),
        },
    }
    weight_map = {}
    for fname, ts in shards.items():
        save_file(ts, str(ck / fname))
        weight_map.update({k: fname for k in ts})
    (ck / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    s = store(tmp_path / "s")
    assert sorted(s.load_safetensors(ck)) == sorted(weight_map)
    for ts in shards.values():
        for k, v in ts.items():
            np.testing.assert_array_equal(s.get(k), v)
    # an index naming a tensor that its shard lacks -> CorruptFileError, nothing adopted
    weight_map["ghost"] = "model-00001-of-00002.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(tierflow.CorruptFileError, match="ghost"):
        s.load_safetensors(ck / "model.safetensors.index.json", prefix="x.")
    assert not any(n.startswith("x.") for n in s.names())
    # shard names that try to leave the folder
    (ck / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../evil.safetensors"}})
    )
    with pytest.raises(tierflow.CorruptFileError):
        s.load_safetensors(ck, prefix="y.")


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "short_word",
        "header_longer_than_file",
        "invalid_json",
        "not_object",
        "out_of_range",
        "overlap",
        "bad_dtype_size",
        "truncated",
    ],
)
def test_corrupt_safetensors_rejected(tmp_path, case):
    f = tmp_path / f"{case}.safetensors"
    data = np.arange(8, dtype=np.float32).tobytes()
    good = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
    }
    if case == "empty":
        f.write_bytes(b"")
    elif case == "short_word":
        f.write_bytes(b"\x01\x02")
    elif case == "header_longer_than_file":
        write_raw(f, good, data, length_word=10_000)
    elif case == "invalid_json":
        f.write_bytes(struct.pack("<Q", 5) + b"{nope" + data)
    elif case == "not_object":
        write_raw(f, [1, 2], data)  # type: ignore[arg-type]
    elif case == "out_of_range":
        bad = dict(good, b={"dtype": "F32", "shape": [4], "data_offsets": [16, 48]})
        write_raw(f, bad, data)
    elif case == "overlap":
        bad = dict(good, b={"dtype": "F32", "shape": [4], "data_offsets": [8, 24]})
        write_raw(f, bad, data)
    elif case == "bad_dtype_size":
        bad = dict(good, b={"dtype": "F64", "shape": [4], "data_offsets": [16, 32]})
        write_raw(f, bad, data)
    elif case == "truncated":
        write_raw(f, good, data[:20])
    s = store(tmp_path / "s")
    with pytest.raises(tierflow.CorruptFileError) as ei:
        s.load_safetensors(f)
    assert isinstance(ei.value, OSError)
    assert str(f) in str(ei.value)
    assert len(s) == 0


def test_checksum_mismatch_names_file_and_tensor(tmp_path):
    s = store(tmp_path / "s")
    s.put("keep", np.arange(100, dtype=np.float32), tier="disk")
    s.put("bad", np.arange(100, dtype=np.float32), tier="disk")
    path = s.info("bad")["file"]
    s.close()
    with open(path, "r+b") as fh:  # flip one data byte in place
        fh.seek(-1, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0x55]))
    with pytest.raises(tierflow.CorruptFileError) as ei:
        TieredStore.open(tmp_path / "s")
    assert ei.value.tensor == "bad" and ei.value.path == path
    assert "checksum" in str(ei.value)
    # lenient open: the good tensor serves, the bad one is quarantined (not lost from the manifest)
    s2 = TieredStore.open(tmp_path / "s", strict=False)
    np.testing.assert_array_equal(s2.get("keep"), np.arange(100, dtype=np.float32))
    assert list(s2.quarantined()) == ["bad"]
    with pytest.raises(tierflow.TierflowError, match="quarantined"):
        s2.get("bad")
    s2.close()
    m = json.loads((tmp_path / "s" / "tierflow-store.json").read_text())
    assert "bad" in m["tensors"]


def test_corrupt_manifest(tmp_path):
    s = store(tmp_path / "s")
    s.put("a", np.zeros(3))
    s.close()
    (tmp_path / "s" / "tierflow-store.json").write_text("{ not json")
    with pytest.raises(tierflow.CorruptFileError, match="manifest"):
        TieredStore.open(tmp_path / "s")
    with pytest.raises(tierflow.MissingFileError):
        TieredStore.open(tmp_path / "nowhere")


def test_file_truncated_after_open_is_reported_not_sigbus(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file({"w": np.arange(1 << 16, dtype=np.float32)}, str(f))
    s = store(tmp_path / "s")
    s.load_safetensors(f)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 1000)
    with pytest.raises(tierflow.CorruptFileError, match=r"changed on disk|truncated"):
        s.get("w")
    # the store itself is intact
    s.put("x", np.ones(2))
    assert s.get("x").tolist() == [1.0, 1.0]


def test_file_rewritten_after_adoption_is_reported(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file({"w": np.zeros(16, np.float32)}, str(f))
    s = store(tmp_path / "s")
    s.load_safetensors(f)
    os.utime(f, ns=(1, 1))  # same size, new mtime: someone rewrote it
    with pytest.raises(tierflow.CorruptFileError, match="modified"):
        s.get("w")


def test_own_file_deleted_behind_the_store(tmp_path):
    s = store(tmp_path / "s")
    s.put("a", np.zeros(8), tier="disk")
    os.remove(s.info("a")["file"])
    with pytest.raises(tierflow.MissingFileError):
        s.get("a")


FULL_DISK_CHILD = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np, tierflow
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    s = tierflow.TieredStore(sys.argv[1], tiers=[tierflow.Tier("ram", "64MiB"), tierflow.Tier("disk", path="disk")])
    s.put("small", np.arange(1000, dtype=np.float64))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the disk is now "full" at 1 MiB a file
    try:
        s.put("big", np.ones(1 << 20, np.float64))  # 8 MiB
    except OSError as e:
        assert isinstance(e, tierflow.StorageError), type(e)
        print("OSError", e.errno)
    assert "big" not in s
    assert s.get("small").sum() == 499500
    s.put("small2", np.arange(10, dtype=np.float64))  # still usable
    s.close()
    """
)


def test_full_disk_leaves_store_consistent(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OSError")
    with TieredStore.open(tmp_path / "s") as s:
        assert sorted(s.names()) == ["small", "small2"]
        assert s.get("small").sum() == 499500
    left = os.listdir(tmp_path / "s" / "disk")
    assert not any(".tmp-" in n for n in left), left  # no partial file left behind


def test_reopen_cleans_orphans(tmp_path):
    s = store(tmp_path / "s")
    s.put("a", np.zeros(4))
    s.close()
    disk = tmp_path / "s" / "disk"
    (disk / ".x.tmp-1-2").write_bytes(b"partial")
    save_file({"ghost": np.zeros(2)}, str(disk / "ghost.99.safetensors"))
    with TieredStore.open(tmp_path / "s") as s2:
        assert s2.names() == ["a"]
    assert sorted(os.listdir(disk)) == sorted(
        p for p in os.listdir(disk) if not p.startswith(".") and "ghost" not in p
    )


def test_files_readable_by_safetensors(tmp_path):
    s = store(tmp_path / "s")
    w = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    s.put("layer.w", w)
    np.testing.assert_array_equal(load_file(s.info("layer.w")["file"])["layer.w"], w)


def test_file_corrupted_in_place_while_open(tmp_path):
    """A verified tensor is read again without its CRC only while its file is unchanged: a
    same-size rewrite (new mtime) is checked again and caught."""
    s = store(tmp_path / "s")
    a = np.arange(4096, dtype=np.float32)
    s.put("w", a, tier="disk")
    np.testing.assert_array_equal(s.get("w", promote=False), a)  # verified once
    np.testing.assert_array_equal(s.get("w", promote=False), a)  # unchanged: CRC skipped
    path = s.info("w")["file"]
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x00\x00\x80\x7f")  # the last float becomes +inf
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(tierflow.CorruptFileError, match="checksum"):
        s.get("w", promote=False)
