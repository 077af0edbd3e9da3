"""The CoE served across a local Ray cluster (2 nodes of 1 CPU, small object stores).

Everything that starts Ray must run in a loopback-only network namespace on these machines:
``unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' pytest tests/test_cluster.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tierflow as tf

HAVE_RAY = importlib.util.find_spec("ray") is not None
# Ray Serve's own models use pydantic features deprecated in pydantic 2 (not tierflow's code)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using extra keyword arguments on `Field`:DeprecationWarning"
)
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="ray is not installed (pip install 'tierflow[ray]')"
)


def test_ray_absent_says_how_to_install(monkeypatch):
    from tierflow.sim.devices import RayMissingError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'tierflow\[ray\]'") as ei:
        tf.devices.ray_cluster()
    assert isinstance(ei.value, tf.TierflowError)
    assert isinstance(ei.value, RayMissingError)


def loopback_only() -> bool:
    """True in a network namespace whose only interface is loopback."""
    import socket

    return [n for _, n in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    if not HAVE_RAY:
        pytest.skip("ray is not installed")
    if not loopback_only() and os.environ.get("TIERFLOW_RAY_NETWORK") != "any":
        pytest.fail(
            "Ray registers nodes at the machine's interface address: run the Ray tests in a "
            'loopback-only namespace (unshare -n sh -c \'ip link set lo up && exec "$0" "$@"\' '
            "pytest ...), or set TIERFLOW_RAY_NETWORK=any where that is allowed"
        )
    import ray
    from ray.cluster_utils import Cluster

    from tierflow.demos import write_demo_coe

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 100 << 20},
    )
    c.add_node(num_cpus=1, object_store_memory=100 << 20)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, logging_level="error")
    folder = tmp_path_factory.mktemp("coe")
    g = write_demo_coe(str(folder), experts=6, hidden=64, intermediate=128, layers=1)
    try:
        yield c, g, str(folder / "store")
    finally:
        ray.shutdown()
        c.shutdown()


def _trace(g: tf.CoE, n: int = 24) -> tf.Trace:
    return tf.Trace.poisson(
        g.experts, rate=50, n=n, seed=4, prompt_tokens=4, output_tokens=2, popularity="zipf"
    )


def _serial(g, store, t, budget):
    with tf.schedule(g, policy="lru", store=store, ram_budget=budget) as plan:
        return plan.run(t)


@needs_ray
def test_ray_cluster_one_device_per_node(ray_env):
    _c, _, _ = ray_env
    import ray

    devs = tf.devices.ray_cluster()
    assert len(devs) == 2
    ids = {d.sources["ray_node_id"] for d in devs}
    assert ids == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    for d in devs:
        assert d.name.startswith("ray:") and d.exec.name == "ram" and d.tiers[-1].name == "disk"
        assert d.read_bandwidth > 0 and d.exec.capacity > 0
    again = tf.devices.ray_cluster()  # cached per node: same figures
    assert [d.read_bandwidth for d in again] == [d.read_bandwidth for d in devs]


@needs_ray
def test_cluster_run_equals_the_serial_run(ray_env):
    _, g, store = ray_env
    t = _trace(g)
    expert_bytes = max(g.nodes[e].nbytes for e in g.experts)
    budget = 3 * expert_bytes
    serial = _serial(g, store, t, budget)
    devs = tf.devices.ray_cluster()
    with tf.schedule(g, devices=devs, policy="lru", store=store, ram_budget=budget) as plan:
        # 6 experts, 3 per node's budget: each node holds its share, no replica room left
        homes = plan.placement.homes
        assert sorted(len(h) for h in homes.values()) == [1] * 6
        assert sorted(sum(1 for h in homes.values() if h[0] == k) for k in (0, 1)) == [3, 3]
        rep = plan.run(t)
        x_bytes = sum(np.asarray(x).nbytes for x in plan.inputs_for(t))
        weights = sum(plan.local.nbytes.values())  # each expert sent once to its node's file tier
        sizes = dict(plan.local.nbytes)
    assert rep.routed == serial.routed
    for a, b in zip(rep.outputs, serial.outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    rows = rep.per_device_table()
    assert sum(r["requests"] for r in rows) == len(t)
    # every expert fits its node's budget: one load per distinct expert, the rest are hits
    distinct = len(set(rep.routed))
    assert sum(r["loads"] for r in rows) == distinct
    assert sum(r["hits"] for r in rows) == len(t) - distinct
    assert sum(r["bytes_tiers"] for r in rows) == sum(sizes[e] for e in set(rep.routed))
    tiers = {k: v for k, v in rep.link_bytes().items() if not k.startswith("net:")}
    assert sum(tiers.values()) == sum(sizes[e] for e in set(rep.routed))
    out_bytes = sum(o.nbytes for o in rep.outputs)
    assert rep.summary()["bytes_network"] == x_bytes + out_bytes + weights
    assert sum(i["hits"] + i["misses"] for i in rep.instances) == len(t)
    assert rep.retried == [] and rep.errors == {}


@needs_ray
def test_killed_node_mid_trace_loses_no_request(ray_env):
    _, g, store = ray_env
    import ray

    t = _trace(g, 32)
    budget = 3 * max(g.nodes[e].nbytes for e in g.experts)
    serial = _serial(g, store, t, budget)
    devs = tf.devices.ray_cluster()
    with tf.schedule(g, devices=devs, policy="lru", store=store, ram_budget=budget) as plan:
        homes = plan.placement.homes
        per = [
            sum(1 for i in range(len(t)) if homes[t.experts[t.expert[i]]][0] == k) for k in (0, 1)
        ]
        # the node with more requests than one call (4) holds: killed at the first result, it
        # still has a call in flight or requests queued
        victim = int(np.argmax(per))
        assert per[victim] > plan.chunk
        done = [0]

        def tick():
            done[0] += 1
            if done[0] == 1:
                ray.kill(plan.actors[victim])

        rep = plan.run(t, progress=tick)
        assert victim not in plan.alive
        assert all(victim not in h for h in plan.placement.homes.values())
    assert len(rep.outputs) == len(t) and rep.errors == {}
    for a, b in zip(rep.outputs, serial.outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert rep.retried, "the killed node had requests queued or in flight"
    assert all(int(rep.device_of[i]) != victim for i in rep.retried)
    # every request counted once: by the node whose call completed
    rows = rep.per_device_table()
    assert sum(r["requests"] for r in rows) == len(t)
    assert sum(i["hits"] + i["misses"] for i in rep.instances) == len(t)
    assert any("lost" in e for e in rep.events)


@needs_ray
def test_scheduling_errors_name_the_node_or_the_bytes(ray_env):
    _, g, store = ray_env
    devs = tf.devices.ray_cluster()
    one = max(g.nodes[e].nbytes for e in g.experts)
    with pytest.raises(tf.ScheduleError, match=r"fits no device.*bytes missing"):
        tf.schedule(g, devices=devs, store=store, ram_budget=one // 2)
    gone = tf.Device.from_dict(devs[1].to_dict())
    gone.sources = {**gone.sources, "ray_node_id": "f" * 56}
    gone.name = "ray:ffffffffffff"
    with pytest.raises(tf.ScheduleError, match=r"ray:ffffffffffff.*cannot be reached"):
        tf.schedule(g, devices=[devs[0], gone], store=store, ram_budget=2 * one)


@needs_ray
def test_cli_run_on_the_cluster(ray_env, tmp_path):
    import subprocess

    c, g, store = ray_env
    t = _trace(g, 12)
    t.save_jsonl(tmp_path / "t.jsonl")
    coe = Path(store).parent / "coe.json"
    out = tmp_path / "r.json"
    budget = 3 * max(g.nodes[e].nbytes for e in g.experts)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow",
            "run",
            str(coe),
            "--trace",
            str(tmp_path / "t.jsonl"),
            "--store",
            store,
            "--ram",
            str(budget),
            "--ray",
            c.address,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    assert d["summary"]["requests"] == 12
    assert sum(r["requests"] for r in d["per_device"]) == 12
    assert len(d["per_device"]) == 2 and "on 2 Ray nodes" in p.stdout


@needs_ray
def test_cli_demo_cluster_prints_measured_beside_predicted(tmp_path):
    import subprocess

    env = {**os.environ, "TIERFLOW_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow",
            "demo",
            "--cluster",
            "2",
            "--small",
            "--requests",
            "24",
            "--dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "outputs equal the one-host serial run: True" in p.stdout
    assert "cluster, simulated" in p.stdout and "cluster, measured" in p.stdout


@pytest.fixture(scope="module")
def http(ray_env, tmp_path_factory):
    """tierflow's Serve app on the cluster: the demo's real-checkpoint experts, MiniLM router."""
    import socket

    from ray import serve

    from tierflow.demos.experts import DEMO_EXAMPLES, write_demo_experts
    from tierflow.serving.serve import serve_coe

    experts = write_demo_experts(tmp_path_factory.mktemp("ckpt"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_coe(
        experts,
        DEMO_EXAMPLES,
        port=port,
        fallback="general",
        max_experts=2,
        max_queued=2,
        max_ongoing=1,
    )
    try:
        yield f"http://127.0.0.1:{port}", experts
    finally:
        serve.shutdown()


def _http(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, bytes, str]:
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


@needs_ray
def test_http_completions_route_and_generate(http):
    from tierflow.models import load
    from tierflow.models.coe import byte_tokenize

    url, experts = http
    prompt = "How long should I roast a chicken in the oven?"
    st, body, _ = _http(url + "/v1/completions", {"prompt": prompt, "max_tokens": 6})
    assert st == 200, body
    d = json.loads(body)
    assert d["expert"] == "cooking"
    ids = byte_tokenize(prompt)
    want = load(experts["cooking"]).generate(ids, 6)[ids.size :].tolist()
    assert d["tokens"] == want and d["prompt_ids"] == ids.tolist()
    # token ids in, an expert named, streamed as server-sent events
    st, body, ctype = _http(
        url + "/v1/completions",
        {"prompt": ids.tolist(), "expert": "code", "max_tokens": 4, "stream": True},
    )
    assert st == 200 and ctype.startswith("text/event-stream")
    events = [ln[6:] for ln in body.decode().splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    want = load(experts["code"]).generate(ids, 4)[ids.size :].tolist()
    assert [json.loads(e)["token"] for e in events[:-1]] == want


@needs_ray
def test_http_errors_experts_and_metrics(http):
    url, experts = http
    st, body, _ = _http(url + "/v1/completions", raw=b"{not json")
    assert st == 400 and "error" in json.loads(body)
    st, body, _ = _http(url + "/v1/completions", {"prompt": ""})
    assert st == 400 and "prompt" in json.loads(body)["error"]
    st, body, _ = _http(url + "/v1/completions", {"prompt": "hi", "max_tokens": -1})
    assert st == 400
    st, body, _ = _http(url + "/v1/completions", {"prompt": "hi", "expert": "astrology"})
    assert st == 404 and "astrology" in json.loads(body)["error"]
    st, body, _ = _http(url + "/v1/experts")
    assert st == 200
    assert {e["name"] for e in json.loads(body)["experts"]} == set(experts)
    st, body, ctype = _http(url + "/metrics")
    text = body.decode()
    assert st == 200 and ctype.startswith("text/plain")
    assert 'tierflow_requests_total{status="404",expert="astrology"} 1' in text
    assert 'tierflow_request_latency_seconds{quantile="0.99"}' in text
    assert "tierflow_expert_loads_total" in text


@needs_ray
def test_http_full_server_answers_503(http):
    from concurrent.futures import ThreadPoolExecutor

    url, _ = http
    body = {"prompt": "Tell me a story about the sea.", "expert": "general", "max_tokens": 200}
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: _http(url + "/v1/completions", body)[0], range(12)))
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
