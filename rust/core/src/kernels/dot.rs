//! Decode-shape matmul on row-stored weights: `C[m, n] = bias[n] + sum_k X[m, k] * W[k, n]`,
//! where `W` is stored as `N` rows of `K` elements in any
//! [`Format`](super::quant::Format) (see `quant.rs`), so each output element is a dot product of
//! an activation row with one weight row, and the weight is read once, front to back, with its
//! dequantisation fused into the inner loop.
//!
//! Strides: `X` is row-major with row stride `K`; `C` is row-major with row stride `ldc`.
//! `C` must not alias `X` or `W`.
//!
//! Blocking: a task owns a run of weight rows (a column range of `C`) for all `M` rows of `X`.
//! The register tile is `RN` weight rows x `MR` activation rows (`RN * MR <= 8` accumulators of
//! 8 lanes), chosen from `M`: (4, 1) for `M = 1` (four independent FMA chains), (2, 4) for
//! `M <= 4`, (1, 8) above; a weight block is dequantised once per tile and used `MR` times.

use super::backend::{dispatch, Backend};
use super::quant::{dequantize_row, QWeight};
use crate::cpu::Isa;

/// A raw pointer that may cross threads (tasks write disjoint parts of one output).
pub(crate) struct SendPtr<T>(pub *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its raw field).
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// Rows of weight per task: enough tasks for load balance, each a few pages of weight.
pub(crate) fn rows_per_task(n: usize, row_bytes: usize) -> usize {
    let threads = crate::pool::num_threads().max(1);
    let by_balance = n.div_ceil(threads * 8).max(1);
    let by_size = (64 * 1024 / row_bytes.max(1)).max(1);
    by_balance.max(by_size.min(n.div_ceil(threads))).div_ceil(4) * 4
}

/// `C = X W (+ bias)` with `X` `(m, k)`, `W` `(k, n)` row-stored, `C` rows of stride `ldc`.
pub fn matmul_rows(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (w.k, w.n);
    debug_assert!(x.len() >= m * k && (m == 0 || c.len() >= (m - 1) * ldc + n));
    if m == 0 || n == 0 {
        return;
    }
    let per = rows_per_task(n, w.row_bytes());
    let cp = SendPtr(c.as_mut_ptr());
    crate::pool::for_tasks(n.div_ceil(per), w.data.len(), |t| {
        let o = RowsOut { x, m, w, bias, c: cp.get(), ldc };
        let n0 = t * per;
        let n1 = (n0 + per).min(n);
        // SAFETY: task t writes only columns n0..n1 of C, disjoint from every other task.
        unsafe { rows_task(isa, o, n0, n1) }
    });
}

/// The arguments that every column task of `C = X W^T + bias` over weight rows shares (the
/// task's columns `n0..n1` are passed beside it): `X` (`m x w.k`, row-major), `W`, the bias
/// (`w.n` floats) and `C` (`m` rows of stride `ldc`).
///
/// # Safety (of every task that takes it)
/// `c` must be valid for writes of `(m - 1) * ldc + n1` floats, and no other thread may
/// read or write columns `n0..n1` of `C` while the task runs (tasks over disjoint column
/// ranges may run at once).
#[derive(Clone, Copy)]
pub(crate) struct RowsOut<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub w: &'a QWeight<'a>,
    pub bias: Option<&'a [f32]>,
    pub c: *mut f32,
    pub ldc: usize,
}

pub(super) unsafe fn rows_task(isa: Isa, o: RowsOut<'_>, n0: usize, n1: usize) {
    // SAFETY: the CPU runs `isa`; the caller's contract on `c` and the columns.
    dispatch!(isa, B => unsafe { B::dot_rows(o, n0, n1) })
}

/// The scalar reference: dequantise a row, then one sequential f32 dot product per output.
pub(crate) unsafe fn scalar_task(o: RowsOut<'_>, n0: usize, n1: usize) {
    let RowsOut { x, m, w, bias, c, ldc } = o;
    let k = w.k;
    let mut row = vec![0f32; k];
    for j in n0..n1 {
        dequantize_row(w.fmt, w.row(j), &mut row);
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut s = 0f32;
            for (a, b) in xr.iter().zip(&row) {
                s += a * b;
            }
            let b = bias.map_or(0.0, |b| b[j]);
            unsafe { *c.add(i * ldc + j) = s + b };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{quantize, Format};
    use crate::kernels::test_util::lcg;

    #[test]
    fn every_path_matches_scalar() {
        for fmt in [Format::F32, Format::F16, Format::Bf16, Format::Q8_0, Format::Q4_0] {
            let shapes = [(1, 64, 7), (3, 96, 9), (8, 128, 5), (13, 32, 3), (2, 0, 4)];
            for &(m, k, n) in shapes.iter().chain(&[(9, 1024, 5), (32, 640, 3)]) {
                let k = if fmt.block_elems() > 1 { k } else { k + 3 };
                let x = lcg(m * k, 1);
                let wf = lcg(k * n, 2);
                let data = quantize(fmt, &wf, k, n).unwrap();
                let w = QWeight::new(fmt, k, n, &data).unwrap();
                let bias = lcg(n, 3);
                let mut want = vec![0f32; m * n];
                matmul_rows(Isa::Scalar, &x, m, &w, Some(&bias), &mut want, n);
                for isa in Isa::available() {
                    let mut got = vec![0f32; m * n];
                    matmul_rows(isa, &x, m, &w, Some(&bias), &mut got, n);
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + k as f32),
                            "{fmt:?} {isa:?} {a} {b}"
                        );
                    }
                }
            }
        }
    }
}
