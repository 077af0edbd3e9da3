"""Store benchmarks: file tier -> RAM against numpy.fromfile, adoption against
safetensors.numpy.load_file, and prefetch overlap. Run: make bench (or
pytest benches/test_store.py -m bench --benchmark-enable -s)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from conftest import best_of, record
from tierflow import Tier, TieredStore

pytestmark = pytest.mark.bench

GIB = 1 << 30
SIZE = int(os.environ.get("TIERFLOW_BENCH_BYTES", GIB))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "s"
    s = TieredStore(
        root, tiers=[Tier("ram", 3 * SIZE), Tier("disk", path="disk")], default_tier="ram"
    )
    a = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
    s.put("w", a, tier="disk")
    del a
    yield s
    s.close()


def drop_caches() -> str | None:
    """Drop the page cache; returns why not when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"cannot drop the page cache here ({e.strerror}): cold-cache figure skipped"


def test_file_to_ram_vs_fromfile_warm(benchmark, big, ratios):
    path = big.info("w")["file"]
    np.fromfile(path, dtype=np.uint8)  # warm the page cache
    anchor = best_of(lambda: np.fromfile(path, dtype=np.uint8), repeat=3)

    def ours():
        big.move("w", "ram")

    def back():
        big.move("w", "disk")

    benchmark.pedantic(ours, setup=back, rounds=3, iterations=1)
    t = benchmark.stats.stats.min
    gbs = SIZE / t / 1e9
    benchmark.extra_info.update(anchor_s=anchor, ratio=anchor / t, gbps=gbs)
    record(
        ratios,
        "file->ram read, warm cache, vs numpy.fromfile",
        anchor / t,
        0.9,
        note=f"({gbs:.2f} GB/s, CRC-32 checked)",
    )


def test_file_to_ram_vs_fromfile_cold(benchmark, big, ratios):
    why = drop_caches()
    if why:
        print(why)
        pytest.skip(why)
    path = big.info("w")["file"]
    anchor = best_of(lambda: np.fromfile(path, dtype=np.uint8), repeat=2, setup=drop_caches)

    def setup():
        big.move("w", "disk")
        drop_caches()

    benchmark.pedantic(lambda: big.move("w", "ram"), setup=setup, rounds=2, iterations=1)
    t = benchmark.stats.stats.min
    record(
        ratios,
        "file->ram read, cold cache, vs numpy.fromfile",
        anchor / t,
        0.9,
        note=f"({SIZE / t / 1e9:.2f} GB/s)",
    )


def test_load_safetensors_vs_load_file(benchmark, tmp_path, ratios):
    from safetensors.numpy import load_file, save_file

    f = tmp_path / "ckpt.safetensors"
    n = SIZE // 4 // 16
    save_file({f"layer{i}.w": np.full(n, i, np.float32) for i in range(16)}, str(f))
    load_file(str(f))  # warm
    anchor = best_of(lambda: load_file(str(f)), repeat=3)
    counter = iter(range(10**6))

    def ours():
        k = next(counter)
        s = TieredStore(tmp_path / f"s{k}", tiers=[Tier("ram", "1GiB"), Tier("disk", path="disk")])
        s.load_safetensors(f)
        s.close()

    benchmark.pedantic(ours, rounds=5, iterations=1)
    t = benchmark.stats.stats.min
    record(
        ratios,
        "load_safetensors (adopt 1 GiB) vs safetensors.numpy.load_file",
        anchor / t,
        10.0,
        note="(maps, does not copy)",
    )


@pytest.mark.parametrize("where", ["cpu", "offload"])
def test_prefetch_hides_load_time(benchmark, tmp_path, ratios, where):
    """Compute on tensor i while tensor i+1 is prefetched, compute time = 1.2x load time.
    Hidden fraction = 1 - (time waiting for weights with prefetch) / (time without).
    `cpu`: the compute is a busy loop on a core, competing with the prefetch thread (whose
    page-cache reads are CPU copies) for this machine's two cores. `offload`: the compute runs
    elsewhere (an accelerator; here a sleep), leaving the cores to the prefetch."""
    n, size = 16, 32 << 20
    s = TieredStore(tmp_path / "s", tiers=[Tier("ram", 3 * size), Tier("disk", path="disk")])
    for i in range(n):
        s.put(f"w{i}", np.full(size // 4, i, np.float32), tier="disk")
    names = [f"w{i}" for i in range(n)]

    def to_disk(nm):
        if s.tier_of(nm) != "disk":
            s.move(nm, "disk")

    load = best_of(lambda: s.move("w1", "ram"), repeat=3, setup=lambda: to_disk("w1"))

    def compute(w, seconds):
        t = time.perf_counter()
        acc = float(w[:1024].sum())
        if where == "offload":
            time.sleep(seconds)
        while time.perf_counter() - t < seconds:
            acc += float(w[:1024].sum())
        return acc

    def run(prefetch: bool) -> tuple[float, float]:
        for nm in names:
            to_disk(nm)
        waited = first = 0.0
        if prefetch:
            s.prefetch(names[:1])
        for i, nm in enumerate(names):
            t = time.perf_counter()
            w = s.get(nm)  # waits (a stall) if its prefetch is still in flight
            waited += time.perf_counter() - t
            if prefetch and i + 1 < n:
                s.prefetch(names[i + 1 : i + 2])  # overlaps the compute on w below
            if i == 0:
                first = waited
            compute(w, 1.2 * load)
        return waited, first

    no_pf, _ = run(False)
    runs: list[tuple[float, float]] = []
    benchmark.pedantic(lambda: runs.append(run(True)), rounds=2, iterations=1)
    waited, first = min(runs)
    hidden = 1 - waited / no_pf
    steady = 1 - (waited - first) / (no_pf * (n - 1) / n)
    benchmark.extra_info.update(load_s=load, waited_no_prefetch=no_pf, waited_prefetch=waited)
    record(
        ratios,
        f"prefetch, {where} compute: load time hidden, {n} tensors",
        hidden,
        0.8,
        note="(the first load cannot be hidden)",
    )
    record(ratios, f"prefetch, {where} compute: load time hidden, steady state", steady, 0.8)
    s.close()
