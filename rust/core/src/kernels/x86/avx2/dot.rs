//! AVX2+FMA(+F16C) intrinsics of `kernels/dot.rs` (the scalar reference, the driver and the tests
//! are there).

use crate::kernels::dot::RowsOut;
use crate::kernels::quant::{dequantize_row, QWeight};
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

/// Columns `n0..n1` of `C = X W^T + bias` for a row-stored `W` of `F`'s format (`w.fmt`);
/// the CPU has AVX2 + FMA + F16C, and the contract of [`RowsOut`] holds.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn task<F: Fmt>(o: RowsOut<'_>, n0: usize, n1: usize) {
    let RowsOut { x, m, w, bias, c, ldc } = o;
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
