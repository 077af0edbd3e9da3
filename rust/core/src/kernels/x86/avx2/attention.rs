//! AVX2+FMA micro-kernels of flash attention (see `attention.rs` for the algorithm, the blocking
//! and the buffer layouts); tested against [`crate::kernels::attention::Scalar`].
//!
//! - scores: register tile `RT = 6` rows x 16 keys, 12 accumulators; per step of the `D` loop
//!   two loads of the K^T panel and six broadcasts of packed Q (`[tile][c][RT]`, so the six
//!   addresses are one pointer plus constants): 12 FMAs.
//! - `P V`: register tile 6 rows x 16 dims; per key two loads of the packed V panel and six
//!   broadcasts of P (rows `BC` floats apart: constants again): 12 FMAs.
//! - softmax row: `BC / 8` vectors of 8 keys, two passes (max, then `exp` and sum, two
//!   accumulators each); `exp` by `vmath::exp`'s reduction and a degree-5 minimax polynomial.

use crate::kernels::attention::{run, Bufs, Micro, Task, BC, RT};
use std::arch::x86_64::*;

/// The AVX2+FMA micro-kernels.
pub(crate) struct Avx2;

/// The driver compiled with AVX2 and FMA enabled, so the micro-kernels inline into it.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise as [`run`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn run_avx2(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
    unsafe { run::<Avx2>(t, b, out) }
}

/// `e^x` on 8 lanes for `x <= 0`, `-inf` or NaN (the softmax arguments `s - m'`), relative
/// error below 3e-7 (tested against `f64::exp`); `exp(x) = 0` for `x < -87` (`-inf` included), NaN
/// stays NaN.
///
/// `x = n ln2 + r`, `n = round(x log2 e)` read from the low mantissa bits of
/// `t = x log2 e + 1.5 * 2^23` and shifted into the exponent field (`2^n`), `|r| <= ln2 / 2`
/// (Cody-Waite, `ln2` in two parts); `e^r = 1 + r P(r)` with the degree-4 minimax `P` of Arm's
/// optimized-routines `v_expf` (polynomial error 1.3e-7 on the range): 5 FMAs and a multiply,
/// against 7 FMAs for `vmath::exp`'s degree-6 Taylor polynomial. No clamp: below -87 (where `2^n`
/// would leave the normal range and its bits wrap) and at `-inf` (NaN inside) the final mask
/// writes 0.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    const C: [f32; 5] = [
        8.247_39e-3,    // 0x1.0e4020p-7
        4.189_976_7e-2, // 0x1.573e2ep-5
        0.166_683_96,   // 0x1.555e66p-3
        0.499_991_27,   // 0x1.fffdb6p-2
        0.999_999_4,    // 0x1.ffffecp-1
    ];
    let magic = _mm256_set1_ps(12_582_912.0); // 1.5 * 2^23
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
    let n = _mm256_sub_ps(t, magic);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(C[0]);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C[1]));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C[2]));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C[3]));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C[4]));
    p = _mm256_mul_ps(p, r);
    // t's bits are 0x4B40_0000 + n; shifted by 23 the constant part leaves the word.
    let e = _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_slli_epi32::<23>(_mm256_castps_si256(t)),
        _mm256_set1_epi32(127 << 23),
    ));
    let y = _mm256_fmadd_ps(p, e, e);
    // Below -87: 0 (false for NaN, so NaN stays).
    _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0)), y)
}

/// [`exp8`] for the AVX-512 path's test of its 16-lane copy.
#[cfg(test)]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp8_for_tests(x: __m256) -> __m256 {
    exp8(x)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Score tile (see [`Micro::scores`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores(qp: &[f32], d: usize, kt: &[f32], nc: &[usize], s: &mut [f32]) {
    let nrt = nc.len();
    assert!(qp.len() >= nrt * RT * d && kt.len() >= BC * d && nc.iter().all(|n| *n <= BC));
    assert!(s.len() >= nrt * RT * BC);
    let (qp, kt, sp) = (qp.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    let nc16 = nc.iter().map(|n| n.div_ceil(16)).max().unwrap_or(0);
    for c0 in 0..nc16 {
        for t in 0..nrt {
            if 16 * c0 >= nc[t] {
                continue;
            }
            // SAFETY: in bounds by the asserts: q reads qp[t*d*RT .. (t+1)*d*RT], k reads
            // kt[(c0*d + c)*16 .. +16] with c < d and c0 < BC/16, the stores
            // s[(t*RT+r)*BC + 16*c0 .. +16].
            unsafe {
                let q = qp.add(t * d * RT);
                let k = kt.add(c0 * 16 * d);
                let mut a = [[_mm256_setzero_ps(); 2]; RT];
                for c in 0..d {
                    let k0 = _mm256_loadu_ps(k.add(c * 16));
                    let k1 = _mm256_loadu_ps(k.add(c * 16 + 8));
                    let qc = q.add(c * RT);
                    for r in 0..RT {
                        let x = _mm256_broadcast_ss(&*qc.add(r));
                        a[r][0] = _mm256_fmadd_ps(x, k0, a[r][0]);
                        a[r][1] = _mm256_fmadd_ps(x, k1, a[r][1]);
                    }
                }
                for r in 0..RT {
                    let dst = sp.add((t * RT + r) * BC + c0 * 16);
                    _mm256_storeu_ps(dst, a[r][0]);
                    _mm256_storeu_ps(dst.add(8), a[r][1]);
                }
            }
        }
    }
}

/// One row's online-softmax update (see [`Micro::softmax_row`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn softmax_row(srow: &mut [f32], m: &mut f32, l: &mut f32, orow: &mut [f32]) {
    assert!(srow.len() % 8 == 0 && srow.len() <= BC);
    let nv = srow.len() / 8;
    let sp = srow.as_mut_ptr();
    // Two accumulators each, so the max and sum chains overlap. `max(x, acc)` returns `acc`
    // when `x` is NaN, so NaN scores are skipped here: each gives a NaN `P` entry below, so a
    // NaN `l` and a NaN row. Only when no score sets a finite maximum is a NaN looked for.
    let mut vmax = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for i in 0..nv {
        // SAFETY: i * 8 + 8 <= srow.len().
        let x = unsafe { _mm256_loadu_ps(sp.add(i * 8)) };
        vmax[i % 2] = _mm256_max_ps(x, vmax[i % 2]);
    }
    let bm = hmax(_mm256_max_ps(vmax[0], vmax[1]));
    let mut mx = if bm > *m { bm } else { *m };
    if mx == f32::NEG_INFINITY {
        if !srow.iter().any(|x| x.is_nan()) {
            srow.fill(0.0);
            return;
        }
        mx = f32::NAN;
    }
    let alpha = _mm_cvtss_f32(_mm256_castps256_ps128(exp8(_mm256_set1_ps(*m - mx))));
    let vmx = _mm256_set1_ps(mx);
    let mut sum = [_mm256_setzero_ps(); 2];
    for i in 0..nv {
        // SAFETY: i * 8 + 8 <= srow.len().
        unsafe {
            let p = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i * 8)), vmx));
            sum[i % 2] = _mm256_add_ps(sum[i % 2], p);
            _mm256_storeu_ps(sp.add(i * 8), p);
        }
    }
    *l = l.mul_add(alpha, hsum(_mm256_add_ps(sum[0], sum[1])));
    *m = mx;
    if alpha != 1.0 {
        let va = _mm256_set1_ps(alpha);
        let mut it = orow.chunks_exact_mut(8);
        for c in &mut it {
            // SAFETY: c holds 8 floats.
            unsafe {
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(va, _mm256_loadu_ps(c.as_ptr())))
            };
        }
        for o in it.into_remainder() {
            *o *= alpha;
        }
    }
}

/// `O += P V` (see [`Micro::pv`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv(p: &[f32], v: &[f32], nc: &[usize], dp: usize, o: &mut [f32]) {
    let nrt = nc.len();
    assert!(dp % 16 == 0 && nc.iter().all(|n| *n <= BC) && v.len() >= BC * dp);
    assert!(p.len() >= nrt * RT * BC && o.len() >= nrt * RT * dp);
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
    for d0 in (0..dp).step_by(16) {
        for (t, &bc) in nc.iter().enumerate() {
            if bc == 0 {
                continue;
            }
            // SAFETY: in bounds by the asserts: o rows t*RT+r, columns d0..d0+16 < dp;
            // p[(t*RT+r)*BC + j] with j < bc <= BC; v[(d0*BC/16 + j)*16 .. +16], j < BC.
            unsafe {
                let mut a = [[_mm256_setzero_ps(); 2]; RT];
                for r in 0..RT {
                    let src = op.add((t * RT + r) * dp + d0);
                    a[r][0] = _mm256_loadu_ps(src);
                    a[r][1] = _mm256_loadu_ps(src.add(8));
                }
                let pt = pp.add(t * RT * BC);
                let vc = vp.add(d0 * BC);
                for j in 0..bc {
                    let v0 = _mm256_loadu_ps(vc.add(j * 16));
                    let v1 = _mm256_loadu_ps(vc.add(j * 16 + 8));
                    for r in 0..RT {
                        let x = _mm256_broadcast_ss(&*pt.add(r * BC + j));
                        a[r][0] = _mm256_fmadd_ps(x, v0, a[r][0]);
                        a[r][1] = _mm256_fmadd_ps(x, v1, a[r][1]);
                    }
                }
                for r in 0..RT {
                    let dst = op.add((t * RT + r) * dp + d0);
                    _mm256_storeu_ps(dst, a[r][0]);
                    _mm256_storeu_ps(dst.add(8), a[r][1]);
                }
            }
        }
    }
}

impl Micro for Avx2 {
    #[inline(always)]
    unsafe fn scores(qp: &[f32], d: usize, kt: &[f32], nc: &[usize], s: &mut [f32]) {
        // SAFETY: the caller runs with AVX2 and FMA (see `Micro`).
        unsafe { scores(qp, d, kt, nc, s) }
    }

    #[inline(always)]
    unsafe fn softmax_row(srow: &mut [f32], m: &mut f32, l: &mut f32, orow: &mut [f32]) {
        // SAFETY: as above.
        unsafe { softmax_row(srow, m, l, orow) }
    }

    #[inline(always)]
    unsafe fn pv(p: &[f32], v: &[f32], nc: &[usize], dp: usize, o: &mut [f32]) {
        // SAFETY: as above.
        unsafe { pv(p, v, nc, dp, o) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;

    /// `exp8` against `f64::exp` on `[-87, 0]` (relative error), and its special values.
    #[test]
    fn exp8_matches_f64_exp() {
        if !Isa::Avx2.supported() {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        fn at(x: f32) -> f32 {
            _mm_cvtss_f32(_mm256_castps256_ps128(exp8(_mm256_set1_ps(x))))
        }
        let mut x = -87.0f32;
        let mut worst = 0f64;
        while x <= 0.0 {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let got = unsafe { at(x) } as f64;
            let want = (x as f64).exp();
            worst = worst.max((got / want - 1.0).abs());
            x += 0.000_731;
        }
        assert!(worst < 3e-7, "exp8 relative error {worst}");
        // SAFETY: as above.
        unsafe {
            assert_eq!(at(f32::NEG_INFINITY), 0.0);
            assert_eq!(at(-87.01), 0.0);
            assert_eq!(at(-1e30), 0.0);
            assert_eq!(at(0.0), 1.0);
            assert!(at(f32::NAN).is_nan());
        }
    }
}
