//! Decode-shape matmul on a plain row-major weight: `C[m, n] = bias[n] + sum_k X[m, k] W[k, n]`
//! with `W` `(K, N)` float32, float16 or bfloat16 as NumPy holds it (row stride `N`).
//!
//! Each output row is a sum of scaled weight rows (`C[m, :] += X[m, k] * W[k, :]`, an "axpy"),
//! so the weight is read in its own order, a few rows at a time, once for all `M` rows of `X`.
//! Strides: `X` row stride `K`, `C` row stride `ldc`; `C` must not alias `X` or `W`.
//!
//! Blocking: a task owns a column range `n0..n1` of `C` (a multiple of 16 wide, about `N /
//! threads`, capped so `M * (n1 - n0) * 4 <= 256 KiB`) for all rows, accumulated in a private
//! padded buffer. Loop over `K` in blocks of `KB = 8` weight rows (8 concurrent read streams,
//! each `(n1 - n0) * size` bytes long); within a block, 16-column groups and `MR = 4` rows of `X`
//! hold a `4 x 16` tile in 8 registers across the 8 rows of the block, so the accumulator (in
//! L1/L2) is loaded and stored once per 8 weight rows.

use super::backend::{dispatch, Backend};
use super::dot::SendPtr;
use crate::cpu::Isa;
use half::f16;

/// A row-major `(K, N)` weight as NumPy holds it.
#[derive(Clone, Copy, Debug)]
pub enum ColW<'a> {
    F32(&'a [f32]),
    /// IEEE binary16 bits.
    F16(&'a [u16]),
    /// bfloat16 bits.
    Bf16(&'a [u16]),
}

impl ColW<'_> {
    #[inline(always)]
    pub(super) fn get(&self, i: usize) -> f32 {
        match self {
            ColW::F32(w) => w[i],
            ColW::F16(w) => f16::from_bits(w[i]).to_f32(),
            ColW::Bf16(w) => f32::from_bits((w[i] as u32) << 16),
        }
    }
    /// The first element, as bytes (the SIMD bodies read it as their format's elements).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            ColW::F32(p) => p.as_ptr() as *const u8,
            ColW::F16(p) | ColW::Bf16(p) => p.as_ptr() as *const u8,
        }
    }
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            ColW::F32(_) => 4,
            _ => 2,
        }
    }
}

/// Rows of `K` per block (the number of concurrent weight-row streams).
pub(crate) const KB: usize = 8;

/// `C = X W (+ bias)`: `X` `(m, k)`, `W` `(k, n)`, `C` rows of stride `ldc`.
pub fn matmul_cols(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: ColW<'_>,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let mut acc = ColsAcc::begin(isa, m, n, bias, c, ldc);
    acc.feed(x, k, 0, w, c);
    acc.finish(c);
}

/// A product `C = X W (+ bias)` fed with `W` a few rows of `K` at a time (a streamed weight's
/// panels), giving bit for bit the result of [`matmul_cols`] on the whole weight: every
/// output element is the same chain of operations in the same `k` order (a private float
/// accumulator per column task under AVX2, added to `bias` at the end; `C` itself under the
/// scalar reference and for the columns after the last whole 16), whatever the panel sizes.
pub struct ColsAcc {
    isa: Isa,
    m: usize,
    n: usize,
    ldc: usize,
    /// Columns per task.
    per: usize,
    /// Per task: its padded `m x (width + 16)` accumulator (AVX2 columns only).
    bufs: Vec<Vec<f32>>,
}

impl ColsAcc {
    /// Start: `C[:m, :n] = bias` (or 0).
    pub fn begin(
        isa: Isa,
        m: usize,
        n: usize,
        bias: Option<&[f32]>,
        c: &mut [f32],
        ldc: usize,
    ) -> ColsAcc {
        let threads = crate::pool::num_threads().max(1);
        // Columns per task: one run per thread (long contiguous row segments), capped so that
        // the task's accumulator (m x columns floats) stays within 256 KiB of L2.
        let cap = (65536 / m.max(1)).max(64);
        let per = n.div_ceil(threads).min(cap).max(64).div_ceil(16) * 16;
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            match bias {
                Some(b) => row.copy_from_slice(&b[..n]),
                None => row.fill(0.0),
            }
        }
        let simd = dispatch!(isa, B => B::COLS_SIMD);
        let bufs = (0..n.div_ceil(per.max(1)))
            .map(|t| {
                let width = if simd { (per.min(n - t * per)) / 16 * 16 } else { 0 };
                if width == 0 {
                    Vec::new()
                } else {
                    vec![0f32; m * (width + 16)]
                }
            })
            .collect();
        ColsAcc { isa, m, n, ldc, per, bufs }
    }

    /// Add `X[:, k0..k0+kb] W[k0..k0+kb, :]`, `w` holding those `kb` rows (row stride `n`),
    /// `x` the whole `(m, k)` activations.
    pub fn feed(&mut self, x: &[f32], k: usize, k0: usize, w: ColW<'_>, c: &mut [f32]) {
        let (m, n, ldc, per, isa) = (self.m, self.n, self.ldc, self.per, self.isa);
        let kb = match w {
            ColW::F32(p) => p.len(),
            ColW::F16(p) | ColW::Bf16(p) => p.len(),
        } / n.max(1);
        if m == 0 || n == 0 || kb == 0 {
            return;
        }
        let cp = SendPtr(c.as_mut_ptr());
        let bp = SendPtr(self.bufs.as_mut_ptr());
        let bytes = kb * n * w.elem_bytes();
        crate::pool::for_tasks(self.bufs.len(), bytes, |t| {
            let n0 = t * per;
            let n1 = (n0 + per).min(n);
            let o = ColsArgs { x, m, k, k0, kb, w, n, c: cp.get(), ldc };
            // SAFETY: task t writes only columns n0..n1 of C and its own buffer bufs[t].
            unsafe { feed_task(isa, o, &mut *bp.get().add(t), n0, n1) }
        });
    }

    /// Finish: add each task's accumulator to `C`.
    pub fn finish(self, c: &mut [f32]) {
        let (m, ldc, per) = (self.m, self.ldc, self.per);
        for (t, buf) in self.bufs.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let lda = buf.len() / m;
            let n0 = t * per;
            for i in 0..m {
                for j in 0..lda - 16 {
                    c[i * ldc + n0 + j] += buf[i * lda + j];
                }
            }
        }
    }
}

/// The arguments that the column tasks of one `k` block share (the task's columns `n0..n1`
/// are passed beside it): `X` (`m x k`, row-major), the rows `k0..k0+kb` of `W` (`w` holds
/// exactly those rows, `n` columns each) and the output the task adds into, `c` with row
/// stride `ldc`: `C` itself (the scalar reference) or the task's private accumulator (a
/// backend's column groups, [`Backend::cols`](super::backend::Backend::cols)).
///
/// # Safety (of every task that takes it)
/// When `c` is `C`: valid for reads and writes of `(m - 1) * ldc + n1` floats, and no other
/// thread reads or writes its columns `n0..n1` while the task runs. When `c` is a task's
/// accumulator (task-relative columns: column `j` of `W` at `j - n0`): `m * ldc` floats,
/// `ldc >= n1 - n0`, used by this task alone.
#[derive(Clone, Copy)]
pub(crate) struct ColsArgs<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub k0: usize,
    pub kb: usize,
    pub w: ColW<'a>,
    pub n: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

/// One column task over the rows `k0..k0+kb` of `W` (`w` holds exactly those rows), adding
/// into `C` (`o.c`, `o.ldc`), through `buf`, the task's accumulator, when it is not empty.
unsafe fn feed_task(isa: Isa, o: ColsArgs<'_>, buf: &mut [f32], n0: usize, n1: usize) {
    // Whole 16-column groups go to the backend's accumulator (a task has one only when the
    // backend has column groups), the rest to the scalar reference, straight into C.
    let full = if buf.is_empty() {
        n0
    } else {
        let acc = ColsArgs { c: buf.as_mut_ptr(), ldc: buf.len() / o.m, ..o };
        // SAFETY: the CPU runs `isa`; `acc.c` is this task's `m x ldc` accumulator.
        dispatch!(isa, B => unsafe { B::cols(acc, n0, n1) })
    };
    unsafe { scalar_task(o, full, n1) }
}

/// The scalar reference: `C[i, j] += X[i, kk] * W[kk, j]` in `kk` order.
unsafe fn scalar_task(o: ColsArgs<'_>, n0: usize, n1: usize) {
    let ColsArgs { x, m, k, k0, kb, w, n, c, ldc } = o;
    for kk in 0..kb {
        for i in 0..m {
            let a = x[i * k + k0 + kk];
            for j in n0..n1 {
                unsafe { *c.add(i * ldc + j) += a * w.get(kk * n + j) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_matches_scalar() {
        for &(m, k, n) in &[(1, 5, 17), (3, 17, 40), (8, 33, 100), (5, 0, 16), (9, 8, 200)] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
            let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
            let wb: Vec<u16> = w.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
            for cw in [ColW::F32(&w), ColW::Bf16(&wb)] {
                let mut want = vec![0f32; m * n];
                matmul_cols(Isa::Scalar, &x, m, k, cw, n, Some(&bias), &mut want, n);
                for isa in Isa::available() {
                    let mut got = vec![0f32; m * n];
                    matmul_cols(isa, &x, m, k, cw, n, Some(&bias), &mut got, n);
                    assert_eq!(got, want, "{isa:?}"); // small integers: exact on every path
                }
            }
        }
    }
}
