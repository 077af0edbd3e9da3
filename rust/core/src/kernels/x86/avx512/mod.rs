//! AVX-512 F/BW/VL/DQ kernels (Skylake-SP and later, Zen 4), with the optional extensions
//! chosen per call at run time: AVX-512-VNNI (`vpdpbusd`) for the Q8_0 / Q4_0 integer dot
//! products and AVX-512-BF16 (`vdpbf16ps`) for bf16 weights. Intrinsics only, one file per
//! operation, as in `avx2/`; an operation without an AVX-512 body of its own yet runs the AVX2
//! body (every AVX-512 CPU has AVX2 + FMA).

pub(crate) mod attention;
pub(crate) mod axpy;
pub(crate) mod dot;
pub(crate) mod qdot;
pub(crate) mod qpack;
pub(crate) mod rows;
pub(crate) mod sgemm;

use crate::cpu::Ext;
use crate::kernels::attention::{Bufs, Task};
use crate::kernels::axpy::{ColW, ColsArgs};
use crate::kernels::backend::Backend;
use crate::kernels::dot::RowsOut;
use crate::kernels::gemm::Product;
use crate::kernels::paged::{PageSource, PagedArgs, Scratch};
use crate::kernels::qdot::QRowsOut;
use crate::kernels::quant::Format;
use crate::kernels::rows::RowOp;
use crate::kernels::x86::avx2::Avx2;

/// The AVX-512 backend.
pub(crate) struct Avx512;

impl Backend for Avx512 {
    const COLS_SIMD: bool = true;

    unsafe fn dot_rows(o: RowsOut<'_>, n0: usize, n1: usize) {
        use dot::{bf16_dp_task, task, Bf16, BF16_DP_MAX_M, F16, F32};
        unsafe {
            match o.w.fmt {
                Format::F32 => task::<F32>(o, n0, n1),
                Format::F16 => task::<F16>(o, n0, n1),
                Format::Bf16 if o.m <= BF16_DP_MAX_M && Ext::Avx512Bf16.present() => {
                    bf16_dp_task(o, n0, n1)
                }
                Format::Bf16 => task::<Bf16>(o, n0, n1),
                _ => Avx2::dot_rows(o, n0, n1),
            }
        }
    }

    unsafe fn qdot_rows(o: QRowsOut<'_>, n0: usize, n1: usize) {
        // Without VNNI, AVX-512 F/BW gain nothing over the AVX2 body (`vpmaddubsw` +
        // `vpmaddwd` at twice the width, against a memory-bound read of the weights).
        if !Ext::Avx512Vnni.present() {
            return unsafe { Avx2::qdot_rows(o, n0, n1) };
        }
        use qdot::{task, Q4, Q8};
        // SAFETY: the CPU has AVX-512 (this backend) and VNNI (checked above).
        unsafe {
            match o.w.fmt {
                Format::Q8_0 => task::<Q8>(o, n0, n1),
                _ => task::<Q4>(o, n0, n1),
            }
        }
    }

    unsafe fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool {
        unsafe { Avx2::round_block(xb, qb, db, sb) }
    }

    unsafe fn cols(a: ColsArgs<'_>, n0: usize, n1: usize) -> usize {
        use dot::{Bf16, F16, F32};
        let full = n0 + (n1 - n0) / 16 * 16;
        if full > n0 {
            let task = match a.w {
                ColW::F32(_) => axpy::task::<F32>,
                ColW::F16(_) => axpy::task::<F16>,
                ColW::Bf16(_) => axpy::task::<Bf16>,
            };
            unsafe { task(a, n0, full) }
        }
        full
    }

    unsafe fn rows_chunk<O: RowOp>(op: &O, i0: usize, x: &[f32], y: &mut [f32], d: usize) {
        unsafe { rows::chunk(op, i0, x, y, d) }
    }

    unsafe fn paged_task<S: PageSource>(
        a: PagedArgs<'_, S>,
        t: usize,
        sc: &mut Scratch,
        dst: &mut [f32],
    ) {
        // The AVX2 body: an AVX-512 one (16-lane scores and P V, git history of the avx512-gemm
        // branch) measured 0.95-0.97x of it on the kvcache decode bench (BENCHMARKS.md).
        unsafe { Avx2::paged_task(a, t, sc, dst) }
    }

    unsafe fn attention_task(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
        unsafe { attention::run_avx512(t, b, out) }
    }

    fn sgemm(p: Product<'_>, c: &mut [f32]) -> bool {
        if !sgemm::avx512_available() {
            return false;
        }
        let Product { m, n, k, x, w, ldc, acc, threads } = p;
        sgemm::sgemm_avx512(m, n, k, x, k, 1, w, n, 1, c, ldc, acc, threads);
        true
    }
}
