"""tierflow.policies: policy parsing, placement, and the docstring examples of the CoE modules."""

from __future__ import annotations

import doctest
import importlib

import pytest

import tierflow as tf
from tierflow.sim import coe, devices, policies
from tierflow.sim.policies import place

# the module (the attribute tierflow.sim.simulate is the function)
sim = importlib.import_module("tierflow.sim.simulate")


@pytest.mark.parametrize("module", [coe, devices, policies, sim])
def test_docstring_examples_run(module):
    res = doctest.testmod(module)
    assert res.attempted > 0 and res.failed == 0


def test_parse_combines_names():
    p = tf.Policy.parse("static+belady+prefetch", batch_size=4)
    assert (p.placement, p.eviction, p.prefetch, p.batch_size) == ("static", "belady", True, 4)
    assert p.name == "static+belady+prefetch+bs4"
    assert tf.Policy.parse(None).eviction == "lru"
    with pytest.raises(tf.InvalidArgumentError, match="unknown 'random'"):
        tf.Policy.parse("random")
    with pytest.raises(tf.InvalidArgumentError, match="pinned_fraction"):
        tf.Policy(pinned_fraction=2.0)
    with pytest.raises(tf.InvalidArgumentError, match="instances"):
        tf.Policy(instances=0)


def test_place_packs_by_popularity_within_capacity():
    sizes = {f"e{i}": 10 for i in range(6)}
    pop = {f"e{i}": 6 - i for i in range(6)}
    pins = place("pack", sizes, pop, capacity=30, instances=2)
    assert sorted(e for p in pins for e in p) == sorted(sizes)
    assert all(sum(sizes[e] for e in p) <= 30 for p in pins)
    # the two most popular experts go to different instances
    assert ("e0" in pins[0]) != ("e0" in pins[1]) and ("e0" in pins[0]) != ("e1" in pins[0])
    assert place("static", sizes, pop, capacity=25, instances=3) == [["e0", "e1"]] * 3
    assert place("none", sizes, pop, capacity=25, instances=2) == [[], []]
    with pytest.raises(tf.InvalidArgumentError, match="unknown policy"):
        place("magic", sizes, pop, capacity=25)
