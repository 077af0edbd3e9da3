# Stub of the private native module tierflow._tierflow (checked against it by mypy stubtest).
from typing import Any

__version__: str

def build_info() -> dict[str, Any]: ...
def set_num_threads(n: int | None = None) -> None: ...
def get_num_threads() -> int: ...

# --- store ---
# --- kernels ---
# --- sim ---
