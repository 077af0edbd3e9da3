//! The row-wise kernels (`kernels/rows.rs`) compiled with AVX2 and FMA: their generic body with
//! `mul_add` as one `vfmadd` (see `vmath.rs`).

use crate::kernels::rows::RowOp;

/// [`crate::kernels::rows::chunk`] with FMA, under AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn chunk<O: RowOp>(op: &O, i0: usize, x: &[f32], y: &mut [f32], d: usize) {
    crate::kernels::rows::chunk::<true, O>(op, i0, x, y, d)
}
