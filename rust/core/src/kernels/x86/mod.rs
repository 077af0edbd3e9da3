//! x86-64 kernels, one folder per instruction set (`avx2/`, `avx512/`), and small helpers
//! shared by them. Callers of the helpers are `#[target_feature]` functions that inline them.

pub(crate) mod avx2;
pub(crate) mod avx512;

use std::arch::x86_64::*;

/// Sum of the eight lanes: `(v0 + v4) + (v2 + v6)` ... in a fixed order.
#[inline(always)]
pub unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// The little-endian IEEE binary16 at `p` (a Q8_0 / Q4_0 block scale), widened and broadcast.
#[inline(always)]
pub unsafe fn f16_scale(p: *const u8) -> __m256 {
    unsafe {
        let bits = (p as *const u16).read_unaligned() as i32;
        _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }
}
