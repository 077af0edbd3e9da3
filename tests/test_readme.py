"""The README's Python examples run as written: every fenced ``python`` block is executed,
unchanged, in a fresh namespace and an empty working directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```(?:python|py|python3)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def test_readme_has_python_examples():
    # the README ships next to tests/ (in the repository, and beside the copy the wheel check runs)
    assert README.is_file(), f"{README} missing"
    assert _blocks(), "no ```python block found in README.md"


_EXAMPLES = _blocks() if README.is_file() else []


@pytest.mark.parametrize(("line", "code"), _EXAMPLES, ids=[f"README.md:{n}" for n, _ in _EXAMPLES])
def test_readme_example_runs(line, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    capsys.readouterr()
