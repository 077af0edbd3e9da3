//! Attention, flash style: `O = softmax(Q K^T * scale + mask) V`, per batch and head, computed
//! over key/value blocks with an online softmax so the `S x S` score matrix never exists.
//!
//! Layout: `Q` `(B, H, Sq, D)`, `K` and `V` `(B, Hkv, Skv, D)`, `O` `(B, H, Sq, D)`, all
//! contiguous; `Hkv` divides `H` and query head `h` reads key/value head `h / (H / Hkv)` (grouped
//! query attention). The optional additive mask is `(Mb, Mh, Sq, Skv)` with `Mb` in `{1, B}` and
//! `Mh` in `{1, H}` (broadcast). `causal` lets query `i` see keys `j <= i + Skv - Sq` (aligned at
//! the bottom right, so one new query row against a KV cache sees the whole cache). A query row
//! that sees no key gets NaN (0/0), as `softmax` of an all `-inf` row does.
//!
//! Blocking: a task owns `BR = 64` query rows of one head; it walks the key blocks of `BC = 32`
//! keys, computing the `BR x BC` score tile `S = (Q * scale) K^T` from the transposed K (register tile 6 rows x 16 keys), then per row `m' = max(m, max_j S)`,
//! `P = exp(S - m')`, `l = l e^{m - m'} + sum_j P`, `O = O e^{m - m'} + P V` (register tile 6 rows x
//! 16 dims). Extra memory: K transposed once (the size of K) plus per task
//! `(2 BR + BC) * Dp + BR * BC` floats (`Dp` = D rounded up to 16): O(S * D), never O(S^2).
//!
//! One generic body compiled twice (see `vmath.rs`): the scalar reference and the AVX2+FMA path.

use super::dot::SendPtr;
use super::rows::{lanes_max, lanes_sum};
use super::vmath::{exp, fma};
use crate::cpu::Isa;
use crate::{CoreError, Result};
use rayon::prelude::*;

/// Query rows per task.
pub const BR: usize = 64;
/// Keys per block.
pub const BC: usize = 32;
/// Query rows of a register tile (6 rows x 16 lanes = 12 accumulators).
const RT: usize = 6;
/// `BR` rounded up to a whole number of register tiles.
const BRP: usize = BR.div_ceil(RT) * RT;

/// Sizes of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub sq: usize,
    pub skv: usize,
    pub d: usize,
}

/// An additive mask `(mb, mh, sq, skv)`, broadcast over batch / head where `mb` / `mh` is 1.
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a> {
    pub data: &'a [f32],
    pub mb: usize,
    pub mh: usize,
}

/// `out = softmax(q k^T * scale + mask) v` (see the module docs).
pub fn attention(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    causal: bool,
    scale: f32,
    mask: Option<Mask<'_>>,
    out: &mut [f32],
) -> Result<()> {
    let Dims { b, h, hkv, sq, skv, d } = dims;
    let mul = |a: usize, c: &[usize]| c.iter().try_fold(a, |x, y| x.checked_mul(*y));
    let nq = mul(b, &[h, sq, d]);
    let nkv = mul(b, &[hkv, skv, d]);
    if hkv == 0 && h > 0 || (hkv > 0 && h % hkv != 0) {
        return Err(CoreError::Shape(format!(
            "{hkv} key/value heads do not divide {h} query heads"
        )));
    }
    if nq.map_or(true, |n| q.len() != n || out.len() != n)
        || nkv.map_or(true, |n| k.len() != n || v.len() != n)
    {
        return Err(CoreError::Shape(format!("attention buffers do not match {dims:?}")));
    }
    if let Some(m) = mask {
        let ok = (m.mb == 1 || m.mb == b) && (m.mh == 1 || m.mh == h);
        if !ok || mul(m.mb, &[m.mh, sq, skv]) != Some(m.data.len()) {
            return Err(CoreError::Shape(format!(
                "mask of {} elements does not match {dims:?}",
                m.data.len()
            )));
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    let nqb = sq.div_ceil(BR);
    let op = SendPtr(out.as_mut_ptr());
    let dp = d.div_ceil(16) * 16;
    // K transposed once, block by block: (B, Hkv, nkb, D, BC), so the score tile of key block
    // `kb` reads one contiguous D x BC panel; zero-padded past Skv. The size of K: the O(S * D)
    // extra memory.
    let nkb = skv.div_ceil(BC);
    let ldk = nkb;
    crate::runtime::install(|| {
        let mut kt = vec![0f32; b * hkv * nkb * d * BC];
        kt.par_chunks_mut((nkb * d * BC).max(1)).enumerate().for_each(|(bh, dst)| {
            let src = &k[bh * skv * d..(bh + 1) * skv * d];
            for (j, kr) in src.chunks_exact(d.max(1)).enumerate() {
                let (blk, jj) = (j / BC, j % BC);
                for (c, &val) in kr.iter().enumerate() {
                    dst[(blk * d + c) * BC + jj] = val;
                }
            }
        });
        let kt = &kt;
        (0..b * h * nqb).into_par_iter().for_each_init(
            || Bufs::new(dp),
            |bufs, t| {
                let (bh, qb) = (t / nqb, t % nqb);
                let (bi, hi) = (bh / h, bh % h);
                let task = Task { q, kt, ldk, v, dims, causal, scale, mask, bi, hi, r0: qb * BR };
                // SAFETY: the task writes only rows r0..r0+BR of head (bi, hi) of `out`.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    if isa >= Isa::Avx2 {
                        return avx2(&task, bufs, op.get());
                    }
                    run::<false>(&task, bufs, op.get());
                }
            },
        );
    });
    Ok(())
}

struct Task<'a> {
    q: &'a [f32],
    /// K transposed by blocks: (B, Hkv, nkb, D, BC).
    kt: &'a [f32],
    /// Key blocks per head (`nkb`).
    ldk: usize,
    v: &'a [f32],
    dims: Dims,
    causal: bool,
    scale: f32,
    mask: Option<Mask<'a>>,
    bi: usize,
    hi: usize,
    r0: usize,
}

struct Bufs {
    qb: Vec<f32>,
    vb: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: [f32; BR],
    l: [f32; BR],
}

impl Bufs {
    fn new(dp: usize) -> Self {
        Bufs {
            qb: vec![0.0; BRP * dp],
            vb: vec![0.0; BC * dp],
            s: vec![0.0; BRP * BC],
            o: vec![0.0; BRP * dp],
            m: [0.0; BR],
            l: [0.0; BR],
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
    unsafe { run::<true>(t, b, out) }
}

#[inline(always)]
unsafe fn run<const F: bool>(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
    let Dims { h, hkv, sq, skv, d, .. } = t.dims;
    let dp = d.div_ceil(16) * 16;
    let rows = BR.min(sq - t.r0);
    let g = t.hi / (h / hkv);
    let qbase = ((t.bi * h + t.hi) * sq + t.r0) * d;
    let kvbase = (t.bi * hkv + g) * skv * d;
    let off = skv as isize - sq as isize;
    // Q block, pre-scaled, zero-padded to BR x Dp.
    b.qb.fill(0.0);
    for r in 0..rows {
        for c in 0..d {
            b.qb[r * dp + c] = t.q[qbase + r * d + c] * t.scale;
        }
    }
    b.o.fill(0.0);
    b.m = [f32::NEG_INFINITY; BR];
    b.l = [0.0; BR];
    // Keys this block can see.
    let kend = if t.causal {
        ((t.r0 + rows) as isize - 1 + off + 1).clamp(0, skv as isize) as usize
    } else {
        skv
    };
    let rows4 = rows.div_ceil(RT) * RT;
    let mut j0 = 0;
    while j0 < kend {
        let bc = BC.min(kend - j0);
        // The value block (BC x Dp), zero-padded, unless V's rows are already 16-aligned.
        let (vsrc, ldv) = if dp == d {
            (&t.v[kvbase + j0 * d..kvbase + (j0 + bc) * d], d)
        } else {
            b.vb.fill(0.0);
            for j in 0..bc {
                let vr = &t.v[kvbase + (j0 + j) * d..kvbase + (j0 + j + 1) * d];
                b.vb[j * dp..j * dp + d].copy_from_slice(vr);
            }
            (&b.vb[..bc * dp], dp)
        };
        let ktbase = ((t.bi * hkv + g) * t.ldk + j0 / BC) * d * BC;
        // S = Qb Kt, register tile RT rows x 16 keys.
        let bc16 = bc.div_ceil(16) * 16;
        for c0 in (0..bc16).step_by(16) {
            for r0 in (0..rows4).step_by(RT) {
                let mut acc = [[0f32; 16]; RT];
                let qrows: [&[f32]; RT] =
                    std::array::from_fn(|r| &b.qb[(r0 + r) * dp..(r0 + r) * dp + dp]);
                for c in 0..d {
                    let at = ktbase + c * BC + c0;
                    let kt: &[f32; 16] = t.kt[at..at + 16].try_into().expect("16");
                    let qv: [f32; RT] = std::array::from_fn(|r| qrows[r][c]);
                    for r in 0..RT {
                        for jj in 0..16 {
                            acc[r][jj] = fma::<F>(qv[r], kt[jj], acc[r][jj]);
                        }
                    }
                }
                for r in 0..RT {
                    b.s[(r0 + r) * BC + c0..(r0 + r) * BC + c0 + 16].copy_from_slice(&acc[r]);
                }
            }
        }
        // Mask, causal cut, online softmax.
        for r in 0..rows {
            let i = t.r0 + r;
            let srow = &mut b.s[r * BC..r * BC + BC];
            if let Some(mk) = t.mask {
                let mb = if mk.mb == 1 { 0 } else { t.bi };
                let mh = if mk.mh == 1 { 0 } else { t.hi };
                let base = ((mb * mk.mh + mh) * sq + i) * skv + j0;
                for j in 0..bc {
                    srow[j] += mk.data[base + j];
                }
            }
            let lim = if t.causal {
                (i as isize + off + 1 - j0 as isize).clamp(0, bc as isize) as usize
            } else {
                bc
            };
            for s in srow[lim..].iter_mut() {
                *s = f32::NEG_INFINITY;
            }
            // Running maximum (a NaN score makes it NaN, and the row's output NaN).
            let bm = lanes_max(&srow[..bc]);
            let mx = if bm > b.m[r] || bm.is_nan() { bm } else { b.m[r] };
            if mx == f32::NEG_INFINITY {
                srow.fill(0.0);
                continue;
            }
            let alpha = exp::<F>(b.m[r] - mx);
            for s in srow.iter_mut() {
                *s = exp::<F>(*s - mx);
            }
            let sum = lanes_sum(&srow[..bc], |p| p);
            b.l[r] = fma::<F>(b.l[r], alpha, sum);
            b.m[r] = mx;
            for o in b.o[r * dp..r * dp + dp].iter_mut() {
                *o *= alpha;
            }
        }
        for r in rows..rows4 {
            b.s[r * BC..r * BC + BC].fill(0.0);
        }
        // O += P Vb, register tile RT rows x 16 dims.
        for d0 in (0..dp).step_by(16) {
            for r0 in (0..rows4).step_by(RT) {
                let mut acc = [[0f32; 16]; RT];
                for r in 0..RT {
                    acc[r].copy_from_slice(&b.o[(r0 + r) * dp + d0..(r0 + r) * dp + d0 + 16]);
                }
                let prows: [&[f32]; RT] =
                    std::array::from_fn(|r| &b.s[(r0 + r) * BC..(r0 + r) * BC + BC]);
                for (j, vr) in vsrc.chunks_exact(ldv).take(bc).enumerate() {
                    let vr: &[f32; 16] = vr[d0..d0 + 16].try_into().expect("16");
                    let pv: [f32; RT] = std::array::from_fn(|r| prows[r][j]);
                    for r in 0..RT {
                        for jj in 0..16 {
                            acc[r][jj] = fma::<F>(pv[r], vr[jj], acc[r][jj]);
                        }
                    }
                }
                for r in 0..RT {
                    b.o[(r0 + r) * dp + d0..(r0 + r) * dp + d0 + 16].copy_from_slice(&acc[r]);
                }
            }
        }
        j0 += bc;
    }
    for r in 0..rows {
        let inv = 1.0 / b.l[r];
        for c in 0..d {
            unsafe { *out.add(qbase + r * d + c) = b.o[r * dp + c] * inv };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(q: &[f32], k: &[f32], v: &[f32], dm: Dims, causal: bool, scale: f32) -> Vec<f64> {
        let Dims { b, h, hkv, sq, skv, d } = dm;
        let mut out = vec![0f64; b * h * sq * d];
        for bi in 0..b {
            for hi in 0..h {
                let g = hi / (h / hkv);
                for i in 0..sq {
                    let qr = &q[((bi * h + hi) * sq + i) * d..][..d];
                    let mut s: Vec<f64> = (0..skv)
                        .map(|j| {
                            let kr = &k[((bi * hkv + g) * skv + j) * d..][..d];
                            let dot: f64 =
                                qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            if causal && j as isize > i as isize + skv as isize - sq as isize {
                                f64::NEG_INFINITY
                            } else {
                                dot * scale as f64
                            }
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut l = 0.0;
                    for x in s.iter_mut() {
                        *x = (*x - mx).exp();
                        l += *x;
                    }
                    for j in 0..skv {
                        let vr = &v[((bi * hkv + g) * skv + j) * d..][..d];
                        for c in 0..d {
                            out[((bi * h + hi) * sq + i) * d + c] += s[j] / l * vr[c] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn both_paths_match_float64() {
        let dm = Dims { b: 2, h: 4, hkv: 2, sq: 37, skv: 70, d: 19 };
        let gen = |n: usize, s: u32| {
            (0..n)
                .map(|i| ((((i as u32).wrapping_mul(2654435761) ^ s) % 1000) as f32 / 500.0) - 1.0)
                .collect::<Vec<_>>()
        };
        let q = gen(2 * 4 * 37 * 19, 1);
        let k = gen(2 * 2 * 70 * 19, 2);
        let v = gen(2 * 2 * 70 * 19, 3);
        for causal in [false, true] {
            let want = reference(&q, &k, &v, dm, causal, 0.3);
            for isa in Isa::available() {
                let mut out = vec![0f32; q.len()];
                attention(isa, &q, &k, &v, dm, causal, 0.3, None, &mut out).unwrap();
                for (a, b) in out.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < 2e-5, "{isa:?} causal={causal}: {a} vs {b}");
                }
            }
        }
    }
}
