"""pytest settings for the doctests of ``python/tierflow`` (collected with ``--doctest-modules``)."""

from __future__ import annotations

import os
from pathlib import Path

# With tierflow installed as a user installs it (``pip install .``, not editable), the package's
# doctests are collected from python/tierflow but run on the installed copy of the same files
# (the native module exists only there): tell pytest that this is intended.
os.environ.setdefault("PY_IGNORE_IMPORTMISMATCH", "1")

import pytest
from _pytest.doctest import DoctestItem

_PACKAGE = Path(__file__).parent / "python" / "tierflow"

# The deprecated old module paths warn on import (an error under filterwarnings=error) and hold
# no examples: leave them out of doctest collection.
collect_ignore = [
    str(_PACKAGE / f"{name}.py")
    for name in (
        "bench",
        "coe",
        "devices",
        "kvcache",
        "paper",
        "plan",
        "policies",
        "report",
        "runtime",
        "trace",
    )
]


@pytest.fixture(autouse=True)
def _doctest_cache_dir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docstring examples that probe or calibrate the host cache their figures in a temporary
    folder, not in the user's cache."""
    if isinstance(request.node, DoctestItem):
        monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path))
