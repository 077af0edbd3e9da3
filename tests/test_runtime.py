"""Serving on this host (tierflow.serving): outputs against a serial run and a float64 reference,
reliability (corrupt expert, unknown expert, SIGKILL during the demo), concurrent clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tierflow as tf
from tierflow.demos import write_demo_coe
from tierflow.demos.host import SMALL_CONFIG, belady_loads
from tierflow.serving import ExpertError, TransformerExpert

CFG = dict(SMALL_CONFIG)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tf.CoE]:
    root = tmp_path_factory.mktemp("demo")
    g = write_demo_coe(root, **CFG)
    return root, g


def _trace(g: tf.CoE, n: int = 48, seed: int = 0) -> tf.Trace:
    return tf.Trace.closed_loop(
        g.experts, users=1, n=n, prompt_tokens=(3, 9), output_tokens=(1, 3), seed=seed
    )


def _budget(g: tf.CoE, k: float = 3.5) -> int:
    return int(max(g.nbytes(e) for e in g.experts) * k)


# --- an independent float64 reference of the transformer expert ---------------------------------
def _ref_forward(w: dict[str, np.ndarray], x: np.ndarray, layers: int, n_out: int) -> np.ndarray:
    def rms(v: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
        r = v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-6)
        return r * g if g is not None else r

    heads = x.shape[1] // 64
    cache: list[tuple[np.ndarray, np.ndarray] | None] = [None] * layers
    outs = []
    h = x.astype(np.float64)
    for _ in range(n_out):
        for i in range(layers):
            p = {
                k.split(".", 2)[2]: v.astype(np.float64)
                for k, v in w.items()
                if k.startswith(f"layers.{i}.")
            }
            n = rms(h, p["attn_norm"])
            t = h.shape[0]
            q, k, v = (
                (n @ p[m]).reshape(t, heads, 64).transpose(1, 0, 2) for m in ("wq", "wk", "wv")
            )
            if cache[i] is not None:
                k = np.concatenate([cache[i][0], k], axis=1)
                v = np.concatenate([cache[i][1], v], axis=1)
            cache[i] = (k, v)
            s = q @ k.transpose(0, 2, 1) / 8.0
            sk = k.shape[1]
            s = s + np.triu(np.full((t, sk), -np.inf), sk - t + 1)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(t, heads * 64)
            h = h + a @ p["wo"]
            n2 = rms(h, p["mlp_norm"])
            gate = n2 @ p["w1"]
            h = h + ((gate / (1 + np.exp(-gate))) * (n2 @ p["w3"])) @ p["w2"]
        outs.append(h[-1].copy())
        h = rms(h[-1:])
    return np.stack(outs)


def test_outputs_match_float64_reference_and_router_agrees(demo: tuple[Path, tf.CoE]) -> None:
    root, g = demo
    t = _trace(g, n=12)
    with tf.schedule(g, policy="lru", store=root / "store", ram_budget=_budget(g)) as plan:
        r = plan.run(t)
        assert not r.errors
        # the prototype router sends each generated input to the trace's expert
        assert r.routed == [t.experts[int(i)] for i in t.expert]
        xs = plan.inputs_for(t)
        for i in (0, 5, 11):
            e = r.routed[i]
            w = plan.experts[e].weights(
                lambda n, e=e: np.asarray(plan.store.get(f"{e}/{n}", promote=False))
            )
            ref = _ref_forward(w, xs[i], CFG["layers"], int(t.output_tokens[i]))
            np.testing.assert_allclose(r.outputs[i], ref, rtol=2e-4, atol=2e-4)


def test_parallel_prefetching_run_equals_serial_run(demo: tuple[Path, tf.CoE]) -> None:
    root, g = demo
    t = _trace(g, n=60, seed=3)
    with tf.schedule(g, policy="lru", store=root / "store", ram_budget=_budget(g)) as serial:
        a = serial.run(t)
    with tf.schedule(
        g, policy="planned+prefetch", store=root / "store", ram_budget=_budget(g, 2.5), workers=3
    ) as par:
        b = par.run(t)
    assert not a.errors and not b.errors
    for x, y in zip(a.outputs, b.outputs, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    # the measured report has the simulator's shape and adds up
    s = b.summary()
    assert s["requests"] == 60
    assert s["bytes_moved"] == sum(
        b.store_stats["counters"]["links"]["disk->ram"]["bytes"] for _ in [0]
    )
    assert b.switches == b.loads >= len(set(b.routed))
    assert int(b.node_loads.sum()) == b.loads
    assert 0 <= s["hit_rate"] <= 1
    assert np.all(b.ttft <= b.latency) and np.all(b.ttft > 0)
    many = np.asarray(t.output_tokens) > 1
    assert np.all(b.ttft[many] < b.latency[many])
    # the RAM tier never held more than the budget (plus the one double-buffered expert)
    peak = max(bytes_ for _, bytes_ in par.residency().c.occupancy)
    assert peak <= par.ram_budget


def test_planned_policy_meets_belady_and_beats_lru(demo: tuple[Path, tf.CoE]) -> None:
    root, g = demo
    t = _trace(g, n=80, seed=5)
    budget = _budget(g)
    sizes = {e: g.nbytes(e) for e in g.experts}
    seq = [t.experts[int(i)] for i in t.expert]
    bound = belady_loads(seq, sizes, budget)
    loads = {}
    for pol in ("lru", "planned"):
        with tf.schedule(g, policy=pol, store=root / "store", ram_budget=budget) as plan:
            loads[pol] = plan.run(t).loads
    # the same policy code in the simulator counts the same switches
    sim = tf.simulate(g, tf.serving.host_device(budget), t, "belady")
    assert loads["planned"] == bound == sim.switches
    assert loads["lru"] >= bound


def test_unknown_expert_is_rejected_with_a_reason(
    demo: tuple[Path, tf.CoE], tmp_path: Path
) -> None:
    root, g = demo
    with tf.schedule(g, store=root / "store", ram_budget=_budget(g)) as plan:
        with pytest.raises(ExpertError, match=r"unknown expert 'nope'.*known: \['expert00'"):
            plan.infer("nope", np.ones((2, CFG["hidden"]), np.float32))
    # a graph of checkpoint experts, no router: the trace names an expert the graph lacks
    e = TransformerExpert(64, 128, 1)
    from safetensors.numpy import save_file

    g2 = tf.CoE("ck")
    for k in range(2):
        save_file(e.init(k), str(tmp_path / f"e{k}.safetensors"))
        g2.expert(f"e{k}", checkpoint=tmp_path / f"e{k}.safetensors", layers=1)
    t = tf.Trace(["e0", "ghost", "e1"], np.zeros(3), [2, 2, 2], [1, 1, 1], [0, 1, 2])
    with tf.schedule(g2, ram_budget=e.nbytes) as plan:
        r = plan.run(t)
    assert r.outputs[0] is not None and r.outputs[2] is not None
    assert list(r.errors) == [1] and "unknown expert 'ghost'" in r.errors[1]


def test_corrupt_expert_fails_by_name_and_others_keep_serving(tmp_path: Path) -> None:
    g = write_demo_coe(tmp_path, **CFG)
    t = _trace(g, n=40, seed=7)
    with tf.schedule(g, store=tmp_path / "store", ram_budget=_budget(g)) as plan:
        good = plan.run(t)
    victim = "expert00"  # the most popular expert under Zipf
    assert victim in good.routed
    f = sorted((tmp_path / "store" / "disk").glob(f"{victim}%2Fweights.*.safetensors"))[0]
    raw = bytearray(f.read_bytes())
    raw[-64:] = bytes(64)
    f.write_bytes(bytes(raw))
    # a second expert truncated: caught when the store is opened (quarantined), named
    other = next(e for e in good.routed if e != victim)
    f2 = sorted((tmp_path / "store" / "disk").glob(f"{other}%2Fweights.*.safetensors"))[0]
    with open(f2, "r+b") as fh:
        fh.truncate(100)
    with tf.schedule(g, store=tmp_path / "store", ram_budget=_budget(g)) as plan:
        assert list(plan.broken) == [other]
        bad = plan.run(t)
    for i, e in enumerate(bad.routed):
        if e == other:
            assert bad.outputs[i] is None
            assert f"expert {other!r} is unavailable" in bad.errors[i] and "bytes" in bad.errors[i]
        elif e == victim:
            assert bad.outputs[i] is None
            assert f"expert {victim!r}" in bad.errors[i]
            assert "corrupt" in bad.errors[i].lower() or "crc" in bad.errors[i].lower()
        else:
            np.testing.assert_array_equal(bad.outputs[i], good.outputs[i])


def test_concurrent_clients_get_the_same_outputs_as_one(demo: tuple[Path, tf.CoE]) -> None:
    root, g = demo
    t = _trace(g, n=32, seed=9)
    with tf.schedule(g, policy="lfu", store=root / "store", ram_budget=_budget(g, 2.2)) as plan:
        xs = plan.inputs_for(t)
        one = [plan.infer(None, x, int(n)) for x, n in zip(xs, t.output_tokens, strict=True)]
        got: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                for i in range(k, len(xs), 4):
                    got[i] = plan.infer(None, xs[i], int(t.output_tokens[i]))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors
        assert plan.residency().used() <= plan.ram_budget
    for i, o in enumerate(one):
        np.testing.assert_allclose(got[i], o, rtol=1e-6, atol=1e-6)


def test_schedule_rejects_bad_arguments(demo: tuple[Path, tf.CoE]) -> None:
    root, g = demo
    with pytest.raises(tf.InvalidArgumentError, match="larger than the RAM budget"):
        with tf.schedule(g, store=root / "store", ram_budget=1000) as plan:
            plan.run(_trace(g, n=2))
    with pytest.raises(tf.InvalidArgumentError, match="workers"):
        tf.schedule(g, store=root / "store", workers=0)
    with pytest.raises(tf.InvalidArgumentError, match="policy"):
        tf.schedule(g, store=root / "store", policy="nonsense")


def _demo_cmd(d: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tierflow",
        "demo",
        "--small",
        "--requests",
        "20",
        "--dir",
        str(d),
        "--no-plots",
    ]


def test_sigkill_during_the_demo_leaves_the_cache_reusable(tmp_path: Path) -> None:
    env = {**os.environ, "TIERFLOW_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "160"}
    d = tmp_path / "demo"
    # 1. killed while generating the CoE
    p = subprocess.Popen(
        _demo_cmd(d), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(d.glob(".tmp-*/store/disk/*")):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (d / "READY").exists()
    # 2. killed while serving
    p = subprocess.Popen(
        _demo_cmd(d), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert p.stdout is not None
    for line in p.stdout:
        if "calibrated" in line:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    assert (d / "READY").exists()
    ready = (d / "READY").stat().st_mtime_ns
    # 3. the next run reuses the cache and completes
    r = subprocess.run(_demo_cmd(d), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reusing" in r.stdout
    assert (d / "READY").stat().st_mtime_ns == ready
    assert (d / "report" / "report.json").exists()


def test_cli_run_serves_a_graph_from_json(demo: tuple[Path, tf.CoE], tmp_path: Path) -> None:
    root, g = demo
    t = _trace(g, n=10, seed=11)
    t.save_jsonl(tmp_path / "t.jsonl")
    env = {**os.environ, "TIERFLOW_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow",
            "run",
            str(root / "coe.json"),
            "--trace",
            str(tmp_path / "t.jsonl"),
            "--ram",
            str(_budget(g)),
            "--policy",
            "planned+prefetch",
            "--json",
            str(tmp_path / "r.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    d = json.loads((tmp_path / "r.json").read_text())
    assert d["summary"]["requests"] == 10 and not d["errors"]


def test_tune_keeps_the_fastest_measured_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tierflow.serving.tune import apply_tuning, load_tuning, tune

    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path))
    before = tf.get_num_threads()
    try:
        r = tune(hidden=64, intermediate=128, tokens=(1,), reps=1)
        totals = r["total_seconds"]
        assert f"{r['threads']}x{r['isa']}" == min(totals, key=totals.__getitem__)
        assert r["panel_bytes"] == int(min(r["panel_seconds"], key=r["panel_seconds"].__getitem__))
        assert load_tuning() == json.loads((tmp_path / "tune.json").read_text())
        assert apply_tuning() == r["threads"] == tf.get_num_threads()
    finally:
        tf.set_num_threads(before)


def test_doctests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest

    import tierflow.serving.plan

    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path))
    assert doctest.testmod(tierflow.serving.plan).failed == 0
