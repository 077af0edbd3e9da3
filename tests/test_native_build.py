"""The built native module: every SIMD intrinsic is inlined into the kernel that uses it.

An intrinsic is an ``#[inline]`` function with its own ``#[target_feature]``; inside a kernel
compiled with those features it becomes one instruction. A closure around intrinsics (such as
``std::array::from_fn(|i| _mm512_...)``) is not always inlined, and out of line it is compiled
without the kernel's target features: each intrinsic is then a function call passing vectors
through memory. That once made Q4_0 decode at one activation row 9x slower on the AVX-512 path
with bit-identical results (so no correctness test saw it). Out-of-line intrinsics show up as
symbols of the module; this test lists them (``nm``) and fails on any."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tierflow import _tierflow

#: intrinsics that are calls by nature (CPU feature detection)
ALLOWED = ("_xgetbv", "__cpuid", "__cpuid_count", "_rdtsc")


def test_no_out_of_line_simd_intrinsics():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils' nm is not installed")
    out = subprocess.run(
        [nm, "-C", "--defined-only", _tierflow.__file__], capture_output=True, text=True, check=True
    ).stdout
    syms = [line.split(" ", 2)[2] for line in out.splitlines() if line.count(" ") >= 2]
    if len(syms) < 100:
        pytest.skip("the native module's symbols are stripped")
    bad = sorted(
        {s for s in syms if "core_arch::x86" in s and s.rsplit("::", 1)[-1] not in ALLOWED}
    )
    assert not bad, f"SIMD intrinsics compiled out of line (a closure around them?): {bad}"
