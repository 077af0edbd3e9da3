//! Decode-shape matmul on row-stored weights: `C[m, n] = bias[n] + sum_k X[m, k] * W[k, n]`,
//! where `W` is stored as `N` rows of `K` elements in any [`Format`] (see `quant.rs`), so each
//! output element is a dot product of an activation row with one weight row, and the weight is
//! read once, front to back, with its dequantisation fused into the inner loop.
//!
//! Strides: `X` is row-major with row stride `K`; `C` is row-major with row stride `ldc`.
//! `C` must not alias `X` or `W`.
//!
//! Blocking: a task owns a run of weight rows (a column range of `C`) for all `M` rows of `X`.
//! The register tile is `RN` weight rows x `MR` activation rows (`RN * MR <= 8` accumulators of
//! 8 lanes), chosen from `M`: (4, 1) for `M = 1` (four independent FMA chains), (2, 4) for
//! `M <= 4`, (1, 8) above; a weight block is dequantised once per tile and used `MR` times.

use super::quant::{dequantize_row, Format, QWeight};
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
        let n0 = t * per;
        let n1 = (n0 + per).min(n);
        // SAFETY: task t writes only columns n0..n1 of C, disjoint from every other task.
        unsafe { rows_task(isa, x, m, w, bias, cp.get(), ldc, n0, n1) }
    });
}

unsafe fn rows_task(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // AVX-512 machines run the AVX2 kernels (no AVX-512 machine to test one on).
        unsafe {
            match w.fmt {
                Format::F32 => avx2::task::<avx2::F32>(x, m, w, bias, c, ldc, n0, n1),
                Format::F16 => avx2::task::<avx2::F16>(x, m, w, bias, c, ldc, n0, n1),
                Format::Bf16 => avx2::task::<avx2::Bf16>(x, m, w, bias, c, ldc, n0, n1),
                Format::Q8_0 => avx2::task::<avx2::Q8>(x, m, w, bias, c, ldc, n0, n1),
                Format::Q4_0 => avx2::task::<avx2::Q4>(x, m, w, bias, c, ldc, n0, n1),
            }
        }
        return;
    }
    let _ = isa;
    unsafe { scalar_task(x, m, w, bias, c, ldc, n0, n1) }
}

/// The scalar reference: dequantise a row, then one sequential f32 dot product per output.
unsafe fn scalar_task(
    x: &[f32],
    m: usize,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::kernels::x86::{f16_scale, hsum};
    use std::arch::x86_64::*;

    /// A row format: `BLK8` chunks of 8 elements per block, `BB` bytes per block.
    pub trait Fmt {
        const BLK8: usize;
        const BB: usize;
        /// Dequantise block `b` of the row at `p` into `BLK8` vectors (elements `8s..8s+8`).
        unsafe fn block(p: *const u8, b: usize, out: &mut [__m256; 4]);
    }
    pub struct F32;
    pub struct F16;
    pub struct Bf16;
    pub struct Q8;
    pub struct Q4;

    impl Fmt for F32 {
        const BLK8: usize = 1;
        const BB: usize = 32;
        #[inline(always)]
        unsafe fn block(p: *const u8, b: usize, out: &mut [__m256; 4]) {
            unsafe { out[0] = _mm256_loadu_ps(p.add(b * 32) as *const f32) };
        }
    }
    impl Fmt for F16 {
        const BLK8: usize = 1;
        const BB: usize = 16;
        #[inline(always)]
        unsafe fn block(p: *const u8, b: usize, out: &mut [__m256; 4]) {
            unsafe { out[0] = _mm256_cvtph_ps(_mm_loadu_si128(p.add(b * 16) as *const __m128i)) };
        }
    }
    impl Fmt for Bf16 {
        const BLK8: usize = 1;
        const BB: usize = 16;
        #[inline(always)]
        unsafe fn block(p: *const u8, b: usize, out: &mut [__m256; 4]) {
            unsafe {
                let h = _mm_loadu_si128(p.add(b * 16) as *const __m128i);
                out[0] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            }
        }
    }
    impl Fmt for Q8 {
        const BLK8: usize = 4;
        const BB: usize = 34;
        #[inline(always)]
        unsafe fn block(p: *const u8, b: usize, out: &mut [__m256; 4]) {
            unsafe {
                let p = p.add(b * 34);
                let d = f16_scale(p);
                for s in 0..4 {
                    let q = _mm_loadl_epi64(p.add(2 + 8 * s) as *const __m128i);
                    out[s] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
                }
            }
        }
    }
    impl Fmt for Q4 {
        const BLK8: usize = 4;
        const BB: usize = 18;
        #[inline(always)]
        unsafe fn block(p: *const u8, b: usize, out: &mut [__m256; 4]) {
            unsafe {
                let p = p.add(b * 18);
                let d = f16_scale(p);
                let raw = _mm_loadu_si128(p.add(2) as *const __m128i);
                let m4 = _mm_set1_epi8(0x0f);
                let eight = _mm_set1_epi8(8);
                let lo = _mm_sub_epi8(_mm_and_si128(raw, m4), eight);
                let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), eight);
                let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
                for s in 0..4 {
                    out[s] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[s])));
                }
            }
        }
    }

    /// Bytes ahead to prefetch in the tile's run of weight rows (the hardware prefetcher alone
    /// left the kernel waiting on DRAM; see `qdot.rs`).
    const PF: usize = 8192;

    /// One `RN x MR` tile: rows `j..j+RN` of W against rows `i..i+MR` of X, over the blocks
    /// `b0..b1` of `K`. The first K chunk (`b0 == 0`) writes `sum + bias` to C, later chunks
    /// add their sum; the chunk ending at `K` also takes the elements after the last block.
    #[inline(always)]
    unsafe fn tile<F: Fmt, const RN: usize, const MR: usize>(
        x: *const f32,
        k: usize,
        w: &QWeight<'_>,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        i: usize,
        j: usize,
        b0: usize,
        b1: usize,
    ) {
        unsafe {
            let rb = w.row_bytes();
            let base = w.data.as_ptr();
            let mut acc = [[_mm256_setzero_ps(); MR]; RN];
            let nb = k / (8 * F::BLK8);
            let mut wv = [_mm256_setzero_ps(); 4];
            // The tile's rows are one contiguous run of bytes, consumed RN * BB bytes per block:
            // prefetch it sequentially PF bytes ahead, one line per 64 bytes consumed.
            let run = base.add(j * rb);
            let mut next_line = 0usize;
            for b in b0..b1 {
                let done = (b + 1 - b0) * RN * F::BB;
                while next_line < done {
                    let p = run.add(b0 * RN * F::BB + next_line + PF);
                    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    next_line += 64;
                }
                for r in 0..RN {
                    F::block(base.add((j + r) * rb), b, &mut wv);
                    for t in 0..MR {
                        let xp = x.add((i + t) * k + b * 8 * F::BLK8);
                        for s in 0..F::BLK8 {
                            let xv = _mm256_loadu_ps(xp.add(8 * s));
                            acc[r][t] = _mm256_fmadd_ps(wv[s], xv, acc[r][t]);
                        }
                    }
                }
            }
            let done = nb * 8 * F::BLK8;
            let last = b1 == nb;
            for r in 0..RN {
                let tail = if last && done < k {
                    let mut row = [0f32; 8];
                    let off = done * (F::BB / (8 * F::BLK8));
                    let rp = &w.data[(j + r) * rb + off..(j + r + 1) * rb];
                    dequantize_row(w.fmt, rp, &mut row[..k - done]);
                    Some(row)
                } else {
                    None
                };
                for t in 0..MR {
                    let mut s = hsum(acc[r][t]);
                    if let Some(row) = tail {
                        for q in done..k {
                            s += *x.add((i + t) * k + q) * row[q - done];
                        }
                    }
                    let cp = c.add((i + t) * ldc + j + r);
                    if b0 == 0 {
                        *cp = s + bias.map_or(0.0, |b| b[j + r]);
                    } else {
                        *cp += s;
                    }
                }
            }
        }
    }

    /// Rows `j..j+rn` (`rn` in 1..=2) of W against all rows of X over blocks `b0..b1`.
    #[inline(always)]
    unsafe fn rows_all_m<F: Fmt>(
        x: *const f32,
        m: usize,
        k: usize,
        w: &QWeight<'_>,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        j: usize,
        rn: usize,
        b0: usize,
        b1: usize,
    ) {
        let mut i = 0;
        unsafe {
            while i < m {
                let left = m - i;
                match (rn, left) {
                    (2, 4..) => {
                        tile::<F, 2, 4>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 4
                    }
                    (2, 2..) => {
                        tile::<F, 2, 2>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 2
                    }
                    (2, _) => {
                        tile::<F, 2, 1>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 1
                    }
                    (_, 8..) => {
                        tile::<F, 1, 8>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 8
                    }
                    (_, 4..) => {
                        tile::<F, 1, 4>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 4
                    }
                    (_, 2..) => {
                        tile::<F, 1, 2>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 2
                    }
                    _ => {
                        tile::<F, 1, 1>(x, k, w, bias, c, ldc, i, j, b0, b1);
                        i += 1
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn task<F: Fmt>(
        x: &[f32],
        m: usize,
        w: &QWeight<'_>,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        n0: usize,
        n1: usize,
    ) {
        let k = w.k;
        let xp = x.as_ptr();
        let nb = k / (8 * F::BLK8);
        unsafe {
            let mut j = n0;
            if m == 1 {
                // Eight weight rows at once: eight concurrent read streams (measured: bf16 1.3-1.45x
                // float32 with four rows, 1.5-1.8x with eight).
                while j + 8 <= n1 {
                    tile::<F, 8, 1>(xp, k, w, bias, c, ldc, 0, j, 0, nb);
                    j += 8;
                }
                while j + 4 <= n1 {
                    tile::<F, 4, 1>(xp, k, w, bias, c, ldc, 0, j, 0, nb);
                    j += 4;
                }
                while j < n1 {
                    tile::<F, 1, 1>(xp, k, w, bias, c, ldc, 0, j, 0, nb);
                    j += 1;
                }
                return;
            }
            // Several rows of X: every weight row passes over all of X (from L2 when X is
            // large). Walking K in chunks small enough for X to stay in L1 was measured slower
            // (the weight rows are then read in short runs: float32 0.78x -> 0.42x of axpy).
            let two = m <= 4;
            while j < n1 {
                let rn = if two && j + 2 <= n1 { 2 } else { 1 };
                rows_all_m::<F>(xp, m, k, w, bias, c, ldc, j, rn, 0, nb);
                j += rn;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize;
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
