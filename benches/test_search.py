"""Architecture-search benchmarks: the cost of one in-the-loop trial, what the measurement cache
saves on a second search, and an in-the-loop measurement (two layers built and timed, scaled to
the full depth) against a direct timing of the full-depth model of the same shape, interleaved
in the same run.

Run: pytest benches/test_search.py -m bench -s
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import tierflow as tf
from conftest import record
from tierflow.search import Config, Measurer
from tierflow.search.measure import Probe

pytestmark = pytest.mark.bench

SHAPE = Config(512, 8, 8, 2, 1408, 4096, "q8_0")
P, STEPS = 32, 4
SPACE = {
    "hidden": [256, 512],
    "layers": {"low": 2, "high": 16},
    "heads": 8,
    "kv_heads": [2, 8],
    "intermediate": [704, 1408],
    "vocab": 4096,
    "format": ["f32", "bf16", "q8_0", "q4_0"],
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path / "cache"))


def test_cost_of_one_in_the_loop_trial(tmp_path, ratios):
    """Wall time of one uncached measurement (build, convert, time) and of a cached one."""
    costs, cached = [], []
    for i in range(3):
        m = Measurer(tmp_path / f"m{i}", prompt_tokens=P)
        t = time.perf_counter()
        m.measure(SHAPE)
        costs.append(time.perf_counter() - t)
        t = time.perf_counter()
        m.measure(SHAPE)
        cached.append(time.perf_counter() - t)
    cost, hit = float(np.median(costs)), float(np.median(cached))
    record(
        ratios,
        f"search: one in-the-loop trial, uncached / cached ({SHAPE.label()}, {SHAPE.params / 1e6:.1f}M params)",
        cost / hit,
        100.0,
        note=f"(uncached {cost:.2f} s, cached {hit * 1e3:.3f} ms; medians of 3)",
    )
    assert cost > hit


def test_cache_saves_a_second_search(tmp_path, ratios):
    """The same search run twice on this host (a new study, as after a restart, with the same
    seed, so the sampler proposes the same shapes): the second measures nothing."""
    meas = Measurer(tmp_path / "cache-m", prompt_tokens=P)
    t = time.perf_counter()
    tf.search(SPACE, "host", trials=16, measurer=meas, progress=False, study_name="a")
    first = time.perf_counter() - t
    n1 = dict(meas.stats)
    meas2 = Measurer(tmp_path / "cache-m", prompt_tokens=P)  # a new process would see the same
    t = time.perf_counter()
    tf.search(SPACE, "host", trials=16, measurer=meas2, progress=False, study_name="b")
    second = time.perf_counter() - t
    record(
        ratios,
        "search: a second 16-trial host search with the measurement cache, speed-up",
        first / second,
        2.0,
        note=f"(first {first:.1f} s: {n1['measured']} measured, {n1['cached']} cached; second "
        f"{second:.1f} s: {meas2.stats['measured']} measured, {meas2.stats['cached']} cached)",
    )


@pytest.mark.parametrize("fmt", ["f32", "q4_0"])
def test_in_the_loop_equals_direct_timing(fmt, ratios):
    """The 2-layer model of the in-the-loop measurement and the full 8-layer model, each built
    once, timed in 15 interleaved rounds (one prefill and 4 decode steps each). In-the-loop
    figures are scaled to 8 layers; direct ones are the whole passes as timed. The ratio of the
    fastest rounds (the least disturbed by other jobs, as a measurement keeps its fastest
    repeat) must be within +-15%; the ratio of the medians is recorded beside it."""
    c = Config(512, 8, 8, 2, 1408, 4096, fmt)
    loop_p, loop_d, dir_p, dir_d = [], [], [], []
    with Probe(c, P, STEPS, 2) as loop, Probe(c, P, STEPS, c.layers) as direct:
        for _ in range(15):
            m = loop.run(1)[0].scaled(c)
            loop_p.append(m.prefill_s)
            loop_d.append(m.decode_s)
            _, p, d = direct.run(1)
            dir_p.append(p)
            dir_d.append(d)
    rp = float(min(loop_p) / min(dir_p))
    rd = float(min(loop_d) / min(dir_d))
    for what, r, a, b in (("prefill", rp, loop_p, dir_p), ("decode", rd, loop_d, dir_d)):
        record(
            ratios,
            f"search: in-the-loop {what} / direct timing, {c.label()} (2 of 8 layers measured; "
            "fastest rounds)",
            r,
            0.85,
            note=f"(fastest rounds: in the loop {min(a) * 1e3:.2f} ms, direct {min(b) * 1e3:.2f} ms; "
            f"medians {np.median(a) * 1e3:.2f} / {np.median(b) * 1e3:.2f} ms = "
            f"{np.median(a) / np.median(b):.2f}; must be within 0.85-1.15)",
        )
    assert 0.85 <= rp <= 1.15, (rp, loop_p, dir_p)
    assert 0.85 <= rd <= 1.15, (rd, loop_d, dir_d)
