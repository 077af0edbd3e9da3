//! Products with a row-stored float32 weight (`N` rows of `K`: a PyTorch `(N, K)` weight as
//! stored, i.e. `W = w_nk^T` column-major) at 2 or more rows of `X`, read in place:
//!
//! - up to [`DECODE_MAX_M`] rows: a dot-product kernel with a `3 x 4` register tile (three
//!   weight rows against four activation rows: 12 accumulators, seven loads per twelve FMAs),
//!   each weight row read once from memory and reused from cache by every group of four rows;
//! - more rows: the AVX2 GEMM of `sgemm.rs` reading `W` through its strides (row stride 1,
//!   column stride `K`).
//!
//! The AVX2 body of the dot-product kernel is `x86/avx2/rows_f32.rs`. On `Isa::Avx512` the
//! decode rows go to `dot.rs` instead, whose AVX-512 body has a `3 x 8` tile of 16 lanes.
//!
//! One row of `X` stays on `dot.rs`'s kernel (already at the memory limit). Every output element
//! is one accumulator chain over `K` (eight lanes, then a fixed-order horizontal sum, then the
//! elements after the last multiple of 8), so the result does not depend on how `N` is split
//! into tasks or streamed panels.

use super::dot::{rows_per_task, SendPtr};
use super::gemm::DECODE_MAX_M;
use super::quant::{Format, QWeight};
use super::sgemm;
use crate::cpu::Isa;

/// Rows of `X` from which these kernels take a row-stored float32 weight.
pub const MIN_M: usize = 2;

/// `C = X W (+ bias)` for a row-stored float32 `W` and `m >= MIN_M` on AVX2 + FMA (above the
/// decode rows, the GEMM of the selected ISA: AVX-512 where chosen); false
/// (nothing written) when that does not apply (another format or ISA, fewer rows, data not
/// 4-byte aligned), and the caller takes its generic path.
pub fn matmul_rows_f32(
    isa: Isa,
    x: &[f32],
    m: usize,
    q: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if q.fmt == Format::F32 && m >= MIN_M && isa >= Isa::Avx2 && sgemm::avx2_available() {
        let (k, n) = (q.k, q.n);
        // SAFETY: every bit pattern is a valid f32; `align_to` only splits off an unaligned head.
        let (head, w, _) = unsafe { q.data.align_to::<f32>() };
        if !head.is_empty() || w.len() < k * n || x.len() < m * k || ldc < n {
            return false;
        }
        if c.len() < (m - 1) * ldc + n || bias.is_some_and(|b| b.len() < n) {
            return false;
        }
        if m > DECODE_MAX_M {
            if let Some(b) = bias {
                for i in 0..m {
                    c[i * ldc..i * ldc + n].copy_from_slice(&b[..n]);
                }
            }
            let threads = crate::pool::num_threads();
            let acc = bias.is_some();
            crate::pool::install(|| {
                if isa >= Isa::Avx512 {
                    super::x86::avx512::sgemm::sgemm_avx512(
                        m, n, k, x, k, 1, w, 1, k, c, ldc, acc, threads,
                    );
                } else {
                    sgemm::sgemm_avx2(m, n, k, x, k, 1, w, 1, k, c, ldc, acc, threads);
                }
            });
            return true;
        }
        if isa >= Isa::Avx512 {
            // AVX-512: the generic row kernel of `dot.rs` has a 512-bit body with a `3 x 8`
            // tile (`x86/avx512/dot.rs`); the caller takes it.
            return false;
        }
        let per = rows_per_task(n, k * 4);
        let cp = SendPtr(c.as_mut_ptr());
        crate::pool::for_tasks(n.div_ceil(per), n * k * 4, |t| {
            let n0 = t * per;
            let n1 = (n0 + per).min(n);
            // SAFETY: the lengths were checked above; task t writes only columns n0..n1 of C;
            // AVX2 and FMA are present.
            unsafe { super::x86::avx2::rows_f32::task(x, m, k, w, bias, cp.get(), ldc, n0, n1) }
        });
        return true;
    }
    let _ = (isa, x, m, q, bias, c, ldc);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dot::matmul_rows;
    use crate::kernels::test_util::lcg;

    #[test]
    fn matches_the_dot_kernel_and_float64() {
        if !(Isa::detect() >= Isa::Avx2 && sgemm::avx2_available()) {
            return;
        }
        for &(m, k, n) in
            &[(2, 64, 7), (3, 37, 5), (8, 200, 31), (13, 96, 40), (32, 8, 3), (40, 72, 9)]
        {
            let x = lcg(m * k, 1);
            let w = lcg(n * k, 2);
            let bias = lcg(n, 3);
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let q = QWeight::new(Format::F32, k, n, &bytes).unwrap();
            let mut got = vec![f32::NAN; m * n];
            // SAFETY: the f32s of `w` viewed as bytes (4-byte aligned, as the kernel wants)
            let wb = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, n * k * 4) };
            let qa = QWeight::new(Format::F32, k, n, wb).unwrap();
            assert!(matmul_rows_f32(Isa::Avx2, &x, m, &qa, Some(&bias), &mut got, n));
            let mut want = vec![0f32; m * n];
            matmul_rows(Isa::Scalar, &x, m, &q, Some(&bias), &mut want, n);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 =
                        (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>()
                            + bias[j] as f64;
                    let mag: f64 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]).abs() as f64).sum();
                    let bound = 4.0 * k as f64 * f32::EPSILON as f64 * mag + 1e-6;
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - exact).abs() <= bound,
                        "m {m} k {k} n {n} ({i}, {j}): {g} vs {exact}"
                    );
                    assert!((want[i * n + j] as f64 - exact).abs() <= bound);
                }
            }
        }
    }
}
