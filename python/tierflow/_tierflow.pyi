# Stub of the private native module tierflow._tierflow (checked against it by mypy stubtest).
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import final

__version__: str

def build_info() -> dict[str, Any]: ...
def set_num_threads(n: int | None = None) -> None: ...
def get_num_threads() -> int: ...

# --- store ---

def _debug_panic() -> None: ...
def parse_size(s: str) -> int | None: ...
def read_safetensors_header(path: str | os.PathLike[str]) -> str: ...

@final
class TensorBuffer:
    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...

@final
class Prefetch:
    def done(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> int | None: ...

@final
class Store:
    def __new__(
        cls,
        root: str | os.PathLike[str] | None,
        tiers: Sequence[tuple[str, int | None, str | os.PathLike[str] | None]],
        policy: str = "lru",
        default_tier: int | None = None,
        verify_reads: bool = True,
    ) -> Store: ...
    @staticmethod
    def open(root: str | os.PathLike[str], verify: str = "full", strict: bool = True) -> Store: ...
    def tiers(self) -> list[tuple[str, int | None, str | None]]: ...
    def tier_index(self, name: str) -> int: ...
    def default_tier(self) -> int: ...
    def policy(self) -> str: ...
    def root(self) -> str | None: ...
    def put(
        self,
        name: str,
        dtype: str,
        shape: Sequence[int],
        data: npt.NDArray[np.uint8],
        tier: int | None = None,
        overwrite: bool = False,
        durable: bool = True,
    ) -> None: ...
    def get(self, name: str, promote: bool = True) -> tuple[str, list[int], TensorBuffer]: ...
    def meta_json(self, name: str) -> str: ...
    def move_to(self, name: str, tier: int) -> None: ...
    def evict(self, name: str) -> int: ...
    def delete(self, name: str) -> None: ...
    def set_pinned(self, name: str, pinned: bool) -> None: ...
    def names(self) -> list[str]: ...
    def contains(self, name: str) -> bool: ...
    def __len__(self) -> int: ...
    def quarantined(self) -> list[tuple[str, str]]: ...
    def set_future(self, names: Sequence[str]) -> None: ...
    def stats_json(self) -> str: ...
    def reset_stats(self) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def is_closed(self) -> bool: ...
    def prefetch(self, names: Sequence[str], tier: int) -> Prefetch: ...
    def load_safetensors(
        self,
        path: str | os.PathLike[str],
        tier: int | None = None,
        prefix: str = "",
        overwrite: bool = False,
    ) -> list[str]: ...
    def load_gguf(
        self,
        path: str | os.PathLike[str],
        tier: int | None = None,
        prefix: str = "",
        overwrite: bool = False,
        rename: dict[str, str] | None = None,
    ) -> list[str]: ...
    def read_into(self, name: str, offset: int, out: npt.NDArray[np.uint8]) -> None: ...
    drop_after_read: bool

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
def _matmul_blocks_group(
    x: Any,
    parts: list[tuple[str, int, int, Any, Any, Any]],
    isa: str | None = None,
) -> None: ...
def _pack_vnni(fmt: str, k: int, n: int, data: Any) -> Any: ...
def _matmul_packed_group(
    x: Any,
    parts: list[tuple[str, int, int, Any, Any, Any]],
    isa: str | None = None,
) -> None: ...
def _mlp_packed(
    x: Any,
    gate: tuple[str, int, int, Any],
    up: tuple[str, int, int, Any],
    down: tuple[str, int, int, Any],
    kind: str,
    out: Any,
    isa: str | None = None,
) -> None: ...
def _unpack_vnni(fmt: str, k: int, n: int, packed: Any) -> Any: ...
def _packed_nbytes(fmt: str, k: int, n: int) -> int: ...
def _matmul_packed(
    x: Any,
    fmt: str,
    k: int,
    n: int,
    packed: Any,
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
    plain: bool = False,
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

# --- kvcache (paged decode over pages that live in a store) ---
def _paged_decode_pages(
    q: Any,
    pages: list[Any],
    counts: list[int],
    sizes: tuple[int, int, int, int, int],
    lens: list[int],
    scale: float,
    out: Any,
    store: Store | None = None,
    promote: bool = False,
    isa: str | None = None,
) -> None: ...

# --- decode ---
def _llama_decode_step(
    weights: Store,
    kv: Store,
    x: Any,
    layers: list[tuple[list[str], Any, Any, tuple[Any, Any, Any] | None, list[str], Any]],
    final_norm: Any,
    head: str,
    logits: Any,
    sizes: tuple[int, int, int, int, int],
    eps: float,
    theta: float,
    act: str = "swiglu",
    promote: bool = False,
    prefetch: bool = True,
    isa: str | None = None,
) -> None: ...

# --- sim ---
def simulate(
    device_spec: dict[str, Any],
    model_spec: dict[str, Any],
    arrival: Any,
    prompt: Any,
    output: Any,
    expert: Any,
    alt: Any,
    user: Any | None,
    policy: dict[str, Any],
) -> dict[str, Any]: ...
def place(
    placement: str,
    sizes: list[int],
    popularity: list[float],
    capacity: int,
    instances: int,
    fraction: float = 1.0,
    factor: float = 1.0,
) -> list[list[int]]: ...

class EvictionPolicy:
    def __new__(cls, kind: str, n: int) -> EvictionPolicy: ...
    @property
    def kind(self) -> str: ...
    def __len__(self) -> int: ...
    def on_access(self, e: int) -> None: ...
    def on_insert(self, e: int) -> None: ...
    def on_evict(self, e: int) -> None: ...
    def victim(self, resident: list[int]) -> int | None: ...
    def set_future(self, sequence: list[int]) -> None: ...

# --- gguf ---
def read_gguf(path: str | os.PathLike[str]) -> dict[str, Any]: ...
