//! The AVX-512F path of `kernels/sgemm.rs`: the `14 x 32` micro-kernel and its `A` packing; the
//! blocked loops, the threading and the packing of `B` are the AVX2 driver's
//! (`x86/avx2/sgemm.rs`, generic over [`Tile`]), run with this tile's block sizes.
//!
//! The micro-kernel keeps the `14 x 32` tile of `C` in 28 zmm accumulators (of 32) and per `k`
//! step does 2 loads of the packed `B` panel and 14 broadcasts of packed `A` (folded into the
//! FMAs as `{1to16}` memory operands): 28 FMAs of 16 lanes, 896 flops per 16 loads, against
//! 192 per 8 for the AVX2 `6 x 16` tile.
//!
//! Block sizes, measured on the Sapphire Rapids class cores of the build machine (48 KiB L1d,
//! 2 MiB L2): `KC = 1024`, `MC = 112`, `NC = 1024`. The `KC x NR` `B` panel (128 KiB) then sits in
//! L2, not L1, but each `C` tile is read and written once per 1024 steps of `k`, not per 256:
//! single-thread CPU time against OpenBLAS at 4096^3 went from 0.83x (`KC = 256`, `MC = 336`,
//! `NC = 4096`, the AVX2 path's shape) through 0.90x (`KC = 384`) to 0.99x; 2048^3 from 0.93x to
//! 1.02x (BENCHMARKS.md, "AVX-512 GEMM and attention"). The packed `A` block is 448 KiB (L2), the
//! packed `B` block 4 MiB.
//!
//! Each element of `C` is summed in `p` order within a `KC` block with one fused multiply-add per
//! term. For `k <= 256` (one block on both paths) that is the AVX2 path's order and rounding, so
//! the result equals `sgemm_avx2`'s bit for bit; longer sums are split at other points. Against
//! the scalar reference [`sgemm_ref`](crate::kernels::sgemm::sgemm_ref) (no FMA) it differs by
//! rounding only: `|err| <= 1e-5 sum_p |A_ip B_pj|` (tested in `kernels/sgemm.rs` up to
//! `k = 1100`; a chain of `k` float32 additions can in the worst case reach `k 2^-24` of that
//! sum, 6e-5 at `k = 1024`, but random-signed terms stay near `sqrt(k) 2^-24`).

use crate::kernels::x86::avx2::sgemm::{sgemm_with, transpose8, Tile, View};
use std::arch::x86_64::*;

/// Micro-tile rows.
pub const MR: usize = 14;
/// Micro-tile columns (two 16-lane zmm vectors).
pub const NR: usize = 32;

/// Whether the AVX-512 path can run on this CPU (`avx512f` and `avx512vl`, with AVX2 + FMA).
pub fn avx512_available() -> bool {
    crate::kernels::sgemm::avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
}

/// The `14 x 32` AVX-512F tile.
struct Avx512Tile;

impl Tile for Avx512Tile {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 1024;
    const MC: usize = 112;
    const NC: usize = 1024;

    #[inline(always)]
    unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
        unsafe { kernel_14x32(kc, a, b, c, ldc, acc) }
    }

    #[inline(always)]
    unsafe fn pack_a(mc: usize, kc: usize, a: View, dst: &mut [f32]) {
        unsafe { pack_a(mc, kc, a, dst) }
    }
}

/// `C <- (accumulate ? C : 0) + A B` with the AVX-512F micro-kernel; the contract of
/// [`sgemm_avx2`](crate::kernels::sgemm::sgemm_avx2) (strided `A` and `B`, row-major `C` of row
/// stride `ldc`, up to `threads` threads of the current rayon pool).
///
/// Panics if a slice is too short for its strides, `ldc < n`, or the CPU lacks AVX-512F/VL.
pub fn sgemm_avx512(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    assert!(avx512_available(), "sgemm_avx512 needs AVX-512F/VL, AVX2 and FMA");
    // SAFETY: the features are present; `sgemm_with` checks the operands.
    unsafe {
        sgemm_with::<Avx512Tile>(m, n, k, a, rsa, csa, b, rsb, csb, c, ldc, accumulate, threads)
    }
}

/// Packs `A[0..mc, 0..kc]` into `MR`-row panels (layout in [`Tile::pack_a`]). Full row-major
/// panels go 8 columns at a time through two 8 x 8 register transposes (rows 0-7, and rows 8-13
/// with two zero rows, of which only the 6 values are stored, by a masked store).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn pack_a(mc: usize, kc: usize, a: View, dst: &mut [f32]) {
    for (q, panel) in dst.chunks_exact_mut(MR * kc).take(mc.div_ceil(MR)).enumerate() {
        let i0 = q * MR;
        let rows = MR.min(mc - i0);
        let mut p0 = 0;
        if rows == MR && a.cs == 1 {
            let r: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.p.add((i0 + i) * a.rs) });
            let d = panel.as_mut_ptr();
            while p0 + 8 <= kc {
                unsafe {
                    let lo = transpose8(std::array::from_fn(|i| _mm256_loadu_ps(r[i].add(p0))));
                    let z = _mm256_setzero_ps();
                    let hi = transpose8(std::array::from_fn(|i| {
                        if i < MR - 8 {
                            _mm256_loadu_ps(r[8 + i].add(p0))
                        } else {
                            z
                        }
                    }));
                    for j in 0..8 {
                        let o = d.add((p0 + j) * MR);
                        _mm256_storeu_ps(o, lo[j]);
                        _mm256_mask_storeu_ps(o.add(8), 0x3f, hi[j]);
                    }
                }
                p0 += 8;
            }
        }
        for (p, d) in panel.chunks_exact_mut(MR).enumerate().skip(p0) {
            for i in 0..MR {
                d[i] = if i < rows { unsafe { *a.p.add((i0 + i) * a.rs + p * a.cs) } } else { 0.0 };
            }
        }
    }
}

/// `C[0..14, 0..32] <- (acc ? C : 0) + sum_p a[p MR + i] b[p NR + j]` (packed panels, `kc`
/// steps).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn kernel_14x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let mut r = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for i in 0..MR {
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 16) as *const i8);
        }
    }
    // One `k` step: 2 loads of B, 14 broadcasts of A, 28 FMAs.
    let step = |r: &mut [[__m512; 2]; MR], a: *const f32, b: *const f32| unsafe {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for i in 0..MR {
            let ai = _mm512_set1_ps(*a.add(i));
            r[i][0] = _mm512_fmadd_ps(ai, b0, r[i][0]);
            r[i][1] = _mm512_fmadd_ps(ai, b1, r[i][1]);
        }
    };
    // Unrolled by 4 (4 x 14 floats of A: 3.5 cache lines), prefetching A 8 steps ahead.
    for _ in 0..kc / 4 {
        unsafe {
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(a.add(8 * MR + 16 * l) as *const i8);
            }
            for u in 0..4 {
                step(&mut r, a.add(u * MR), b.add(u * NR));
            }
            a = a.add(4 * MR);
            b = b.add(4 * NR);
        }
    }
    for _ in 0..kc % 4 {
        unsafe {
            step(&mut r, a, b);
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    for i in 0..MR {
        unsafe {
            let ci = c.add(i * ldc);
            let (mut v0, mut v1) = (r[i][0], r[i][1]);
            if acc {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(ci));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(ci.add(16)));
            }
            _mm512_storeu_ps(ci, v0);
            _mm512_storeu_ps(ci.add(16), v1);
        }
    }
}
