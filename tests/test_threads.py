"""The decode kernels' task team (rust/core/src/pool/team.rs): results equal to one thread's, from
many Python threads at once, and in a child after fork()."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import tierflow


@pytest.fixture
def two_threads():
    tierflow.set_num_threads(2)
    yield
    tierflow.set_num_threads(None)


def _case(seed: int):
    rng = np.random.default_rng(seed)
    # 1 MiB of weight: above the size that runs on the calling thread alone
    x = rng.standard_normal((1, 512)).astype(np.float32)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    q = tierflow.quantize(w, "q8_0")
    return x, w, q


def test_team_results_equal_one_thread(two_threads):
    x, w, q = _case(0)
    got = [tierflow.matmul(x, w), tierflow.matmul(x, q), tierflow.matmul(x, w.T)]
    tierflow.set_num_threads(1)
    want = [tierflow.matmul(x, w), tierflow.matmul(x, q), tierflow.matmul(x, w.T)]
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
    assert tierflow.info()["spin_us"] >= 0


def test_team_from_many_python_threads(two_threads):
    x, w, q = _case(1)
    want = (tierflow.matmul(x, w), tierflow.matmul(x, q))
    errors: list[str] = []

    def worker():
        for _ in range(50):
            a, b = tierflow.matmul(x, w), tierflow.matmul(x, q)
            if not (np.array_equal(a, want[0]) and np.array_equal(b, want[1])):
                errors.append("differs")

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_team_works_in_forked_child(two_threads):
    x, _w, q = _case(2)
    want = tierflow.matmul(x, q)  # the parent's team exists now
    pid = os.fork()
    if pid == 0:  # child: the team's threads did not survive the fork
        ok = False
        try:
            ok = all(np.array_equal(tierflow.matmul(x, q), want) for _ in range(20))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    np.testing.assert_array_equal(tierflow.matmul(x, q), want)  # and the parent's still works
