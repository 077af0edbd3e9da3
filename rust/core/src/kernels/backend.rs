//! The instruction-set dispatch of the kernels, written once.
//!
//! [`Backend`] lists every operation that has a per-instruction-set body; each instruction set
//! implements it once ([`Scalar`] here, over the scalar references of the operation modules;
//! `x86::avx2::Avx2` over the intrinsics in `x86/avx2/`), mapping each weight format to its
//! body. [`dispatch!`] is the one place that maps an [`Isa`](crate::cpu::Isa) to its backend:
//! the operation modules call `dispatch!(isa, B => B::op(...))` and never test the instruction
//! set themselves. Adding an instruction set is adding its folder (e.g. `x86/avx512/`), one
//! `impl Backend`, and one arm of [`dispatch!`].

use super::attention::{self, Bufs, Task};
use super::axpy::ColsArgs;
use super::dot::{self, RowsOut};
use super::gemm::Product;
use super::paged::{self, PageSource, PagedArgs, Scratch};
use super::qdot::{self, QRowsOut};
use super::rows::{self, RowOp};

/// The per-instruction-set bodies of the kernels.
///
/// # Safety
/// Every method may only be called when the CPU runs the backend's instruction set (the
/// [`dispatch!`] arm that selects it checks nothing: an `Isa` other than `Scalar` is only made
/// for a CPU that supports it, see `Isa::detect` / `Isa::supported`), plus the contract of the
/// operation it implements (pointers, disjoint outputs), stated at each caller.
pub(crate) trait Backend {
    /// Whether [`Backend::cols`] handles 16-column groups (the float decode kernel of `axpy.rs`
    /// then gives each task an accumulator).
    const COLS_SIMD: bool;

    /// Columns `n0..n1` of `C = X W^T + bias` over weight rows (`dot.rs`; contract: [`RowsOut`]).
    unsafe fn dot_rows(o: RowsOut<'_>, n0: usize, n1: usize);

    /// Columns `n0..n1` of `C = X W^T + bias` with Q8-rounded activations (`qdot.rs`; contract:
    /// [`QRowsOut`]).
    unsafe fn qdot_rows(o: QRowsOut<'_>, n0: usize, n1: usize);

    /// One 32-float block of activations rounded to Q8 (`qdot.rs`); false if it holds an Inf
    /// or NaN.
    unsafe fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool;

    /// The float decode kernel's column groups (`axpy.rs`): adds `X[:, k0..k0+kb] W[k0.., n0..]`
    /// into the task accumulator `a.c` (row stride `a.ldc`; contract: [`ColsArgs`]) for as many
    /// whole 16-column groups of `n0..n1` as this backend handles; returns the first column it
    /// left (`n0`: none).
    unsafe fn cols(a: ColsArgs<'_>, n0: usize, n1: usize) -> usize;

    /// Rows `i0..` of a row-wise kernel (`rows.rs`: norms, activations, softmax, rope).
    unsafe fn rows_chunk<O: RowOp>(op: &O, i0: usize, x: &[f32], y: &mut [f32], d: usize);

    /// One (sequence, group of heads) task of paged decode attention (`paged.rs`).
    unsafe fn paged_task<S: PageSource>(
        a: PagedArgs<'_, S>,
        t: usize,
        sc: &mut Scratch,
        dst: &mut [f32],
    );

    /// One query block of flash attention (`attention.rs`).
    unsafe fn attention_task(t: &Task<'_>, b: &mut Bufs, out: *mut f32);

    /// A large float32 product `C <- (acc ? C : 0) + X W` ([`Product`]) on `threads` threads
    /// of the current pool; false when this backend has no GEMM of its own (the caller then
    /// runs the `gemm` crate).
    fn sgemm(p: Product<'_>, c: &mut [f32]) -> bool;
}

/// The scalar references, compiled for every target.
pub(crate) struct Scalar;

impl Backend for Scalar {
    const COLS_SIMD: bool = false;

    unsafe fn dot_rows(o: RowsOut<'_>, n0: usize, n1: usize) {
        unsafe { dot::scalar_task(o, n0, n1) }
    }

    unsafe fn qdot_rows(o: QRowsOut<'_>, n0: usize, n1: usize) {
        unsafe { qdot::scalar_task(o, n0, n1) }
    }

    unsafe fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool {
        qdot::round_block(xb, qb, db, sb)
    }

    unsafe fn cols(_a: ColsArgs<'_>, n0: usize, _n1: usize) -> usize {
        n0 // no column groups: `axpy::scalar_task` writes every column into C
    }

    unsafe fn rows_chunk<O: RowOp>(op: &O, i0: usize, x: &[f32], y: &mut [f32], d: usize) {
        rows::chunk::<false, O>(op, i0, x, y, d)
    }

    unsafe fn paged_task<S: PageSource>(
        a: PagedArgs<'_, S>,
        t: usize,
        sc: &mut Scratch,
        dst: &mut [f32],
    ) {
        paged::one::<false, S>(a, t, sc, dst)
    }

    unsafe fn attention_task(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
        unsafe { attention::run::<attention::Scalar>(t, b, out) }
    }

    fn sgemm(_p: Product<'_>, _c: &mut [f32]) -> bool {
        false
    }
}

/// `dispatch!(isa, B => expr)`: evaluates `expr` with the type `B` naming the [`Backend`] of
/// `isa`. The only mapping from an instruction set to its kernels.
macro_rules! dispatch {
    ($isa:expr, $b:ident => $body:expr) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::cpu::Isa::Avx2 => {
                type $b = $crate::kernels::x86::avx2::Avx2;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            $crate::cpu::Isa::Avx512 => {
                type $b = $crate::kernels::x86::avx512::Avx512;
                $body
            }
            _ => {
                type $b = $crate::kernels::backend::Scalar;
                $body
            }
        }
    };
}
pub(crate) use dispatch;
