"""Many threads, fork and SIGKILL against one store (tierflow/store.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import tierflow
from tierflow import Tier, TieredStore

SECONDS = float(os.environ.get("TIERFLOW_STRESS_SECONDS", "20"))


def value(name: str, version: int) -> np.ndarray:
    seed = (hash(name) & 0xFFFF) * 1000 + version
    return np.random.default_rng(seed).standard_normal(64 + (seed % 512)).astype(np.float32)


@pytest.mark.slow
def test_eight_threads_random_operations(tmp_path):
    """8 threads doing random operations on one store for SECONDS: no deadlock, nothing lost,
    every read returns exactly what was last written, capacities hold."""
    s = TieredStore(
        tmp_path / "s",
        tiers=[Tier("fast", "8KiB"), Tier("ram", "48KiB"), Tier("disk", path="disk")],
        policy="lru",
    )
    names = [f"t{i}" for i in range(24)]
    locks = {n: threading.Lock() for n in names}
    truth: dict[str, int] = {}  # name -> version currently stored
    errors: list[BaseException] = []
    stop = time.monotonic() + SECONDS
    ops = [0] * 8

    def worker(k: int) -> None:
        rnd = random.Random(k)
        try:
            while time.monotonic() < stop:
                n = rnd.choice(names)
                op = rnd.choice(
                    ["put", "get", "get", "move", "evict", "prefetch", "delete", "pin", "stats"]
                )
                with locks[n]:  # one writer per name; the store itself is shared freely
                    ver = truth.get(n)
                    if op == "put":
                        v = (ver or 0) + 1
                        try:
                            s.put(
                                n,
                                value(n, v),
                                overwrite=True,
                                tier=rnd.choice([None, "fast", "disk"]),
                            )
                            truth[n] = v
                        except tierflow.CapacityError:  # the tier is full of pinned tensors
                            if ver is not None:  # the old tensor is intact
                                np.testing.assert_array_equal(s.get(n), value(n, ver))
                    elif ver is None:
                        with pytest.raises(tierflow.TensorNotFoundError):
                            s.get(n)
                    elif op == "get":
                        np.testing.assert_array_equal(s.get(n), value(n, ver))
                    elif op == "move":
                        try:
                            s.move(n, rnd.choice(["fast", "ram", "disk"]))
                        except tierflow.CapacityError:
                            pass  # everything above is pinned or busy
                    elif op == "evict":
                        try:
                            s.evict(n)
                        except tierflow.InvalidArgumentError:
                            pass  # pinned, or already on disk
                    elif op == "prefetch":
                        try:
                            s.prefetch([n]).wait(timeout=30)
                        except tierflow.CapacityError:
                            pass
                    elif op == "delete":
                        s.delete(n)
                        del truth[n]
                    elif op == "pin":
                        (s.pin if rnd.random() < 0.3 else s.unpin)(n)
                    else:
                        for t in s.stats()["tiers"]:
                            assert t["capacity"] is None or t["used"] <= t["capacity"]
                ops[k] += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "deadlock: a worker never finished"
    assert not errors, errors[0]
    assert sum(ops) > 100
    assert sorted(s.names()) == sorted(truth)
    st = s.stats()
    assert sum(t["tensors"] for t in st["tiers"]) == len(truth)  # each tensor in exactly one tier
    for n, v in truth.items():
        np.testing.assert_array_equal(s.get(n), value(n, v))
    s.close()
    with TieredStore.open(tmp_path / "s") as s2:
        for n, v in truth.items():
            np.testing.assert_array_equal(s2.get(n), value(n, v))


CRASH_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, tierflow
    s = tierflow.TieredStore(sys.argv[1], tiers=[tierflow.Tier("ram", "2MiB"), tierflow.Tier("disk", path="disk")])
    i = 0
    while True:
        s.put(f"t{i}", np.full(50_000 + i, i, dtype=np.float64))  # 400 KB each: evictions too
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_mid_put_loses_no_completed_put(tmp_path):
    for attempt in range(3):
        root = tmp_path / f"s{attempt}"
        p = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(root)], stdout=subprocess.PIPE, text=True
        )
        done = -1
        assert p.stdout is not None
        deadline = time.monotonic() + 60
        while done < 5 + 7 * attempt and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            done = int(line)
        time.sleep(0.002 * attempt)  # land the kill at different points of a put
        p.send_signal(signal.SIGKILL)
        p.wait()
        # the child may have acknowledged more puts than read so far: their lines are still in
        # the pipe (each one is flushed only after its put returned)
        for line in p.stdout.read().splitlines():
            done = int(line)
        p.stdout.close()
        assert done >= 5, "the child made no progress"
        with TieredStore.open(root) as s:  # verifies every checksum
            names = set(s.names())
            # every acknowledged put is intact; at most the one in flight may also be there
            for i in range(done + 1):
                assert f"t{i}" in names
                a = s.get(f"t{i}")
                assert a.shape == (50_000 + i,) and np.all(a == i)
            assert names <= {f"t{i}" for i in range(done + 2)}
            leftovers = [n for n in os.listdir(root / "disk") if ".tmp-" in n]
            assert not leftovers


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_store_works_in_forked_child(tmp_path):
    s = TieredStore(tmp_path / "s", tiers=[Tier("ram", "1MiB"), Tier("disk", path="disk")])
    s.put("a", np.arange(1000, dtype=np.float32), tier="disk")
    s.get("a")
    tierflow.set_num_threads(2)
    pf = s.prefetch(["a"])
    pf.wait()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the store, prefetch threads and thread pool must all work
        code = 1
        try:
            s.put("b", np.ones(10, np.float32), tier="disk")
            s.evict("a")
            s.prefetch(["a", "b"]).wait(timeout=20)
            ok = s.get("a").sum() == np.arange(1000).sum() and s.get("b").sum() == 10
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    got = os.read(r, 1)
    os.close(r)
    assert got == b"\x00" and os.WEXITSTATUS(status) == 0
    assert s.get("a").sum() == np.arange(1000).sum()
