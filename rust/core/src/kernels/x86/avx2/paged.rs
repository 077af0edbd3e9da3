//! AVX2+FMA intrinsics of `kernels/paged.rs`: the scores and the `P V` accumulation with explicit
//! intrinsics (the compiler did not vectorise the generic `dot` well: 2-lane loads).

use crate::kernels::paged::{one, PageSource, PagedArgs, Scratch};
use crate::kernels::x86::hsum;
use std::arch::x86_64::*;

/// One task of [`crate::kernels::paged`]'s decode: its generic body with FMA, under AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn task<S: PageSource>(
    a: PagedArgs<'_, S>,
    t: usize,
    sc: &mut Scratch,
    dst: &mut [f32],
) {
    one::<true, S>(a, t, sc, dst)
}

/// `s[hh * page + j] = (q_hh . k_j) * scale` for every head `hh` of `qs` (`gsz x d`) and
/// key row `j` of `k` (`n x d`): eight lanes of `d` per FMA (each head's lanes summed by
/// [`hsum`]), the last `d mod 8` in order; a key row is loaded once for up to 8 heads.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn scores(qs: &[f32], k: &[f32], d: usize, scale: f32, s: &mut [f32], page: usize) {
    let gsz = qs.len() / d;
    let mut h0 = 0;
    unsafe {
        while h0 < gsz {
            match gsz - h0 {
                8.. => heads::<8>(qs, k, d, scale, s, page, h0),
                4..=7 => heads::<4>(qs, k, d, scale, s, page, h0),
                2..=3 => heads::<2>(qs, k, d, scale, s, page, h0),
                _ => heads::<1>(qs, k, d, scale, s, page, h0),
            }
            h0 += match gsz - h0 {
                8.. => 8,
                4..=7 => 4,
                2..=3 => 2,
                _ => 1,
            };
        }
    }
}

/// `o[hh, :] += sum_j s[hh * page + j] * v[j, :]` for every head `hh` of `o` (`gsz x d`) and
/// row `j` of `v` (`n x d`): per element one FMA per `j` in order, as the generic body, so
/// the result is the same bit for bit; blocks of 32 value rows (8 KiB at D = 64, in L1)
/// are swept once per head with that head's accumulators in registers.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn accumulate(o: &mut [f32], s: &[f32], v: &[f32], d: usize, page: usize) {
    const JB: usize = 32;
    let (gsz, n) = (o.len() / d, v.len() / d);
    let mut j0 = 0;
    unsafe {
        while j0 < n {
            let j1 = (j0 + JB).min(n);
            for hh in 0..gsz {
                let oh = o.as_mut_ptr().add(hh * d);
                let ph = s.as_ptr().add(hh * page);
                let vp = v.as_ptr();
                let mut c = 0;
                while c + 64 <= d {
                    cols::<8>(oh.add(c), ph, vp.add(c), j0, j1, d);
                    c += 64;
                }
                while c + 32 <= d {
                    cols::<4>(oh.add(c), ph, vp.add(c), j0, j1, d);
                    c += 32;
                }
                while c + 8 <= d {
                    cols::<1>(oh.add(c), ph, vp.add(c), j0, j1, d);
                    c += 8;
                }
                for cc in c..d {
                    let mut x = *oh.add(cc);
                    for j in j0..j1 {
                        x = (*ph.add(j)).mul_add(*vp.add(j * d + cc), x);
                    }
                    *oh.add(cc) = x;
                }
            }
            j0 = j1;
        }
    }
}

/// `R` vectors of 8 accumulator columns at `o`, over value rows `j0..j1`.
#[inline(always)]
unsafe fn cols<const R: usize>(
    o: *mut f32,
    p: *const f32,
    v: *const f32,
    j0: usize,
    j1: usize,
    d: usize,
) {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(o.add(8 * r));
        }
        for j in j0..j1 {
            let pj = _mm256_set1_ps(*p.add(j));
            let vr = v.add(j * d);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr.add(8 * r)), *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * r), *a);
        }
    }
}

#[inline(always)]
unsafe fn heads<const G: usize>(
    qs: &[f32],
    k: &[f32],
    d: usize,
    scale: f32,
    s: &mut [f32],
    page: usize,
    h0: usize,
) {
    let n = k.len() / d.max(1);
    let full = d / 8 * 8;
    let q = qs.as_ptr();
    unsafe {
        for j in 0..n {
            let kr = k.as_ptr().add(j * d);
            let mut acc = [_mm256_setzero_ps(); G];
            let mut c = 0;
            while c < full {
                let kv = _mm256_loadu_ps(kr.add(c));
                for (h, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_loadu_ps(q.add((h0 + h) * d + c));
                    *a = _mm256_fmadd_ps(qv, kv, *a);
                }
                c += 8;
            }
            for (h, a) in acc.iter().enumerate() {
                let mut t = hsum(*a);
                for cc in full..d {
                    t = (*q.add((h0 + h) * d + cc)).mul_add(*kr.add(cc), t);
                }
                s[(h0 + h) * page + j] = t * scale;
            }
        }
    }
}
