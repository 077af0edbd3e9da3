"""The tiered store: API, dtypes, tiers, policies, persistence (mirrors tierflow/store.py)."""

from __future__ import annotations

import doctest
import json
import os
import threading

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tierflow
import tierflow.store.tiered
from tierflow import Tier, TieredStore

DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    ml_dtypes.bfloat16,
    np.int8,
    np.uint8,
    np.int32,
    np.int64,
    np.bool_,
]


def small_store(path, fast="4KiB", ram="64KiB", policy="lru"):
    return TieredStore(
        path,
        tiers=[Tier("fast", fast), Tier("ram", ram), Tier("disk", None, path="disk")],
        policy=policy,
    )


def test_module_example_runs():
    res = doctest.testmod(tierflow.store.tiered, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 1 and res.failed == 0


def test_defaults(tmp_path):
    with TieredStore(tmp_path / "s") as s:
        assert s.tier_names == ["fast", "ram", "disk"]
        t = s.tiers
        assert t[0].capacity_bytes and t[0].capacity_bytes <= t[1].capacity_bytes
        assert t[2].capacity_bytes is None and t[2].path is not None
        s.put("x", np.arange(3))
        assert s.tier_of("x") == "ram"
    mem = TieredStore()
    assert mem.tier_names == ["fast", "ram"] and mem.path is None
    mem.put("a", np.ones(2))
    assert mem.get("a").tolist() == [1.0, 1.0]


def test_put_get_basics(store_dir):
    s = small_store(store_dir)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    s.put("a", a)
    g = s.get("a")
    assert g.dtype == np.float32 and g.shape == (3, 4)
    np.testing.assert_array_equal(g, a)
    assert not g.flags.writeable  # a zero-copy view of the store's buffer
    ref = s["a"]
    assert (ref.name, ref.shape, ref.dtype, ref.nbytes, ref.tier) == (
        "a",
        (3, 4),
        np.float32,
        48,
        "ram",
    )
    np.testing.assert_array_equal(np.asarray(ref), a)
    assert "a" in s and "b" not in s and len(s) == 1 and list(s) == ["a"]
    info = s.info("a")
    assert info["nbytes"] == 48 and info["tier"] == "ram" and info["file"].endswith(".safetensors")
    # put over an existing name without overwrite: error, old data intact
    with pytest.raises(tierflow.TensorExistsError):
        s.put("a", np.zeros(2))
    np.testing.assert_array_equal(s.get("a"), a)
    s.put("a", np.zeros(2), overwrite=True)
    assert s.get("a").tolist() == [0.0, 0.0]
    s.delete("a")
    assert "a" not in s
    with pytest.raises(tierflow.TensorNotFoundError) as ei:
        s.get("a")
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, tierflow.TierflowError)
    s.close()


def test_zero_copy_view_survives_eviction_and_delete(store_dir):
    s = small_store(store_dir)
    s.put("a", np.full(1000, 7, np.int64))
    v = s.get("a")
    s.evict("a")
    s.delete("a")
    assert v.sum() == 7000


@given(
    arr=st.one_of(
        *[
            hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7))
            for dt in DTYPES
            if dt is not ml_dtypes.bfloat16
        ],
        # bfloat16: every bit pattern (NaNs, infinities, subnormals), drawn as uint16
        hnp.arrays(np.uint16, hnp.array_shapes(min_dims=0, max_dims=3, max_side=7)).map(
            lambda a: a.view(ml_dtypes.bfloat16)
        ),
    ),
    layout=st.sampled_from(["c", "f", "neg", "step"]),
    moves=st.lists(st.sampled_from(["fast", "ram", "disk", "evict", "get"]), max_size=6),
)
def test_roundtrip_every_dtype_layout_tier(tmp_path_factory, arr, layout, moves):
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "neg" and arr.ndim:
        arr = arr[::-1]
    elif layout == "step" and arr.ndim and arr.shape[0] > 1:
        arr = arr[::2]
    expected = np.ascontiguousarray(arr).tobytes()
    d = tmp_path_factory.mktemp("rt")
    with small_store(d / "s", fast="64KiB", ram="1MiB") as s:
        s.put("t", arr)
        for m in moves:
            if m == "evict":
                if s.tier_of("t") != "disk":
                    s.evict("t")
            elif m == "get":
                s.get("t")
            else:
                s.move("t", m)
            got = s.get("t", promote=False)
            assert got.dtype == arr.dtype and got.shape == arr.shape
            assert got.tobytes() == expected
    with TieredStore.open(d / "s") as s2:
        got = s2.get("t")
        assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == expected


def test_unsupported_dtypes(store_dir):
    s = small_store(store_dir)
    for bad in [
        np.zeros(2, np.complex64),
        np.zeros(2, np.uint32),
        np.array(["a"]),
        np.array([object()]),
    ]:
        with pytest.raises(tierflow.DTypeError):
            s.put("x", bad)
    assert len(s) == 0


def test_bfloat16_bits_without_ml_dtypes(store_dir):
    s = small_store(store_dir)
    f = np.array([1.0, -2.5, 3.0e10], np.float32)
    bits = (f.view(np.uint32) >> 16).astype(np.uint16)
    s.put("b", bits, dtype="bfloat16")
    assert s.info("b")["dtype"] == "bfloat16"
    got = s.get("b")
    assert got.dtype == ml_dtypes.bfloat16 and got.tobytes() == bits.tobytes()
    np.testing.assert_allclose(got.astype(np.float32), f, rtol=2**-7)  # truncated bits


def test_block_tensors(store_dir):
    class Q(tierflow.BlockTensor):
        pass

    tierflow.register_block_format("testfmt", Q)
    s = small_store(store_dir)
    data = np.arange(34 * 3, dtype=np.uint8)
    s.put("q", tierflow.BlockTensor("testfmt", (3, 32), data))
    for tier in ["disk", "fast", "ram"]:
        s.move("q", tier)
        q = s.get("q")
        assert isinstance(q, Q) and q.shape == (3, 32) and q.format == "testfmt"
        assert q.data.tobytes() == data.tobytes()
    s.close()
    with TieredStore.open(store_dir) as s2:
        q = s2.get("q")
        assert q.shape == (3, 32) and q.data.tobytes() == data.tobytes()
    with pytest.raises(tierflow.DTypeError):
        tierflow.BlockTensor("x", (2,), np.zeros(3, np.float32))


def test_capacity_eviction_cascades_lru(store_dir):
    s = small_store(store_dir, fast="1KiB", ram="4KiB")
    blk = lambda i: np.full(256, i, np.float32)  # 1 KiB each  # noqa: E731
    for i in range(4):
        s.put(f"t{i}", blk(i))
    assert [s.tier_of(f"t{i}") for i in range(4)] == ["ram"] * 4
    s.get("t0")  # t0 most recently used: t1 is the LRU victim
    s.put("t4", blk(4))
    assert s.tier_of("t1") == "disk" and s.tier_of("t0") == "ram"
    s.move("t2", "fast")
    s.move("t3", "fast")  # fast holds one: t2 cascades down to ram, pushing the LRU out
    assert s.tier_of("t3") == "fast" and s.tier_of("t2") == "ram"
    st_ = s.stats()
    for t in st_["tiers"]:
        assert t["capacity"] is None or t["used"] <= t["capacity"]
    assert sum(t["tensors"] for t in st_["tiers"]) == 5
    for i in range(5):
        np.testing.assert_array_equal(s.get(f"t{i}", promote=False), blk(i))


def test_tensor_larger_than_tier(store_dir):
    s = small_store(store_dir, fast="256B", ram="1KiB")
    with pytest.raises(tierflow.CapacityError) as ei:
        s.put("big", np.zeros(1024, np.float32))
    msg = str(ei.value)
    assert "4096" in msg and "1024" in msg  # names both sizes
    s.put("big", np.zeros(1024, np.float32), tier="disk")
    with pytest.raises(tierflow.CapacityError):
        s.move("big", "ram")
    assert s.tier_of("big") == "disk"
    # a get that cannot promote reads in place
    assert s.get("big").shape == (1024,)


def test_pinned_never_evicted(store_dir):
    s = small_store(store_dir, fast="256B", ram="2KiB")
    s.put("p", np.zeros(256, np.float32))
    s.pin("p")
    for i in range(5):
        s.put(f"x{i}", np.full(256, i, np.float32))
        assert s.tier_of("p") == "ram"
    with pytest.raises(tierflow.InvalidArgumentError):
        s.evict("p")
    s.put("q", np.zeros(256, np.float32))
    s.pin("q")
    with pytest.raises(tierflow.CapacityError, match="pinned"):
        s.put("r", np.zeros(256, np.float32))
    assert "r" not in s
    s.unpin("p")
    s.put("r", np.zeros(256, np.float32))
    assert s.tier_of("p") == "disk"


def _misses(policy, seq, tmp_path, future=False):
    s = small_store(tmp_path / policy, fast="16B", ram="3KiB", policy=policy)
    for n in sorted(set(seq)):
        s.put(n, np.zeros(256, np.float32), tier="disk")
    if future:
        s.plan(seq)
    s.reset_stats()
    for n in seq:
        s.get(n)
    m = s.stats().misses
    s.close()
    return m


@given(seq=st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=40))
def test_planned_policy_is_belady(tmp_path_factory, seq):
    d = tmp_path_factory.mktemp("pol")
    planned = _misses("planned", seq, d, future=True)
    # Belady's MIN computed independently, in Python, for a 3-slot cache
    cache: list[str] = []
    belady = 0
    for i, n in enumerate(seq):
        if n in cache:
            continue
        belady += 1
        if len(cache) == 3:
            nxt = {
                c: next((j for j in range(i + 1, len(seq)) if seq[j] == c), 10**9) for c in cache
            }
            cache.remove(max(cache, key=lambda c: nxt[c]))
        cache.append(n)
    assert planned == belady
    assert planned <= _misses("lru", seq, d)
    assert planned <= _misses("lfu", seq, d)
    assert planned <= _misses("fifo", seq, d)


def test_prefetch_and_stats(store_dir):
    s = small_store(store_dir, ram="1MiB")
    for i in range(4):
        s.put(f"w{i}", np.full(4096, i, np.float32), tier="disk")
    s.reset_stats()
    f = s.prefetch(["w0", "w1"])
    assert f.wait(timeout=30) == 2 and f.done()
    assert s.tier_of("w0") == "ram"
    s.get("w0")
    s.get("w1")
    s.get("w2")
    st_ = s.stats()
    assert (st_.hits, st_.misses, st_.prefetch_hits) == (2, 1, 2)
    link = st_.link("disk", "ram")
    assert link["bytes"] == 3 * 16384 and link["tensors"] == 3
    assert "disk -> ram" in str(st_)
    s.reset_stats()
    assert s.stats().hits == 0
    with pytest.raises(tierflow.TensorNotFoundError):
        s.prefetch(["nope"])


def test_prefetch_error_surfaces(store_dir):
    s = small_store(store_dir, fast="256B", ram="1KiB")
    s.put("big", np.zeros(1024, np.float32), tier="disk")
    with pytest.raises(tierflow.CapacityError):
        s.prefetch("big").wait()


def test_names_cannot_leave_the_folder(tmp_path):
    root = tmp_path / "inner" / "store"
    s = small_store(root)
    evil = ["../escape", "../../etc/passwd", "/abs/path", "a/b/c", "..", ".", "x\\y", "ü" * 300]
    for i, n in enumerate(evil):
        s.put(n, np.array([i]))
    for i, n in enumerate(evil):
        assert s.get(n).tolist() == [i]
    for p in tmp_path.rglob("*"):
        assert str(p.resolve()).startswith(str(root.resolve())) or p in (tmp_path / "inner", root)
    assert set(os.listdir(tmp_path)) == {"inner"} and set(os.listdir(tmp_path / "inner")) == {
        "store"
    }
    for bad in ["", "a\0b"]:
        with pytest.raises(tierflow.InvalidNameError):
            s.put(bad, np.zeros(1))
    s.close()
    with TieredStore.open(root) as s2:
        assert sorted(s2.names()) == sorted(evil)


@pytest.mark.parametrize(
    "cap", [-1, "-5MiB", "lots", "12 parsecs", 1.5e30, float("nan"), True, [1]]
)
def test_bad_capacities(cap):
    with pytest.raises(ValueError):
        Tier("t", cap)


def test_bad_arguments(store_dir):
    with pytest.raises(ValueError):
        small_store(store_dir, policy="random")
    s = small_store(store_dir / "2")
    with pytest.raises(ValueError):
        s.put("x", np.zeros(1), tier="nvme")
    with pytest.raises(tierflow.InvalidArgumentError):
        TieredStore(tiers=[Tier("a"), Tier("a")])
    with pytest.raises(tierflow.InvalidArgumentError):
        TieredStore(tiers=[])
    s.put("x", np.zeros(1))
    with pytest.raises(tierflow.InvalidArgumentError):
        s.prefetch(["x"]).wait(timeout=-1)


def test_parse_size():
    assert tierflow.parse_size("512MiB") == 512 << 20
    assert tierflow.parse_size("2GB") == 2_000_000_000
    assert tierflow.parse_size(17) == 17
    assert tierflow.parse_size(None) is None


def test_closed_store(store_dir):
    s = small_store(store_dir)
    s.put("a", np.zeros(1))
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(tierflow.ClosedError):
        s.get("a")
    with pytest.raises(tierflow.ClosedError):
        s.put("b", np.zeros(1))


def test_one_open_store_per_folder(store_dir):
    s = small_store(store_dir)
    with pytest.raises(tierflow.InvalidArgumentError, match="open"):
        small_store(store_dir)
    s.close()
    small_store(store_dir).close()


def test_threads_share_a_store(store_dir):
    s = small_store(store_dir, ram="256KiB")
    errors = []

    def work(k):
        try:
            for i in range(30):
                n = f"t{k}_{i % 5}"
                s.put(n, np.full(1024, k * 100 + i, np.int32), overwrite=True)
                assert s.get(n)[0] == k * 100 + i
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    th = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert not errors
    assert len(s) == 20


def test_manifest_is_json_and_files_are_safetensors(store_dir):
    from safetensors.numpy import load_file

    s = small_store(store_dir)
    a = np.arange(10, dtype=np.float64)
    s.put("model.w", a)
    s.flush()
    m = json.loads((store_dir / "tierflow-store.json").read_text())
    assert m["format"] == "tierflow-store" and "model.w" in m["tensors"]
    # other tools can read the files
    np.testing.assert_array_equal(load_file(s.info("model.w")["file"])["model.w"], a)


def test_two_file_tiers_cascade(tmp_path):
    """ram -> ssd (a faster file tier: victims are written there) -> hdd (home, write-through)."""
    tiers = [Tier("ram", "8KiB"), Tier("ssd", "16KiB", path="ssd"), Tier("hdd", None, path="hdd")]
    s = TieredStore(tmp_path / "s", tiers=tiers)
    vals = {f"t{i}": np.full(1024, i, np.float32) for i in range(8)}  # 4 KiB each
    for n, v in vals.items():
        s.put(n, v)
    where = {n: s.tier_of(n) for n in vals}
    assert list(where.values()).count("ram") == 2 and list(where.values()).count("ssd") == 4
    assert list(where.values()).count("hdd") == 2
    ssd_files = os.listdir(tmp_path / "s" / "ssd")
    assert len([f for f in ssd_files if f.endswith(".safetensors")]) == 4
    for n, v in vals.items():
        np.testing.assert_array_equal(s.get(n, promote=False), v)
    s.move("t7", "hdd")
    s.move("t0", "ssd")
    for n, v in vals.items():
        np.testing.assert_array_equal(s.get(n), v)
    st_ = s.stats()
    for t in st_["tiers"]:
        assert t["capacity"] is None or t["used"] <= t["capacity"]
    s.close()
    with TieredStore.open(tmp_path / "s") as s2:  # everything reopens from home
        # copies in the faster file tier are not kept across a reopen
        assert not [f for f in os.listdir(tmp_path / "s" / "ssd") if f.endswith(".safetensors")]
        assert {s2.tier_of(n) for n in vals} == {"hdd"}
        for n, v in vals.items():
            np.testing.assert_array_equal(s2.get(n), v)


def _fake_cgroup(root, proc: str, files: dict[str, str]):
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc)
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def test_cgroup_memory_limit_v1_v2_and_none(tmp_path):
    from tierflow.store import cgroup_memory_limit

    v1 = _fake_cgroup(
        tmp_path / "v1",
        "12:pids:/x\n4:memory:/job/a\n0::/\n",
        {"sys/fs/cgroup/memory/job/a/memory.limit_in_bytes": "1288490188\n"},
    )
    assert cgroup_memory_limit(v1) == 1288490188
    v2 = _fake_cgroup(
        tmp_path / "v2", "0::/user/b\n", {"sys/fs/cgroup/user/b/memory.max": "536870912\n"}
    )
    assert cgroup_memory_limit(v2) == 512 << 20
    unlimited = _fake_cgroup(
        tmp_path / "u",
        "4:memory:/\n0::/c\n",
        {
            "sys/fs/cgroup/memory/memory.limit_in_bytes": str(2**63 - 4096),
            "sys/fs/cgroup/c/memory.max": "max",
        },
    )
    assert cgroup_memory_limit(unlimited) is None
    assert cgroup_memory_limit(tmp_path / "nothing-here") is None
    garbage = _fake_cgroup(
        tmp_path / "g", "4:memory:/z\n", {"sys/fs/cgroup/memory/z/memory.limit_in_bytes": "lots"}
    )
    assert cgroup_memory_limit(garbage) is None


def test_default_ram_tier_follows_the_cgroup_limit(monkeypatch):
    import tierflow.store.tiered as tiered

    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(tiered, "cgroup_memory_limit", lambda: None)
    assert tiered._default_tiers(None)[1].capacity == phys // 4

    def memory_tiers(limit: int) -> tuple[int, int]:
        monkeypatch.setattr(tiered, "cgroup_memory_limit", lambda: limit)
        fast, ram = tiered._default_tiers(None)[:2]
        return int(fast.capacity), int(ram.capacity)

    # in a cgroup the two memory tiers together take the limit less its reserve, the fast
    # tier at most 1/32 of that (a VM may report a last-level cache of hundreds of MiB)
    for limit, budget in [
        (1200 << 20, min(phys // 4, (1200 << 20) - (1200 << 20) // 8)),
        (300 << 20, min(phys // 4, (300 - 96) << 20)),
        (64 << 20, 16 << 20),  # the floor
    ]:
        fast, ram = memory_tiers(limit)
        assert fast + ram == budget and 0 < fast <= budget // 32, (limit, fast, ram)


def _tensor_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.safetensors"))


def test_non_durable_puts(tmp_path):
    """``put(..., durable=False)`` into a memory tier: no file written and nothing synced, not
    in the manifest (gone after a reopen); evicted into a file tier it is written there and
    read back intact (a reopened store removes that file); delete works at every stage; a
    durable tensor overwritten by a non-durable one leaves the manifest; into a file tier the
    flag changes nothing."""
    root = tmp_path / "s"
    tiers = [Tier("ram", "12KiB"), Tier("disk", None, path="disk")]
    vals = {f"t{i}": np.full(1024, i, np.float32) for i in range(5)}  # 4 KiB each
    with TieredStore(root, tiers=tiers) as s:
        s.put("keep", np.arange(8, dtype=np.float32))
        before = _tensor_files(root)
        written = s.stats()["counters"]["bytes_written"]
        s.put("t0", vals["t0"], durable=False)
        assert _tensor_files(root) == before and s.stats()["counters"]["bytes_written"] == written
        assert s.tier_of("t0") == "ram" and s.info("t0")["file"] is None
        np.testing.assert_array_equal(s.get("t0"), vals["t0"])
        for n in ["t1", "t2", "t3", "t4"]:  # past the RAM tier: the oldest are evicted
            s.put(n, vals[n], durable=False)
        on_disk = [n for n in vals if s.tier_of(n) == "disk"]
        assert on_disk and len(_tensor_files(root)) == len(before) + len(on_disk)
        for n, v in vals.items():
            np.testing.assert_array_equal(s.get(n, promote=False), v)
            np.testing.assert_array_equal(s.get(n), v)  # promoted back up, evicting others
        s.delete("t1")
        assert "t1" not in s
        s.put("keep2", np.ones(4, np.float32))
        s.put("keep2", np.zeros(4, np.float32), overwrite=True, durable=False)
        s.put("durable_on_disk", np.ones(4, np.float32), tier="disk", durable=False)
        s.put("t9", vals["t2"], durable=False)
        s.put("t9", vals["t3"], overwrite=True)  # a durable tensor replacing a non-durable one
    with TieredStore.open(root) as s2:
        assert sorted(s2.names()) == ["durable_on_disk", "keep", "t9"]
        np.testing.assert_array_equal(s2.get("t9"), vals["t3"])
        np.testing.assert_array_equal(s2.get("keep"), np.arange(8, dtype=np.float32))
        assert len(_tensor_files(root)) == 3  # the evicted non-durable copies were removed
    with TieredStore(root) as s3, pytest.raises(tierflow.InvalidArgumentError, match="durable"):
        s3.put("bad", vals["t0"], durable="no")  # a typed error, nothing stored
    with TieredStore.open(root) as s4:
        assert "bad" not in s4 and sorted(s4.names()) == ["durable_on_disk", "keep", "t9"]
    with TieredStore(tmp_path / "m") as mem:  # a store without a home tier: the same
        mem.put("x", vals["t0"], durable=False)
        np.testing.assert_array_equal(mem.get("x"), vals["t0"])
