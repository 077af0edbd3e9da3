//! AVX-512F micro-kernels of flash attention (see `attention.rs` for the algorithm, the blocking
//! and the buffer layouts, which are the AVX2 path's: a 16-key panel of `Kt` row and a 16-dim
//! panel of `Vp` row are each one zmm vector); tested against float64 with every other path in
//! `attention.rs`.
//!
//! - scores: register tile `RT = 6` rows x up to 64 keys (4 panels), 24 accumulators; per step
//!   of the `D` loop four loads of K^T (one per panel) and six broadcasts of packed Q: 24 FMAs of
//!   16 lanes (the AVX2 tile: 12 FMAs of 8 lanes per 2 loads and 6 broadcasts).
//! - `P V`: register tile 6 rows x up to 64 dims (4 panels of V); per key four loads of V and six
//!   broadcasts of P: 24 FMAs.
//! - softmax row: vectors of 16 keys (the last one masked when the row is 8 keys past a multiple
//!   of 16), two passes (max, then `exp` and sum); `exp` is the AVX2 path's `exp8` on 16 lanes
//!   (same operations, so the same value in every lane, tested).
//!
//! Each score and each output element is the same sum in the same order as on the AVX2 path (one
//! FMA per term, in `D` / key order); the row sums `l` are added in another order (16 lanes, not
//! 2 x 8), so results differ from the AVX2 path's by float32 rounding of `l` only, and from the
//! float64 reference within the bound tested in `attention.rs` (`1e-5 sqrt(D) + 1e-6`).

use crate::kernels::attention::{run, Bufs, Micro, Task, BC, RT};
use std::arch::x86_64::*;

/// The AVX-512F micro-kernels.
pub(crate) struct Avx512;

/// Panels (16 keys or 16 dims) of a register tile: 4 x 6 = 24 zmm accumulators.
const G: usize = 4;

/// The driver compiled with AVX-512 enabled, so the micro-kernels inline into it.
///
/// # Safety
/// The CPU has AVX-512F/BW/VL/DQ, AVX2 and FMA; otherwise as [`run`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn run_avx512(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
    unsafe { run::<Avx512>(t, b, out) }
}

/// `e^x` on 16 lanes, lane for lane the AVX2 path's `exp8` (the same operations: relative error
/// below 3e-7 for `x <= 0`; 0 below -87 and at `-inf`, NaN stays NaN).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
fn exp16(x: __m512) -> __m512 {
    const C: [f32; 5] = [
        8.247_39e-3,    // 0x1.0e4020p-7
        4.189_976_7e-2, // 0x1.573e2ep-5
        0.166_683_96,   // 0x1.555e66p-3
        0.499_991_27,   // 0x1.fffdb6p-2
        0.999_999_4,    // 0x1.ffffecp-1
    ];
    let magic = _mm512_set1_ps(12_582_912.0); // 1.5 * 2^23
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
    let n = _mm512_sub_ps(t, magic);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(C[0]);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C[1]));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C[2]));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C[3]));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C[4]));
    p = _mm512_mul_ps(p, r);
    // t's bits are 0x4B40_0000 + n; shifted by 23 the constant part leaves the word.
    let e = _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_slli_epi32::<23>(_mm512_castps_si512(t)),
        _mm512_set1_epi32(127 << 23),
    ));
    let y = _mm512_fmadd_ps(p, e, e);
    // Below -87: 0 (false for NaN, so NaN stays).
    _mm512_maskz_mov_ps(!_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.0)), y)
}

/// Score tile of `N` panels: `s[t RT + r][16 (c0 + g) + l] = sum_c q[c][r] k[c0 + g][c][l]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn scores_tile<const N: usize>(q: *const f32, k: *const f32, d: usize, s: *mut f32) {
    // SAFETY (whole body): the caller's bounds (see `scores`).
    unsafe {
        let mut a = [[_mm512_setzero_ps(); N]; RT];
        for c in 0..d {
            let kv: [__m512; N] = std::array::from_fn(|g| _mm512_loadu_ps(k.add((g * d + c) * 16)));
            let qc = q.add(c * RT);
            for r in 0..RT {
                let x = _mm512_set1_ps(*qc.add(r));
                for g in 0..N {
                    a[r][g] = _mm512_fmadd_ps(x, kv[g], a[r][g]);
                }
            }
        }
        for r in 0..RT {
            for g in 0..N {
                _mm512_storeu_ps(s.add(r * BC + g * 16), a[r][g]);
            }
        }
    }
}

/// Score tiles (see [`Micro::scores`]), `G` panels of keys at a time, every tile per group (the
/// group's `G x 16 x D` of K stays in L1 across the tiles).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn scores(qp: &[f32], d: usize, kt: &[f32], nc: &[usize], s: &mut [f32]) {
    let nrt = nc.len();
    assert!(qp.len() >= nrt * RT * d && kt.len() >= BC * d && nc.iter().all(|n| *n <= BC));
    assert!(s.len() >= nrt * RT * BC);
    let (qp, kt, sp) = (qp.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    let np = nc.iter().map(|n| n.div_ceil(16)).max().unwrap_or(0);
    for c0 in (0..np).step_by(G) {
        for (t, &n) in nc.iter().enumerate() {
            let cnt = n.div_ceil(16).saturating_sub(c0).min(G);
            // SAFETY: in bounds by the asserts: q reads qp[t*d*RT .. (t+1)*d*RT], k the panels
            // c0..c0+cnt <= BC/16 of kt, the stores s[(t*RT+r)*BC + 16*c0 .. + 16*cnt].
            unsafe {
                let q = qp.add(t * d * RT);
                let k = kt.add(c0 * 16 * d);
                let st = sp.add(t * RT * BC + c0 * 16);
                match cnt {
                    0 => {}
                    1 => scores_tile::<1>(q, k, d, st),
                    2 => scores_tile::<2>(q, k, d, st),
                    3 => scores_tile::<3>(q, k, d, st),
                    _ => scores_tile::<G>(q, k, d, st),
                }
            }
        }
    }
}

/// One row's online-softmax update (see [`Micro::softmax_row`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
fn softmax_row(srow: &mut [f32], m: &mut f32, l: &mut f32, orow: &mut [f32]) {
    assert!(srow.len() % 8 == 0 && srow.len() <= BC && orow.len() % 16 == 0);
    let len = srow.len();
    let sp = srow.as_mut_ptr();
    // Lanes of vector `i` inside the row: all 16, or 8 for a last half vector.
    let mask = |i: usize| -> __mmask16 {
        if len - i * 16 >= 16 {
            0xffff
        } else {
            0x00ff
        }
    };
    let nv = len.div_ceil(16);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    // `max(x, acc)` returns `acc` when `x` is NaN, so NaN scores are skipped here: each gives a
    // NaN `P` entry below, so a NaN `l` and a NaN row. Only when no score sets a finite maximum
    // is a NaN looked for.
    let mut vmax = ninf;
    for i in 0..nv {
        // SAFETY: the masked lanes are inside srow.
        let x = unsafe { _mm512_mask_loadu_ps(ninf, mask(i), sp.add(i * 16)) };
        vmax = _mm512_max_ps(x, vmax);
    }
    let bm = _mm512_reduce_max_ps(vmax);
    let mut mx = if bm > *m { bm } else { *m };
    if mx == f32::NEG_INFINITY {
        if !srow.iter().any(|x| x.is_nan()) {
            srow.fill(0.0);
            return;
        }
        mx = f32::NAN;
    }
    let alpha = _mm512_cvtss_f32(exp16(_mm512_set1_ps(*m - mx)));
    let vmx = _mm512_set1_ps(mx);
    let mut sum = _mm512_setzero_ps();
    for i in 0..nv {
        // SAFETY: the masked lanes are inside srow; lanes outside it add 0 to the sum.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask(i), sp.add(i * 16));
            let p = _mm512_maskz_mov_ps(mask(i), exp16(_mm512_sub_ps(x, vmx)));
            sum = _mm512_add_ps(sum, p);
            _mm512_mask_storeu_ps(sp.add(i * 16), mask(i), p);
        }
    }
    *l = l.mul_add(alpha, _mm512_reduce_add_ps(sum));
    *m = mx;
    if alpha != 1.0 {
        let va = _mm512_set1_ps(alpha);
        for c in orow.chunks_exact_mut(16) {
            // SAFETY: c holds 16 floats.
            unsafe {
                _mm512_storeu_ps(c.as_mut_ptr(), _mm512_mul_ps(va, _mm512_loadu_ps(c.as_ptr())))
            };
        }
    }
}

/// `O += P V` on one tile of `N` dim panels: rows `r < RT` of `o` (stride `dp`), dims
/// `16 g + l`, keys `j < bc`; `v` points at the first panel (`BC x 16` each), `p` at the tile's
/// first row (stride `BC`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn pv_tile<const N: usize>(p: *const f32, v: *const f32, bc: usize, dp: usize, o: *mut f32) {
    // SAFETY (whole body): the caller's bounds (see `pv`).
    unsafe {
        let mut a: [[__m512; N]; RT] = std::array::from_fn(|r| {
            std::array::from_fn(|g| _mm512_loadu_ps(o.add(r * dp + g * 16)))
        });
        for j in 0..bc {
            let vv: [__m512; N] =
                std::array::from_fn(|g| _mm512_loadu_ps(v.add((g * BC + j) * 16)));
            for r in 0..RT {
                let x = _mm512_set1_ps(*p.add(r * BC + j));
                for g in 0..N {
                    a[r][g] = _mm512_fmadd_ps(x, vv[g], a[r][g]);
                }
            }
        }
        for r in 0..RT {
            for g in 0..N {
                _mm512_storeu_ps(o.add(r * dp + g * 16), a[r][g]);
            }
        }
    }
}

/// `O += P V` (see [`Micro::pv`]), `G` dim panels at a time, every tile per group.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn pv(p: &[f32], v: &[f32], nc: &[usize], dp: usize, o: &mut [f32]) {
    let nrt = nc.len();
    assert!(dp % 16 == 0 && nc.iter().all(|n| *n <= BC) && v.len() >= BC * dp);
    assert!(p.len() >= nrt * RT * BC && o.len() >= nrt * RT * dp);
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
    let np = dp / 16;
    for c0 in (0..np).step_by(G) {
        let cnt = (np - c0).min(G);
        for (t, &bc) in nc.iter().enumerate() {
            // SAFETY: in bounds by the asserts: o rows t*RT+r, columns 16*c0 .. 16*(c0+cnt) <=
            // dp; p[(t*RT+r)*BC + j] with j < bc <= BC; v panels c0..c0+cnt < dp/16, rows j < BC.
            unsafe {
                let (pt, vc) = (pp.add(t * RT * BC), vp.add(c0 * 16 * BC));
                let ot = op.add(t * RT * dp + c0 * 16);
                match (bc, cnt) {
                    (0, _) => {}
                    (_, 1) => pv_tile::<1>(pt, vc, bc, dp, ot),
                    (_, 2) => pv_tile::<2>(pt, vc, bc, dp, ot),
                    (_, 3) => pv_tile::<3>(pt, vc, bc, dp, ot),
                    _ => pv_tile::<G>(pt, vc, bc, dp, ot),
                }
            }
        }
    }
}

impl Micro for Avx512 {
    #[inline(always)]
    unsafe fn scores(qp: &[f32], d: usize, kt: &[f32], nc: &[usize], s: &mut [f32]) {
        // SAFETY: the caller runs with AVX-512 (see `Micro`).
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

    /// `exp16` lane for lane equal to the AVX2 path's `exp8` on `[-90, 0]` and at the special
    /// values (so its error bound, tested there against `f64::exp`, holds).
    #[test]
    fn exp16_matches_exp8() {
        if !Isa::Avx512.supported() {
            let want = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
            assert!(want != "avx512", "CPU lacks AVX-512");
            return;
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        fn both(x: &[f32; 16]) -> ([f32; 16], [f32; 16]) {
            let mut a = [0f32; 16];
            let mut b = [0f32; 16];
            // SAFETY: 16 floats each side.
            unsafe {
                _mm512_storeu_ps(a.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr())));
                for h in 0..2 {
                    let v = crate::kernels::x86::avx2::attention::exp8_for_tests(_mm256_loadu_ps(
                        x.as_ptr().add(8 * h),
                    ));
                    _mm256_storeu_ps(b.as_mut_ptr().add(8 * h), v);
                }
            }
            (a, b)
        }
        let mut x = -90.0f32;
        let mut lanes = [0f32; 16];
        let mut i = 0;
        while x <= 0.0 {
            lanes[i % 16] = x;
            i += 1;
            if i % 16 == 0 {
                // SAFETY: the CPU has AVX-512 (checked above).
                let (a, b) = unsafe { both(&lanes) };
                assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "at {lanes:?}");
            }
            x += 0.001_37;
        }
        let mut sp = [0f32; 16];
        sp[..6].copy_from_slice(&[f32::NEG_INFINITY, -87.01, -1e30, 0.0, f32::NAN, -86.99]);
        // SAFETY: as above.
        let (a, b) = unsafe { both(&sp) };
        assert_eq!(a[..4], [0.0, 0.0, 0.0, 1.0]);
        assert!(a[4].is_nan() && b[4].is_nan() && a[5] == b[5] && a[5] > 0.0);
    }
}
