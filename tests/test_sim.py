"""tierflow.sim: the discrete-event simulator, checked against analytic references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tierflow as tf

GB = 10**9


def toy_device(exec_gb: float = 10, *, tp: int = 1, **kw) -> tf.Device:
    base = dict(
        name="toy",
        tiers=[
            tf.devices.MemoryTier("hbm", int(exec_gb * GB), 10e9, 1e-3),
            tf.devices.MemoryTier("ddr", 1000 * GB, 2e9, 0.0),
            tf.devices.MemoryTier("disk", 10**13),
        ],
        exec_tier="hbm",
        read_bandwidth=1e12,
        peak_flops={"bfloat16": 1e14},
        bw_efficiency=0.8,
        compute_efficiency=0.5,
        launch_overhead=5e-6,
        kernels_per_layer=10,
        collective_latency=20e-6,
        tp=tp,
    )
    base.update(kw)
    return tf.Device(**base)


def coe(sizes_gb: list[float], router: float | None = None, kv: int = 0) -> tf.CoE:
    g = tf.CoE("t")
    if router:
        g.router("r", params=router * GB / 2, kv_bytes_per_token=kv)
    for i, s in enumerate(sizes_gb):
        g.expert(f"e{i}", params=s * GB / 2, dtype="bf16", kv_bytes_per_token=kv, layers=32)
    return g


def seq_trace(
    g: tf.CoE, seq: list[int], gap: float = 100.0, prompt: int = 16, out: int = 4
) -> tf.Trace:
    n = len(seq)
    return tf.Trace(
        g.experts, np.arange(n) * gap, np.full(n, prompt), np.full(n, out), np.array(seq)
    )


def pass_time(d: tf.Device, node: tf.sim.coe.Node, n: float, ctx: float) -> float:
    """The latency model in float64, written independently of the Rust code."""
    comp = 2 * node.params * n / (d.flops("bf16") * d.compute_efficiency)
    mem = (node.nbytes + node.kv_bytes_per_token * ctx) / (d.read_bandwidth * d.bw_efficiency)
    fixed = node.layers * (
        d.kernels_per_layer * d.launch_overhead + (2 * d.collective_latency if d.tp > 1 else 0)
    )
    return max(comp, mem) + fixed


@pytest.mark.parametrize("tp", [1, 8])
@pytest.mark.parametrize(("prompt", "out"), [(1, 1), (4000, 30), (200, 300)])
def test_one_request_matches_the_model(tp, prompt, out):
    d = toy_device(tp=tp)
    g = coe([3.0], kv=524288)
    r = tf.simulate(g, d, seq_trace(g, [0], prompt=prompt, out=out))
    node = g.nodes["e0"]
    copy = 1e-3 + 3 * GB / 10e9  # latency + bytes / link bandwidth
    pre = pass_time(d, node, prompt, 0)
    dec = sum(pass_time(d, node, 1, prompt + i) for i in range(1, out))
    assert r.ttft[0] == pytest.approx(copy + pre, rel=1e-12)
    assert r.latency[0] == pytest.approx(copy + pre + dec, rel=1e-12)
    assert r.switches == 1 and r.link_bytes() == {"hbm<->ddr": 3 * GB, "ddr<->disk": 0}


def test_experts_spill_to_the_slowest_tier_and_copy_over_both_links():
    d = toy_device(
        tiers=[
            tf.devices.MemoryTier("hbm", 5 * GB, 10e9, 0.0),
            tf.devices.MemoryTier("ddr", 5 * GB, 2e9, 0.0),
            tf.devices.MemoryTier("disk", 10**13),
        ]
    )
    g = coe([4.0, 4.0])
    r = tf.simulate(g, d, seq_trace(g, [0, 1, 0, 1]))
    # the more popular (first by index on a tie) lives in DDR, the other on disk
    assert r.raw["home"].tolist() == [1, 2]
    assert r.link_bytes() == {"hbm<->ddr": 16 * GB, "ddr<->disk": 8 * GB}
    # disk copy is bound by the slowest link: 4 GB / 2 GB/s
    assert r.latency[1] - r.latency[0] == pytest.approx(4 / 2 - 4 / 10, rel=1e-9)


def test_router_runs_once_per_batch():
    d = toy_device()
    g = coe([1.0, 1.0], router=1.0)
    t = tf.Trace.closed_loop(
        g.experts, users=4, n=40, think_time=0.0, prompt_tokens=100, output_tokens=2, seed=0
    )
    r = tf.simulate(g, d, t, "lru", batch_size=4)
    assert r.raw["batches"] == 10
    r1 = tf.simulate(g, d, t, "lru", batch_size=1)
    assert r1.raw["batches"] == 40


def test_mdl_queue_matches_pollaczek_khinchine():
    # every expert pinned => deterministic service S; Poisson arrivals at rate lam.
    d = toy_device(50)
    g = coe([1.0, 1.0, 1.0])
    t0 = seq_trace(g, [0])
    s = tf.simulate(g, d, t0, "static", pinned_fraction=1.0).latency[0]
    lam = 0.7 / s
    t = tf.Trace.poisson(g.experts, rate=lam, n=200_000, prompt_tokens=16, output_tokens=4, seed=5)
    r = tf.simulate(g, d, t, "static", pinned_fraction=1.0)
    assert r.misses == 0
    rho = lam * s
    want = rho * s / (2 * (1 - rho))  # M/D/1 mean wait
    assert r.queue.mean() == pytest.approx(want, rel=0.05)
    assert np.allclose(r.latency - r.queue, s, rtol=1e-9)


def test_closed_loop_single_user_is_sequential():
    d = toy_device()
    g = coe([2.0, 2.0])
    t = tf.Trace.closed_loop(g.experts, users=1, n=30, think_time=0.2, seed=1)
    r = tf.simulate(g, d, t)
    np.testing.assert_allclose(
        r.arrival[1:], r.arrival[:-1] + r.latency[:-1] + t.arrival[1:], rtol=1e-12
    )
    assert np.all(r.queue == 0)


sizes_st = st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0]), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=sizes_st,
    seq=st.lists(st.integers(0, 7), min_size=1, max_size=80),
    cap=st.sampled_from([5, 6, 8, 11]),
    policy=st.sampled_from(
        ["lru", "lfu", "fifo", "belady", "static+lru", "lru+prefetch", "affinity", "pack+lfu"]
    ),
    instances=st.sampled_from([1, 2]),
    gap=st.sampled_from([0.01, 10.0]),
)
def test_conservation_and_capacity(sizes, seq, cap, policy, instances, gap):
    g = coe(sizes)
    seq = [s % len(sizes) for s in seq]
    d = toy_device(cap)
    t = seq_trace(g, seq, gap=gap)
    r = tf.simulate(g, d, t, policy, instances=instances)
    nb = np.array([g.nbytes(e) for e in g.experts])
    moved = int((r.node_loads * nb).sum())
    assert sum(r.link_bytes().values()) == moved
    assert r.switches == int(r.node_loads.sum())
    for inst in r.instances:
        assert inst["occupancy_bytes"].max() <= r.exec_capacity
    assert np.all(r.latency >= r.ttft) and np.all(r.ttft > 0) and np.all(r.queue >= 0)
    assert r.hits + r.misses >= len(seq)


@settings(max_examples=150, deadline=None)
@given(seq=st.lists(st.integers(0, 9), min_size=1, max_size=120), slots=st.integers(1, 6))
def test_belady_never_misses_more_than_lru_or_lfu(seq, slots):
    g = coe([1.0] * 10)
    d = toy_device(slots + 0.5)
    t = seq_trace(g, seq)
    m = {p: tf.simulate(g, d, t, p).misses for p in ("belady", "lru", "lfu", "fifo")}
    assert m["belady"] <= min(m["lru"], m["lfu"], m["fifo"])


def test_identical_seeds_give_identical_reports():
    g = coe([2.0] * 12, router=1.0)
    d = toy_device(9)

    def run(seed):
        t = tf.Trace.poisson(
            g.experts, rate=3.0, n=3000, bursts=[(100, 50, 3)], drift=0.01, seed=seed
        )
        return tf.simulate(g, d, t, "lru+prefetch", batch_size=2).to_json(per_request=True)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_eviction_policy_object_matches_reference():
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(6)]
    for kind in ("lru", "lfu", "fifo"):
        p = tf.EvictionPolicy(kind, names)
        resident: list[str] = []
        last: dict[str, int] = {}
        count: dict[str, int] = {}
        inserted: dict[str, int] = {}
        for step, i in enumerate(rng.integers(0, 6, size=300)):
            e = names[i]
            if e not in resident:
                if len(resident) == 3:
                    if kind == "lru":
                        want = min(resident, key=lambda x: last[x])
                    elif kind == "lfu":
                        want = min(resident, key=lambda x: (count[x], last[x]))
                    else:
                        want = min(resident, key=lambda x: inserted[x])
                    assert p.victim(resident) == want
                    resident.remove(want)
                    p.on_evict(want)
                resident.append(e)
                p.on_insert(e)
                inserted[e] = step
            p.on_access(e)
            last[e] = step
            count[e] = count.get(e, 0) + 1
    assert tf.EvictionPolicy("lru", names).victim([]) is None
    with pytest.raises(tf.InvalidArgumentError, match="unknown expert"):
        tf.EvictionPolicy("lru", names).on_access("nope")
    with pytest.raises(tf.InvalidArgumentError, match="unknown policy"):
        tf.EvictionPolicy("random", names)


def test_belady_object_uses_the_future():
    p = tf.EvictionPolicy("belady", ["a", "b", "c"])
    p.set_future(["a", "b", "c", "a", "b"])
    for e in ["a", "b"]:
        p.on_insert(e)
        p.on_access(e)
    assert p.victim(["a", "b"]) == "b"  # a is used again first


def test_prefetch_hides_switches_in_a_batch():
    g = coe([2.0] * 8)
    d = toy_device(9)
    t = tf.Trace.closed_loop(
        g.experts,
        users=4,
        n=400,
        popularity="uniform",
        prompt_tokens=4000,
        output_tokens=50,
        seed=0,
    )
    base = tf.simulate(g, d, t, "lru", batch_size=4)
    pre = tf.simulate(g, d, t, "lru+prefetch", batch_size=4)
    assert pre.summary()["stall_s"] < 0.7 * base.summary()["stall_s"]
    assert pre.makespan < base.makespan


def test_affinity_batching_saves_switches_under_load():
    g = coe([2.0] * 10)
    d = toy_device(5)
    t = tf.Trace.poisson(
        g.experts,
        rate=50.0,
        n=3000,
        popularity="uniform",
        prompt_tokens=64,
        output_tokens=8,
        seed=0,
    )
    fifo = tf.simulate(g, d, t, "lru")
    aff = tf.simulate(g, d, t, "affinity", max_wait=5.0)
    assert aff.switches < 0.5 * fifo.switches
    assert aff.summary()["latency_p50_s"] < fifo.summary()["latency_p50_s"]


def test_placement_and_replicas():
    g = coe([2.0] * 10)
    d = toy_device(9)
    t = tf.Trace.poisson(g.experts, rate=1.0, n=2000, zipf_s=1.5, seed=0)
    r = tf.simulate(g, d, t, "replicate", instances=4, pinned_fraction=1.0, replica_factor=2.0)
    held = [sum("e0" in p for p in r.pinned), sum("e9" in p for p in r.pinned)]
    assert held[0] >= 2 and held[0] > held[1]
    assert set(np.unique(r.instance)) == {0, 1, 2, 3}
    pk = tf.simulate(g, d, t, "pack", instances=2, pinned_fraction=1.0)
    flat = [e for p in pk.pinned for e in p]
    # 4 x 2 GB fit a 9 GB instance, but pins leave room to load one more: 3 each, no duplicates
    assert len(flat) == len(set(flat)) == 6
    st_ = tf.simulate(g, d, t, "static", pinned_fraction=0.5)
    assert st_.pinned == [["e0", "e1"]]


def test_later_stage_adds_its_pass():
    d = toy_device(20)
    g = coe([2.0])
    g.stage("post", params=0.5e9, after=["e0"])
    g0 = coe([2.0])
    t = seq_trace(g0, [0], prompt=10, out=5)
    a = tf.simulate(g0, d, t).latency[0]
    b = tf.simulate(g, d, t).latency[0]
    copy = 1e-3 + 1 * GB / 10e9
    assert b - a == pytest.approx(copy + pass_time(d, g.nodes["post"], 15, 0), rel=1e-9)


def test_bad_inputs():
    g = coe([2.0, 2.0])
    d = toy_device()
    with pytest.raises(tf.InvalidArgumentError, match="empty"):
        tf.simulate(g, d, tf.Trace(g.experts, [], [], [], []))
    with pytest.raises(tf.InvalidArgumentError, match=r"unknown expert.*'zz'"):
        tf.simulate(g, d, tf.Trace(["e0", "zz"], [0.0, 1.0], [1, 1], [1, 1], [0, 1]))
    with pytest.raises(tf.InvalidArgumentError, match="unknown 'magic'"):
        tf.simulate(g, d, seq_trace(g, [0]), "magic")
    with pytest.raises(tf.InvalidArgumentError, match="batch_size"):
        tf.simulate(g, d, seq_trace(g, [0]), "lru", batch_size=0)


def test_schedule_errors_say_how_much_is_missing():
    d = toy_device(
        tiers=[tf.devices.MemoryTier("hbm", 10 * GB, 1e10), tf.devices.MemoryTier("ddr", 20 * GB)]
    )
    with pytest.raises(tf.ScheduleError, match=r"\(30.00 GB in 10 nodes\).*10.00 GB missing"):
        tf.simulate(coe([3.0] * 10), d, seq_trace(coe([3.0] * 10), [0]))
    big = coe([12.0])
    with pytest.raises(tf.ScheduleError, match=r'larger than tier "hbm".*2.00 GB missing'):
        tf.simulate(big, d, seq_trace(big, [0]))
    with pytest.raises(tf.ScheduleError, match="router"):
        tf.simulate(coe([1.0], router=11.0), d, seq_trace(coe([1.0]), [0]))
    assert issubclass(tf.ScheduleError, ValueError)


def test_report_outputs(tmp_path):
    from rich.console import Console

    g = coe([2.0] * 6, router=1.0)
    d = toy_device(7)
    t = tf.Trace.poisson(g.experts, rate=2.0, n=500, seed=0)
    a, b = tf.simulate(g, d, t, "lru"), tf.simulate(g, d, t, "belady")
    s = a.summary()
    assert s["requests"] == 500 and s["latency_p99_s"] >= s["latency_p50_s"]
    assert 0 < s["utilisation"] <= 1 and 0 <= s["hit_rate"] <= 1
    c = Console(record=True, width=150)
    c.print(a.table())
    c.print(a.compare(b))
    text = c.export_text()
    assert "latency_p99_s" in text and "belady" in text
    j = json.loads(a.to_json(tmp_path / "r.json"))
    assert j["summary"]["switches"] == a.switches
    a.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulation_releases_the_gil():
    import threading

    g = coe([1.0] * 20)
    d = toy_device(5)
    t = tf.Trace.poisson(g.experts, rate=1.0, n=1_000_000, seed=0)
    done = threading.Event()

    def work():
        tf.simulate(g, d, t, "lru")
        done.set()

    th = threading.Thread(target=work)
    ticks = 0
    th.start()
    while not done.is_set():
        ticks += 1  # runs only if the simulating thread let go of the GIL
        done.wait(0.001)
    th.join()
    assert ticks > 50, ticks  # holding the GIL would allow a handful at most
