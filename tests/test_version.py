"""One version everywhere: the installed distribution's metadata (from Cargo.toml's
``[workspace.package] version``), ``tierflow.__version__`` and ``tierflow --version``."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest

import tierflow
from tierflow import cli


def test_version_matches_distribution_metadata():
    dist = importlib.metadata.version("tierflow")
    assert tierflow.__version__ == dist
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-.]?\w+)?", dist), dist


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tierflow {importlib.metadata.version('tierflow')}"


def test_module_version_flag():
    out = subprocess.run(
        [sys.executable, "-m", "tierflow", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"tierflow {tierflow.__version__}"
