//! `C = X W (+ bias)`: the one matmul entry point, choosing a kernel by shape and weight format.
//!
//! - `M <= DECODE_MAX_M` (decode: a few rows against a big weight; bandwidth-bound): the
//!   hand-written streaming kernels, `axpy.rs` for a plain `(K, N)` weight and `dot.rs` for a
//!   row-stored (packed or quantised) one, reading each weight byte once.
//! - larger `M` (compute-bound), float32 `(K, N)` weight: the hand-written BLIS-style kernel of
//!   `sgemm.rs` (packed panels, tasks balanced over the tierflow pool) with the 6 x 16 AVX2 FMA
//!   micro-kernel on `Isa::Avx2` and the 14 x 32 AVX-512F one on `Isa::Avx512`; the `gemm` crate
//!   (its own runtime-dispatched micro-kernels) on other ISAs and, on `Isa::Avx2`, for small
//!   square-ish products on 2+ threads, where it measured faster (AVX-512 figures in BENCHMARKS.md,
//!   "AVX-512 GEMM and attention"). AVX2: square float32 GEMM against NumPy (OpenBLAS 0.3.31), both
//!   on 2 threads, on the shared 2-core Zen 3 build machine (`benches/test_kernels.py -k
//!   square_gemm`, 5 runs): 512 / 1024 / 2048 / 4096 at 0.53x / 1.07x / 0.85x / 0.83x (medians;
//!   ranges 0.37-0.61x, 0.60-1.23x, 0.72-1.09x, 0.78-0.99x), where the `gemm` crate measured 0.51x
//!   / 0.54x / 0.90x / 0.78x. In one process against the crate: 0.68-1.43x (median 1.15x) at
//!   512-1024, about 1.0x at 2048-4096; on one thread 0.88-1.0x OpenBLAS. Details in BENCHMARKS.md.
//! - a row-stored weight at larger `M` is dequantised in panels of `NB` rows (`NB * K * 4` bytes,
//!   e.g. 1 MiB at K = 4096) that the `gemm` crate multiplies while they are hot in cache
//!   (`sgemm.rs` takes a column-major B too, but has not been measured on these 64-column panels,
//!   where it would pack X's blocks once per panel).
//! - Q8_0 / Q4_0 weights at decode shapes take `qdot.rs`: the activations are rounded to Q8
//!   blocks and each block's dot product is an integer sum (as ggml does); at larger `M` the
//!   weight is dequantised exactly and the activations are not rounded (as ggml with BLAS does).
//! - `Isa::Scalar` always takes the scalar reference kernels, whatever the shape.
//!
//! Layouts: `X` row-major `(M, K)`, `C` row-major with row stride `ldc >= N`, no aliasing.

use super::axpy::{matmul_cols, ColW};
use super::backend::{dispatch, Backend};
use super::dot::{matmul_rows, SendPtr};
use super::qdot::{is_int_format, matmul_q, quantize_acts};
use super::quant::{dequantize_row, QWeight};
use crate::cpu::Isa;
use crate::{CoreError, Result};
use rayon::prelude::*;

/// Largest `M` that takes the decode (weight-streaming) kernels.
pub const DECODE_MAX_M: usize = 32;
/// Weight rows per dequantised panel on the large-`M` path.
const NB: usize = 64;

/// A weight operand.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// Row-major `(K, N)` as NumPy holds it.
    Plain { w: ColW<'a>, k: usize, n: usize },
    /// `N` rows of `K` elements in a block format (packed or quantised).
    Rows(QWeight<'a>),
}

impl Weight<'_> {
    pub fn k(&self) -> usize {
        match self {
            Weight::Plain { k, .. } => *k,
            Weight::Rows(q) => q.k,
        }
    }
    pub fn n(&self) -> usize {
        match self {
            Weight::Plain { n, .. } => *n,
            Weight::Rows(q) => q.n,
        }
    }
}

/// `C[:m, :n] = X W + bias`, `X` `(m, k)` row-major.
pub fn matmul(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: Weight<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    let (k, n) = (w.k(), w.n());
    check_operands(x, m, k, n, bias, c, ldc)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // An empty sum: C is the bias (or zero).
        fill_bias(c, m, n, ldc, bias);
        return Ok(());
    }
    route(isa, x, m, w, bias, c, ldc);
    Ok(())
}

/// Checks the buffers of `matmul` before anything is written: `x` holds `(m, k)`, `c` holds `m`
/// rows of stride `ldc >= n` (sizes computed without overflow), and `bias` has `n` elements.
/// After it returns `Ok`, every index the kernels form is in bounds.
pub(super) fn check_operands(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    c: &[f32],
    ldc: usize,
) -> Result<()> {
    let need_x = m.checked_mul(k);
    let need_c =
        if m == 0 { Some(0) } else { (m - 1).checked_mul(ldc).and_then(|v| v.checked_add(n)) };
    if need_x.map_or(true, |v| x.len() < v) || need_c.map_or(true, |v| c.len() < v) || ldc < n {
        return Err(CoreError::Shape(format!(
            "matmul buffers too small for ({m}, {k}) x ({k}, {n}) with row stride {ldc}"
        )));
    }
    check_bias(bias, n)
}

/// A bias, when given, has one element per output column.
pub(super) fn check_bias(bias: Option<&[f32]>, n: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.len() != n {
            return Err(CoreError::Shape(format!("bias has {} elements, expected {n}", b.len())));
        }
    }
    Ok(())
}

/// Runs the kernel for the shape, ISA and weight format (see the module doc): at decode shapes
/// (`m <= DECODE_MAX_M`) and on `Isa::Scalar` the kernels that stream each weight byte once;
/// at larger `m` a float32 GEMM, after widening a half-precision plain weight to float32 or
/// panel by panel from a row-stored one. Operands checked by `check_operands`, `m, n, k > 0`.
fn route(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: Weight<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (w.k(), w.n());
    let small = m <= DECODE_MAX_M || isa == Isa::Scalar;
    match w {
        Weight::Plain { w, .. } if small => matmul_cols(isa, x, m, k, w, n, bias, c, ldc),
        // a row-stored float32 weight (w_nk.T) at 2+ rows: read in place (see `rows_f32.rs`)
        Weight::Rows(q) if super::rows_f32::matmul_rows_f32(isa, x, m, &q, bias, c, ldc) => {}
        Weight::Rows(q) if small => {
            // Q8_0 / Q4_0 at decode shapes: integer dot products on activations rounded to Q8
            // blocks (ggml's route; see `qdot.rs`), unless X holds Inf/NaN.
            let int = is_int_format(q.fmt) && m <= DECODE_MAX_M;
            match if int { quantize_acts(isa, x, m, k) } else { None } {
                Some(a) => matmul_q(isa, &a, &q, bias, c, ldc),
                None => matmul_rows(isa, x, m, &q, bias, c, ldc),
            }
        }
        Weight::Plain { w: ColW::F32(wf), .. } => gemm_f32(isa, x, m, k, wf, n, bias, c, ldc),
        Weight::Plain { w, .. } => gemm_f32(isa, x, m, k, &widen_plain(w, k, n), n, bias, c, ldc),
        Weight::Rows(q) => gemm_rows(x, m, &q, bias, c, ldc),
    }
}

/// A plain `(k, n)` weight as float32 (exact: f16 and bf16 widen without rounding), converted
/// row by row on the tierflow pool.
fn widen_plain(w: ColW<'_>, k: usize, n: usize) -> Vec<f32> {
    let mut wf = vec![0f32; k * n];
    crate::pool::install(|| {
        wf.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = w.get(r * n + j);
            }
        })
    });
    wf
}

/// Sets `C[:m, :n]` to the bias in every row (zero without one); columns past `n` untouched.
fn fill_bias(c: &mut [f32], m: usize, n: usize, ldc: usize, bias: Option<&[f32]>) {
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        match bias {
            Some(b) => row.copy_from_slice(b),
            None => row.fill(0.0),
        }
    }
}

/// A float32 product `C <- (acc ? C : 0) + X W` for [`Backend::sgemm`]: `X` `(m, k)` and `W`
/// `(k, n)`, both row-major and dense, `C` (the slice passed beside it) rows of stride `ldc`,
/// on `threads` threads of the current pool.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub ldc: usize,
    pub acc: bool,
    pub threads: usize,
}

/// Large-`M` float32 product on the tierflow pool: the hand-written kernel of `sgemm.rs` on
/// `Isa::Avx2` (6 x 16 tile) and `Isa::Avx512` (14 x 32 tile), the `gemm` crate for small
/// square-ish products on 2+ threads on `Isa::Avx2` and on other instruction sets.
fn gemm_f32(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    if bias.is_some() {
        fill_bias(c, m, n, ldc, bias);
    }
    let threads = crate::pool::num_threads();
    // Small square-ish products on 2+ threads (128^3, 256^3): on AVX2 the `gemm` crate threads
    // them better (gb scratch bench, 2 threads: 61-85 vs 52-56 GFLOP/s at 128^3, 97-149 vs
    // 104-118 at 256^3); `sgemm.rs` wins at M = 48-96 and from 384^3 on. The AVX-512 tile beats
    // the crate (as built here) there too: 1.17x / 1.65x / 1.61x at 128^3 /
    // 192^3 / 256^3 (medians of 21 interleaved rounds, 2 threads, BENCHMARKS.md).
    let small_square = isa != Isa::Avx512 && threads > 1 && m >= 128 && m * n * k <= 1 << 24;
    if !small_square {
        let p = Product { m, n, k, x, w, ldc, acc: bias.is_some(), threads };
        let done = crate::pool::install(|| dispatch!(isa, B => B::sgemm(p, c)));
        if done {
            return;
        }
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    crate::pool::install(|| unsafe {
        // SAFETY: the slices cover (m, k), (k, n) and (m, ldc) row-major (checked by `matmul`);
        // gemm computes dst = alpha * dst + beta * lhs * rhs.
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    });
}

/// Large-`M` product with a row-stored weight: dequantise `NB` rows, multiply, next panel.
fn gemm_rows(
    x: &[f32],
    m: usize,
    q: &QWeight<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (q.k, q.n);
    fill_bias(c, m, n, ldc, bias);
    let cp = SendPtr(c.as_mut_ptr());
    crate::pool::install(|| {
        (0..n.div_ceil(NB)).into_par_iter().for_each_init(
            || vec![0f32; NB * k],
            |buf, p| {
                let j0 = p * NB;
                let nb = NB.min(n - j0);
                for r in 0..nb {
                    dequantize_row(q.fmt, q.row(j0 + r), &mut buf[r * k..(r + 1) * k]);
                }
                // SAFETY: panel p writes only columns j0..j0+nb of C. The panel buffer holds
                // W[:, j0..j0+nb] column-major: element (kk, r) at r * k + kk.
                unsafe {
                    gemm::gemm(
                        m,
                        nb,
                        k,
                        cp.get().add(j0),
                        1,
                        ldc as isize,
                        true,
                        x.as_ptr(),
                        1,
                        k as isize,
                        buf.as_ptr(),
                        k as isize,
                        1,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            },
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{quantize, Format};

    #[test]
    fn large_m_paths_match_scalar() {
        let (m, k, n) = (70, 64, 130);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 5) as f32 - 2.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
        for fmt in [Format::F32, Format::Bf16, Format::Q8_0] {
            let data = quantize(fmt, &w, k, n).unwrap();
            let q = QWeight::new(fmt, k, n, &data).unwrap();
            let mut want = vec![0f32; m * n];
            let mut got = vec![0f32; m * n];
            matmul(Isa::Scalar, &x, m, Weight::Rows(q), Some(&bias), &mut want, n).unwrap();
            matmul(Isa::detect(), &x, m, Weight::Rows(q), Some(&bias), &mut got, n).unwrap();
            assert_eq!(got, want); // small integers: exact
            let mut got2 = vec![0f32; m * n];
            let pw = Weight::Plain { w: ColW::F32(&w), k, n };
            matmul(Isa::detect(), &x, m, pw, Some(&bias), &mut got2, n).unwrap();
            if fmt == Format::F32 {
                assert_eq!(got2, want);
            }
        }
    }

    #[test]
    fn large_m_f32_with_bias_and_row_stride_matches_scalar() {
        use crate::kernels::test_util::lcg;
        // Past KC = 256, edge tiles on every side, C with 5 padding columns
        // that must stay untouched; 1 and 2 threads (2 threads: sgemm.rs's parallel tasks).
        let (m, k, n, ldc) = (120, 300, 70, 75);
        let x = lcg(m * k, 11);
        let w = lcg(k * n, 12);
        let bias = lcg(n, 13);
        let mut want = vec![9f32; m * ldc];
        let pw = Weight::Plain { w: ColW::F32(&w), k, n };
        matmul(Isa::Scalar, &x, m, pw, Some(&bias), &mut want, ldc).unwrap();
        for threads in [1, 2] {
            let mut got = vec![9f32; m * ldc];
            crate::pool::with_threads(threads, || {
                matmul(Isa::detect(), &x, m, pw, Some(&bias), &mut got, ldc).unwrap()
            });
            for i in 0..m {
                for j in 0..ldc {
                    let (g, r) = (got[i * ldc + j], want[i * ldc + j]);
                    if j >= n {
                        assert_eq!(g, 9.0, "padding written at ({i}, {j})");
                    } else {
                        assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "({i}, {j}): {g} vs {r}");
                    }
                }
            }
        }
    }
}
