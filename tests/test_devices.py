"""tierflow.devices: tiers, presets and the host probe."""

from __future__ import annotations

import json

import pytest

import tierflow as tf
from tierflow import devices

GB = 1e9


def test_presets_cite_facts():
    s = devices.sn40l(8)
    assert [t.name for t in s.tiers] == ["sram", "hbm", "ddr"]
    assert s.exec.name == "hbm" and s.exec.capacity == 512 * 2**30  # 8 x 64 GiB
    assert s.read_bandwidth == pytest.approx(14.4e12)  # 8 x 1.8 TB/s
    assert s.flops("bf16") == pytest.approx(5.104e15)  # 8 x 638 TFLOP/s
    assert s.tiers[2].capacity == 12 * 2**40  # 8 x 1.5 TiB
    a, h = devices.dgx_a100(), devices.dgx_h100()
    assert a.exec.capacity == 640 * 10**9 and h.exec.capacity == 640 * 10**9
    assert a.tiers[0].bandwidth == 32e9 and h.tiers[0].bandwidth == 64e9
    assert devices.sn40l(1).exec.capacity == 64 * 2**30


def test_golden_switch_times():
    # docs/sources.md "The CoE experiment": 13.5 GB per expert: 13.5 ms (SN40L node), 0.42 s (A100), 0.21 s (H100)
    assert devices.sn40l(8).copy_time(13.5 * GB) == pytest.approx(13.5e-3)
    assert devices.dgx_a100().copy_time(13.5 * GB) == pytest.approx(0.42, rel=0.01)
    assert devices.dgx_h100().copy_time(13.5 * GB) == pytest.approx(0.21, rel=0.01)


def test_experts_fit():
    assert devices.dgx_a100().experts_fit(13.5 * GB) == int((640e9 - 8 * 2**30) // 13.5e9)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"tiers": [tf.devices.MemoryTier("a", 10, 0.0), tf.devices.MemoryTier("b", 10)]},
            r"tiers\[0\]\.bandwidth",
        ),
        ({"read_bandwidth": 0}, "read_bandwidth must be > 0"),
        ({"bw_efficiency": 1.5}, r"bw_efficiency must be in \(0, 1\]"),
        ({"peak_flops": {"bfloat16": -1.0}}, "peak_flops"),
        ({"exec_tier": "l9"}, "exec_tier 'l9'"),
        ({"tp": 0}, "tp must be"),
        ({"reserved": 10**12}, "reserved"),
    ],
)
def test_bad_devices_name_the_field(kw, match):
    base = {
        "name": "x",
        "tiers": [tf.devices.MemoryTier("a", 10**9, 1e9), tf.devices.MemoryTier("b", 10**10)],
        "exec_tier": "a",
    }
    with pytest.raises(tf.InvalidArgumentError, match=match):
        tf.Device(**{**base, **kw})


@pytest.mark.parametrize("cap", [0, -1, float("nan")])
def test_bad_tier_capacity(cap):
    with pytest.raises(tf.InvalidArgumentError, match="capacity"):
        tf.devices.MemoryTier("a", cap, 1e9)


@pytest.mark.parametrize("bw", [-5.0, float("inf"), "fast"])
def test_bad_tier_bandwidth(bw):
    with pytest.raises(tf.InvalidArgumentError, match="bandwidth"):
        tf.devices.MemoryTier("a", 10, bw)


def test_json_roundtrip_and_errors(tmp_path):
    d = devices.sn40l(2)
    p = tmp_path / "d.json"
    d.to_json(p)
    e = tf.Device.from_json(p)
    assert e.to_dict() == d.to_dict() and e.native() == d.native()
    with pytest.raises(tf.InvalidArgumentError, match="malformed JSON"):
        tf.Device.from_json("{oops")
    bad = d.to_dict()
    bad["tiers"][1]["capacity"] = -3
    with pytest.raises(tf.InvalidArgumentError, match="capacity"):
        tf.Device.from_json(json.dumps(bad))
    bad = d.to_dict()
    bad["colour"] = "red"
    with pytest.raises(tf.InvalidArgumentError, match="unknown field"):
        tf.Device.from_dict(bad)
    with pytest.raises(tf.MissingFileError):
        tf.Device.from_json(tmp_path / "nope.json")


def test_host_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path))
    calls = []
    real = devices._measure_host

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(devices, "_measure_host", counting)
    h = devices.host()
    assert (tmp_path / "host.json").exists()
    h2 = devices.host()
    assert len(calls) == 1 and h2.to_dict() == h.to_dict()
    assert h.exec.name == "ram" and h.tiers[-1].name == "disk"
    assert (
        h.read_bandwidth > 1e8 and h.flops("float32") > 1e8 and h.tiers[h.exec_tier].bandwidth > 0
    )
    # a corrupt cache is measured again
    (tmp_path / "host.json").write_text("{broken")
    devices.host()
    assert len(calls) == 2
