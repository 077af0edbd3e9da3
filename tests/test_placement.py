"""Several different devices joined by links: placement and simulation against hand-derived
figures (the latency model written out here in float64, independently of the code)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tierflow as tf
from tierflow.sim.capacity import sweep_capacity as plan
from tierflow.sim.placement import Link, interconnect, link_between, loopback, place

GB = 10**9


def dev(name: str, exec_gb: float, read_bw: float, *, reserved: int = 0) -> tf.Device:
    return tf.Device(
        name=name,
        tiers=[
            tf.devices.MemoryTier("hbm", int(exec_gb * GB), 10e9, 1e-3),
            tf.devices.MemoryTier("ddr", 1000 * GB),
        ],
        exec_tier="hbm",
        read_bandwidth=read_bw,
        peak_flops={"bfloat16": 1e14},
        bw_efficiency=0.8,
        compute_efficiency=0.5,
        launch_overhead=5e-6,
        kernels_per_layer=10,
        reserved=reserved,
    )


def pass_time(d: tf.Device, params: float, nbytes: float, layers: int, n: float) -> float:
    comp = 2 * params * n / (1e14 * d.compute_efficiency)
    mem = nbytes / (d.read_bandwidth * d.bw_efficiency)
    return max(comp, mem) + layers * d.kernels_per_layer * d.launch_overhead


def coe(n: int, gb: float = 1.0, router_gb: float | None = None) -> tf.CoE:
    g = tf.CoE("t")
    if router_gb:
        g.router("r", params=router_gb * GB / 2)
    for i in range(n):
        g.expert(f"e{i}", params=gb * GB / 2, dtype="bf16", layers=32)
    return g


def trace(g: tf.CoE, seq: list[int], gap: float = 10.0, p: int = 16, o: int = 4) -> tf.Trace:
    n = len(seq)
    return tf.Trace(g.experts, np.arange(n) * gap, np.full(n, p), np.full(n, o), np.array(seq))


NET = Link(1e9, 1e-3)


def test_hot_experts_go_to_the_fastest_device_until_it_is_full():
    # fast: 1 GB read in 1/(1e12*0.8) s; slow: 10x longer; the 2 ms round trip to the fast
    # device is cheaper than the slow device's extra read time, so the two hottest go there
    fast, slow = dev("fast", 2, 1e12), dev("slow", 2, 1e11)
    g = coe(4)
    pop = {"e0": 60, "e1": 25, "e2": 10, "e3": 5}
    pl = place(g, [slow, fast], popularity=pop, prompt_tokens=16, output_tokens=4, links=NET)
    assert pl.homes == {"e0": [1], "e1": [1], "e2": [0], "e3": [0]}
    assert all(pl.resident.values())
    # hand-derived cost of e0 on each device: prefill + 3 decode steps (+ round trip remote)
    one = {
        k: pass_time(d, 0.5e9, 1e9, 32, 16) + 3 * pass_time(d, 0.5e9, 1e9, 32, 1)
        for k, d in enumerate([slow, fast])
    }
    assert pl.cost["e0"][0] == pytest.approx(one[0], rel=1e-12)
    assert pl.cost["e0"][1] == pytest.approx(one[1] + 2e-3 + 4 * 20 / 1e9, rel=1e-12)


def test_hot_expert_is_replicated_when_memory_allows():
    fast, slow = dev("fast", 2, 1e12), dev("slow", 3, 1e11)
    g = coe(4)
    pop = {"e0": 60, "e1": 25, "e2": 10, "e3": 5}
    pl = place(g, [slow, fast], popularity=pop, prompt_tokens=16, output_tokens=4, links=NET)
    # e0 has 60% > 1/2 of the requests: a replica on the slow device's spare gigabyte
    assert pl.homes["e0"] == [1, 0]
    assert pl.homes["e1"] == [1] and pl.free == [0, 0]
    none = place(
        g,
        [slow, fast],
        popularity=pop,
        prompt_tokens=16,
        output_tokens=4,
        links=NET,
        replicate="none",
    )
    assert none.homes["e0"] == [1] and none.free == [1 * GB, 0]


def test_expert_that_fits_no_device_names_the_bytes_missing():
    g = coe(2, gb=30)
    with pytest.raises(
        tf.ScheduleError,
        match=r"'e\d' \(30000000000 bytes\) fits no device.*20000000000 bytes missing",
    ):
        tf.simulate(
            g, devices=[dev("a", 10, 1e12), dev("b", 8, 1e12)], trace=trace(g, [0, 1]), links=NET
        )


def test_experts_beyond_every_exec_tier_are_swapped_on_the_cheapest_device():
    g = coe(5)
    a, b = dev("a", 2, 1e12), dev("b", 2, 1e11)
    pop = {f"e{i}": 10 - i for i in range(5)}
    pl = place(g, [a, b], popularity=pop, prompt_tokens=16, output_tokens=4, links=NET)
    assert pl.homes["e0"] == [0] and pl.homes["e1"] == [0]
    assert pl.homes["e2"] == [1] and pl.homes["e3"] == [1]
    # e4: no room left in any exec tier; a's cost per request plus one load is the lowest
    assert pl.homes["e4"] == [0] and pl.resident["e4"] is False


def test_one_request_on_a_remote_device_adds_router_network_load_and_reply():
    g = coe(2, router_gb=0.2)
    entry, far = dev("entry", 2, 1e11), dev("far", 4, 1e12)
    # both experts cheaper on far even with the round trip (and no share above 1/2: no replica)
    t = trace(g, [0])
    r = tf.simulate(g, devices=[entry, far], trace=t, links=NET, popularity={"e0": 1, "e1": 1})
    assert r.placement.homes["e0"] == [1]
    router = pass_time(entry, 0.1e9, 0.2e9, 32, 16)
    send, reply = 1e-3 + 4 * 16 / 1e9, 1e-3 + 4 * 4 / 1e9
    load = 1e-3 + 1e9 / 10e9  # hbm <- ddr: latency + bytes / bandwidth
    svc = pass_time(far, 0.5e9, 1e9, 32, 16) + 3 * pass_time(far, 0.5e9, 1e9, 32, 1)
    assert r.latency[0] == pytest.approx(router + send + load + svc + reply, rel=1e-9)
    assert r.device_of.tolist() == [1]
    assert r.network == {
        "entry->far": {"bytes": 64.0, "messages": 1.0},
        "far->entry": {"bytes": 16.0, "messages": 1.0},
    }
    assert r.link_bytes()["net:entry->far"] == 64
    assert r.link_bytes()["far:hbm<->ddr"] == 1 * GB
    rows = {x["device"]: x for x in r.per_device_table()}
    assert rows["far"]["requests"] == 1 and rows["far"]["loads"] == 1
    assert rows["far"]["p99_s"] == pytest.approx(r.latency[0], rel=1e-12)
    assert rows["entry"]["requests"] == 0 and rows["entry"]["experts"] == []
    assert rows["far"]["experts"] == ["e0", "e1"]
    assert r.summary()["bytes_network"] == 80


def test_replicas_share_the_traffic_of_a_hot_expert():
    g = coe(2)
    a, b = dev("a", 3, 1e12), dev("b", 3, 1e12)
    seq = [0] * 40 + [1] * 4
    n = len(seq)
    # all at once: a queue forms, so the earliest-finish choice alternates between replicas
    t = tf.Trace(g.experts, np.zeros(n), np.full(n, 16), np.full(n, 4), np.array(seq))
    r = tf.simulate(g, devices=[a, b], trace=t, links=NET)
    assert r.placement.homes["e0"] == [0, 1]
    served = np.bincount(r.device_of[:40], minlength=2)
    assert abs(int(served[0]) - int(served[1])) <= 2
    single = tf.simulate(g, a, t)
    assert r.summary()["latency_p99_s"] < 0.7 * single.summary()["latency_p99_s"]
    assert r.summary()["requests"] == n


def test_one_device_in_a_list_equals_the_single_device_api():
    g = coe(3, router_gb=0.2)
    d = dev("a", 2, 1e12)
    t = tf.Trace.poisson(g.experts, rate=20, n=60, seed=3)
    one = tf.simulate(g, d, t, "lru")
    many = tf.simulate(g, devices=[d], trace=t, policy="lru")
    np.testing.assert_array_equal(one.latency, many.latency)
    assert many.per_device_table()[0]["requests"] == 60
    assert many.link_bytes()["a:hbm<->ddr"] == one.link_bytes()["hbm<->ddr"]
    # two instances of the one device: the table sums them
    two = tf.simulate(g, devices=[d], trace=t, policy="lru", instances=2)
    row = two.per_device_table()[0]
    assert row["loads"] == sum(i["switches"] for i in two.instances) and len(two.instances) == 2
    assert two.summary()["bytes_moved"] == sum(sum(i["link_bytes"]) for i in two.instances)


def test_mixed_presets_sn40l_beside_dgx():
    g = tf.CoE("paper")
    g.router("router", params=6.74e9)
    for i in range(60):
        g.expert(f"e{i}", params=6.74e9)
    t = tf.Trace.poisson(g.experts, rate=2, n=200, seed=1, popularity="zipf")
    r = tf.simulate(g, devices=[tf.devices.sn40l(8), tf.devices.dgx_h100()], trace=t)
    # SN40L's HBM holds (512 GiB - 8 GiB of KV - the 13.48 GB router) // 13.48 GB = 39 experts;
    # it is the faster device for these experts, so the 39 hottest go there
    fit = (512 * 2**30 - 8 * 2**30 - 13.48e9) // 13.48e9
    assert fit == 39
    order = sorted(g.experts, key=lambda e: (-t.counts()[e], g.experts.index(e)))
    on_sn = [e for e, h in r.placement.homes.items() if h[0] == 0 and r.placement.resident[e]]
    assert sorted(on_sn) == sorted(order[:39])
    link = link_between(tf.devices.sn40l(8), tf.devices.dgx_h100())
    assert link.bandwidth == 12.5e9 and link.latency == pytest.approx(1.2e-6)
    assert interconnect(tf.devices.dgx_h100()).bandwidth == 400e9
    assert r.summary()["requests"] == 200
    assert set(r.to_dict()["placement"]["experts"]) == set(g.experts)


def test_bad_inputs():
    g = coe(2)
    t = trace(g, [0, 1])
    with pytest.raises(tf.InvalidArgumentError, match="device or devices"):
        tf.simulate(g, dev("a", 2, 1e12), t, devices=[dev("a", 2, 1e12)])
    closed = tf.Trace.closed_loop(g.experts, users=2, n=4, seed=0)
    with pytest.raises(tf.InvalidArgumentError, match="open-loop"):
        tf.simulate(g, devices=[dev("a", 2, 1e12), dev("b", 2, 1e12)], trace=closed)
    with pytest.raises(tf.InvalidArgumentError, match="no interconnect preset"):
        tf.simulate(g, devices=[dev("a", 2, 1e12), dev("b", 2, 1e12)], trace=t)
    with pytest.raises(tf.InvalidArgumentError, match="bandwidth"):
        Link(0, 1e-6)


def test_loopback_is_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path))
    a = loopback()
    assert a.bandwidth > 1e7 and 0 < a.latency < 0.01
    assert (tmp_path / "loopback.json").exists()
    assert loopback() == a  # from the cache
    h = tf.devices.Device.from_dict({**dev("a", 2, 1e12).to_dict(), "name": "host"})
    assert interconnect(h) == a


def test_capacity_planner_takes_several_devices():
    g = coe(6)
    t = tf.Trace.poisson(
        g.experts, rate=5, n=120, seed=2, prompt_tokens=16, output_tokens=4, popularity="zipf"
    )
    a, b = dev("a", 6, 1e12), dev("b", 6, 1e11)
    p = plan(g, [a, b], t, target_p99=0.22, policies=["lru"], steps=4, refine=0, links=NET)
    # the sweep spans one expert per device to the whole CoE, aggregated over both devices
    assert p.capacities[0] == 2 * GB and p.capacities[-1] == 6 * GB
    ys = p.p99["lru"]
    assert all(x >= y for x, y in itertools.pairwise(ys))  # more room, no worse
    # each point is the multi-device simulation at that capacity split evenly
    half = p.capacities[2] // 2
    want = tf.simulate(
        g, devices=[a.with_exec_capacity(half), b.with_exec_capacity(half)], trace=t, links=NET
    )
    assert ys[2] == pytest.approx(float(np.percentile(want.latency, 99)), rel=1e-12)
    first_ok = next(c for c, y in zip(p.capacities, ys, strict=True) if y <= 0.22)
    assert p.best_policy == "lru" and p.best_capacity == first_ok


def test_a_given_placement_is_simulated_as_given():
    g = coe(2)
    fast, slow = dev("fast", 4, 1e12), dev("slow", 4, 1e11)
    t = trace(g, [0, 1, 0])
    r = tf.simulate(g, devices=[fast, slow], trace=t, links=NET, homes={"e0": [1], "e1": [0]})
    assert r.device_of.tolist() == [1, 0, 1]
    # the second e0 request is a hit on slow: its service plus the round trip, no load
    svc = pass_time(slow, 0.5e9, 1e9, 32, 16) + 3 * pass_time(slow, 0.5e9, 1e9, 32, 1)
    assert r.latency[2] == pytest.approx(svc + 2e-3 + 4 * 20 / 1e9, rel=1e-9)
    with pytest.raises(tf.InvalidArgumentError, match="places no device"):
        tf.simulate(g, devices=[fast, slow], trace=t, links=NET, homes={"e0": [1]})
    with pytest.raises(tf.InvalidArgumentError, match="not device indices"):
        tf.simulate(g, devices=[fast, slow], trace=t, links=NET, homes={"e0": [2], "e1": [0]})
