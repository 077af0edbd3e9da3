//! Shared driver of the row-wise kernels (norms, activations, softmax, rope): split the rows over
//! the tierflow pool and run one generic body, as the scalar reference or under AVX2+FMA.

use super::backend::{dispatch, Backend};
use crate::cpu::Isa;

/// Rows per task: about 64 KiB of data, at least one row.
fn rows_per_task(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

/// A row kernel: `f(row_index, input_row, output_row)`, generic over FMA (see `vmath.rs`).
pub trait RowOp: Sync {
    fn row<const F: bool>(&self, i: usize, x: &[f32], y: &mut [f32]);
}

/// Rows `i0..` of `x` into `y`, `F` as in `vmath.rs` (FMA; the backends instantiate it).
#[inline(always)]
pub(crate) fn chunk<const F: bool, O: RowOp>(
    op: &O,
    i0: usize,
    x: &[f32],
    y: &mut [f32],
    d: usize,
) {
    for (r, (xr, yr)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        op.row::<F>(i0 + r, xr, yr);
    }
}

/// Apply `op` to every row of `x` (`rows x d`, contiguous) into `y` (same shape).
pub fn for_rows<O: RowOp>(isa: Isa, op: &O, x: &[f32], y: &mut [f32], d: usize) {
    if d == 0 || x.is_empty() {
        return;
    }
    assert!(y.len() >= x.len(), "for_rows: y is smaller than x");
    let per = rows_per_task(d);
    let rows = x.len() / d;
    let yp = super::dot::SendPtr(y.as_mut_ptr());
    crate::pool::for_tasks(rows.div_ceil(per), 8 * x.len(), |t| {
        let (r0, r1) = (t * per, ((t + 1) * per).min(rows));
        let xc = &x[r0 * d..r1 * d];
        // SAFETY: task t writes only rows r0..r1 of y (y has the shape of x).
        let yc = unsafe { std::slice::from_raw_parts_mut(yp.get().add(r0 * d), (r1 - r0) * d) };
        // SAFETY: the CPU runs `isa` (an `Isa` is only made for a CPU that supports it).
        dispatch!(isa, B => unsafe { B::rows_chunk(op, r0, xc, yc, d) })
    });
}

/// Sum with 16 independent lanes (so it vectorises without reassociation licence).
#[inline(always)]
pub fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for j in 0..16 {
            acc[j] += f(c[j]);
        }
    }
    let mut s = it.remainder().iter().fold(0f32, |a, &v| a + f(v));
    for a in acc {
        s += a;
    }
    s
}

/// Maximum with 16 lanes; NaN propagates (a NaN element makes the result NaN).
#[inline(always)]
pub fn lanes_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut nan = false;
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for j in 0..16 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
            nan |= c[j].is_nan();
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in it.remainder().iter().chain(acc.iter()) {
        m = if v > m { v } else { m };
        nan |= v.is_nan();
    }
    if nan {
        f32::NAN
    } else {
        m
    }
}
