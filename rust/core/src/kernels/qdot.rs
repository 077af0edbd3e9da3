//! Decode-shape matmul for Q8_0 / Q4_0 weights with integer dot products (ggml's route).
//!
//! `C[m, n] = bias[n] + sum_b dw[n, b] * dx[m, b] * sum_{i < 32} qw[n, b, i] * qx[m, b, i]`
//!
//! The activations `X` are rounded once per call to Q8 blocks along `K` ([`QActs`]: per row `m`
//! and block `b` of 32 values, `dx = max|x| / 127` and `qx = round_half_even(x * (127 /
//! max|x|))` in float32, in `[-127, 127]`), the weight blocks are used as stored (`qw` the int8 values of Q8_0, or
//! `nibble - 8` of Q4_0, with the block's f16 scale `dw`), and each block's dot product is an
//! exact integer sum. Only the scale products and the sum over blocks are float arithmetic.
//!
//! Error against `X W~` with `W~` the dequantised weight: `|x - dx qx| <= dx / 2` per element
//! (plus float32 rounding of the scale), so the rounding of the activations adds at most
//! `sum_b dx[m, b] / 2 * sum_{k in b} |W~[k, n]|` to the usual float accumulation error.
//! Activations with an Inf or NaN are not rounded: the caller runs the exact float kernel, so
//! they propagate as IEEE 754 says.
//!
//! AVX2 (no VNNI needed): per 32 weights `vpmaddubsw(|w|, sign(qx, w))` sums pairs of
//! products in int16 (`|w| <= 128`, `|qx| <= 127`: at most 32512, no saturation), `vpmaddwd`
//! with ones widens to eight int32 lanes (Q4_0 multiplies its raw nibbles `0..=15` directly and
//! subtracts `8 * sum(qx)` per lane, precomputed with the activations), which are converted and scaled by `dw * dx` with one
//! FMA into a float accumulator. Register tile: `RN` weight rows x `MR` activation rows, with
//! `|w|` and `dw` of a weight block computed once per tile and used `MR` times.

use super::dot::{rows_per_task, SendPtr};
use super::quant::{block_scale, Format, QWeight, QK};
use crate::cpu::Isa;

/// Activations rounded to Q8 blocks along `K`: `q` `(m, k)` int8, `d` `(m, k / 32)` scales,
/// and `s8` `(m, k / 32, 8)`: `8 * (q[4l] + q[4l+1] + q[4l+2] + q[4l+3])` for lane `l` of each
/// block (the Q4_0 kernel's offset correction, see `avx2::Q4`).
#[derive(Clone, Debug)]
pub struct QActs {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub s8: Vec<i32>,
    pub m: usize,
    pub k: usize,
    /// The rows laid out for the AVX2 Q4_0 kernel's pairs of blocks (see
    /// `avx2::tile_q4_pairs`).
    pub pairs: Q4Pairs,
}

/// The activations by pairs of blocks `(2p, 2p + 1)` of a row: `q` holds 64 bytes per pair,
/// elements 0..16 of both blocks then elements 16..32 of both (matching the low and high
/// nibbles of two Q4_0 blocks loaded side by side); `s8` 8 lanes per pair, lane `l < 4`:
/// `8 * (sum q[4l..4l+4] + sum q[16+4l..16+4l+4])` of block `2p`, lanes `4..8` the same of block
/// `2p + 1`; `d` 8 lanes per pair: `dx` of block `2p` four times, then of block `2p + 1`.
#[derive(Clone, Debug, Default)]
pub struct Q4Pairs {
    pub q: Vec<i8>,
    pub s8: Vec<i32>,
    pub d: Vec<f32>,
}

impl Q4Pairs {
    /// The layout of every row of `q` (`m` rows of `nb` blocks): row `t`, pair `p` at index
    /// `t * (nb / 2) + p` (in units of 64 bytes, 8 lanes, 8 lanes).
    fn new(q: &[i8], d: &[f32], s8: &[i32], m: usize) -> Q4Pairs {
        let nb = d.len() / m.max(1);
        let np = m * (nb / 2);
        let mut p = Q4Pairs {
            q: Vec::with_capacity(64 * np),
            s8: Vec::with_capacity(8 * np),
            d: Vec::with_capacity(8 * np),
        };
        for i in 0..np {
            let (t, pi) = (i / (nb / 2), i % (nb / 2));
            let (b0, b1) = (t * nb + 2 * pi, t * nb + 2 * pi + 1);
            for half in [0..16, 16..32] {
                p.q.extend_from_slice(&q[b0 * QK..][half.clone()]);
                p.q.extend_from_slice(&q[b1 * QK..][half]);
            }
            for b in [b0, b1] {
                p.s8.extend((0..4).map(|l| s8[b * 8 + l] + s8[b * 8 + l + 4]));
                p.d.extend([d[b]; 4]);
            }
        }
        p
    }
}

/// Below this `max|x|` a block is rounded in float64: `127 / amax` would overflow float32.
const TINY: f32 = 1e-30;

/// Round `X` `(m, k)` (row-major, `k` a multiple of 32) to Q8 blocks, or `None` when `X` holds
/// an Inf or NaN (the caller then runs the exact float kernel).
///
/// Per block: `dx = amax / 127` and `qx = round_half_even(x * (127 / amax))` in float32 (as
/// ggml's `quantize_row_q8_0`); a block with `amax < 1e-30` computes `x * (127 / amax)` in
/// float64 instead. The AVX2 path gives the same bytes as the scalar one.
pub fn quantize_acts(isa: Isa, x: &[f32], m: usize, k: usize) -> Option<QActs> {
    debug_assert!(k % QK == 0 && x.len() >= m * k);
    let nb = k / QK;
    let mut q = vec![0i8; m * k];
    let mut d = vec![0f32; m * nb];
    let mut s8 = vec![0i32; m * nb * 8];
    let blocks = x[..m * k].chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(&mut d);
    for (((xb, qb), db), sb) in blocks.zip(s8.chunks_exact_mut(8)) {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2 is present (isa), the slices are one block each.
            if unsafe { avx2::round_block(xb, qb, db, sb) } {
                continue;
            }
            return None;
        }
        let _ = isa;
        if !round_block(xb, qb, db, sb) {
            return None;
        }
    }
    let pairs = Q4Pairs::new(&q, &d, &s8, m);
    Some(QActs { q, d, s8, m, k, pairs })
}

/// The scalar reference of one block (false: the block holds an Inf or NaN).
fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool {
    let mut amax = 0f32;
    let mut finite = true;
    for &v in xb {
        amax = amax.max(v.abs());
        finite &= v.is_finite();
    }
    if !finite {
        return false;
    }
    *db = amax / 127.0;
    if amax >= TINY {
        let id = 127.0 / amax;
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    } else {
        round_tiny(xb, qb, amax);
    }
    for (l, o) in sb.iter_mut().enumerate() {
        *o = 8 * qb[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
    }
    true
}

/// A block whose `amax` is below [`TINY`] (0 included), in float64.
fn round_tiny(xb: &[f32], qb: &mut [i8], amax: f32) {
    if amax > 0.0 {
        let id = 127.0 / amax as f64;
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v as f64 * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    } else {
        qb.fill(0);
    }
}

/// Does this format take the integer path?
pub fn is_int_format(fmt: Format) -> bool {
    matches!(fmt, Format::Q8_0 | Format::Q4_0)
}

/// `C = X W (+ bias)` for `W` in Q8_0 or Q4_0 (`N` rows of `K`), `X` given as [`QActs`].
pub fn matmul_q(
    isa: Isa,
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (m, n) = (a.m, w.n);
    assert!(is_int_format(w.fmt) && a.k == w.k, "matmul_q needs a Q8_0/Q4_0 weight of K = {}", a.k);
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n);
    if m == 0 || n == 0 {
        return;
    }
    let per = rows_per_task(n, w.row_bytes());
    let cp = SendPtr(c.as_mut_ptr());
    crate::pool::for_tasks(n.div_ceil(per), w.data.len(), |t| {
        let n0 = t * per;
        let n1 = (n0 + per).min(n);
        // SAFETY: task t writes only columns n0..n1 of C.
        unsafe { task(isa, a, w, bias, cp.get(), ldc, n0, n1) }
    });
}

unsafe fn task(
    isa: Isa,
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // AVX-512 machines run the AVX2 kernel (no AVX-512 machine to test one on).
        unsafe {
            match w.fmt {
                Format::Q8_0 => avx2::task::<avx2::Q8>(a, w, bias, c, ldc, n0, n1),
                _ => avx2::task::<avx2::Q4>(a, w, bias, c, ldc, n0, n1),
            }
        }
        return;
    }
    let _ = isa;
    unsafe { scalar_task(a, w, bias, c, ldc, n0, n1) }
}

/// Integer values of weight block `blk` (34 bytes of Q8_0 or 18 of Q4_0).
#[inline(always)]
fn weight_ints(fmt: Format, blk: &[u8], out: &mut [i32; QK]) {
    if fmt == Format::Q8_0 {
        for (o, &b) in out.iter_mut().zip(&blk[2..2 + QK]) {
            *o = b as i8 as i32;
        }
    } else {
        for j in 0..QK / 2 {
            let b = blk[2 + j];
            out[j] = (b & 0x0f) as i32 - 8;
            out[j + QK / 2] = (b >> 4) as i32 - 8;
        }
    }
}

/// The scalar reference: exact integer block sums, then `s += (dw * dx) * isum` in block order.
unsafe fn scalar_task(
    a: &QActs,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    let (k, nb) = (a.k, a.k / QK);
    let bb = w.fmt.block_bytes();
    let mut qw = [0i32; QK];
    let mut sums = vec![0f32; a.m];
    for j in n0..n1 {
        let row = w.row(j);
        sums.fill(0.0);
        for b in 0..nb {
            let blk = &row[b * bb..(b + 1) * bb];
            let dw = block_scale(blk);
            weight_ints(w.fmt, blk, &mut qw);
            for (i, s) in sums.iter_mut().enumerate() {
                let xq = &a.q[i * k + b * QK..i * k + (b + 1) * QK];
                let isum: i32 = xq.iter().zip(&qw).map(|(&x, &v)| x as i32 * v).sum();
                *s += (dw * a.d[i * nb + b]) * isum as f32;
            }
        }
        for (i, s) in sums.iter().enumerate() {
            unsafe { *c.add(i * ldc + j) = s + bias.map_or(0.0, |b| b[j]) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
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

    /// [`super::round_block`] with AVX2: the same bytes.
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
            if amax < super::TINY {
                super::round_tiny(xb, qb, amax);
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
                let xq =
                    _mm256_loadu_si256(a.q.as_ptr().add((i + t) * k + b * QK) as *const __m256i);
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
    pub unsafe fn task<F: QFmt>(
        a: &QActs,
        w: &QWeight<'_>,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        n0: usize,
        n1: usize,
    ) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{dequantize, quantize};
    use crate::kernels::test_util::lcg;

    #[test]
    fn acts_round_within_half_a_step() {
        let x = lcg(3 * 64, 7);
        let a = quantize_acts(Isa::Scalar, &x, 3, 64).unwrap();
        for (i, (&v, &q)) in x.iter().zip(&a.q).enumerate() {
            let d = a.d[i / 32];
            assert!((v - d * q as f32).abs() <= d * 0.5001, "{v} {q} {d}");
        }
        let mut bad = x.clone();
        bad[70] = f32::INFINITY;
        assert!(quantize_acts(Isa::Scalar, &bad, 3, 64).is_none());
        bad[70] = f32::NAN;
        assert!(quantize_acts(Isa::Scalar, &bad, 3, 64).is_none());
        let z = quantize_acts(Isa::Scalar, &[0.0; 32], 1, 32).unwrap();
        assert!(z.q.iter().all(|&q| q == 0) && z.d[0] == 0.0);
    }

    #[test]
    fn acts_rounding_is_the_same_on_every_path() {
        // Random blocks, exact ties (amax = 127: id = 1), tiny and subnormal blocks, zeros.
        let mut x = lcg(8 * 32, 11);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = i as f32 - 15.5; // ties: -15.5 .. 15.5
        }
        x[63] = 127.0;
        for v in &mut x[64..96] {
            *v *= 1e-35;
        }
        for v in &mut x[96..128] {
            *v *= 1e-44; // subnormal
        }
        x[128..160].fill(0.0);
        x[160] = -0.0;
        let want = quantize_acts(Isa::Scalar, &x, 4, 64).unwrap();
        assert_eq!(want.q[32 + 31], 127);
        assert_eq!(want.q[32], -16); // -15.5 rounds half to even
        assert_eq!(want.q[33], -14); // -14.5
        assert!(want.q[64..96].iter().any(|&q| q.abs() > 60));
        assert!(want.q[96..128].iter().any(|&q| q != 0));
        for isa in Isa::available() {
            let got = quantize_acts(isa, &x, 4, 64).unwrap();
            assert_eq!((&got.q, &got.d, &got.s8), (&want.q, &want.d, &want.s8), "{isa:?}");
            for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                for at in [0, 31, 77, 255] {
                    let mut b = x.clone();
                    b[at] = bad;
                    assert!(quantize_acts(isa, &b, 4, 64).is_none(), "{isa:?} {at}");
                }
            }
        }
    }

    #[test]
    fn every_path_matches_float64() {
        for fmt in [Format::Q8_0, Format::Q4_0] {
            for &(m, k, n) in &[
                (1, 64, 7),
                (1, 96, 9),
                (1, 32, 5),
                (1, 480, 13),
                (3, 96, 9),
                (8, 128, 5),
                (13, 32, 3),
                (5, 256, 66),
            ] {
                let x = lcg(m * k, 1);
                let wf = lcg(k * n, 2);
                let data = quantize(fmt, &wf, k, n).unwrap();
                let w = QWeight::new(fmt, k, n, &data).unwrap();
                let wd = dequantize(&w); // (K, N) row-major
                let bias = lcg(n, 3);
                let a = quantize_acts(Isa::Scalar, &x, m, k).unwrap();
                for isa in Isa::available() {
                    let mut got = vec![0f32; m * n];
                    matmul_q(isa, &a, &w, Some(&bias), &mut got, n);
                    for i in 0..m {
                        for j in 0..n {
                            // Exact product of the rounded operands in f64, and the bound of
                            // the activations' rounding against the float product.
                            let (mut exact, mut want, mut round) = (0f64, 0f64, 0f64);
                            for kk in 0..k {
                                let wv = wd[kk * n + j] as f64;
                                let d = a.d[i * (k / 32) + kk / 32] as f64;
                                exact += d * a.q[i * k + kk] as f64 * wv;
                                want += x[i * k + kk] as f64 * wv;
                                round += d * 0.5001 * wv.abs();
                            }
                            let g = (got[i * n + j] - bias[j]) as f64;
                            assert!(
                                (g - exact).abs() <= 1e-5 * (1.0 + k as f64),
                                "{fmt:?} {isa:?}"
                            );
                            assert!((g - want).abs() <= round + 1e-5 * (1.0 + k as f64));
                        }
                    }
                }
            }
        }
    }
}
