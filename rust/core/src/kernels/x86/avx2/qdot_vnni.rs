//! AVX-VNNI (256-bit `vpdpbusd`, VEX) body of `kernels/qdot.rs` for CPUs with AVX2 and AVX-VNNI
//! (Alder Lake and later, Zen 5); chosen per call by `Avx2::qdot_rows` when the CPU has it.
//!
//! The AVX-512-VNNI body's scheme (`x86/avx512/qdot.rs`) at half the width, so also
//! **bit-identical** to `qdot::scalar_task`: 8 weight rows per tile, one per float lane; per
//! block the rows' unsigned bytes (Q8_0 `w + 128`, Q4_0 the raw nibbles `w + 8`) are transposed
//! into `T_k` (lane `r`: bytes `4k..4k+4` of row `r`), `P = sum_k vpdpbusd(T_k,
//! broadcast(qx[4k..4k+4]))` is the exact `sum u qx` per row, `isum = P - off * sum(qx)` the
//! reference's integer block sum, and `s += (dw * dx) * float(isum)` with no FMA, in block order.

use crate::kernels::qdot::{block_corr, store_sums, QActs, QRowsOut};
use crate::kernels::quant::{QWeight, QK};
use std::arch::x86_64::*;

/// A block format: `BB` bytes per block, `OFF` the offset of its unsigned bytes, `ints(p)` the
/// 32 unsigned bytes of the block at `p` (its f16 scale) in element order.
pub trait VFmt {
    const BB: usize;
    const OFF: i32;
    unsafe fn ints(p: *const u8) -> __m256i;
}
pub struct Q8;
pub struct Q4;

impl VFmt for Q8 {
    const BB: usize = 34;
    const OFF: i32 = 128;
    #[inline(always)]
    unsafe fn ints(p: *const u8) -> __m256i {
        unsafe {
            let v = _mm256_loadu_si256(p.add(2) as *const __m256i);
            _mm256_xor_si256(v, _mm256_set1_epi8(-128))
        }
    }
}

impl VFmt for Q4 {
    const BB: usize = 18;
    const OFF: i32 = 8;
    #[inline(always)]
    unsafe fn ints(p: *const u8) -> __m256i {
        unsafe { <super::qdot::Q4 as super::qdot::QFmt>::ints(p) }
    }
}

/// Bytes 0-1 of each dword (the gathered f16 scales), packed by `vpshufb` + `vpermq` into
/// the low 128 bits.
#[inline(always)]
unsafe fn pick() -> __m256i {
    unsafe {
        _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
            -1, -1, -1, -1, -1, -1, -1,
        )
    }
}

// No software prefetch: measured at K = N = 8192 with 2 threads, prefetching each row's
// stream 256 B to 4 KiB ahead, or the next tile while this one runs, was no faster than the
// hardware prefetcher alone (the next-tile sweep made the 16-row AVX-512 body 2x slower).

/// Weight rows `j..j+8` (those `< n1` stored) against activation rows `i..i+MR`; `corr[e]` is
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
        let rel: [usize; 8] = std::array::from_fn(|r| (j + r).min(n1 - 1) - j);
        let p: [*const u8; 8] = rel.map(|r| base.add(r * rb));
        // The tile spans at most 8 rows: its byte offsets fit in i32 (checked by the caller).
        let idx = _mm256_loadu_si256(rel.map(|r| (r * rb) as i32).as_ptr() as *const __m256i);
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..nb {
            let off = b * F::BB;
            // (no closures around intrinsics: out of line they lose this function's target
            // features, see `avx512::qdot::tile_m1`)
            let z: [__m256i; 8] = [
                F::ints(p[0].add(off)),
                F::ints(p[1].add(off)),
                F::ints(p[2].add(off)),
                F::ints(p[3].add(off)),
                F::ints(p[4].add(off)),
                F::ints(p[5].add(off)),
                F::ints(p[6].add(off)),
                F::ints(p[7].add(off)),
            ];
            let t = [
                _mm256_unpacklo_epi32(z[0], z[1]),
                _mm256_unpackhi_epi32(z[0], z[1]),
                _mm256_unpacklo_epi32(z[2], z[3]),
                _mm256_unpackhi_epi32(z[2], z[3]),
                _mm256_unpacklo_epi32(z[4], z[5]),
                _mm256_unpackhi_epi32(z[4], z[5]),
                _mm256_unpacklo_epi32(z[6], z[7]),
                _mm256_unpackhi_epi32(z[6], z[7]),
            ];
            let s = [
                _mm256_unpacklo_epi64(t[0], t[2]),
                _mm256_unpackhi_epi64(t[0], t[2]),
                _mm256_unpacklo_epi64(t[1], t[3]),
                _mm256_unpackhi_epi64(t[1], t[3]),
                _mm256_unpacklo_epi64(t[4], t[6]),
                _mm256_unpackhi_epi64(t[4], t[6]),
                _mm256_unpacklo_epi64(t[5], t[7]),
                _mm256_unpackhi_epi64(t[5], t[7]),
            ];
            let tk = [
                _mm256_permute2x128_si256::<0x20>(s[0], s[4]),
                _mm256_permute2x128_si256::<0x20>(s[1], s[5]),
                _mm256_permute2x128_si256::<0x20>(s[2], s[6]),
                _mm256_permute2x128_si256::<0x20>(s[3], s[7]),
                _mm256_permute2x128_si256::<0x31>(s[0], s[4]),
                _mm256_permute2x128_si256::<0x31>(s[1], s[5]),
                _mm256_permute2x128_si256::<0x31>(s[2], s[6]),
                _mm256_permute2x128_si256::<0x31>(s[3], s[7]),
            ];
            let g = _mm256_i32gather_epi32::<1>(base.add(off) as *const i32, idx);
            let h = _mm256_permute4x64_epi64::<0b1000>(_mm256_shuffle_epi8(g, pick()));
            let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
            for (t, at) in acc.iter_mut().enumerate() {
                let e = (i + t) * nb + b;
                let xp = a.q.as_ptr().add((i + t) * k + b * QK) as *const i32;
                let x = |d: usize| _mm256_set1_epi32(xp.add(d).read_unaligned());
                let mut p0 = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), tk[0], x(0));
                let mut p1 = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), tk[1], x(1));
                p0 = _mm256_dpbusd_avx_epi32(p0, tk[2], x(2));
                p1 = _mm256_dpbusd_avx_epi32(p1, tk[3], x(3));
                p0 = _mm256_dpbusd_avx_epi32(p0, tk[4], x(4));
                p1 = _mm256_dpbusd_avx_epi32(p1, tk[5], x(5));
                p0 = _mm256_dpbusd_avx_epi32(p0, tk[6], x(6));
                p1 = _mm256_dpbusd_avx_epi32(p1, tk[7], x(7));
                let isum = _mm256_sub_epi32(_mm256_add_epi32(p0, p1), _mm256_set1_epi32(corr[e]));
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*a.d.get_unchecked(e)));
                *at = _mm256_add_ps(*at, _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)));
            }
        }
        let valid = (n1 - j).min(8);
        let mut out = [0f32; 8];
        for (t, at) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr(), *at);
            store_sums(&out[..valid], bias, c, (i + t) * ldc + j, j);
        }
    }
}

/// [`tile`] for one activation row: no transposition; per row `vpdpbusd` against the block
/// of `qx` leaves 8 partial sums, and a tree of `vpunpck*` + adds (14 shuffles per 8 rows,
/// against the transposition's 24) reduces them to one exact sum per lane.
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
        let rel: [usize; 8] = std::array::from_fn(|r| (j + r).min(n1 - 1) - j);
        let p: [*const u8; 8] = rel.map(|r| base.add(r * rb));
        let idx = _mm256_loadu_si256(rel.map(|r| (r * rb) as i32).as_ptr() as *const __m256i);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let off = b * F::BB;
            let e = i * nb + b;
            let xb = _mm256_loadu_si256(a.q.as_ptr().add(i * k + b * QK) as *const __m256i);
            let pr: [__m256i; 8] = [
                row_dot::<F>(p[0].add(off), xb),
                row_dot::<F>(p[1].add(off), xb),
                row_dot::<F>(p[2].add(off), xb),
                row_dot::<F>(p[3].add(off), xb),
                row_dot::<F>(p[4].add(off), xb),
                row_dot::<F>(p[5].add(off), xb),
                row_dot::<F>(p[6].add(off), xb),
                row_dot::<F>(p[7].add(off), xb),
            ];
            let qq = [
                hadd32(pr[0], pr[1]),
                hadd32(pr[2], pr[3]),
                hadd32(pr[4], pr[5]),
                hadd32(pr[6], pr[7]),
            ];
            let (r0, r1) = (hadd64(qq[0], qq[1]), hadd64(qq[2], qq[3]));
            let sum = _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(r0, r1),
                _mm256_permute2x128_si256::<0x31>(r0, r1),
            );
            let isum = _mm256_sub_epi32(sum, _mm256_set1_epi32(corr[e]));
            let gw = _mm256_i32gather_epi32::<1>(base.add(off) as *const i32, idx);
            let hw = _mm256_permute4x64_epi64::<0b1000>(_mm256_shuffle_epi8(gw, pick()));
            let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(hw));
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(*a.d.get_unchecked(e)));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)));
        }
        let valid = (n1 - j).min(8);
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        store_sums(&out[..valid], bias, c, i * ldc + j, j);
    }
}

/// Columns `n0..n1` of `C = X W^T + bias`: 8 weight rows at a time, activation rows in groups
/// of 4, 2 ([`tile`]) and 1 ([`tile_m1`]).
///
/// # Safety
/// The CPU has AVX2 + FMA + F16C + AVX-VNNI; the contract of [`QRowsOut`] for columns `n0..n1`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn task<F: VFmt>(o: QRowsOut<'_>, n0: usize, n1: usize) {
    let QRowsOut { a, w, bias, c, ldc } = o;
    assert!(8 * w.row_bytes() <= i32::MAX as usize, "weight rows too long for the gather");
    let corr = block_corr(a, F::OFF);
    let mut j = n0;
    unsafe {
        while j < n1 {
            let mut i = 0;
            while i + 4 <= a.m {
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
            j += 8;
        }
    }
}

/// `vpdpbusd` (AVX-VNNI) of one row's unsigned bytes against the activation block.
#[inline(always)]
unsafe fn row_dot<F: VFmt>(p: *const u8, xb: __m256i) -> __m256i {
    unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), F::ints(p), xb) }
}

/// Pairwise sums of 32-bit lanes of `u` and `v`.
#[inline(always)]
unsafe fn hadd32(u: __m256i, v: __m256i) -> __m256i {
    unsafe { _mm256_add_epi32(_mm256_unpacklo_epi32(u, v), _mm256_unpackhi_epi32(u, v)) }
}

/// Pairwise sums of 64-bit lanes of `u` and `v`.
#[inline(always)]
unsafe fn hadd64(u: __m256i, v: __m256i) -> __m256i {
    unsafe { _mm256_add_epi32(_mm256_unpacklo_epi64(u, v), _mm256_unpackhi_epi64(u, v)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Ext;
    use crate::kernels::qdot::tests::{check_bit_identical, expect};
    use crate::kernels::quant::Format;

    #[test]
    fn avxvnni_bit_identical_to_scalar() {
        if !expect(Ext::AvxVnni) {
            eprintln!("skipped: no AVX-VNNI on this CPU");
            return;
        }
        check_bit_identical("avxvnni", &|fmt, o, n0, n1| unsafe {
            match fmt {
                Format::Q8_0 => task::<Q8>(o, n0, n1),
                _ => task::<Q4>(o, n0, n1),
            }
        });
    }
}
