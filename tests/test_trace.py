"""tierflow.sim.trace: workload generators and JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tierflow as tf


def test_poisson_rate_and_seed():
    t = tf.Trace.poisson(10, rate=50.0, n=20000, seed=3)
    gaps = np.diff(t.arrival)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 50, rel=0.05)  # exponential: std = mean
    u = tf.Trace.poisson(10, rate=50.0, n=20000, seed=3)
    assert np.array_equal(t.arrival, u.arrival) and np.array_equal(t.expert, u.expert)
    v = tf.Trace.poisson(10, rate=50.0, n=20000, seed=4)
    assert not np.array_equal(t.expert, v.expert)


def test_zipf_and_uniform_popularity():
    n = 50000
    t = tf.Trace.poisson(8, rate=1.0, n=n, popularity="zipf", zipf_s=1.2, seed=0)
    want = np.arange(1, 9) ** -1.2
    want /= want.sum()
    got = np.bincount(t.expert, minlength=8) / n
    assert np.allclose(got, want, atol=0.01)
    t = tf.Trace.poisson(8, rate=1.0, n=n, popularity="uniform", seed=0)
    assert np.allclose(np.bincount(t.expert, minlength=8) / n, 1 / 8, atol=0.01)


def test_bursts_raise_the_rate_inside_the_window():
    t = tf.Trace.poisson(4, rate=10.0, n=5000, bursts=[(20.0, 10.0, 5.0)], seed=1)
    inside = np.sum((t.arrival >= 20) & (t.arrival < 30)) / 10
    before = np.sum(t.arrival < 20) / 20
    assert inside == pytest.approx(50, rel=0.15) and before == pytest.approx(10, rel=0.15)


def test_drift_moves_the_popular_expert():
    t = tf.Trace.poisson(10, rate=100.0, n=20000, zipf_s=2.0, drift=1.0, seed=2)
    early = np.bincount(t.expert[t.arrival < 1], minlength=10).argmax()
    late = np.bincount(t.expert[(t.arrival >= 5) & (t.arrival < 6)], minlength=10).argmax()
    assert early == 0 and late == 5


def test_scores_rank_the_chosen_expert_first():
    t = tf.Trace.poisson(6, rate=1.0, n=1000, top_k=3, seed=0)
    assert np.array_equal(t.score_ids[:, 0], t.expert)
    assert np.all(np.diff(t.score_probs, axis=1) <= 0)
    assert np.all(t.score_ids[:, 1] != t.score_ids[:, 0])
    assert np.allclose(t.score_probs.sum(axis=1), 1.0)


def test_jsonl_roundtrip(tmp_path):
    for t in (
        tf.Trace.poisson(["a", "b", "c"], rate=3.0, n=50, prompt_tokens=(10, 20), seed=1),
        tf.Trace.closed_loop(["a", "b"], users=3, n=20, think_time=0.5, seed=1),
    ):
        p = tmp_path / "t.jsonl"
        t.save_jsonl(p)
        u = tf.Trace.load_jsonl(p)
        assert [u.experts[i] for i in u.expert] == [t.experts[i] for i in t.expert]
        assert np.allclose(u.arrival, t.arrival) and np.array_equal(
            u.prompt_tokens, t.prompt_tokens
        )
        assert u.closed == t.closed


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"t": 0, "expert": "a"}', "{bad"], r":2: malformed JSON"),
        (['{"expert": "a"}'], "missing field 't'"),
        (['{"t": -1, "expert": "a"}'], "must be a time >= 0"),
        (['{"t": 0}'], "missing field 'expert'"),
        (['{"t": 0, "expert": "zz"}'], "unknown expert 'zz'"),
        (['{"t": 0, "expert": "a", "prompt_tokens": 0}'], "prompt_tokens"),
        (["[1, 2]"], "must be a JSON object"),
        ([], "empty"),
    ],
)
def test_bad_jsonl(tmp_path, lines, match):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(tf.InvalidArgumentError, match=match):
        tf.Trace.load_jsonl(p, experts=["a", "b"])


def test_bad_generator_arguments():
    with pytest.raises(tf.InvalidArgumentError, match="rate"):
        tf.Trace.poisson(3, rate=0, n=10)
    with pytest.raises(tf.InvalidArgumentError, match="n must be"):
        tf.Trace.poisson(3, rate=1, n=0)
    with pytest.raises(tf.InvalidArgumentError, match="popularity"):
        tf.Trace.poisson(3, rate=1, n=5, popularity="pareto")
    with pytest.raises(tf.InvalidArgumentError, match="burst"):
        tf.Trace.poisson(3, rate=1, n=5, bursts=[(0, -1, 2)])


def test_unknown_names_against_a_graph():
    tr = tf.Trace(["a", "ghost"], [0.0, 1.0], [1, 1], [1, 1], [0, 1])
    with pytest.raises(tf.InvalidArgumentError, match=r"unknown expert.*ghost"):
        tr.with_experts(["a", "b"])
    assert json.dumps(tr.counts()) == '{"a": 1, "ghost": 1}'
