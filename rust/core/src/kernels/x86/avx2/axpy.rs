//! AVX2+FMA(+F16C) intrinsics of `kernels/axpy.rs` (the scalar reference, the driver and the tests
//! are there).

use crate::kernels::axpy::ColsArgs;
use std::arch::x86_64::*;

pub trait Fmt {
    const SIZE: usize;
    /// Eight consecutive elements starting at element `i` of `p`.
    unsafe fn load8(p: *const u8, i: usize) -> __m256;
}
pub struct F32;
pub struct F16;
pub struct Bf16;
impl Fmt for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        unsafe { _mm256_loadu_ps((p as *const f32).add(i)) }
    }
}
impl Fmt for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i)) }
    }
}
impl Fmt for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        unsafe {
            let h = _mm_loadu_si128((p as *const u16).add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }
}

/// `acc[i..i+MR, j..j+16] += xk[.., i..i+MR]^T W[k0..k0+kb, j..j+16]`, where `xk` is the
/// `(kb, m)` transposed block of `X` and `acc` the task's padded accumulator (row stride `lda`).
#[inline(always)]
unsafe fn tile<F: Fmt, const MR: usize>(
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
    k0: usize,
) {
    unsafe {
        let mut a = [[_mm256_setzero_ps(); 2]; MR];
        for t in 0..MR {
            let cp = acc.add((i + t) * lda + j);
            a[t] = [_mm256_loadu_ps(cp), _mm256_loadu_ps(cp.add(8))];
        }
        for kk in 0..kb {
            let w0 = F::load8(w, (k0 + kk) * n + wj);
            let w1 = F::load8(w, (k0 + kk) * n + wj + 8);
            for t in 0..MR {
                let b = _mm256_broadcast_ss(&*xk.add(kk * m + i + t));
                a[t][0] = _mm256_fmadd_ps(b, w0, a[t][0]);
                a[t][1] = _mm256_fmadd_ps(b, w1, a[t][1]);
            }
        }
        for t in 0..MR {
            let cp = acc.add((i + t) * lda + j);
            _mm256_storeu_ps(cp, a[t][0]);
            _mm256_storeu_ps(cp.add(8), a[t][1]);
        }
    }
}

/// Full 16-column groups of `n0..n1` (`n1 - n0` a multiple of 16): the task's accumulator
/// `a.c` (row stride `a.ldc = n1 - n0 + 16`) gets `X[:, k0..k0+kb] W[k0..k0+kb, n0..n1]`,
/// `a.w` holding the rows `k0..k0+kb` of `W` in `F`'s format (contract: [`ColsArgs`]).
///
/// The accumulator is private, with a row stride padded by 16 floats, and the block of `X`
/// is transposed into a small buffer: with `C`, `X` and `W` rows all a multiple of 4 KiB
/// apart (N, K powers of two) their lines would otherwise share one L1 set and evict each
/// other on every step.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn task<F: Fmt>(a: ColsArgs<'_>, n0: usize, n1: usize) {
    let ColsArgs { x, m, k, k0, kb: kb_total, w, n, c: ap, ldc: lda } = a;
    let w = w.as_ptr();
    let width = n1 - n0;
    if width == 0 {
        return;
    }
    let mut xk = vec![0f32; crate::kernels::axpy::KB * m];
    let mut r0 = 0;
    while r0 < kb_total {
        let kb = crate::kernels::axpy::KB.min(kb_total - r0);
        for kk in 0..kb {
            for i in 0..m {
                xk[kk * m + i] = x[i * k + k0 + r0 + kk];
            }
        }
        let xp = xk.as_ptr();
        let mut j = 0;
        while j < width {
            let mut i = 0;
            unsafe {
                while i + 4 <= m {
                    tile::<F, 4>(xp, m, kb, w, n, ap, lda, i, j, n0 + j, r0);
                    i += 4;
                }
                if i + 2 <= m {
                    tile::<F, 2>(xp, m, kb, w, n, ap, lda, i, j, n0 + j, r0);
                    i += 2;
                }
                if i < m {
                    tile::<F, 1>(xp, m, kb, w, n, ap, lda, i, j, n0 + j, r0);
                }
            }
            j += 16;
        }
        r0 += kb;
    }
    let _ = F::SIZE;
}
