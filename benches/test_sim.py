"""Simulator speed: simulated requests per second for the 150-expert Samba-CoE (the target is
>= 1,000,000 per second on one core), against a plain-Python LRU simulator as the anchor.

Run: pytest benches/test_sim.py -m bench -s                       (the ratio test; also `make bench`)
     pytest benches/test_sim.py -m bench --benchmark-enable -o addopts=""   (+ pytest-benchmark table)
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import tierflow as tf
from tierflow.sim import paper

pytestmark = pytest.mark.bench

N = 1_000_000


@pytest.fixture(scope="module")
def setup():
    g = paper.coe(150)
    d = tf.devices.dgx_a100()
    t = tf.Trace.poisson(
        g.experts, rate=1.0, n=N, zipf_s=1.0, prompt_tokens=512, output_tokens=128, seed=0
    )
    return g, d, t


def python_lru(
    expert: np.ndarray, arrival: np.ndarray, slots: int, copy: float, service: float
) -> float:
    """The anchor: the same FIFO single-server LRU model in plain Python."""
    cache: OrderedDict[int, None] = OrderedDict()
    free = 0.0
    total = 0.0
    for e, a in zip(expert.tolist(), arrival.tolist(), strict=False):
        start = max(free, a)
        if e in cache:
            cache.move_to_end(e)
        else:
            if len(cache) >= slots:
                cache.popitem(last=False)
            cache[e] = None
            start += copy
        free = start + service
        total += free - a
    return total


@pytest.mark.parametrize("policy", ["lru", "belady", "static+lfu", "lru+prefetch", "affinity"])
def test_native_rate(benchmark, setup, policy):
    g, d, t = setup
    r = benchmark.pedantic(tf.simulate, args=(g, d, t, policy), rounds=3, iterations=1)
    rate = N / benchmark.stats.stats.min
    benchmark.extra_info["requests_per_s"] = rate
    assert len(r.latency) == N
    assert rate >= 1_000_000, f"{policy}: {rate:,.0f} requests/s"


def test_python_anchor(benchmark, setup):
    g, d, t = setup
    n = 200_000
    slots = d.experts_fit(g.nbytes("expert000"), router_bytes=g.nodes["router"].nbytes)
    benchmark.pedantic(
        python_lru, args=(t.expert[:n], t.arrival[:n], slots, 0.42, 1.0), rounds=1, iterations=1
    )
    benchmark.extra_info["requests_per_s"] = n / benchmark.stats.stats.min


def test_ratio_native_vs_python(setup, ratios):
    """One run, both sides (best of 3 each): the figures BENCHMARKS.md records. Runs under
    ``make bench`` too (no pytest-benchmark needed)."""
    from conftest import best_of, record

    g, d, t = setup
    native = N / best_of(lambda: tf.simulate(g, d, t, "lru"))
    n = 200_000
    slots = d.experts_fit(g.nbytes("expert000"), router_bytes=g.nodes["router"].nbytes)
    py = n / best_of(lambda: python_lru(t.expert[:n], t.arrival[:n], slots, 0.42, 1.0))
    print(f"\nnative {native:,.0f} req/s, python anchor {py:,.0f} req/s, ratio {native / py:.1f}x")
    record(
        ratios,
        "sim: 150-expert CoE, lru, requests/s vs plain-Python LRU loop",
        native / py,
        1.0,
        note=f"native {native / 1e6:.2f} M req/s (target: 1 M/s)",
    )
    assert native >= 1_000_000
