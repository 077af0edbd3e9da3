//! AVX-512F intrinsics of `kernels/paged.rs` (paged decode attention): the scores and the `P V`
//! accumulation on 16 lanes, the tails of `D mod 16` by masked loads and stores; the scores of
//! up to 8 heads are reduced together (one shuffle tree for 8 dot products).
//!
//! The accumulation does one FMA per value row `j`, in order, per output element, as the generic
//! body and the AVX2 path, so it gives the same bits; a score is a 16-lane dot product summed by
//! [`reduce8`] (another order than the AVX2 path's 8 lanes), so scores, and the
//! outputs through them, differ from the other paths by float32 rounding (tested against the
//! float64 reference in `paged_tests.rs`, within `2e-5`).

use crate::kernels::paged::{one, PageSource, Scratch};
use std::arch::x86_64::*;

/// One task of [`crate::kernels::paged`]'s decode: its generic body with FMA and these loops,
/// under AVX-512F.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub unsafe fn task<S: PageSource>(
    src: &S,
    q: &[f32],
    dims: (usize, usize, usize, usize),
    gsz: usize,
    lens: &[usize],
    scale: f32,
    t: usize,
    sc: &mut Scratch,
    dst: &mut [f32],
) {
    one::<true, true, S>(src, q, dims, gsz, lens, scale, t, sc, dst)
}

/// Lanes `0..n` of a vector (`n <= 16`).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// `s[hh * page + j] = (q_hh . k_j) * scale` for every head `hh` of `qs` (`gsz x d`) and key
/// row `j` of `k` (`n x d`): sixteen lanes of `d` per FMA, the last `d mod 16` masked; a key
/// row is loaded once for up to 8 heads.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub unsafe fn scores(qs: &[f32], k: &[f32], d: usize, scale: f32, s: &mut [f32], page: usize) {
    let gsz = qs.len() / d;
    let mut h0 = 0;
    while h0 < gsz {
        let g = match gsz - h0 {
            8.. => 8,
            4..=7 => 4,
            2..=3 => 2,
            _ => 1,
        };
        // SAFETY: heads h0..h0+g < gsz of qs, rows of k, s[(h0+h)*page + j] (the caller's
        // contract: s holds gsz pages of scores, k at most `page` rows).
        unsafe {
            match g {
                8 => heads::<8>(qs, k, d, scale, s, page, h0),
                4 => heads::<4>(qs, k, d, scale, s, page, h0),
                2 => heads::<2>(qs, k, d, scale, s, page, h0),
                _ => heads::<1>(qs, k, d, scale, s, page, h0),
            }
        }
        h0 += g;
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
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
    let (full, tail) = (d / 16 * 16, lanes(d % 16));
    let q = qs.as_ptr();
    // SAFETY: loads of d floats of key row j and of query rows h0..h0+G (tails masked).
    unsafe {
        for j in 0..n {
            let kr = k.as_ptr().add(j * d);
            let mut acc = [_mm512_setzero_ps(); G];
            let mut c = 0;
            while c < full {
                let kv = _mm512_loadu_ps(kr.add(c));
                for (h, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_loadu_ps(q.add((h0 + h) * d + c));
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
                c += 16;
            }
            if tail != 0 {
                let kv = _mm512_maskz_loadu_ps(tail, kr.add(c));
                for (h, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_maskz_loadu_ps(tail, q.add((h0 + h) * d + c));
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
            let sums = reduce8(std::array::from_fn(|h| if h < G { acc[h] } else { acc[0] }));
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
            for (h, o) in out.iter().take(G).enumerate() {
                s[(h0 + h) * page + j] = *o;
            }
        }
    }
}

/// The lane sums of 8 vectors, lane `h` of the result for vector `h`, all in one order: lanes
/// `l + (l + 8)`, then pairs, then quads, then the two halves (so a head's score does not depend
/// on how many heads share the call, as `paged.rs` requires).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
fn reduce8(v: [__m512; 8]) -> __m256 {
    let h = v.map(|a| _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a)));
    let t0 = _mm256_hadd_ps(h[0], h[1]);
    let t1 = _mm256_hadd_ps(h[2], h[3]);
    let t2 = _mm256_hadd_ps(h[4], h[5]);
    let t3 = _mm256_hadd_ps(h[6], h[7]);
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
}

/// `o[hh, :] += sum_j s[hh * page + j] * v[j, :]` for every head `hh` of `o` (`gsz x d`) and
/// row `j` of `v` (`n x d`): per element one FMA per `j` in order (the generic body's bits);
/// blocks of 32 value rows are swept once per head with its accumulators in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub unsafe fn accumulate(o: &mut [f32], s: &[f32], v: &[f32], d: usize, page: usize) {
    const JB: usize = 32;
    let (gsz, n) = (o.len() / d, v.len() / d);
    let mut j0 = 0;
    // SAFETY: columns c < d of rows hh < gsz of o and j < n of v; s[hh * page + j] (the
    // caller's contract, as for the AVX2 body).
    unsafe {
        while j0 < n {
            let j1 = (j0 + JB).min(n);
            for hh in 0..gsz {
                let oh = o.as_mut_ptr().add(hh * d);
                let ph = s.as_ptr().add(hh * page);
                let vp = v.as_ptr();
                let mut c = 0;
                while c + 64 <= d {
                    cols::<4>(oh.add(c), ph, vp.add(c), j0, j1, d, 0xffff);
                    c += 64;
                }
                while c + 16 <= d {
                    cols::<1>(oh.add(c), ph, vp.add(c), j0, j1, d, 0xffff);
                    c += 16;
                }
                if c < d {
                    cols::<1>(oh.add(c), ph, vp.add(c), j0, j1, d, lanes(d - c));
                }
            }
            j0 = j1;
        }
    }
}

/// `R` vectors of 16 accumulator columns at `o` (the last one's lanes `mask` only), over value
/// rows `j0..j1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn cols<const R: usize>(
    o: *mut f32,
    p: *const f32,
    v: *const f32,
    j0: usize,
    j1: usize,
    d: usize,
    mask: __mmask16,
) {
    let m = |r: usize| if r + 1 == R { mask } else { 0xffff };
    // SAFETY: the caller's bounds (see `accumulate`).
    unsafe {
        let mut acc: [__m512; R] =
            std::array::from_fn(|r| _mm512_maskz_loadu_ps(m(r), o.add(16 * r)));
        for j in j0..j1 {
            let pj = _mm512_set1_ps(*p.add(j));
            let vr = v.add(j * d);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m(r), vr.add(16 * r)), *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(o.add(16 * r), m(r), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;
    use crate::kernels::test_util::lcg;
    use crate::kernels::x86::avx2::paged as avx2;

    /// Every `D` tail (masked lanes, 16- and 64-column groups) and head grouping: the
    /// accumulation equals the AVX2 body bit for bit, the scores equal a float64 dot product
    /// within `1e-6 sum_c |q_c k_c|`.
    #[test]
    fn tails_match_avx2_and_float64() {
        if !Isa::Avx512.supported() {
            let want = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
            assert!(want != "avx512", "CPU lacks AVX-512");
            return;
        }
        let page = 37;
        for d in [1, 7, 16, 40, 64, 80, 100, 128, 136] {
            for gsz in [1, 3, 8, 11] {
                let (q, k, v) = (lcg(gsz * d, 1), lcg(page * d, 2), lcg(page * d, 3));
                let p = lcg(gsz * page, 4);
                let o0 = lcg(gsz * d, 5);
                let (mut s, mut o1, mut o2) = (vec![0f32; gsz * page], o0.clone(), o0);
                // SAFETY: AVX-512 checked above; the buffers hold the shapes of the contract.
                unsafe {
                    scores(&q, &k, d, 0.5, &mut s, page);
                    accumulate(&mut o1, &p, &v, d, page);
                    avx2::accumulate(&mut o2, &p, &v, d, page);
                }
                assert!(o1 == o2, "d {d} gsz {gsz}: accumulation differs from AVX2");
                for h in 0..gsz {
                    for j in 0..page {
                        let (qr, kr) = (&q[h * d..(h + 1) * d], &k[j * d..(j + 1) * d]);
                        let want: f64 = qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f64 =
                            qr.iter().zip(kr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                        let got = s[h * page + j] as f64;
                        assert!((got - 0.5 * want).abs() <= 1e-6 * mag + 1e-30, "d {d} gsz {gsz}");
                    }
                }
            }
        }
    }
}
