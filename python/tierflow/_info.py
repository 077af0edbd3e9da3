"""Build and machine facts; the thread count."""

from __future__ import annotations

from typing import Any

from . import _tierflow

__all__ = ["get_num_threads", "info", "set_num_threads"]


def info() -> dict[str, Any]:
    """Version, CPU features found at run time, and kernel paths available and selected.

    ``isa_extensions`` lists the optional extensions (``avx512vnni``, ``avx512bf16``,
    ``avxvnni``) whose kernel bodies run on this CPU. ``spin_us`` is how long the decode kernels'
    idle worker threads poll for the next call before they sleep (``TIERFLOW_SPIN_US``; 0 makes
    them sleep at once, and every multi-threaded call then pays a thread wake-up).

    Example:
        >>> import tierflow
        >>> "scalar" in tierflow.info()["isa_available"]
        True
    """
    return dict(_tierflow.build_info())


def set_num_threads(n: int | None = None) -> None:
    """Set the worker threads used by kernels, copies and prefetch (``None``: the default,
    ``TIERFLOW_NUM_THREADS`` or the number of CPUs)."""
    _tierflow.set_num_threads(n)


def get_num_threads() -> int:
    """The number of worker threads in use."""
    return int(_tierflow.get_num_threads())
