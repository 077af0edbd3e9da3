"""tierflow.search: the space, in-the-loop measurement and its cache, simulated-device
prediction against the cost model written out here, the Pareto front, constraints, failed
trials, resume after a killed run, bad input and the CLI."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest

import tierflow
from tierflow import InvalidArgumentError
from tierflow.models.config import ModelConfig
from tierflow.search import Config, Measurer, Space
from tierflow.search import calibrate as calibrate_module

GPU_LAYER_S = 12 * 5e-6 + 2 * 20e-6  # DGX preset: 12 launches of 5 us + 2 all-reduces of 20 us
Q_BYTES = {"f32": 4.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@pytest.fixture(scope="module")
def _host_probe(tmp_path_factory):
    """This host's probe (tierflow.devices.host), measured once for the module."""
    d = tmp_path_factory.mktemp("probe")
    old = os.environ.get("TIERFLOW_CACHE_DIR")
    os.environ["TIERFLOW_CACHE_DIR"] = str(d)
    try:
        tierflow.devices.host()
    finally:
        if old is None:
            del os.environ["TIERFLOW_CACHE_DIR"]
        else:
            os.environ["TIERFLOW_CACHE_DIR"] = old
    return (d / "host.json").read_text()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, _host_probe):
    """A private cache folder per test (measurements, the host probe)."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "host.json").write_text(_host_probe)
    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path / "cache"))


def reference_sizes(hidden, layers, heads, kv, inter, vocab, fmt):
    """(params, bytes) from the tensor list a Llama checkpoint of this shape holds: matmul
    weights in the format, embedding and norms float32."""
    cfg = ModelConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "intermediate_size": inter,
            "vocab_size": vocab,
        }
    )
    params = nbytes = 0.0
    for name, shape in cfg.expected_tensors().items():
        n = math.prod(shape)
        params += n
        matmul = name.endswith("proj.weight") or name == "lm_head.weight"
        nbytes += n * (Q_BYTES[fmt] if matmul else 4)
    return params, nbytes


def dgx_decode(hidden, layers, heads, kv, inter, vocab, fmt, ctx=32):
    """One decode step on the DGX H100 preset, by hand: memory bound (bytes / 80% of 8 x 3.35
    TB/s) plus the per-layer launch and all-reduce overhead."""
    params, nbytes = reference_sizes(hidden, layers, heads, kv, inter, vocab, fmt)
    kv_bytes = 2 * layers * kv * (hidden // heads) * 4 * ctx
    mem = (nbytes + kv_bytes) / (8 * 3.35e12 * 0.8)
    comp = 2 * params / (8 * 989e12 * 0.7)
    return max(mem, comp) + layers * GPU_LAYER_S


def test_config_sizes_match_the_checkpoint_tensors():
    for fmt in Q_BYTES:
        c = Config(512, 3, 8, 2, 1024, 1000, fmt)
        p, b = reference_sizes(512, 3, 8, 2, 1024, 1000, fmt)
        assert c.params == p
        assert c.nbytes == round(b)


def test_known_optimum_on_a_simulated_device():
    space = {
        "hidden": [256, 512, 1024],
        "layers": [2, 4, 8, 16],
        "heads": 8,
        "kv_heads": 8,
        "intermediate": [1024, 2048],
        "vocab": 1000,
        "format": ["bf16", "q4_0"],
    }
    limit = 0.5e-3
    # by hand: every combination, the decode step on the DGX preset, the largest that fits
    best = max(
        (
            reference_sizes(h, L, 8, 8, i, 1000, f)[0]
            for h, L, i, f in itertools.product(
                [256, 512, 1024], [2, 4, 8, 16], [1024, 2048], ["bf16", "q4_0"]
            )
            if dgx_decode(h, L, 8, 8, i, 1000, f) <= limit
        )
    )
    assert best == reference_sizes(1024, 4, 8, 8, 2048, 1000, "bf16")[0]  # 4 layers: 0.4 ms
    r = tierflow.search(
        space,
        "dgx-h100",
        objectives=["decode", "params"],
        constraints=[f"decode <= {limit * 1e3} ms"],
        trials=40,
        progress=False,
        calibrate=False,  # the preset's efficiencies, as dgx_decode derives them
    )
    assert r.calibration is None
    assert r.best is not None and r.best.metrics["params"] == best
    c = r.best.config
    want = dgx_decode(c.hidden, c.layers, c.heads, c.kv_heads, c.intermediate, c.vocab, c.format)
    assert r.best.metrics["decode"] == pytest.approx(want, rel=1e-9)


def test_calibrated_prediction_follows_the_host_measurements(tmp_path):
    """A simulated device's prediction with the per-format shares measured here, computed by
    hand from the host's in-the-loop measurements and the device's published figures."""
    from tierflow.search.calibrate import calibrate

    meas = Measurer(tmp_path / "m", repeats=1, decode_steps=2, prompt_tokens=8)
    ref = Config(128, 4, 4, 2, 256, 512, "f32")
    cal = calibrate(["q4_0"], meas, reference=ref)
    assert meas.stats["measured"] == 2  # the reference in q4_0 and in the f32 baseline

    def rates(fmt):
        """(bytes/s of a decode layer, FLOP/s of a prefill layer) from the host's measurement."""
        m = meas.cached(replace(ref, format=fmt))
        p4, b4 = reference_sizes(128, 4, 4, 2, 256, 512, fmt)
        p2, b2 = reference_sizes(128, 2, 4, 2, 256, 512, fmt)
        kv_layer = 2 * 2 * (128 // 4) * 4  # float32 K and V of 2 heads of 32, per token
        return ((b4 - b2) / 2 + kv_layer * 8) / m.decode_layer_s, 2 * (
            p4 - p2
        ) / 2 * 8 / m.prefill_layer_s

    base = rates("f32")
    space = {
        "hidden": [128, 256],
        "layers": [2, 6],
        "heads": 4,
        "kv_heads": 2,
        "intermediate": 256,
        "vocab": 512,
        "format": ["f32", "q4_0"],
    }
    r = tierflow.search(
        space,
        "dgx_h100",
        objectives=["decode", "prefill", "params"],
        trials=8,
        measurer=meas,
        calibrate=cal,
        progress=False,
    )
    assert meas.stats["measured"] == 2  # the device's trials measure nothing
    assert r.calibration == cal.to_dict()
    seen = set()
    for x in r.records:
        c = x.config
        bw_share, fl_share = (a / b for a, b in zip(rates(c.format), base, strict=True))
        stored = r.calibration["formats"][c.format]
        assert stored["bw_share"] == pytest.approx(bw_share, rel=1e-6)
        assert stored["flops_share"] == pytest.approx(fl_share, rel=1e-6)
        # the DGX H100's published figures (8 x 3.35 TB/s, 8 x 989 TFLOP/s) at the preset's
        # efficiencies (80%, 70%) times the format's shares
        params, nbytes = reference_sizes(c.hidden, c.layers, 4, 2, 256, 512, c.format)
        kv = 2 * c.layers * 2 * (c.hidden // 4) * 4
        bw = 8 * 3.35e12 * 0.8 * min(bw_share, 1.0)
        peak = 8 * 989e12 * 0.7 * min(fl_share, 1.0)
        decode = max(2 * params / peak, (nbytes + kv * 8) / bw) + c.layers * GPU_LAYER_S
        prefill = max(2 * params * 8 / peak, nbytes / bw) + c.layers * GPU_LAYER_S
        assert x.metrics["decode"] == pytest.approx(decode, rel=1e-6)
        assert x.metrics["prefill"] == pytest.approx(prefill, rel=1e-6)
        seen.add(c.format)
    assert seen == {"f32", "q4_0"}
    assert r.calibration["formats"]["f32"]["bw_share"] == 1.0
    # calibrate=False: the preset alone
    plain = tierflow.search(
        space,
        "dgx_h100",
        objectives=["decode", "params"],
        trials=4,
        calibrate=False,
        progress=False,
    )
    assert plain.calibration is None
    for x in plain.records:
        c = x.config
        want = dgx_decode(c.hidden, c.layers, 4, 2, 256, 512, c.format, ctx=32)
        assert x.metrics["decode"] == pytest.approx(want, rel=1e-9)
    with pytest.raises(InvalidArgumentError, match="calibrate"):
        tierflow.search(space, "dgx_h100", trials=1, calibrate="yes", progress=False)
    with pytest.raises(InvalidArgumentError, match="no figures for"):
        tierflow.search({**space, "format": ["q8_0"]}, "dgx_h100", trials=1, calibrate=cal)


def non_dominated(rows, directions):
    out = []
    for i, a in enumerate(rows):
        dom = False
        for j, b in enumerate(rows):
            if i == j:
                continue
            ge = all(
                (x <= y) if d == "minimize" else (x >= y)
                for x, y, d in zip(b, a, directions, strict=True)
            )
            gt = any(
                (x < y) if d == "minimize" else (x > y)
                for x, y, d in zip(b, a, directions, strict=True)
            )
            dom |= ge and gt
        out.append(not dom)
    return out


def test_front_is_non_dominated_and_respects_constraints():
    space = {
        "hidden": {"low": 128, "high": 1024, "step": 128},
        "layers": {"low": 2, "high": 32},
        "heads": [4, 8, 16],
        "kv_heads": [1, 2, 4, 8],
        "intermediate": [512, 1024, 2048],
        "vocab": 2000,
        "format": ["f32", "bf16", "q8_0", "q4_0"],
        "experts": [4, 8],
        "fast_tier": ["128MiB", "512MiB"],
    }
    trace = tierflow.Trace.closed_loop(8, users=1, n=30, prompt_tokens=16, output_tokens=4, seed=3)
    cons = ["p99 <= 3 ms", "fast_tier <= 256 MiB"]
    r = tierflow.search(
        space,
        "sn40l",
        trace=trace,
        objectives=["p99", "params"],
        constraints=cons,
        trials=30,
        progress=False,
        calibrate=False,  # the preset, as the simulation below
    )
    done = [x for x in r.records if x.state == "COMPLETE"]
    assert len(done) >= 15
    for x in r.records:
        c = x.config
        assert c.hidden % c.heads == 0 and c.heads % c.kv_heads == 0
    feasible = [
        x for x in done if x.metrics["p99"] <= 3e-3 and x.metrics["fast_tier"] <= 256 * 2**20
    ]
    assert {x.number for x in feasible} == {x.number for x in done if x.feasible}
    front = r.front
    assert front and all(x.feasible for x in front)
    # independent non-domination over every feasible trial
    rows = [(x.metrics["p99"], x.metrics["params"]) for x in feasible]
    flags = non_dominated(rows, ["minimize", "maximize"])
    want = {rows[i] for i, f in enumerate(flags) if f}
    assert {(x.metrics["p99"], x.metrics["params"]) for x in front} == want
    # the largest feasible expert
    assert r.best.metrics["params"] == max(x.metrics["params"] for x in feasible)
    # a trial's p99 is the simulator's on the remapped trace
    x = front[0]
    g = tierflow.CoE("check")
    for i in range(x.config.experts):
        g.expert(
            f"e{i}",
            params=float(x.config.params),
            dtype=x.config.dtype,
            nbytes=x.config.nbytes,
            layers=x.config.layers,
            kv_bytes_per_token=x.config.kv_bytes_per_token,
        )
    d = tierflow.devices.sn40l()
    d = d.with_exec_capacity(x.config.fast_tier + d.reserved)
    t = tierflow.Trace(
        g.experts,
        trace.arrival,
        trace.prompt_tokens,
        trace.output_tokens,
        trace.expert % x.config.experts,
        trace.score_ids % x.config.experts,
        trace.score_probs,
        trace.user,
    )
    rep = tierflow.simulate(g, d, t, "lru")
    assert x.metrics["p99"] == pytest.approx(float(np.percentile(rep.latency, 99)), rel=1e-12)


def test_quality_raising_or_nan_fails_only_that_trial():
    calls = []

    def quality(c):
        calls.append(c)
        if len(calls) == 2:
            raise RuntimeError("training diverged")
        if len(calls) == 4:
            return float("nan")
        return 1.0 / c.params

    r = tierflow.search(
        {"hidden": [256, 512], "layers": {"low": 1, "high": 8}, "vocab": 500, "heads": 4},
        "sn40l",
        quality=quality,
        trials=10,
        progress=False,
        calibrate=False,
    )
    states = [x.state for x in sorted(r.records, key=lambda x: x.number)]
    assert len(states) == 10 and len(calls) == 10
    assert states[1] == "FAIL" and states[3] == "FAIL"
    assert states.count("COMPLETE") == 8
    errs = sorted(x.error for x in r.records if x.state == "FAIL")
    assert "RuntimeError" in errs[0] and "training diverged" in errs[0]
    assert "nan" in errs[1]
    assert [o.metric for o in r.objectives] == ["decode", "params", "quality"]


@pytest.mark.parametrize(
    ("space", "kw", "match"),
    [
        ({}, {}, "empty"),
        ({"hidden": [100], "layers": 2, "heads": [3, 7]}, {}, "inconsistent"),
        ({"hidden": [64], "layers": 2, "heads": [4], "kv_heads": [3]}, {}, "inconsistent"),
        ({"hidden": [48], "layers": 2, "heads": 2, "format": "q4_0"}, {}, "multiples of 32"),
        ({"hidden": [64], "layers": {"low": 4, "high": 2}}, {}, "low <= high"),
        ({"hidden": [], "layers": 2}, {}, "no choices"),
        ({"hidden": [64], "layers": 2, "depth": 3}, {}, "unknown dimension"),
        ({"hidden": [64], "layers": 2, "format": "int3"}, {}, "unknown format"),
        ({"hidden": [64], "layers": 2}, {"objectives": ["speed"]}, "unknown objective"),
        ({"hidden": [64], "layers": 2}, {"device": "tpu-v5"}, "unknown device"),
        ({"hidden": [64], "layers": 2}, {"constraints": ["p99 <= 5 parsecs"]}, "unit"),
        ({"hidden": [64], "layers": 2}, {"constraints": ["decode is small"]}, "metric"),
        ({"hidden": [64], "layers": 2}, {"objectives": ["p99"]}, "need a trace"),
        ({"hidden": [64], "layers": 2}, {"objectives": ["quality"]}, "quality"),
        ({"hidden": [64], "layers": 2}, {"trials": -1}, "trials"),
    ],
)
def test_bad_input_raises_typed_errors(space, kw, match):
    args = {"device": "sn40l", "trials": 2, "progress": False, "calibrate": False, **kw}
    with pytest.raises(InvalidArgumentError, match=match):
        tierflow.search(space, **args)


def test_fast_tier_smaller_than_an_expert_prunes_the_trial():
    r = tierflow.search(
        {"hidden": 512, "layers": 4, "vocab": 1000, "fast_tier": "1MiB"},
        "sn40l",
        trials=2,
        progress=False,
        calibrate=False,
    )
    assert [x.state for x in r.records] == ["PRUNED", "PRUNED"]
    assert "larger than the fast tier" in r.records[0].error
    assert r.best is None and r.front == []


def _stored_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of study ``name`` in ``url``, read with no database connection left open
    (Python >= 3.13 warns about a sqlite connection garbage-collected unclosed)."""
    from sqlalchemy.pool import NullPool

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


RESUME_SCRIPT = """
import sys, time
import tierflow

def quality(c):
    time.sleep(0.1)
    return float(c.layers)

tierflow.search(
    {"hidden": [256, 512], "layers": {"low": 1, "high": 16}, "heads": 4, "vocab": 500},
    "sn40l", quality=quality, trials=200, storage=sys.argv[1], study_name="resume",
    progress=False, calibrate=False,
)
"""


def test_resume_after_a_killed_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), url], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        db = tmp_path / "study.db"
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:  # poll the database directly: cheaper than opening an Optuna storage
                with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
                    (n,) = con.execute(
                        "SELECT count(*) FROM trials WHERE state = 'COMPLETE'"
                    ).fetchone()
            except sqlite3.Error:
                continue
            if n >= 3:
                break
        assert proc.poll() is None, "the search ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    st = _stored_trials(url, "resume")
    before = {t.number: (t.params, t.values) for t in st if t.state.name == "COMPLETE"}
    assert len(before) >= 3
    running = [t.number for t in st if t.state.name == "RUNNING"]
    n_before = len(st)

    r = tierflow.search(
        {"hidden": [256, 512], "layers": {"low": 1, "high": 16}, "heads": 4, "vocab": 500},
        "sn40l",
        quality=lambda c: float(c.layers),
        trials=n_before + 5,
        storage=url,
        study_name="resume",
        progress=False,
        calibrate=False,
    )
    st2 = _stored_trials(url, "resume")
    after = {t.number: (t.params, t.values) for t in st2 if t.state.name == "COMPLETE"}
    assert all(after[n] == v for n, v in before.items())  # earlier trials intact
    assert len(st2) == n_before + 5, (
        n_before,
        r.counts(),
        [t.state.name for t in st2],
    )  # the same study, continued
    assert min(set(after) - set(before)) > max(before)
    assert not [t for t in st2 if t.state.name == "RUNNING"]
    for n in running:  # left running by the killed process: now failed
        assert st2[n].state.name == "FAIL"
    assert len(r.records) == len(st2)
    # a resume with another space is refused, the study untouched
    with pytest.raises(InvalidArgumentError, match="other space"):
        tierflow.search(
            {"hidden": [256], "layers": 2, "heads": 4, "vocab": 500},
            "sn40l",
            quality=lambda c: 0.0,
            trials=100,
            storage=url,
            study_name="resume",
            progress=False,
            calibrate=False,
        )
    assert len(_stored_trials(url, "resume")) == len(st2)


def test_measurement_cache_counts(tmp_path):
    c = Config(64, 2, 4, 2, 128, 256, "q8_0", batch=2)
    m = Measurer(tmp_path / "m", repeats=1, decode_steps=2, prompt_tokens=8)
    a = m.measure(c)
    assert m.stats["measured"] == 1 and m.stats["cached"] == 0
    assert a.prefill_s > 0 and a.decode_s > 0 and a.cost_s > 0
    assert a.nbytes == c.nbytes  # the store's bytes, scaled from the measured layer
    b = m.measure(c)
    assert b == a and m.stats == {**m.stats, "measured": 1, "cached": 1}
    # from disk, in a new measurer; another depth of the same width shares the measurement
    m2 = Measurer(tmp_path / "m", repeats=1, decode_steps=2, prompt_tokens=8)
    deep = Config(64, 6, 4, 2, 128, 256, "q8_0", batch=2)
    d = m2.measure(deep)
    assert m2.stats["measured"] == 0 and m2.stats["cached"] == 1
    assert d.nbytes == deep.nbytes
    assert d.decode_s == pytest.approx(a.decode_fixed_s + 6 * a.decode_layer_s)
    # another format is a new measurement
    m2.measure(Config(64, 2, 4, 2, 128, 256, "f32", batch=2))
    assert m2.stats["measured"] == 1


def test_host_search_measures_in_the_loop(tmp_path):
    meas = Measurer(tmp_path / "m", repeats=1, decode_steps=2, prompt_tokens=8)
    space = {
        "hidden": 64,
        "layers": [1, 2, 3],
        "heads": 4,
        "intermediate": 128,
        "vocab": 256,
        "format": ["f32", "q8_0"],
    }
    r = tierflow.search(space, "host", trials=6, measurer=meas, progress=False)
    # one measurement per format and measured depth (1 layer, or 2 layers scaled to 2-3)
    distinct = {(x.config.format, min(x.config.layers, 2)) for x in r.records}
    assert meas.stats["measured"] == len(distinct) <= 4
    assert meas.stats["measured"] + meas.stats["cached"] == 6
    for x in r.records:
        m = meas.cached(x.config)
        assert x.metrics["decode"] == m.decode_s and x.metrics["prefill"] == m.prefill_s
    n = meas.stats["measured"]
    again = tierflow.search(space, "host", trials=6, measurer=meas, progress=False)
    assert meas.stats["measured"] == n and len(again.records) == 6  # all cached


def test_cli_end_to_end_json_and_yaml(tmp_path, capsys):
    from tierflow.cli import main

    js = tmp_path / "space.json"
    js.write_text(
        json.dumps(
            {
                "hidden": [256, 512],
                "layers": {"low": 2, "high": 12},
                "heads": [4, 8],
                "vocab": 1000,
                "format": ["bf16", "q4_0"],
            }
        )
    )
    out = tmp_path / "out-json"
    assert (
        main(
            [
                "search",
                str(js),
                "--device",
                "dgx_h100",
                "--trials",
                "8",
                "--quiet",
                "--constraint",
                "decode <= 1 ms",
                "--no-calibrate",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    d = json.loads((out / "front.json").read_text())
    assert d["devices"] == ["dgx_h100"] and len(d["trials"]) == 8
    assert d["calibration"] is None  # --no-calibrate
    assert d["front"] and all(t["metrics"]["decode"] <= 1e-3 for t in d["front"])
    assert (out / "front.png").stat().st_size > 1000
    assert "largest expert" in capsys.readouterr().out

    ym = tmp_path / "space.yaml"
    ym.write_text(
        textwrap.dedent("""
        space:
          hidden: 64
          layers: [1, 2]
          heads: 4
          intermediate: 128
          vocab: 256
          format: [f32, q4_0]
          experts: [2, 4]
          fast_tier: [1MiB, 8MiB]
        objectives: [p99, params]
        constraints: ["fast_tier <= 4 MiB"]
        device: [host, sn40l]
        trials: 4
    """)
    )
    trace = tmp_path / "t.jsonl"
    tierflow.Trace.closed_loop(4, users=1, n=10, prompt_tokens=8, output_tokens=2).save_jsonl(trace)
    out2 = tmp_path / "out-yaml"
    assert (
        main(
            [
                "search",
                str(ym),
                "--trace",
                str(trace),
                "--quiet",
                "--no-plot",
                "--storage",
                f"sqlite:///{tmp_path / 's.db'}",
                "--study",
                "y",
                "--prompt-tokens",
                "8",
                "--no-calibrate",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    d = json.loads((out2 / "front.json").read_text())
    assert d["devices"] == ["host", "sn40l"] and d["constraints"] == ["fast_tier <= 4 MiB"]
    assert len(d["trials"]) == 4
    for t in d["trials"]:
        if t["state"] == "COMPLETE":
            assert set(t["per_device"]) == {"host", "sn40l"}
            worst = max(t["per_device"][k]["p99"] for k in t["per_device"])
            assert t["metrics"]["p99"] == worst
    # bad input through the CLI: a typed error, exit status 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden": [100], "layers": 2, "heads": [3]}))
    assert main(["search", str(bad), "--device", "sn40l", "--quiet", "--out", str(tmp_path)]) == 1
    assert "inconsistent" in capsys.readouterr().err


def test_package_is_callable_and_exported():
    assert callable(tierflow.search) and "search" in tierflow.__all__
    assert tierflow.search.Space is Space
    s = Space({"hidden": [64, 96], "layers": 1, "heads": [4, 6], "kv_heads": [2, 3]})
    # every enumerated configuration obeys the constraints; repair maps samples into them
    for c in s.configs():
        assert c.hidden % c.heads == 0 and c.heads % c.kv_heads == 0 and c.head_dim % 2 == 0
    c = s.repair(
        {
            "hidden": 64,
            "layers": 1,
            "heads": 6,
            "kv_heads": 3,
            "vocab": 32000,
            "format": "f32",
            "experts": 1,
            "fast_tier": 0,
            "batch": 1,
        }
    )
    assert (c.heads, c.kv_heads) == (4, 2)


def test_demo_search_writes_three_fronts(tmp_path, monkeypatch, capsys):
    from tierflow.cli import main
    from tierflow.demos import search as demo

    tiny = {
        "hidden": [64, 128],
        "layers": {"low": 1, "high": 8},
        "heads": 4,
        "intermediate": 128,
        "vocab": 256,
        "format": ["f32", "q4_0"],
        "experts": 4,
        "fast_tier": "2MiB",
    }
    monkeypatch.setattr(demo, "DEMO_SPACE", tiny)
    # the simulated devices are calibrated on a small reference expert (a quick measurement)
    monkeypatch.setattr(calibrate_module, "REFERENCE", Config(64, 64, 4, 2, 128, 256, "f32"))
    assert main(["demo", "--search", "--trials", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for dev in ("host", "sn40l", "dgx_h100"):
        d = json.loads((tmp_path / f"front-{dev}.json").read_text())
        assert d["devices"] == [dev] and len(d["trials"]) == 3
        assert f"{dev}: Pareto front" in out
        if dev == "host":
            assert d["calibration"] is None
        else:  # predicted with the shares measured on this host, for both formats
            assert set(d["calibration"]["formats"]) == {"f32", "q4_0"}
            assert d["calibration"]["reference"]["hidden"] == 64
    assert (tmp_path / "fronts.png").stat().st_size > 1000
