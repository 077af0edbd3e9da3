//! AVX-512 F/BW/VL body of `kernels/axpy.rs` (the scalar reference, the driver and the tests are
//! there): the float decode column kernel on a plain `(K, N)` float32 / float16 / bfloat16
//! weight.
//!
//! Same blocking and same arithmetic as the AVX2 body (`KB` weight rows per block, the block of
//! `X` transposed, a private padded accumulator per task), with 512-bit registers: a tile is
//! `MR` rows of `X` by `NV` vectors of 16 columns, `4 x 64` while at least 64 columns and 4
//! rows are left (16 accumulators, 4 weight loads and 4 broadcasts per 16 FMAs), then 32 and
//! 16 columns, 2 and 1 rows. Every output element is the chain `acc = fma(x[i, k], w[k, j],
//! acc)` in `k` order from 0 in the task's accumulator, then added to `C` (the bias) by the
//! driver: the AVX2 body's chain exactly, so the two give bit-identical results.
//!
//! While a block is multiplied, the same columns of the next block's `KB` weight rows are
//! prefetched into L2 (each task reads its columns of a block as `KB` separate row segments,
//! too short for the hardware stream prefetcher to ramp up on).

use super::dot::Fmt;
use crate::kernels::axpy::KB;
use std::arch::x86_64::*;

/// `acc[i..i+MR, j..j+16 NV] += xk[.., i..i+MR]^T W[r0..r0+kb, wj..wj+16 NV]`, where `xk` is
/// the `(kb, m)` transposed block of `X` and `acc` the task's accumulator (row stride `lda`).
#[inline(always)]
unsafe fn tile<F: Fmt, const MR: usize, const NV: usize>(
    xk: *const f32,
    m: usize,
    kb: usize,
    w: *const u8,
    n: usize,
    acc: *mut f32,
    lda: usize,
    i: usize,
    j: usize,
    wj: usize,
    r0: usize,
) {
    unsafe {
        let mut a = [[_mm512_setzero_ps(); NV]; MR];
        for t in 0..MR {
            for v in 0..NV {
                a[t][v] = _mm512_loadu_ps(acc.add((i + t) * lda + j + 16 * v));
            }
        }
        for kk in 0..kb {
            let mut wv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                wv[v] = F::load(w, (r0 + kk) * n + wj + 16 * v);
            }
            for t in 0..MR {
                let b = _mm512_set1_ps(*xk.add(kk * m + i + t));
                for v in 0..NV {
                    a[t][v] = _mm512_fmadd_ps(b, wv[v], a[t][v]);
                }
            }
        }
        for t in 0..MR {
            for v in 0..NV {
                _mm512_storeu_ps(acc.add((i + t) * lda + j + 16 * v), a[t][v]);
            }
        }
    }
}

/// Every row of X against the `16 NV` columns at `j` (task-relative; `wj` in W) of one block.
#[inline(always)]
unsafe fn cols_all_m<F: Fmt, const NV: usize>(
    xk: *const f32,
    m: usize,
    kb: usize,
    w: *const u8,
    n: usize,
    acc: *mut f32,
    lda: usize,
    j: usize,
    wj: usize,
    r0: usize,
) {
    let mut i = 0;
    unsafe {
        while i + 4 <= m {
            tile::<F, 4, NV>(xk, m, kb, w, n, acc, lda, i, j, wj, r0);
            i += 4;
        }
        if i + 2 <= m {
            tile::<F, 2, NV>(xk, m, kb, w, n, acc, lda, i, j, wj, r0);
            i += 2;
        }
        if i < m {
            tile::<F, 1, NV>(xk, m, kb, w, n, acc, lda, i, j, wj, r0);
        }
    }
}

/// Prefetch into L2 the `16 NV` columns at `wj` of weight rows `r..r+rows`.
#[inline(always)]
unsafe fn prefetch<F: Fmt, const NV: usize>(
    w: *const u8,
    n: usize,
    r: usize,
    rows: usize,
    wj: usize,
) {
    let bytes = 16 * NV * F::SIZE;
    for kk in r..r + rows {
        let mut off = 0;
        while off < bytes {
            let p = w.wrapping_add((kk * n + wj) * F::SIZE + off);
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) };
            off += 64;
        }
    }
}

/// Full 16-column groups of `n0..n1` (`n1 - n0` a multiple of 16): the task's accumulator
/// `ap` (row stride `lda`) gets `X[:, k0..k0+kb] W[k0..k0+kb, n0..n1]`, `w` pointing at row
/// `k0` of `W`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn task<F: Fmt>(
    x: &[f32],
    m: usize,
    k: usize,
    k0: usize,
    kb_total: usize,
    w: *const u8,
    n: usize,
    ap: *mut f32,
    lda: usize,
    n0: usize,
    n1: usize,
) {
    let width = n1 - n0;
    if width == 0 {
        return;
    }
    let mut xk = vec![0f32; KB * m];
    let mut r0 = 0;
    while r0 < kb_total {
        let kb = KB.min(kb_total - r0);
        let next = KB.min(kb_total - r0 - kb);
        for kk in 0..kb {
            for i in 0..m {
                xk[kk * m + i] = x[i * k + k0 + r0 + kk];
            }
        }
        let xp = xk.as_ptr();
        let mut j = 0;
        unsafe {
            while j + 64 <= width {
                prefetch::<F, 4>(w, n, r0 + kb, next, n0 + j);
                cols_all_m::<F, 4>(xp, m, kb, w, n, ap, lda, j, n0 + j, r0);
                j += 64;
            }
            if j + 32 <= width {
                prefetch::<F, 2>(w, n, r0 + kb, next, n0 + j);
                cols_all_m::<F, 2>(xp, m, kb, w, n, ap, lda, j, n0 + j, r0);
                j += 32;
            }
            if j < width {
                prefetch::<F, 1>(w, n, r0 + kb, next, n0 + j);
                cols_all_m::<F, 1>(xp, m, kb, w, n, ap, lda, j, n0 + j, r0);
            }
        }
        r0 += kb;
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu::Isa;
    use crate::kernels::axpy::{matmul_cols, ColW};
    use crate::kernels::test_util::lcg;

    /// Bit-identical to the AVX2 body (same chain per element), and within the float32
    /// summation bound of float64 (`K 2^-24 sum|x w|`, plus the bias's rounding).
    #[test]
    fn matches_avx2_bit_for_bit_and_float64() {
        if !super::super::dot::tests::avx512_here() {
            return;
        }
        // N around the 16 / 32 / 64-column groups (and the task split), M over every tile.
        for &n in &[15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 80, 96, 112, 130, 200, 300] {
            for &(m, k) in &[(1, 9), (2, 17), (3, 8), (4, 33), (5, 20), (8, 64), (9, 7), (32, 5)] {
                let x = lcg(m * k, 1 + n as u64);
                let w = lcg(k * n, 2 + m as u64);
                let wh: Vec<u16> = w.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect();
                let wb: Vec<u16> = w.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
                let bias = lcg(n, 3);
                for cw in [ColW::F32(&w), ColW::F16(&wh), ColW::Bf16(&wb)] {
                    let mut got = vec![f32::NAN; m * n];
                    let mut want = vec![f32::NAN; m * n];
                    matmul_cols(Isa::Avx512, &x, m, k, cw, n, Some(&bias), &mut got, n);
                    matmul_cols(Isa::Avx2, &x, m, k, cw, n, Some(&bias), &mut want, n);
                    assert_eq!(got, want, "m {m} k {k} n {n} {cw:?}");
                    for i in 0..m {
                        for j in 0..n {
                            let prods =
                                (0..k).map(|t| x[i * k + t] as f64 * cw.get(t * n + j) as f64);
                            let exact = prods.clone().sum::<f64>() + bias[j] as f64;
                            let mag: f64 = prods.map(f64::abs).sum::<f64>() + bias[j].abs() as f64;
                            let bound = (k as f64 + 2.0) * 2f64.powi(-24) * mag;
                            assert!((got[i * n + j] as f64 - exact).abs() <= bound);
                        }
                    }
                }
            }
        }
    }
}
