# Stub of the private native module tierflow._tierflow (checked against it by mypy stubtest).
from typing import Any

__version__: str

def build_info() -> dict[str, Any]: ...
def set_num_threads(n: int | None = None) -> None: ...
def get_num_threads() -> int: ...

# --- store ---
# --- kernels ---
def _matmul_plain(
    x: Any,
    w32: Any,
    w16: Any,
    wkind: str,
    out: Any,
    bias: Any = None,
    isa: str | None = None,
) -> None: ...
def _matmul_blocks(
    x: Any,
    fmt: str,
    k: int,
    n: int,
    data: Any,
    out: Any,
    bias: Any = None,
    isa: str | None = None,
) -> None: ...
def _quantize(w: Any, fmt: str) -> Any: ...
def _check_blocks(fmt: str, k: int, n: int, data: Any) -> None: ...
def _format_nbytes(fmt: str, k: int, n: int) -> int: ...
def _dequantize(fmt: str, k: int, n: int, data: Any) -> Any: ...
def memory_bandwidth(nbytes: int = ..., reps: int = ...) -> float: ...

# --- sim ---
