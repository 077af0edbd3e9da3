"""tierflow.sim.capacity (the capacity sweep) and the simulate / plan CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tierflow as tf
from tierflow.cli import main
from tierflow.sim.capacity import sweep_capacity

GB = 10**9


def setup():
    g = tf.CoE("p")
    g.router("r", params=0.5e9)
    for i in range(12):
        g.expert(f"e{i}", params=1e9)
    d = tf.Device(
        "toy",
        [tf.devices.MemoryTier("hbm", 40 * GB, 5e9), tf.devices.MemoryTier("ddr", 100 * GB)],
        exec_tier="hbm",
        read_bandwidth=1e12,
        peak_flops={"bfloat16": 1e14},
        reserved=1 * GB,
    )
    t = tf.Trace.poisson(
        g.experts, rate=2.0, n=3000, zipf_s=1.3, prompt_tokens=64, output_tokens=16, seed=0
    )
    return g, d, t


def test_plan_finds_the_smallest_capacity_meeting_the_target():
    g, d, t = setup()
    res = sweep_capacity(
        g, d, t, target_p99=0.5, policies=["lru", "lfu", "static+lru"], steps=6, refine=5
    )
    assert res.best_policy in ("lru", "lfu", "static+lru")
    cap = res.best_capacity
    assert cap is not None and res.device_capacity == cap + d.reserved + g.nodes["r"].nbytes
    pol = tf.Policy.parse(res.best_policy)
    ok = tf.simulate(g, d.with_exec_capacity(res.device_capacity), t, pol)
    assert np.percentile(ok.latency, 99) <= 0.5
    # one expert less of room misses the target (the bisection found the knee)
    worse = d.with_exec_capacity(res.device_capacity - 2 * GB)
    assert np.percentile(tf.simulate(g, worse, t, pol).latency, 99) > 0.5
    # p99 never gets worse with more capacity for LRU in this sweep
    p = [v for v in res.p99["lru"] if not np.isnan(v)]
    assert p[-1] <= p[0]


def test_plan_reports_impossible_targets():
    g, d, t = setup()
    res = sweep_capacity(g, d, t, target_p99=1e-6, policies=["lru"], steps=3)
    assert res.best_policy is None and "too slow" in res.notes[0]
    with pytest.raises(tf.InvalidArgumentError, match="target_p99"):
        sweep_capacity(g, d, t, target_p99=-1)


def test_cli_simulate_and_plan(tmp_path, capsys):
    g, d, t = setup()
    g.to_json(tmp_path / "g.json")
    d.to_json(tmp_path / "d.json")
    t.save_jsonl(tmp_path / "t.jsonl")
    rc = main(
        [
            "simulate",
            str(tmp_path / "g.json"),
            "--device",
            str(tmp_path / "d.json"),
            "--trace",
            str(tmp_path / "t.jsonl"),
            "--policy",
            "lru",
            "--policy",
            "belady",
            "--plot",
            str(tmp_path / "s.png"),
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "latency_p99_s" in out and "comparison" in out
    reps = json.loads((tmp_path / "s.json").read_text())
    assert reps[1]["summary"]["switches"] <= reps[0]["summary"]["switches"]
    assert (tmp_path / "s.png").stat().st_size > 1000
    rc = main(
        [
            "plan",
            str(tmp_path / "g.json"),
            "--device",
            str(tmp_path / "d.json"),
            "--trace",
            str(tmp_path / "t.jsonl"),
            "--target-p99",
            "0.5",
            "--policy",
            "lru",
            "--steps",
            "4",
            "--refine",
            "2",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    assert rc == 0
    assert "recommended: policy lru" in capsys.readouterr().out
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_errors_are_clean(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{nope")
    assert main(["simulate", str(tmp_path / "bad.json")]) == 1
    assert "malformed JSON" in capsys.readouterr().err
    assert main(["simulate", "samba:200", "--device", "dgx_a100", "--requests", "10"]) == 1
    assert "missing" in capsys.readouterr().err
