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
def _matmul_streamed(
    x: Any,
    store: Any,
    name: str,
    fmt: str,
    k: int,
    n: int,
    out: Any,
    bias: Any = None,
    panel_bytes: int = ...,
    isa: str | None = None,
) -> None: ...
def _paged_decode(
    q: Any,
    kpool: Any,
    vpool: Any,
    sizes: tuple[int, int, int, int, int, int, int],
    table: Any,
    lens: list[int],
    scale: float,
    out: Any,
    isa: str | None = None,
) -> None: ...
def _quantize(w: Any, fmt: str) -> Any: ...
def _check_blocks(fmt: str, k: int, n: int, data: Any) -> None: ...
def _format_nbytes(fmt: str, k: int, n: int) -> int: ...
def _dequantize(fmt: str, k: int, n: int, data: Any) -> Any: ...
def memory_bandwidth(nbytes: int = ..., reps: int = ...) -> float: ...
def _attention(
    q: Any,
    k: Any,
    v: Any,
    dims: tuple[int, int, int, int, int, int],
    causal: bool,
    scale: float,
    out: Any,
    mask: Any = None,
    mask_bh: tuple[int, int] = ...,
    isa: str | None = None,
) -> None: ...
def _rowwise(
    op: str,
    x: Any,
    d: int,
    out: Any,
    w: Any = None,
    b: Any = None,
    aux: Any = None,
    eps: float = 1e-06,
    isa: str | None = None,
) -> None: ...
def _rope(
    x: Any,
    s: int,
    d: int,
    pos: Any,
    base: float,
    interleaved: bool,
    out: Any,
    isa: str | None = None,
) -> None: ...

# --- sim ---
