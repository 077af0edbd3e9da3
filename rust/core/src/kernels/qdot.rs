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
//! Its float sums run per lane, so it matches the reference within the bound above, not bit for
//! bit.
//!
//! With VNNI (`vpdpbusd`: AVX-512-VNNI in `x86/avx512/qdot.rs`, AVX-VNNI in
//! `x86/avx2/qdot_vnni.rs`, each chosen per call when the CPU has it): one weight row per float
//! lane, the exact integer block sums reduced per row, and `s += (dw * dx) * isum` in block order
//! as the reference does: bit-identical to `scalar_task`.

use super::backend::{dispatch, Backend};
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
pub(crate) const TINY: f32 = 1e-30;

/// Round `X` `(m, k)` (row-major, `k` a multiple of 32) to Q8 blocks, or `None` when `X` holds
/// an Inf or NaN (the caller then runs the exact float kernel).
///
/// Per block: `dx = amax / 127` and `qx = round_half_even(x * (127 / amax))` in float32 (as
/// ggml's `quantize_row_q8_0`); a block with `amax < 1e-30` computes `x * (127 / amax)` in
/// float64 instead. The AVX2 path gives the same bytes as the scalar one.
pub fn quantize_acts(isa: Isa, x: &[f32], m: usize, k: usize) -> Option<QActs> {
    dispatch!(isa, B => quantize_acts_with::<B>(x, m, k))
}

fn quantize_acts_with<B: Backend>(x: &[f32], m: usize, k: usize) -> Option<QActs> {
    debug_assert!(k % QK == 0 && x.len() >= m * k);
    let nb = k / QK;
    let mut q = vec![0i8; m * k];
    let mut d = vec![0f32; m * nb];
    let mut s8 = vec![0i32; m * nb * 8];
    let blocks = x[..m * k].chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(&mut d);
    for (((xb, qb), db), sb) in blocks.zip(s8.chunks_exact_mut(8)) {
        // SAFETY: the CPU runs `B`'s instruction set (`quantize_acts`); one block each.
        if !unsafe { B::round_block(xb, qb, db, sb) } {
            return None;
        }
    }
    let pairs = Q4Pairs::new(&q, &d, &s8, m);
    Some(QActs { q, d, s8, m, k, pairs })
}

/// The scalar reference of one block (false: the block holds an Inf or NaN).
pub(crate) fn round_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut [i32]) -> bool {
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
pub(crate) fn round_tiny(xb: &[f32], qb: &mut [i8], amax: f32) {
    if amax > 0.0 {
        let id = 127.0 / amax as f64;
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v as f64 * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    } else {
        qb.fill(0);
    }
}

/// `corr[e] = off * sum(qx)` of every activation block `e`, from the activations' `s8`
/// (`8 *` the sums of four) lanes.
pub(crate) fn block_corr(a: &QActs, off: i32) -> Vec<i32> {
    a.s8.chunks_exact(8).map(|l| l.iter().sum::<i32>() / 8 * off).collect()
}

/// Does this format take the integer path?
/// The epilogue of every integer-dot tile: `C[at + r] = lanes[r] + bias[j + r]` (plus 0.0
/// without a bias) for each lane `r` of `lanes` (the tile row's valid sums).
///
/// # Safety
/// `c.add(at..at + lanes.len())` lie in this task's columns of `C` (the [`QRowsOut`] contract),
/// and `bias`, if any, holds `j + lanes.len()` values.
#[inline(always)]
pub(crate) unsafe fn store_sums(
    lanes: &[f32],
    bias: Option<&[f32]>,
    c: *mut f32,
    at: usize,
    j: usize,
) {
    for (r, &v) in lanes.iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe { *c.add(at + r) = v + bias.map_or(0.0, |b| b[j + r]) };
    }
}

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
        let o = QRowsOut { a, w, bias, c: cp.get(), ldc };
        // SAFETY: task t writes only columns n0..n1 of C.
        unsafe { task(isa, o, n0, n1) }
    });
}

/// The arguments that every column task of `C = X W^T + bias` with Q8-rounded activations
/// shares (the task's columns `n0..n1` are passed beside it): `X` as [`QActs`] (`a.m` rows of
/// `a.k`), the Q8_0 / Q4_0 weight `W` (`a.k == w.k`), the bias (`w.n` floats) and `C` (`a.m`
/// rows of stride `ldc`).
///
/// # Safety (of every task that takes it)
/// `c` must be valid for writes of `(a.m - 1) * ldc + n1` floats, and no other thread may
/// read or write columns `n0..n1` of `C` while the task runs.
#[derive(Clone, Copy)]
pub(crate) struct QRowsOut<'a> {
    pub a: &'a QActs,
    pub w: &'a QWeight<'a>,
    pub bias: Option<&'a [f32]>,
    pub c: *mut f32,
    pub ldc: usize,
}

pub(super) unsafe fn task(isa: Isa, o: QRowsOut<'_>, n0: usize, n1: usize) {
    // SAFETY: the CPU runs `isa`; the caller's contract on `c` and the columns.
    dispatch!(isa, B => unsafe { B::qdot_rows(o, n0, n1) })
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
pub(crate) unsafe fn scalar_task(o: QRowsOut<'_>, n0: usize, n1: usize) {
    let QRowsOut { a, w, bias, c, ldc } = o;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::Ext;
    use crate::kernels::quant::{dequantize, quantize};
    use crate::kernels::test_util::lcg;

    /// Fails when CI says this CPU has the extension (`TIERFLOW_EXPECT_ISA=avx512` or
    /// `TIERFLOW_EXPECT_EXT` naming it) but it is not detected; otherwise whether to run.
    pub(crate) fn expect(ext: Ext) -> bool {
        let isa = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
        let exts = std::env::var("TIERFLOW_EXPECT_EXT").unwrap_or_default();
        let wanted = exts.split_whitespace().any(|e| e == ext.name())
            || (ext == Ext::Avx512Vnni && isa.trim() == "avx512");
        assert!(!wanted || ext.present(), "CI expects {} but the CPU lacks it", ext.name());
        ext.present()
    }

    /// Runs `body` and the scalar reference over the same columns, in tasks that start and end
    /// off the 16-row tiles, and asserts bit-identical outputs.
    pub(crate) fn check_bit_identical(
        name: &str,
        body: &dyn Fn(Format, QRowsOut<'_>, usize, usize),
    ) {
        for fmt in [Format::Q8_0, Format::Q4_0] {
            for m in 1..=9 {
                for &(k, n) in &[(32, 1), (64, 7), (96, 17), (256, 33), (480, 16), (1024, 70)] {
                    let mut x = lcg(m * k, 5 + m as u64);
                    // Extreme activations and weights: +-127 blocks, a zero block, -128 in Q8.
                    x[..32.min(k)].iter_mut().for_each(|v| *v = v.signum() * 3.0);
                    let mut wf = lcg(k * n, 9);
                    if k >= 64 {
                        wf[32 * n..64 * n].fill(0.0);
                    }
                    let mut data = quantize(fmt, &wf, k, n).unwrap();
                    if fmt == Format::Q8_0 {
                        data[2] = 0x80; // -128: the extreme the ggml layout allows
                    }
                    let w = QWeight::new(fmt, k, n, &data).unwrap();
                    let a = quantize_acts(Isa::Scalar, &x, m, k).unwrap();
                    let bias = lcg(n, 4);
                    for bias in [None, Some(&bias[..])] {
                        let ldc = n + 3;
                        let mut want = vec![f32::NAN; m * ldc];
                        let mut got = vec![f32::NAN; m * ldc];
                        let cuts = [0, n / 3, n / 3 + 1, n];
                        for win in cuts.windows(2) {
                            let (a, w) = (&a, &w);
                            let o = QRowsOut { a, w, bias, c: want.as_mut_ptr(), ldc };
                            unsafe { scalar_task(o, win[0], win[1]) };
                            body(fmt, QRowsOut { c: got.as_mut_ptr(), ..o }, win[0], win[1]);
                        }
                        for (gi, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{name} {fmt:?} m={m} k={k} n={n} at {gi}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

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

    /// `run(a, w, bias, c, ldc)` computes `C` for the case; checked against the exact product
    /// of the rounded operands in float64 and against the float product within the rounding
    /// bound.
    fn check_against_f64(
        name: &str,
        run: &dyn Fn(&QActs, &QWeight<'_>, Option<&[f32]>, &mut [f32], usize),
    ) {
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
                {
                    let mut got = vec![0f32; m * n];
                    run(&a, &w, Some(&bias), &mut got, n);
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
                            assert!((g - exact).abs() <= 1e-5 * (1.0 + k as f64), "{fmt:?} {name}");
                            assert!((g - want).abs() <= round + 1e-5 * (1.0 + k as f64));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_matches_float64() {
        for isa in Isa::available() {
            check_against_f64(isa.name(), &|a, w, bias, c, ldc| matmul_q(isa, a, w, bias, c, ldc));
        }
    }

    /// The AVX2 body without AVX-VNNI, run directly: `Avx2::qdot_rows` picks the AVX-VNNI body
    /// on CPUs that have it, which would leave this one untested there.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_body_without_vnni_matches_float64() {
        if !Isa::Avx2.supported() {
            return;
        }
        use crate::kernels::x86::avx2::qdot::{task, Q4, Q8};
        check_against_f64("avx2 (no VNNI)", &|a, w, bias, c, ldc| {
            // SAFETY: the CPU has AVX2; one task over every column of `c`.
            let o = QRowsOut { a, w, bias, c: c.as_mut_ptr(), ldc };
            unsafe {
                match w.fmt {
                    Format::Q8_0 => task::<Q8>(o, 0, w.n),
                    _ => task::<Q4>(o, 0, w.n),
                }
            }
        });
    }

    /// Every Q8_0 / Q4_0 body against the scalar reference (bit-identical) through the
    /// backends, as `matmul_q` runs them on this CPU.
    #[test]
    fn every_path_bit_identical_where_exact() {
        for isa in Isa::available() {
            let exact = match isa {
                Isa::Scalar => true,
                Isa::Avx2 => Ext::AvxVnni.present(),
                Isa::Avx512 => Ext::Avx512Vnni.present(),
            };
            if exact {
                check_bit_identical(isa.name(), &|_, o, n0, n1| unsafe { task(isa, o, n0, n1) });
            }
        }
    }
}
