"""Machine probes for benchmarks.

Example:
    >>> import tierflow.kernels.bench
    >>> tierflow.kernels.bench.memory_bandwidth(nbytes=1 << 20, reps=1) > 0
    True
"""

from __future__ import annotations

from .. import _tierflow

__all__ = ["memory_bandwidth"]


def memory_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Memory read bandwidth in bytes per second: a STREAM-like probe in which every worker
    thread (``tierflow.set_num_threads``) sums its share of an ``nbytes`` buffer (much larger than
    the last-level cache by default); the best of ``reps`` passes."""
    return float(_tierflow.memory_bandwidth(int(nbytes), int(reps)))
