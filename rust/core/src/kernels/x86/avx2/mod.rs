//! AVX2 + FMA (+ F16C) kernels: intrinsics only, one file per operation (the scalar reference,
//! the driver and the tests of each operation are in its module under `kernels/`), and the
//! backend that maps each operation and weight format to its body here.

pub(crate) mod attention;
pub(crate) mod axpy;
pub(crate) mod dot;
pub(crate) mod paged;
pub(crate) mod qdot;
pub(crate) mod qdot_vnni;
pub(crate) mod qpack;
pub(crate) mod rows;
pub(crate) mod rows_f32;
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

/// The AVX2 + FMA backend (also what AVX-512 CPUs run).
pub(crate) struct Avx2;

impl Backend for Avx2 {
    const COLS_SIMD: bool = true;

    unsafe fn dot_rows(o: RowsOut<'_>, n0: usize, n1: usize) {
        use dot::{task, Bf16, F16, F32, Q4, Q8};
        unsafe {
            match o.w.fmt {
                Format::F32 => task::<F32>(o, n0, n1),
                Format::F16 => task::<F16>(o, n0, n1),
                Format::Bf16 => task::<Bf16>(o, n0, n1),
                Format::Q8_0 => task::<Q8>(o, n0, n1),
                Format::Q4_0 => task::<Q4>(o, n0, n1),
            }
        }
    }

    unsafe fn qdot_rows(o: QRowsOut<'_>, n0: usize, n1: usize) {
        if Ext::AvxVnni.present() {
            use qdot_vnni::{task, Q4, Q8};
            // SAFETY: the CPU has AVX2 (this backend) and AVX-VNNI (checked above).
            return unsafe {
                match o.w.fmt {
                    Format::Q8_0 => task::<Q8>(o, n0, n1),
                    _ => task::<Q4>(o, n0, n1),
                }
            };
        }
        use qdot::{task, Q4, Q8};
        unsafe {
            match o.w.fmt {
                Format::Q8_0 => task::<Q8>(o, n0, n1),
                _ => task::<Q4>(o, n0, n1),
            }
        }
    }

    unsafe fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool {
        unsafe { qdot::round_block(xb, qb, db, sb) }
    }

    unsafe fn cols(a: ColsArgs<'_>, n0: usize, n1: usize) -> usize {
        use axpy::{task, Bf16, F16, F32};
        let full = n0 + (n1 - n0) / 16 * 16;
        if full > n0 {
            unsafe {
                match a.w {
                    ColW::F32(_) => task::<F32>(a, n0, full),
                    ColW::F16(_) => task::<F16>(a, n0, full),
                    ColW::Bf16(_) => task::<Bf16>(a, n0, full),
                }
            }
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
        unsafe { paged::task(a, t, sc, dst) }
    }

    unsafe fn attention_task(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
        unsafe { attention::run_avx2(t, b, out) }
    }

    fn sgemm(p: Product<'_>, c: &mut [f32]) -> bool {
        if !crate::kernels::sgemm::avx2_available() {
            return false;
        }
        let Product { m, n, k, x, w, ldc, acc, threads } = p;
        sgemm::sgemm_avx2(m, n, k, x, k, 1, w, n, 1, c, ldc, acc, threads);
        true
    }
}
