//! AVX-512-VNNI (`vpdpbusd`) body of `kernels/qdot.rs` (the scalar reference, the driver and the
//! maths are there; the tests of this body are at the end of this file).
//!
//! 16 weight rows per tile, one per float lane, so that each output's sum over blocks is the
//! scalar reference's, in the same order and with the same roundings: **bit-identical** to
//! `qdot::scalar_task`. Per block `b`:
//!
//! - the 32 weights of each row are made unsigned bytes `u`: Q8_0 `u = w + 128` (`w ^ 0x80`),
//!   Q4_0 its raw nibbles `u = w + 8` (`0..=15`);
//! - the 16 rows x 8 dwords (4 bytes each) are transposed in registers (`vpunpck*`,
//!   `vshufi32x4`) into `T_k`, `k < 8`, whose lane `r` holds bytes `4k..4k+4` of row `r`;
//! - `P = sum_k vpdpbusd(T_k, broadcast(qx[4k..4k+4]))` holds in lane `r` the exact
//!   `sum_i u[r, i] qx[i]` (at most `32 * 255 * 127`, no overflow; `vpdpbusd` does not
//!   saturate), and `isum = P - off * sum_i qx[i]` (`off` = 128 or 8) is the exact integer
//!   block sum of the reference;
//! - `s += (dw * dx) * float(isum)` lane-wise (a multiply, a multiply, an add: no FMA, as the
//!   reference), with `dw` the 16 rows' f16 scales (one gather, `vcvtph2ps`).
//!
//! Rows past the task's last are computed on a copy of its last row and not stored. The
//! activation rows are taken in groups of 8, 4, 2, each reusing the transposed weights; a single
//! row (decode at M = 1) skips the transposition and reduces its 16 rows' partial sums instead
//! ([`tile_m1`]: fewer shuffles for one row, the same exact sums in the same lanes).

use crate::kernels::qdot::{block_corr, store_sums, QActs, QRowsOut};
use crate::kernels::quant::{QWeight, QK};
use std::arch::x86_64::*;

/// A block format for this body: `BB` bytes per block, `OFF` the offset of its unsigned bytes
/// (`u = w + OFF`), and `pair(a, b)`: the unsigned bytes of two rows' blocks (`a`, `b` point
/// at the f16 scale), row `a` in the low 256 bits and row `b` in the high, each in element order.
pub trait VFmt {
    const BB: usize;
    const OFF: i32;
    unsafe fn pair(a: *const u8, b: *const u8) -> __m512i;
}
pub struct Q8;
pub struct Q4;

impl VFmt for Q8 {
    const BB: usize = 34;
    const OFF: i32 = 128;
    #[inline(always)]
    unsafe fn pair(a: *const u8, b: *const u8) -> __m512i {
        unsafe {
            let lo = _mm256_loadu_si256(a.add(2) as *const __m256i);
            let hi = _mm256_loadu_si256(b.add(2) as *const __m256i);
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            _mm512_xor_si512(v, _mm512_set1_epi8(-128))
        }
    }
}

impl VFmt for Q4 {
    const BB: usize = 18;
    const OFF: i32 = 8;
    #[inline(always)]
    unsafe fn pair(a: *const u8, b: *const u8) -> __m512i {
        unsafe {
            // [a, a, b, b] by 128-bit lanes, the 2nd and 4th shifted by 4: low nibbles are
            // elements 0..16, high nibbles 16..32.
            let ra = _mm256_broadcastsi128_si256(_mm_loadu_si128(a.add(2) as *const __m128i));
            let rb = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.add(2) as *const __m128i));
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ra), rb);
            let v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
            _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
        }
    }
}

// Tried and not kept (2026-12-04): a ggml-order body at M = 1 (4 weight rows at a time, each
// read front to back; per pair of blocks one `vpdpbusd` against 64 activation bytes, per-lane
// float sums with FMAs, the 16 lanes summed at the end of a row; not bit-identical). Measured
// against `tile_m1` in one interleaved loop, 2 threads: 0.84-0.90x from cache and 0.87-1.10x
// over 512 MiB of distinct weights, so the exact transposing body stays.
// Cold reads (512 MiB of distinct 4096^2 weights, 2026-12-04): one thread streams Q4_0 at
// 7.5 GB/s and Q8_0 at 13 GB/s (17 / 25 GB/s from cache); prefetching each row 256 B-4 KiB
// ahead, or the next tile's rows front to back, did not change that.
// No software prefetch: measured at K = N = 8192 with 2 threads, prefetching each row's
// stream 256 B to 4 KiB ahead, or the next tile while this one runs, was no faster than the
// hardware prefetcher alone (and the next-tile sweep was 2x slower with 16 rows).

/// Weight rows `j..j+16` (those `< n1` stored) against activation rows `i..i+MR`; `corr[e]` is
/// `OFF * sum(qx)` of activation block `e`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<F: VFmt, const MR: usize>(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
    n1: usize,
    corr: &[i32],
) {
    unsafe {
        let (k, nb) = (a.k, a.k / QK);
        let rb = w.row_bytes();
        let base = w.data.as_ptr().add(j * rb);
        let rel: [usize; 16] = std::array::from_fn(|r| (j + r).min(n1 - 1) - j);
        let p: [*const u8; 16] = rel.map(|r| base.add(r * rb));
        // The tile spans at most 16 rows: its byte offsets fit in i32 (checked by the caller).
        let idx = _mm512_loadu_si512(rel.map(|r| (r * rb) as i32).as_ptr() as *const __m512i);
        let mut acc = [_mm512_setzero_ps(); MR];
        for b in 0..nb {
            let off = b * F::BB;
            // Z_q = [row q | row q + 4], Z_{4+q} = [row 8 + q | row 12 + q]: after the
            // transposition below, lane r of T_k is row r.
            // (no closures around intrinsics: see `tile_m1`)
            let z: [__m512i; 8] = [
                F::pair(p[0].add(off), p[4].add(off)),
                F::pair(p[1].add(off), p[5].add(off)),
                F::pair(p[2].add(off), p[6].add(off)),
                F::pair(p[3].add(off), p[7].add(off)),
                F::pair(p[8].add(off), p[12].add(off)),
                F::pair(p[9].add(off), p[13].add(off)),
                F::pair(p[10].add(off), p[14].add(off)),
                F::pair(p[11].add(off), p[15].add(off)),
            ];
            let t = [
                _mm512_unpacklo_epi32(z[0], z[1]),
                _mm512_unpackhi_epi32(z[0], z[1]),
                _mm512_unpacklo_epi32(z[2], z[3]),
                _mm512_unpackhi_epi32(z[2], z[3]),
                _mm512_unpacklo_epi32(z[4], z[5]),
                _mm512_unpackhi_epi32(z[4], z[5]),
                _mm512_unpacklo_epi32(z[6], z[7]),
                _mm512_unpackhi_epi32(z[6], z[7]),
            ];
            let s = [
                _mm512_unpacklo_epi64(t[0], t[2]),
                _mm512_unpackhi_epi64(t[0], t[2]),
                _mm512_unpacklo_epi64(t[1], t[3]),
                _mm512_unpackhi_epi64(t[1], t[3]),
                _mm512_unpacklo_epi64(t[4], t[6]),
                _mm512_unpackhi_epi64(t[4], t[6]),
                _mm512_unpacklo_epi64(t[5], t[7]),
                _mm512_unpackhi_epi64(t[5], t[7]),
            ];
            let tk = [
                _mm512_shuffle_i32x4::<0x88>(s[0], s[4]),
                _mm512_shuffle_i32x4::<0x88>(s[1], s[5]),
                _mm512_shuffle_i32x4::<0x88>(s[2], s[6]),
                _mm512_shuffle_i32x4::<0x88>(s[3], s[7]),
                _mm512_shuffle_i32x4::<0xdd>(s[0], s[4]),
                _mm512_shuffle_i32x4::<0xdd>(s[1], s[5]),
                _mm512_shuffle_i32x4::<0xdd>(s[2], s[6]),
                _mm512_shuffle_i32x4::<0xdd>(s[3], s[7]),
            ];
            // The 16 f16 scales (the low half of the dword at each block's start).
            let g = _mm512_i32gather_epi32::<1>(idx, base.add(off) as *const i32);
            let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
            for (t, at) in acc.iter_mut().enumerate() {
                *at = block_step(a, &tk, dw, corr, (i + t) * nb + b, (i + t) * k + b * QK, *at);
            }
        }
        let valid = (n1 - j).min(16);
        let mut out = [0f32; 16];
        for (t, at) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr(), *at);
            store_sums(&out[..valid], bias, c, (i + t) * ldc + j, j);
        }
    }
}

/// One block of one activation row against 16 weight rows given as the `vpdpbusd` operands
/// `T_k` (lane `r` = bytes `4k..4k+4` of row `r`'s unsigned values): the exact integer sums,
/// minus `corr[e]` (`OFF * sum(qx)` of activation block `e`, whose values start at `a.q[q0]`),
/// then `acc + (dw * dx) * float(isum)` as the scalar reference computes it.
#[inline(always)]
pub(crate) unsafe fn block_step(
    a: &QActs,
    tk: &[__m512i; 8],
    dw: __m512,
    corr: &[i32],
    e: usize,
    q0: usize,
    acc: __m512,
) -> __m512 {
    unsafe {
        // (no closures around intrinsics: see `tile_m1`)
        let xp = a.q.as_ptr().add(q0) as *const i32;
        let mut p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), tk[0], bcast32(xp));
        let mut p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), tk[1], bcast32(xp.add(1)));
        p0 = _mm512_dpbusd_epi32(p0, tk[2], bcast32(xp.add(2)));
        p1 = _mm512_dpbusd_epi32(p1, tk[3], bcast32(xp.add(3)));
        p0 = _mm512_dpbusd_epi32(p0, tk[4], bcast32(xp.add(4)));
        p1 = _mm512_dpbusd_epi32(p1, tk[5], bcast32(xp.add(5)));
        p0 = _mm512_dpbusd_epi32(p0, tk[6], bcast32(xp.add(6)));
        p1 = _mm512_dpbusd_epi32(p1, tk[7], bcast32(xp.add(7)));
        let isum = _mm512_sub_epi32(_mm512_add_epi32(p0, p1), _mm512_set1_epi32(corr[e]));
        let d = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(e)));
        _mm512_add_ps(acc, _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum)))
    }
}

/// The 4 bytes at `p` (unaligned) in every 32-bit lane.
#[inline(always)]
unsafe fn bcast32(p: *const i32) -> __m512i {
    unsafe { _mm512_set1_epi32(p.read_unaligned()) }
}

/// `vpdpbusd` of two rows' unsigned bytes (`F::pair`) against the broadcast activation block.
#[inline(always)]
unsafe fn pair_dot<F: VFmt>(a: *const u8, b: *const u8, xb: __m512i) -> __m512i {
    unsafe { _mm512_dpbusd_epi32(_mm512_setzero_si512(), F::pair(a, b), xb) }
}

/// Pairwise sums of 32-bit lanes of `u` and `v` (interleaved by `vpunpck[lh]dq`).
#[inline(always)]
unsafe fn hadd32(u: __m512i, v: __m512i) -> __m512i {
    unsafe { _mm512_add_epi32(_mm512_unpacklo_epi32(u, v), _mm512_unpackhi_epi32(u, v)) }
}

/// Pairwise sums of 64-bit lanes of `u` and `v` (interleaved by `vpunpck[lh]qdq`).
#[inline(always)]
unsafe fn hadd64(u: __m512i, v: __m512i) -> __m512i {
    unsafe { _mm512_add_epi32(_mm512_unpacklo_epi64(u, v), _mm512_unpackhi_epi64(u, v)) }
}

/// [`tile`] for one activation row: no transposition; per pair of rows `vpdpbusd` against
/// the block of `qx` (broadcast to both halves) leaves 8 partial sums per row, and a tree of
/// `vpunpck*` + adds (14 shuffles per 16 rows, against the transposition's 24) reduces them to
/// one exact sum per lane, in the same lane order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_m1<F: VFmt>(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
    n1: usize,
    corr: &[i32],
) {
    unsafe {
        let (k, nb) = (a.k, a.k / QK);
        let rb = w.row_bytes();
        let base = w.data.as_ptr().add(j * rb);
        let rel: [usize; 16] = std::array::from_fn(|r| (j + r).min(n1 - 1) - j);
        let p: [*const u8; 16] = rel.map(|r| base.add(r * rb));
        let idx = _mm512_loadu_si512(rel.map(|r| (r * rb) as i32).as_ptr() as *const __m512i);
        let mut acc = _mm512_setzero_ps();
        for b in 0..nb {
            let off = b * F::BB;
            let e = i * nb + b;
            let xb = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                a.q.as_ptr().add(i * k + b * QK) as *const __m256i
            ));
            // P_q = [row q | row q + 4] and [row 8 + q | row 12 + q], 8 partial sums each.
            // (Plain calls of `#[inline(always)]` functions, not closures: a closure is not
            // always inlined, and out of line it is compiled without this function's target
            // features, each intrinsic then a call: 9x slower, as a rebuild once showed.)
            let pq: [__m512i; 8] = [
                pair_dot::<F>(p[0].add(off), p[4].add(off), xb),
                pair_dot::<F>(p[1].add(off), p[5].add(off), xb),
                pair_dot::<F>(p[2].add(off), p[6].add(off), xb),
                pair_dot::<F>(p[3].add(off), p[7].add(off), xb),
                pair_dot::<F>(p[8].add(off), p[12].add(off), xb),
                pair_dot::<F>(p[9].add(off), p[13].add(off), xb),
                pair_dot::<F>(p[10].add(off), p[14].add(off), xb),
                pair_dot::<F>(p[11].add(off), p[15].add(off), xb),
            ];
            let qq = [
                hadd32(pq[0], pq[1]),
                hadd32(pq[2], pq[3]),
                hadd32(pq[4], pq[5]),
                hadd32(pq[6], pq[7]),
            ];
            let (r0, r1) = (hadd64(qq[0], qq[1]), hadd64(qq[2], qq[3]));
            let sum = _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0x88>(r0, r1),
                _mm512_shuffle_i32x4::<0xdd>(r0, r1),
            );
            let isum = _mm512_sub_epi32(sum, _mm512_set1_epi32(corr[e]));
            let gw = _mm512_i32gather_epi32::<1>(idx, base.add(off) as *const i32);
            let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gw));
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(e)));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum)));
        }
        let valid = (n1 - j).min(16);
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
        store_sums(&out[..valid], bias, c, i * ldc + j, j);
    }
}

/// Columns `n0..n1` of `C = X W^T + bias`: 16 weight rows at a time, activation rows in groups
/// of 8, 4, 2 ([`tile`]) and 1 ([`tile_m1`]).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ + VNNI; the contract of [`QRowsOut`] for columns `n0..n1`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub unsafe fn task<F: VFmt>(o: QRowsOut<'_>, n0: usize, n1: usize) {
    let QRowsOut { a, w, bias, c, ldc } = o;
    assert!(16 * w.row_bytes() <= i32::MAX as usize, "weight rows too long for the gather");
    let corr = block_corr(a, F::OFF);
    let mut j = n0;
    unsafe {
        while j < n1 {
            let mut i = 0;
            while i + 8 <= a.m {
                tile::<F, 8>(a, w, bias, c, ldc, i, j, n1, &corr);
                i += 8;
            }
            if i + 4 <= a.m {
                tile::<F, 4>(a, w, bias, c, ldc, i, j, n1, &corr);
                i += 4;
            }
            if i + 2 <= a.m {
                tile::<F, 2>(a, w, bias, c, ldc, i, j, n1, &corr);
                i += 2;
            }
            if i < a.m {
                tile_m1::<F>(a, w, bias, c, ldc, i, j, n1, &corr);
            }
            j += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Ext;
    use crate::kernels::qdot::tests::{check_bit_identical, expect};
    use crate::kernels::quant::Format;

    #[test]
    fn vnni512_bit_identical_to_scalar() {
        if !expect(Ext::Avx512Vnni) {
            eprintln!("skipped: no AVX-512-VNNI on this CPU");
            return;
        }
        check_bit_identical("avx512vnni", &|fmt, o, n0, n1| unsafe {
            match fmt {
                Format::Q8_0 => task::<Q8>(o, n0, n1),
                _ => task::<Q4>(o, n0, n1),
            }
        });
    }
}
