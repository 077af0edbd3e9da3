//! AVX2+FMA(+F16C) intrinsics of `kernels/qdot.rs` (the scalar reference, the driver and the tests
//! are there).

use crate::kernels::qdot::{self, QActs, QRowsOut};
use crate::kernels::quant::{QWeight, QK};
use crate::kernels::x86::{f16_scale, hsum};
use std::arch::x86_64::*;

/// A block format: `BB` bytes per block; `ints` gives its 32 weights as int8 lanes, signed
/// (`SIGNED`, multiplied with the sign trick) or unsigned `0..=15` (Q4_0's raw nibbles,
/// multiplied directly; the offset `-8 * sum(qx)` is subtracted afterwards from `s8`).
pub trait QFmt {
    const BB: usize;
    const SIGNED: bool;
    unsafe fn ints(p: *const u8) -> __m256i;
}
pub struct Q8;
pub struct Q4;
impl QFmt for Q8 {
    const BB: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn ints(p: *const u8) -> __m256i {
        unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) }
    }
}
impl QFmt for Q4 {
    const BB: usize = 18;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn ints(p: *const u8) -> __m256i {
        unsafe {
            // Bytes 0..16: low nibbles (elements 0..15); 16..32: high nibbles (16..31).
            let raw = _mm_loadu_si128(p.add(2) as *const __m128i);
            let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }
    }
}

/// [`crate::kernels::qdot::round_block`] with AVX2: the same bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool {
    unsafe {
        let p = xb.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let a = v.map(|t| _mm256_andnot_ps(sign, t));
        // |x| <= f32::MAX is false for Inf and NaN.
        let big = _mm256_set1_ps(f32::MAX);
        let ok = a.map(|t| _mm256_cmp_ps::<_CMP_LE_OQ>(t, big));
        let ok = _mm256_and_ps(_mm256_and_ps(ok[0], ok[1]), _mm256_and_ps(ok[2], ok[3]));
        if _mm256_movemask_ps(ok) != 0xff {
            return false;
        }
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        *db = amax / 127.0;
        if amax < qdot::TINY {
            qdot::round_tiny(xb, qb, amax);
        } else {
            let id = _mm256_set1_ps(127.0 / amax);
            let r = v.map(|t| {
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(t, id),
                );
                _mm256_cvtps_epi32(t)
            });
            // int32 -> int8 (saturating) and back into element order.
            let i01 = _mm256_packs_epi32(r[0], r[1]);
            let i23 = _mm256_packs_epi32(r[2], r[3]);
            let q = _mm256_packs_epi16(i01, i23);
            let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            let q = _mm256_max_epi8(q, _mm256_set1_epi8(-127));
            _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, q);
        }
        let q = _mm256_loadu_si256(qb.as_ptr() as *const __m256i);
        let s2 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
        let s4 = _mm256_madd_epi16(s2, _mm256_set1_epi16(1));
        _mm256_storeu_si256(sb.as_mut_ptr() as *mut __m256i, _mm256_slli_epi32(s4, 3));
        true
    }
}

/// Bytes ahead to prefetch in the tile's run of weight rows. The hardware prefetcher alone
/// left the kernel waiting on DRAM (q4_0 at 3.5-4 GB/s of weight bytes, against 11-13 GB/s
/// with 8 KiB ahead; 0.5-2 KiB ahead did little), measured on a 2048 x 32000 weight.
const PF: usize = 8192;

/// Rows `j..j+RN` of W against rows `i..i+MR` of the rounded activations.
#[inline(always)]
unsafe fn tile<F: QFmt, const RN: usize, const MR: usize>(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) {
    unsafe {
        let nb = a.k / QK;
        let rb = w.row_bytes();
        let base = w.data.as_ptr().add(j * rb);
        let mut acc = [[_mm256_setzero_ps(); MR]; RN];
        for b in 0..nb {
            // The tile's rows are one contiguous run of bytes, consumed RN * BB bytes per
            // block: prefetch that run sequentially, `PF` bytes ahead.
            let ahead = base.add(b * RN * F::BB + PF);
            for l in 0..(RN * F::BB).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.add(64 * l) as *const i8);
            }
            block_step::<F, RN, MR>(a, base, rb, b, i, &mut acc);
        }
        store_tile(&acc, bias, c, ldc, i, j);
    }
}

/// One block `b` of weight rows at `base` (row stride `rb`) against activation rows
/// `i..i+MR`, added to `acc`: per 32 weights and row, `vpmaddubsw` (on `|w|` and
/// `sign(qx, w)`, or on Q4_0's raw nibbles), `vpmaddwd` with ones, the Q4_0 offset
/// subtracted, and one FMA by `dw * dx`.
#[inline(always)]
unsafe fn block_step<F: QFmt, const RN: usize, const MR: usize>(
    a: &QActs,
    base: *const u8,
    rb: usize,
    b: usize,
    i: usize,
    acc: &mut [[__m256; MR]; RN],
) {
    unsafe {
        let (k, nb) = (a.k, a.k / QK);
        let ones = _mm256_set1_epi16(1);
        let mut wv = [_mm256_setzero_si256(); RN];
        let mut aw = [_mm256_setzero_si256(); RN];
        let mut dw = [_mm256_setzero_ps(); RN];
        for r in 0..RN {
            let p = base.add(r * rb + b * F::BB);
            wv[r] = F::ints(p);
            aw[r] = if F::SIGNED { _mm256_abs_epi8(wv[r]) } else { wv[r] };
            dw[r] = f16_scale(p);
        }
        for t in 0..MR {
            let e = (i + t) * nb + b;
            let xq = _mm256_loadu_si256(a.q.as_ptr().add((i + t) * k + b * QK) as *const __m256i);
            let dxv = _mm256_broadcast_ss(&*a.d.as_ptr().add(e));
            let off = if F::SIGNED {
                _mm256_setzero_si256()
            } else {
                _mm256_loadu_si256(a.s8.as_ptr().add(e * 8) as *const __m256i)
            };
            for r in 0..RN {
                let sx = if F::SIGNED { _mm256_sign_epi8(xq, wv[r]) } else { xq };
                let mut p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], sx), ones);
                if !F::SIGNED {
                    p32 = _mm256_sub_epi32(p32, off);
                }
                let d = _mm256_mul_ps(dw[r], dxv);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), d, acc[r][t]);
            }
        }
    }
}

/// `C[i + t, j + r] = hsum(acc[r][t]) + bias[j + r]`.
#[inline(always)]
unsafe fn store_tile<const RN: usize, const MR: usize>(
    acc: &[[__m256; MR]; RN],
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) {
    for r in 0..RN {
        let bv = bias.map_or(0.0, |b| b[j + r]);
        for t in 0..MR {
            // SAFETY (caller): C holds rows i..i+MR and columns j..j+RN.
            unsafe { *c.add((i + t) * ldc + j + r) = hsum(acc[r][t]) + bv };
        }
    }
}

/// Q4_0 rows `j..j+RN` of W against one activation row, two blocks at a time: the 2 x 16
/// bytes of nibbles of blocks `2p` and `2p + 1` side by side in one register, so masking
/// and shifting unpack 64 weights, one `vpmaddubsw` each for the low and the high nibbles
/// against [`Q4Pairs`]' matching layout, their int16 sums added (at most 2 x 2 x 15 x 127,
/// no overflow) and widened once; lanes 0..4 then hold block `2p`'s partial sums and 4..8
/// block `2p + 1`'s, scaled by `[dw0 dx0 x4, dw1 dx1 x4]` in one FMA. An odd last block
/// takes [`block_step`]. Same exact integer block sums as the scalar
/// reference; only the float sum's order differs.
#[inline(always)]
unsafe fn tile_q4_pairs<const RN: usize, const MR: usize>(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) {
    unsafe {
        let nb = a.k / QK;
        let np = nb / 2;
        let rb = w.row_bytes();
        let base = w.data.as_ptr().add(j * rb);
        let at = i * np;
        let pq = a.pairs.q.as_ptr().add(64 * at);
        let ps = a.pairs.s8.as_ptr().add(8 * at);
        let pd = a.pairs.d.as_ptr().add(8 * at);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let mut acc = [[_mm256_setzero_ps(); MR]; RN];
        for p in 0..np {
            let ahead = base.add(p * 2 * RN * 18 + PF);
            for l in 0..(2 * RN * 18).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.add(64 * l) as *const i8);
            }
            let mut lo = [_mm256_setzero_si256(); RN];
            let mut hi = [_mm256_setzero_si256(); RN];
            let mut dw = [_mm256_setzero_ps(); RN];
            for r in 0..RN {
                let bp = base.add(r * rb + 2 * p * 18);
                let raw = _mm256_set_m128i(
                    _mm_loadu_si128(bp.add(20) as *const __m128i),
                    _mm_loadu_si128(bp.add(2) as *const __m128i),
                );
                lo[r] = _mm256_and_si256(raw, low);
                hi[r] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                let bits = (bp as *const u16).read_unaligned() as i32
                    | (((bp.add(18) as *const u16).read_unaligned() as i32) << 16);
                dw[r] = _mm256_permutevar8x32_ps(
                    _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))),
                    spread,
                );
            }
            for t in 0..MR {
                let e = t * np + p;
                let xlo = _mm256_loadu_si256(pq.add(64 * e) as *const __m256i);
                let xhi = _mm256_loadu_si256(pq.add(64 * e + 32) as *const __m256i);
                let off = _mm256_loadu_si256(ps.add(8 * e) as *const __m256i);
                let dx = _mm256_loadu_ps(pd.add(8 * e));
                for r in 0..RN {
                    let s16 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo[r], xlo),
                        _mm256_maddubs_epi16(hi[r], xhi),
                    );
                    let p32 = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), off);
                    let d = _mm256_mul_ps(dw[r], dx);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), d, acc[r][t]);
                }
            }
        }
        if nb % 2 == 1 {
            block_step::<Q4, RN, MR>(a, base, rb, nb - 1, i, &mut acc);
        }
        store_tile(&acc, bias, c, ldc, i, j);
    }
}

/// One `RN x MR` tile: by pairs of blocks ([`tile_q4_pairs`], Q4_0) or one block at a time.
#[inline(always)]
unsafe fn tile_of<F: QFmt, const RN: usize, const MR: usize, const PAIRS: bool>(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) {
    unsafe {
        if PAIRS {
            tile_q4_pairs::<RN, MR>(a, w, bias, c, ldc, i, j)
        } else {
            tile::<F, RN, MR>(a, w, bias, c, ldc, i, j)
        }
    }
}

/// Rows `j..j+RN` of W against all `m` activation rows, in groups of 4, 2, 1.
#[inline(always)]
unsafe fn rows<F: QFmt, const RN: usize, const PAIRS: bool>(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    j: usize,
) {
    let mut i = 0;
    unsafe {
        while i + 4 <= a.m {
            tile_of::<F, RN, 4, PAIRS>(a, w, bias, c, ldc, i, j);
            i += 4;
        }
        if i + 2 <= a.m {
            tile_of::<F, RN, 2, PAIRS>(a, w, bias, c, ldc, i, j);
            i += 2;
        }
        if i < a.m {
            tile_of::<F, RN, 1, PAIRS>(a, w, bias, c, ldc, i, j);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn task<F: QFmt>(o: QRowsOut<'_>, n0: usize, n1: usize) {
    let QRowsOut { a, w, bias, c, ldc } = o;
    let mut j = n0;
    unsafe {
        if !F::SIGNED && a.k >= 2 * QK {
            // Q4_0 by pairs of blocks.
            if a.m == 1 {
                while j + 4 <= n1 {
                    tile_q4_pairs::<4, 1>(a, w, bias, c, ldc, 0, j);
                    j += 4;
                }
            }
            while j < n1 {
                rows::<F, 1, true>(a, w, bias, c, ldc, j);
                j += 1;
            }
            return;
        }
        if a.m == 1 {
            while j + 4 <= n1 {
                tile::<F, 4, 1>(a, w, bias, c, ldc, 0, j);
                j += 4;
            }
        } else {
            while j + 2 <= n1 {
                rows::<F, 2, false>(a, w, bias, c, ldc, j);
                j += 2;
            }
        }
        while j < n1 {
            rows::<F, 1, false>(a, w, bias, c, ldc, j);
            j += 1;
        }
    }
}
