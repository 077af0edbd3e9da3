"""The exception hierarchy and the native error mapping (tierflow/errors.py)."""

from __future__ import annotations

import inspect

import pytest

import tierflow
from tierflow import _tierflow, errors


def test_every_error_is_a_tierflow_error_and_a_builtin():
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)
    ]
    assert len(classes) >= 14
    for c in classes:
        assert issubclass(c, tierflow.TierflowError)
        if c is not tierflow.TierflowError:
            assert len(c.__mro__) > 3, f"{c.__name__} also subclasses a built-in"
    assert issubclass(tierflow.TensorNotFoundError, KeyError)
    assert issubclass(tierflow.CorruptFileError, OSError)
    assert issubclass(tierflow.ShapeError, ValueError)
    assert issubclass(tierflow.DTypeError, TypeError)
    assert issubclass(tierflow.CapacityError, MemoryError)
    assert issubclass(tierflow.MissingFileError, FileNotFoundError)
    assert set(errors.__all__) <= set(tierflow.__all__)


def test_panic_becomes_internal_error():
    with pytest.raises(tierflow.InternalError, match="deliberate panic"):
        _tierflow._debug_panic()
    # and the interpreter and library keep working
    assert tierflow.get_num_threads() >= 1


def test_thread_count_settable():
    old = tierflow.get_num_threads()
    tierflow.set_num_threads(1)
    assert tierflow.get_num_threads() == 1 and tierflow.info()["num_threads"] == 1
    tierflow.set_num_threads(None)
    assert tierflow.get_num_threads() == old
    with pytest.raises(ValueError):
        tierflow.set_num_threads(0)


def test_info_lists_paths():
    i = tierflow.info()
    assert "scalar" in i["isa_available"] and i["isa_selected"] in i["isa_available"]
    assert i["version"] == tierflow.__version__
