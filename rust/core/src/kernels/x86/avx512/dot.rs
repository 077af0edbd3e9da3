//! AVX-512 F/BW/VL bodies of `kernels/dot.rs` for float32 / float16 / bfloat16 weight rows (the
//! scalar reference, the driver and the tests are there; Q8_0 / Q4_0 stay on the AVX2 body).
//!
//! Each output is `sum_k X[i, k] W[j, k]` over 16-lane `zmm` accumulators: lane `l` sums the
//! elements `k = 16 q + l` in `k` order (the last partial group of 16 read with a masked load,
//! its missing lanes zero), then the 16 lanes are added in a fixed order ([`hsum512`]) and the
//! bias added last. Against the scalar reference (one sequential sum) the order differs, so
//! the bound is the float32 summation bound: `|err| <= (K / 16 + 5) 2^-24 sum_k |x_k w_k|`
//! for this body (first order), `(K - 1) 2^-24 sum_k |x_k w_k|` for the reference.
//!
//! Register tile: `RN` weight rows x `MR` activation rows, `RN * MR` accumulators of 16 lanes:
//! `(8, 1)` at `M = 1` (eight read streams, eight FMA chains), `(3, 8)` / `(3, 4)` / ... above
//! (a weight vector reused by up to eight rows of `X`: 11 loads per 24 FMAs).
//!
//! bfloat16 with AVX-512-BF16 (`bf16_dp_task`, `M = 1`): `vdpbf16ps` multiplies
//! the weight's bf16 pairs as stored (no widening) by the activations split exactly into three
//! bf16 parts `x = xh + xm + xl` (each part the round-to-nearest-even of the remainder: 8 + 8 + 8
//! significant bits cover float32's 24), so the result is the float32 dot product of the
//! unrounded activations. Rounding the activations to bf16 instead (ggml's route: one
//! instruction per 32 weights, not three) would add up to `2^-9 sum_k |x_k w_k|`, 0.2% of the
//! magnitude, as much as the weight's own rounding to bf16, and results that differ from the
//! other paths' by that much: rejected. At `M = 1` the three instructions cost nothing that
//! shows (the time is the weight's memory traffic; see [`BF16_DP_MAX_M`]); it is no faster than
//! the FMA body either.
//!
//! Every bf16 x bf16 product is exact in float32, and the instruction adds the two products of
//! a lane one after the other, rounding each time. The parts have their own accumulators
//! (independent chains: one shared by all three measured 5x slower at `M = 2`): an `8 x 1` tile
//! with two per weight row (`xh`; `xm` then `xl`), added at the end, so a lane is a chain of at
//! most `K / 8 + 2` float32 additions: `|err| <= (K / 8 + 7) 2^-24 sum_k |x_k w_k| + 6 K 2^-126` (the last term:
//! `vdpbf16ps` and `vcvtneps2bf16` treat denormals as zero, so activations below `2^-110` in
//! magnitude and products below `2^-126` lose their tiny parts). An output that is not finite
//! (an Inf or NaN in `x` or the row, where `Inf * 0` of a zero part would make a NaN the
//! reference does not) is recomputed by the FMA body, so non-finite values behave as in the
//! reference.

use crate::kernels::quant::QWeight;
use crate::kernels::x86::hsum;
use std::arch::x86_64::*;

/// Largest `M` for the `vdpbf16ps` body. At `M = 1` it measured level with the FMA body (2
/// threads, medians of 31 interleaved calls: 15.7 against 15.5 ms at 8192 x 8192, 1.63 against
/// 1.56 ms at 4096 x 4096 from cache; noise on this shared machine is larger than the gap), and
/// 0.83-0.91x the AVX2 body in `benches/test_kernels.py -k decode_avx512` (see BENCHMARKS.md:
/// not understood yet; the AVX2 body prefetches the tile's rows as one run); at `M = 2` it
/// measured 1.5x slower than the FMA body (three instructions per 32 weights and activation
/// row against two FMAs, the widening shared by the rows), so from 2 rows the FMA body runs.
pub const BF16_DP_MAX_M: usize = 1;

/// Sum of the sixteen lanes in a fixed order: `(lo8 + hi8)`, then [`hsum`].
#[inline(always)]
pub unsafe fn hsum512(v: __m512) -> f32 {
    unsafe {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        hsum(_mm256_add_ps(lo, hi))
    }
}

/// A row format: 16 consecutive elements widened to float32.
pub trait Fmt {
    const SIZE: usize;
    /// Elements `e..e+16` of the row at `p`.
    unsafe fn load(p: *const u8, e: usize) -> __m512;
    /// Elements `e..e+16` of the row at `p` where `mask` is set, zero elsewhere (no read there).
    unsafe fn load_mask(p: *const u8, e: usize, mask: __mmask16) -> __m512;
}
pub struct F32;
pub struct F16;
pub struct Bf16;

impl Fmt for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load(p: *const u8, e: usize) -> __m512 {
        unsafe { _mm512_loadu_ps((p as *const f32).add(e)) }
    }
    #[inline(always)]
    unsafe fn load_mask(p: *const u8, e: usize, mask: __mmask16) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(mask, (p as *const f32).add(e)) }
    }
}
impl Fmt for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8, e: usize) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256((p as *const u16).add(e) as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn load_mask(p: *const u8, e: usize, mask: __mmask16) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (p as *const i16).add(e))) }
    }
}
impl Fmt for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8, e: usize) -> __m512 {
        unsafe { widen_bf16(_mm256_loadu_si256((p as *const u16).add(e) as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn load_mask(p: *const u8, e: usize, mask: __mmask16) -> __m512 {
        unsafe { widen_bf16(_mm256_maskz_loadu_epi16(mask, (p as *const i16).add(e))) }
    }
}

/// Sixteen bf16 to float32, exactly (the bits shifted into the high half).
#[inline(always)]
pub unsafe fn widen_bf16(h: __m256i) -> __m512 {
    unsafe { _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) }
}

/// Bytes ahead to prefetch in each weight row (as in the AVX2 body: the hardware prefetcher
/// alone left the kernel waiting on DRAM).
const PF: usize = 4096;

/// The same for the `vdpbf16ps` body: not a multiple of 4 KiB, so a row's prefetched line does
/// not land in the L1 set of the line being read (measured from cache: 26 against 22 GB/s).
const PF_DP: usize = 1536;

/// Weight rows `j..j+RN` (row stride `rb` bytes from `w`) against activation rows `i..i+MR`;
/// writes `sum + bias` to C.
#[inline(always)]
unsafe fn tile<F: Fmt, const RN: usize, const MR: usize>(
    x: *const f32,
    k: usize,
    w: *const u8,
    rb: usize,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); MR]; RN];
        let k16 = k / 16 * 16;
        let mut q = 0;
        while q < k16 {
            if (q * F::SIZE) % 64 == 0 {
                for r in 0..RN {
                    let p = w.wrapping_add((j + r) * rb + q * F::SIZE + PF);
                    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                }
            }
            let mut wv = [_mm512_setzero_ps(); RN];
            for r in 0..RN {
                wv[r] = F::load(w.add((j + r) * rb), q);
            }
            for t in 0..MR {
                let xv = _mm512_loadu_ps(x.add((i + t) * k + q));
                for r in 0..RN {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
            q += 16;
        }
        if q < k {
            let mask: __mmask16 = (1u16 << (k - q)) - 1; // k - q < 16
            for t in 0..MR {
                let xv = _mm512_maskz_loadu_ps(mask, x.add((i + t) * k + q));
                for r in 0..RN {
                    let wv = F::load_mask(w.add((j + r) * rb), q, mask);
                    acc[r][t] = _mm512_fmadd_ps(wv, xv, acc[r][t]);
                }
            }
        }
        for r in 0..RN {
            let b = bias.map_or(0.0, |b| b[j + r]);
            for t in 0..MR {
                *c.add((i + t) * ldc + j + r) = hsum512(acc[r][t]) + b;
            }
        }
    }
}

/// Weight rows `j..j+RN` against every row of X, in groups of 8, 4, 2, 1 rows.
#[inline(always)]
unsafe fn rows_all_m<F: Fmt, const RN: usize>(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const u8,
    rb: usize,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    j: usize,
) {
    let mut i = 0;
    unsafe {
        while i + 8 <= m {
            tile::<F, RN, 8>(x, k, w, rb, bias, c, ldc, i, j);
            i += 8;
        }
        if i + 4 <= m {
            tile::<F, RN, 4>(x, k, w, rb, bias, c, ldc, i, j);
            i += 4;
        }
        if i + 2 <= m {
            tile::<F, RN, 2>(x, k, w, rb, bias, c, ldc, i, j);
            i += 2;
        }
        if i < m {
            tile::<F, RN, 1>(x, k, w, rb, bias, c, ldc, i, j);
        }
    }
}

/// Columns `n0..n1` of `C = X W^T + bias` for a float32 / float16 / bfloat16 row-stored `W`
/// (`w.fmt` must be `F`'s format).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn task<F: Fmt>(
    x: &[f32],
    m: usize,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    let (k, rb, xp, wp) = (w.k, w.row_bytes(), x.as_ptr(), w.data.as_ptr());
    let mut j = n0;
    unsafe {
        if m == 1 {
            while j + 8 <= n1 {
                tile::<F, 8, 1>(xp, k, wp, rb, bias, c, ldc, 0, j);
                j += 8;
            }
            while j < n1 {
                tile::<F, 1, 1>(xp, k, wp, rb, bias, c, ldc, 0, j);
                j += 1;
            }
            return;
        }
        while j + 3 <= n1 {
            rows_all_m::<F, 3>(xp, m, k, wp, rb, bias, c, ldc, j);
            j += 3;
        }
        while j < n1 {
            rows_all_m::<F, 1>(xp, m, k, wp, rb, bias, c, ldc, j);
            j += 1;
        }
    }
}

/// The activations split for `vdpbf16ps`: `M` rows of `3 * K2` bf16 (`K2 = K` rounded up to
/// 32), the parts `xh`, `xm`, `xl` of row `i` at `3 i K2`, `3 i K2 + K2`, `3 i K2 + 2 K2`,
/// zero past `K`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn split3(x: &[f32], m: usize, k: usize) -> (Vec<u16>, usize) {
    // one spare line per part: parts `2 K` bytes apart would share an L1 set
    let k2 = k.div_ceil(32) * 32 + 32;
    let mut out = vec![0u16; 3 * m * k2];
    unsafe {
        for i in 0..m {
            let xr = x.as_ptr().add(i * k);
            let o = out.as_mut_ptr().add(3 * i * k2);
            let mut q = 0;
            while q < k {
                let left = k - q;
                let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
                let v = _mm512_maskz_loadu_ps(mask, xr.add(q));
                let h = _mm512_cvtneps_pbh(v);
                let r1 = _mm512_sub_ps(v, widen_bf16(transmute_bh(h)));
                let mh = _mm512_cvtneps_pbh(r1);
                let r2 = _mm512_sub_ps(r1, widen_bf16(transmute_bh(mh)));
                let l = _mm512_cvtneps_pbh(r2);
                _mm256_storeu_si256(o.add(q) as *mut __m256i, transmute_bh(h));
                _mm256_storeu_si256(o.add(k2 + q) as *mut __m256i, transmute_bh(mh));
                _mm256_storeu_si256(o.add(2 * k2 + q) as *mut __m256i, transmute_bh(l));
                q += 16;
            }
        }
    }
    (out, k2)
}

#[inline(always)]
unsafe fn transmute_bh(h: __m256bh) -> __m256i {
    unsafe { std::mem::transmute::<__m256bh, __m256i>(h) }
}

#[inline(always)]
unsafe fn as_bh(v: __m512i) -> __m512bh {
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Weight rows `j..j+RN` (bf16, row stride `rb` bytes) against split activation rows
/// `i..i+MR` with `vdpbf16ps` (see the module doc); writes `sum + bias` to C.
#[inline(always)]
unsafe fn tile_dp<const RN: usize, const MR: usize, const NA: usize, const PFB: usize>(
    xs: *const u16,
    k2: usize,
    k: usize,
    w: *const u8,
    rb: usize,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    i: usize,
    j: usize,
) {
    unsafe {
        // `NA` accumulator sets per (row, activation row): part `p` goes to set `min(p, NA -
        // 1)`, so the chains are independent (3 sets), or the two small parts share one (2).
        let mut acc = [[[_mm512_setzero_ps(); MR]; RN]; NA];
        let mut q = 0;
        while q < k {
            let left = k - q;
            let mask: __mmask32 = if left >= 32 { u32::MAX } else { (1u32 << left) - 1 };
            let mut wv = [_mm512_setzero_si512(); RN];
            for r in 0..RN {
                let p = w.add((j + r) * rb) as *const i16;
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(q).byte_add(PFB) as *const i8);
                wv[r] = _mm512_maskz_loadu_epi16(mask, p.add(q));
            }
            for t in 0..MR {
                let xr = xs.add(3 * (i + t) * k2 + q) as *const __m512i;
                for part in 0..3 {
                    let xv = as_bh(_mm512_loadu_si512(xr.byte_add(part * k2 * 2)));
                    for r in 0..RN {
                        let a = part.min(NA - 1);
                        acc[a][r][t] = _mm512_dpbf16_ps(acc[a][r][t], as_bh(wv[r]), xv);
                    }
                }
            }
            q += 32;
        }
        for r in 0..RN {
            let b = bias.map_or(0.0, |b| b[j + r]);
            for t in 0..MR {
                // the small parts first: (xl + xm) + xh
                let mut s = acc[NA - 1][r][t];
                for a in (0..NA - 1).rev() {
                    s = _mm512_add_ps(s, acc[a][r][t]);
                }
                *c.add((i + t) * ldc + j + r) = hsum512(s) + b;
            }
        }
    }
}

/// Columns `n0..n1` of `C = X W^T + bias` for a bf16 row-stored `W` with `vdpbf16ps`, one row
/// of `X` (`m` = 1; see the module doc for the bound); outputs that come out non-finite
/// are recomputed by [`task`]`::<Bf16>`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn bf16_dp_task(
    x: &[f32],
    m: usize,
    w: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    debug_assert!(m == 1 && BF16_DP_MAX_M == 1);
    let (k, rb, wp) = (w.k, w.row_bytes(), w.data.as_ptr());
    unsafe {
        let (xs, k2) = split3(x, m, k);
        let xp = xs.as_ptr();
        let mut j = n0;
        while j + 8 <= n1 {
            tile_dp::<8, 1, 2, PF_DP>(xp, k2, k, wp, rb, bias, c, ldc, 0, j);
            j += 8;
        }
        while j < n1 {
            tile_dp::<1, 1, 2, PF_DP>(xp, k2, k, wp, rb, bias, c, ldc, 0, j);
            j += 1;
        }
        // Non-finite outputs: the FMA body, one column at a time, for every row of X.
        for j in n0..n1 {
            if (0..m).any(|i| !(*c.add(i * ldc + j)).is_finite()) {
                task::<Bf16>(x, m, w, bias, c, ldc, j, j + 1);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::cpu::{Ext, Isa};
    use crate::kernels::dot::matmul_rows;
    use crate::kernels::quant::{quantize, Format, QWeight};
    use crate::kernels::test_util::lcg;

    /// Whether the AVX-512 bodies can run here; CI sets `TIERFLOW_EXPECT_ISA=avx512` where the
    /// CPU has it, and a skipped test is then a failure.
    pub(crate) fn avx512_here() -> bool {
        if Isa::Avx512.supported() {
            return true;
        }
        let want = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
        assert_ne!(want, "avx512", "CPU lacks AVX-512 F/BW/VL/DQ");
        false
    }

    /// `|got - exact|` within `chain 2^-24 sum|x w| + 2^-24 |exact| + tiny` for every output
    /// (`chain`: the longest float32 addition chain of the body, from the module doc).
    fn check(fmt: Format, m: usize, k: usize, n: usize, x: &[f32], wf: &[f32], got: &[f32]) {
        let data = quantize(fmt, wf, k, n).unwrap();
        let w = QWeight::new(fmt, k, n, &data).unwrap();
        let dq = crate::kernels::quant::dequantize(&w); // (k, n) row-major
        let dp = fmt == Format::Bf16 && m <= super::BF16_DP_MAX_M && Ext::Avx512Bf16.present();
        let chain = if dp { k as f64 / 8.0 + 7.0 } else { k as f64 / 16.0 + 5.0 };
        let u = 2f64.powi(-24);
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (j as f64 * 0.25, 0f64);
                for t in 0..k {
                    let p = x[i * k + t] as f64 * dq[t * n + j] as f64;
                    exact += p;
                    mag += p.abs();
                }
                let g = got[i * n + j] as f64;
                let bound = chain * u * mag + u * exact.abs() + 6.0 * k as f64 * 2f64.powi(-126);
                assert!(
                    (g - exact).abs() <= bound,
                    "{fmt:?} m {m} k {k} n {n} ({i}, {j}): {g} vs {exact} (bound {bound})"
                );
            }
        }
    }

    fn run(isa: Isa, fmt: Format, m: usize, k: usize, n: usize, x: &[f32], wf: &[f32]) -> Vec<f32> {
        let data = quantize(fmt, wf, k, n).unwrap();
        let w = QWeight::new(fmt, k, n, &data).unwrap();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25).collect();
        let mut c = vec![f32::NAN; m * n];
        matmul_rows(isa, x, m, &w, Some(&bias), &mut c, n);
        c
    }

    #[test]
    fn float_rows_within_the_stated_bound() {
        if !avx512_here() {
            return;
        }
        // K around the 16- and 32-element groups; M over every tile height; N over 8 / 3 rows.
        for fmt in [Format::F32, Format::F16, Format::Bf16] {
            for &k in &[1, 15, 16, 17, 31, 32, 33, 64, 100, 1000] {
                for &(m, n) in &[(1, 1), (1, 9), (1, 17), (2, 7), (3, 4), (5, 10), (8, 3), (13, 5)]
                {
                    let x = lcg(m * k, 7 + k as u64);
                    let wf = lcg(k * n, 9 + m as u64);
                    let got = run(Isa::Avx512, fmt, m, k, n, &x, &wf);
                    check(fmt, m, k, n, &x, &wf, &got);
                }
            }
        }
    }

    #[test]
    fn bf16_dot_product_extension_runs_and_keeps_float32_activations() {
        if !avx512_here() {
            return;
        }
        if !Ext::Avx512Bf16.present() {
            let want = std::env::var("TIERFLOW_EXPECT_EXT").unwrap_or_default();
            assert!(!want.split_whitespace().any(|e| e == "avx512bf16"), "CPU lacks AVX-512-BF16");
            return;
        }
        // Activations that bf16 cannot hold (1 + 2^-12): rounding them to bf16 (ggml's route)
        // would be off by K 2^-12 = 2^-6 here, far outside the bound; the split keeps them.
        let (k, n) = (64, 5);
        let x = vec![1.0 + 2f32.powi(-12); k];
        let wf = vec![1.0f32; k * n];
        let got = run(Isa::Avx512, Format::Bf16, 1, k, n, &x, &wf);
        for (j, g) in got.iter().enumerate() {
            assert_eq!(*g, 64.0 * (1.0 + 2f32.powi(-12)) + j as f32 * 0.25);
        }
        // Inf and NaN behave as in the reference: Inf * w is +-Inf (not NaN from Inf * 0 of a
        // zero part), Inf * 0 is NaN.
        // Rows of X one at a time (the body's M = 1), N = 11 (an 8-row tile and 3 single rows).
        let (k, n) = (40, 11);
        let mut x = lcg(2 * k, 3);
        x[5] = f32::INFINITY; // row 0
                              // parts of opposite signs (xh = 1, xm = -2^-12): Inf * xh + -Inf * xm would be NaN
        x[k + 7] = 1.0 - 2f32.powi(-12);
        x[k + 9] = 1.0 - 2f32.powi(-12);
        let mut wf = lcg(k * n, 4);
        wf[5 * n + 2] = 0.0; // row 0, column 2: Inf * 0
        wf[7 * n + 4] = f32::NEG_INFINITY; // column 4 of both rows
        wf[9 * n + 9] = f32::INFINITY; // column 9 (a single-row tile) of both rows
        for i in 0..2 {
            let xi = &x[i * k..(i + 1) * k];
            let want = run(Isa::Scalar, Format::Bf16, 1, k, n, xi, &wf);
            let got = run(Isa::Avx512, Format::Bf16, 1, k, n, xi, &wf);
            for (g, w) in got.iter().zip(&want) {
                let same =
                    if w.is_finite() { g.is_finite() } else { g == w || g.is_nan() && w.is_nan() };
                assert!(same, "{got:?} vs {want:?}");
            }
            // both kinds: a NaN (Inf * 0, row 0) and infinities (row 1, columns 4 and 9)
            assert!(if i == 0 {
                want[2].is_nan()
            } else {
                want[4].is_infinite() && want[9].is_infinite()
            });
        }
    }
}
