"""Random operation sequences against a model of the store (hypothesis stateful testing):
used <= capacity in every tier, pinned tensors never evicted, every tensor in exactly one tier,
every tensor's bytes exactly what was last put (tierflow/store.py)."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import tierflow
from tierflow import Tier, TieredStore

NAMES = st.sampled_from([f"t{i}" for i in range(8)])
TIERS = ["fast", "ram", "disk"]


class StoreMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(["lru", "lfu", "fifo", "planned"]))
    def start(self, policy):
        self.dir = tempfile.mkdtemp(prefix="tf-state-")
        self.store = TieredStore(
            self.dir,
            tiers=[Tier("fast", 600), Tier("ram", 2000), Tier("disk", path="disk")],
            policy=policy,
        )
        self.model: dict[str, bytes] = {}
        self.pinned: dict[str, str] = {}  # name -> tier it was pinned in

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        name=NAMES,
        n=st.integers(0, 150),
        tier=st.sampled_from([None, *TIERS]),
        seed=st.integers(0, 9),
    )
    def put(self, name, n, tier, seed):
        a = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
        try:
            self.store.put(name, a, tier=tier, overwrite=True)
        except tierflow.CapacityError:
            return  # the old tensor, if any, must be intact: checked by the invariant
        self.model[name] = a.tobytes()
        if name in self.pinned:  # overwriting keeps the pin
            self.pinned[name] = self.store.tier_of(name)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), tier=st.sampled_from(TIERS))
    def move(self, data, tier):
        name = data.draw(st.sampled_from(sorted(self.model)))
        try:
            self.store.move(name, tier)
        except tierflow.CapacityError:
            return
        assert self.store.tier_of(name) == tier
        if name in self.pinned:
            self.pinned[name] = tier

    @precondition(lambda self: self.model)
    @rule(data=st.data(), promote=st.booleans())
    def get(self, data, promote):
        name = data.draw(st.sampled_from(sorted(self.model)))
        assert self.store.get(name, promote=promote).tobytes() == self.model[name]
        if name in self.pinned:
            self.pinned[name] = self.store.tier_of(name)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def evict(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        try:
            self.store.evict(name)
        except tierflow.InvalidArgumentError:
            assert name in self.pinned or self.store.tier_of(name) == "disk"

    @precondition(lambda self: self.model)
    @rule(data=st.data(), pin=st.booleans())
    def pin(self, data, pin):
        name = data.draw(st.sampled_from(sorted(self.model)))
        if pin:
            self.store.pin(name)
            self.pinned[name] = self.store.tier_of(name)
        else:
            self.store.unpin(name)
            self.pinned.pop(name, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.store.delete(name)
        del self.model[name]
        self.pinned.pop(name, None)

    @rule(seq=st.lists(NAMES, max_size=10))
    def plan(self, seq):
        self.store.plan(seq)

    @invariant()
    def consistent(self):
        if not hasattr(self, "store"):
            return
        stats = self.store.stats()
        total = 0
        for t in stats["tiers"]:
            assert t["capacity"] is None or t["used"] <= t["capacity"], t
            total += t["tensors"]
        assert total == len(self.model)  # each tensor in exactly one tier
        assert sorted(self.store.names()) == sorted(self.model)
        for name, tier in self.pinned.items():
            assert self.store.tier_of(name) == tier, f"pinned {name} left {tier}"


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_store_state_machine = StoreMachine.TestCase


def test_reopen_after_random_state(tmp_path):
    s = TieredStore(
        tmp_path / "s", tiers=[Tier("fast", 600), Tier("ram", 2000), Tier("disk", path="disk")]
    )
    rng = np.random.default_rng(3)
    want = {}
    for i in range(40):
        n = f"t{rng.integers(0, 10)}"
        a = rng.standard_normal(rng.integers(1, 200)).astype(np.float32)
        try:
            s.put(n, a, overwrite=True, tier=["fast", "ram", "disk", None][i % 4])
            want[n] = a
        except tierflow.CapacityError:
            assert n not in want or np.array_equal(s.get(n), want[n])
    s.close()
    with TieredStore.open(tmp_path / "s") as s2:
        assert sorted(s2.names()) == sorted(want)
        for n, a in want.items():
            np.testing.assert_array_equal(s2.get(n), a)
