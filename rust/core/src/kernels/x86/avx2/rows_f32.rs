//! AVX2 + FMA body of `kernels/rows_f32.rs`: a row-stored float32 weight against 2..=32 rows of
//! `X`, a `3 x 4` register tile (see that module).

use crate::kernels::x86::hsum;
use std::arch::x86_64::*;

/// Floats ahead to prefetch in each weight row.
const PF: usize = 1024;

/// Columns `n0..n1` of C for all `m` rows of X.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn task(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut j = n0;
    unsafe {
        while j < n1 {
            let rn = (n1 - j).min(3);
            let mut i = 0;
            while i < m {
                let left = m - i;
                let step = match (rn, left) {
                    (3, 4..) => tile::<3, 4>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (3, 2..) => tile::<3, 2>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (3, _) => tile::<3, 1>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (2, 4..) => tile::<2, 4>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (2, 2..) => tile::<2, 2>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (2, _) => tile::<2, 1>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (_, 4..) => tile::<1, 4>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    (_, 2..) => tile::<1, 2>(xp, x, k, wp, w, bias, c, ldc, i, j),
                    _ => tile::<1, 1>(xp, x, k, wp, w, bias, c, ldc, i, j),
                };
                i += step;
            }
            j += rn;
        }
    }
}

/// Weight rows `j..j+RN` against activation rows `i..i+MR`; returns `MR`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const RN: usize, const MR: usize>(
    xp: *const f32,
    x: &[f32],
    k: usize,
    wp: *const f32,
    w: &[f32],
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) -> usize {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); MR]; RN];
        let k8 = k / 8 * 8;
        let mut q = 0;
        while q < k8 {
            if q % 16 == 0 && q + PF < k {
                for r in 0..RN {
                    _mm_prefetch::<_MM_HINT_T0>(wp.add((j + r) * k + q + PF) as *const i8);
                }
            }
            let mut wv = [_mm256_setzero_ps(); RN];
            for r in 0..RN {
                wv[r] = _mm256_loadu_ps(wp.add((j + r) * k + q));
            }
            for t in 0..MR {
                let xv = _mm256_loadu_ps(xp.add((i + t) * k + q));
                for r in 0..RN {
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
            q += 8;
        }
        for r in 0..RN {
            for t in 0..MR {
                let mut s = hsum(acc[r][t]);
                for q in k8..k {
                    s += x[(i + t) * k + q] * w[(j + r) * k + q];
                }
                *c.add((i + t) * ldc + j + r) = s + bias.map_or(0.0, |b| b[j + r]);
            }
        }
    }
    MR
}
