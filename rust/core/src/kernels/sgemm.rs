//! Hand-written float32 GEMM for AVX2 + FMA, BLIS-style: `C <- A B` or `C <- C + A B`.
//!
//! `A` is `(m, k)` with strides `(rsa, csa)`, `B` is `(k, n)` with strides `(rsb, csb)` (so either
//! operand may be row- or column-major), `C` is `(m, n)` row-major with row stride `ldc >= n`;
//! `C` must not alias `A` or `B`.
//!
//! Loops, outermost first (Goto / BLIS order):
//! - `jc`: columns of `C` in blocks of [`NC`]; the packed `B` block `KC x NC` (4 MiB) sits in L3;
//! - `pc`: the sum index in blocks of [`KC`]; `B[pc.., jc..]` is packed into `NR`-column panels;
//! - `ic`: rows in blocks of [`MC`]; `A[ic.., pc..]` is packed into `MR`-row panels
//!   (`MC x KC`, 144 KiB, stays in the 512 KiB L2);
//! - `jr`, `ir`: one `MR x NR` micro-tile of `C`, whose `KC x NR` `B` panel (16 KiB) stays in the
//!   32 KiB L1 while the `ir` loop streams `MR x KC` `A` panels (6 KiB) from L2.
//!
//! The micro-kernel keeps the `6 x 16` tile in 12 ymm accumulators and per `k` step does 2 loads
//! of `B`, 6 broadcasts of `A` and 12 FMAs. Packed panels are zero-padded to whole tiles, so the
//! kernel always runs the full tile; an edge tile goes through a small buffer and only its valid
//! `mr x nr` part is written to `C`.
//!
//! Block sizes are balanced (e.g. `K = 300` is two blocks of 150, not 256 + 44).
//!
//! Threads: per `(jc, pc)` block the `B` panels are packed once, in parallel, into a buffer of
//! the thread that drives the product (on 2+ threads, all the `pc` blocks of a `jc` block at once
//! when they total at most `WHOLE_B` floats, 8 MiB: fewer points where threads wait for each
//! other); the `(ic row block, group of NR panels)` tasks (about 2 per thread; rows are split
//! first, which shares the packed `B` without packing an `A` block twice) are then balanced by rayon over the tierflow pool, each packing its own `A`
//! block: a thread slowed by another process does not hold up the rest. The packed buffers are
//! thread-local and reused between calls (at most 8 MiB for `B` on a driving thread, 144 KiB
//! for `A` per thread), so a call does not page-fault fresh buffers.
//!
//! Sums run in `k` order within a `KC` block, in float32; the result differs from the scalar
//! reference [`sgemm_ref`] only by rounding (tested below).
//!
//! AVX-512F ([`sgemm_avx512`], `x86/avx512/sgemm.rs`): the same loops, threading and packing of
//! `B` with a `14 x 32` micro-kernel (28 zmm accumulators) and its own block sizes
//! (`KC = NC = 1024`, `MC = 112`, measured there).

// Only the scalar reference is used off x86-64.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

/// Micro-tile rows (broadcast `A` values per `k` step).
pub const MR: usize = 6;
/// Micro-tile columns (two 8-lane ymm vectors).
pub const NR: usize = 16;
/// Sum-index block: a `KC x NR` `B` panel is 16 KiB (half of L1d).
pub const KC: usize = 256;
/// Row block: the packed `A` block `MC x KC` is 144 KiB (L2 is 512 KiB per core).
pub const MC: usize = 144;
/// Column block: the packed `B` block `KC x NC` is 4 MiB (L3 is 32 MiB).
pub const NC: usize = 4080;

/// Largest packed `B` (floats, 8 MiB) for which a threaded product packs all `KC` blocks of a
/// column block at once (e.g. `K = N = 1024`: 4 MiB).
pub(crate) const WHOLE_B: usize = 2 << 20;

/// Scalar reference: `C[i, j] = (accumulate ? C[i, j] : 0) + sum_p A[i, p] B[p, j]`, summed in
/// float32 in `p` order.
pub fn sgemm_ref(
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
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                s += a[i * rsa + p * csa] * b[p * rsb + j * csb];
            }
            let cij = &mut c[i * ldc + j];
            *cij = if accumulate { *cij + s } else { s };
        }
    }
}

/// Whether the AVX2 path can run on this CPU (both `avx2` and `fma`).
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub use super::x86::avx2::sgemm::sgemm_avx2;
#[cfg(target_arch = "x86_64")]
pub use super::x86::avx512::sgemm::{avx512_available, sgemm_avx512};

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::kernels::test_util::lcg;

    /// Runs the SIMD paths on one shape and layout and compares them with the scalar reference
    /// within float32 rounding (`|err| <= 1e-5 sum_p |A_ip B_pj|` per element, plus the
    /// accumulate flag), and, for `k <= 256`, the AVX-512 path with the AVX2 one bit for bit
    /// (the same sums in the same order, see `x86/avx512/sgemm.rs`).
    fn check(m: usize, n: usize, k: usize, a_colmajor: bool, b_colmajor: bool, threads: usize) {
        if !avx2_available() {
            // CI sets TIERFLOW_EXPECT_ISA: a skipped AVX2 test is then a failure.
            let want = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
            assert!(!matches!(want.as_str(), "avx2" | "avx512"), "CPU lacks AVX2 + FMA");
            return;
        }
        let a = lcg(m * k, 1 + m as u64);
        let b = lcg(k * n, 2 + n as u64);
        let (rsa, csa) = if a_colmajor { (1, m) } else { (k, 1) };
        let (rsb, csb) = if b_colmajor { (1, k) } else { (n, 1) };
        let ldc = n + 3;
        let avx512 = avx512_available();
        if !avx512 {
            let want = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
            assert!(want != "avx512", "CPU lacks AVX-512F/VL");
        }
        for accumulate in [false, true] {
            let c0 = lcg(m * ldc, 3);
            let mut want = c0.clone();
            let mut got = c0.clone();
            let mut paths = Vec::new();
            sgemm_ref(m, n, k, &a, rsa, csa, &b, rsb, csb, &mut want, ldc, accumulate);
            crate::pool::install(|| {
                sgemm_avx2(m, n, k, &a, rsa, csa, &b, rsb, csb, &mut got, ldc, accumulate, threads)
            });
            if avx512 {
                let mut got512 = c0.clone();
                crate::pool::install(|| {
                    let c = &mut got512;
                    sgemm_avx512(m, n, k, &a, rsa, csa, &b, rsb, csb, c, ldc, accumulate, threads)
                });
                if k <= 256 {
                    assert!(got512 == got, "({m}, {n}, {k}) acc={accumulate}: AVX-512 != AVX2");
                }
                paths.push(got512);
            }
            paths.push(got);
            for (got, i) in paths.iter().flat_map(|g| (0..m).map(move |i| (g, i))) {
                for j in 0..ldc {
                    let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                    if j >= n {
                        assert_eq!(g, c0[i * ldc + j], "padding written at ({i}, {j})");
                        continue;
                    }
                    let mag: f32 =
                        (0..k).map(|p| (a[i * rsa + p * csa] * b[p * rsb + j * csb]).abs()).sum();
                    let tol = 1e-5 * (mag + if accumulate { 1.0 } else { 0.0 }) + 1e-30;
                    assert!(
                        (g - w).abs() <= tol,
                        "({m}, {n}, {k}) acc={accumulate} at ({i}, {j}): {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn edge_shapes_match_reference() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 1, 0),
            (3, 5, 0),
            (6, 16, 1),
            (7, 17, 3),
            (5, 15, 257),
            (13, 33, 300),
            (150, 40, 260),
            (1, 100, 7),
            (100, 1, 7),
            // AVX-512 tile edges (14 x 32): whole tiles, one past, one short.
            (14, 32, 1),
            (15, 33, 3),
            (13, 31, 257),
            (28, 64, 8),
            (29, 65, 300),
        ] {
            check(m, n, k, false, false, 1);
        }
    }

    #[test]
    fn strided_operands_match_reference() {
        check(29, 37, 41, true, false, 1);
        check(29, 37, 41, false, true, 1);
        check(29, 37, 41, true, true, 1);
    }

    #[test]
    fn threaded_tasks_match_reference() {
        // Past every block size (MC = 144, KC = 256), over several row blocks and panel groups.
        check(150, 200, 270, false, false, 2);
        check(200, 150, 270, false, true, 3);
        check(97, 4100, 9, false, false, 1);
        // B too large to pack whole (N K > WHOLE_B): one parallel region per KC block.
        check(7, 2100, 1100, false, false, 2);
        // Past the AVX-512 blocks (MC = 112, KC = NC = 1024), threaded and not.
        check(130, 1050, 1030, false, false, 1);
        check(250, 1100, 1100, false, true, 2);
        check(345, 100, 40, true, false, 2);
    }

    #[test]
    fn empty_shapes_are_no_ops() {
        if !avx2_available() {
            return;
        }
        let mut c = vec![7f32; 4];
        sgemm_avx2(0, 2, 3, &[], 3, 1, &[0.0; 6], 2, 1, &mut c, 2, false, 1);
        sgemm_avx2(2, 0, 3, &[0.0; 6], 3, 1, &[], 0, 1, &mut c, 2, false, 1);
        assert_eq!(c, vec![7f32; 4]);
        if avx512_available() {
            sgemm_avx512(0, 2, 3, &[], 3, 1, &[0.0; 6], 2, 1, &mut c, 2, false, 1);
            sgemm_avx512(2, 0, 3, &[0.0; 6], 3, 1, &[], 0, 1, &mut c, 2, false, 1);
            assert_eq!(c, vec![7f32; 4]);
        }
    }
}
