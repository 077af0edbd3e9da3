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
//! Blocking: a task owns `BR` query rows of one head and walks the key blocks of `BC` keys it can
//! see (under `causal`, blocks wholly above the diagonal are never visited, only the block that
//! crosses it is masked, and there each register tile stops at its last row's diagonal). Per key
//! block `j0..j0+BC`:
//! 1. `S = (Q * scale) K^T`, a `BR x BC` tile, from `Qp` (the Q block packed by register tiles
//!    as `[tile][c][RT]`) and `Kt` (K packed by key blocks and 16-key panels, each panel
//!    transposed: `(B, Hkv, nkb, BC/16, D, 16)`), in register tiles of `RT = 6` rows x 16 keys;
//! 2. per row: `m' = max(m, max_j S)`, `P = exp(S - m')`, `l = l e^{m - m'} + sum_j P`,
//!    `O = O e^{m - m'}` (skipped when `m' = m`);
//! 3. `O += P V`, register tiles of `RT` rows x 16 dims, from `Vp` (V packed by key blocks and
//!    16-dim panels, `(B, Hkv, nkb, Dp/16, BC, 16)`, zero past `D`).
//!
//! Each register tile sweeps one contiguous panel (`16 x D` of `Kt`, `BC x 16` of `Vp`): with V
//! read in place, a power-of-two row stride (`D = 128`: 512 bytes) mapped a panel onto 8 of the
//! 64 L1 sets (single-core rate at `D = 128` about 45 GFLOP/s before packing, 60-65 after).
//!
//! At the end `O / l`. Buffer sizes: `Qp` `BR x D`, `S` `BR x BC` (48 KiB), `O` `BR x Dp`
//! (`Dp` = D rounded up to 16), so for `D = 128` the Q and O blocks are 48 KiB each and the K and
//! V blocks 64 KiB each: all in L2 (512 KiB a core here), the panel a register tile sweeps
//! (`16 x D` of K: 8 KiB; `BC x 16` of V: 8 KiB) in L1. Extra memory: `Kt` and `Vp` (the size
//! of K and V, V padded to `Dp`) plus those per-thread buffers: O(S * D), never O(S^2).
//! `BR = 96` against 48: each K and V panel brought to L1 serves 16 register tiles, not 8
//! (single-thread CPU time, A/B in alternating calls: 0-8% faster at S = 1024-2048; 144 no
//! better).
//!
//! Tasks are `B * H * ceil(Sq / BR)` (query blocks of one head), under `causal` longest first
//! within a head, so the short ones fill in at the end.
//!
//! IEEE: NaN or Inf in a score reaches the output of its row (a `+inf` score gives `inf - inf`);
//! a NaN in V reaches every row that sees its key, and may reach rows of the same task that do
//! not (`0 * NaN`, as in NumPy's `P @ V`, where it reaches every row): under `causal` only rows
//! of the same register tile.
//!
//! Measured (`benches/test_kernels.py -k attention`, causal, B=1, H=8, 2 threads, against
//! NumPy's `softmax(Q K^T) V`; run of 10:03 UTC on a shared, loaded machine, see BENCHMARKS.md):
//! S = 1024 / 2048 / 4096: 15.96x / 9.60x / 6.41x at D = 64, 6.08x / 4.70x / 6.46x at D = 128.
//! One thread (CPU time): 60-71 GFLOP/s at D = 64 and 64-73 at D = 128 for S >= 2048.
//!
//! One driver ([`run`]) over a [`Micro`] kernel set: [`Scalar`] (portable Rust, the reference,
//! always compiled), `x86::avx2::attention::Avx2` (AVX2+FMA intrinsics) and
//! `x86::avx512::attention::Avx512` (AVX-512F: the same layouts, register tiles of 6 rows x 64
//! keys or dims).

use super::backend::{dispatch, Backend};
use super::dot::SendPtr;
use super::vmath::exp;
use crate::cpu::Isa;
use crate::{CoreError, Result};
use rayon::prelude::*;

/// Query rows per task (16 register tiles of `RT`).
pub const BR: usize = 96;
/// Keys per block: one row of the score tile is 128 floats (16 AVX2 vectors); against 64, it
/// halves the per-row cost of the online softmax (max, rescale of O) per key.
pub const BC: usize = 128;
/// Query rows of a register tile (6 rows x 16 lanes = 12 AVX2 accumulators).
pub const RT: usize = 6;
const _: () = assert!(BR % RT == 0 && BC % 16 == 0);

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
    // K and V packed once per key/value head (see [`pack_kv`]).
    let nkb = skv.div_ceil(BC);
    crate::pool::install(|| {
        let (kt, vp) = pack_kv(k, v, b * hkv, skv, d)?;
        let (kt, vp) = (&kt, &vp);
        (0..b * h * nqb).into_par_iter().for_each_init(
            || Bufs::new(d),
            |bufs, t| {
                let (bh, qb) = (t / nqb, t % nqb);
                // Under `causal` the last query blocks see the most keys: run them first.
                let qb = if causal { nqb - 1 - qb } else { qb };
                let (bi, hi) = (bh / h, bh % h);
                let task = Task { q, kt, vp, nkb, dims, causal, scale, mask, bi, hi, r0: qb * BR };
                // SAFETY: the task writes only rows r0..r0+BR of head (bi, hi) of `out`, and the
                // AVX2 path runs only when the CPU has AVX2 and FMA (`isa` says so).
                dispatch!(isa, B => unsafe { B::attention_task(&task, bufs, op.get()) })
            },
        );
        Ok(())
    })
}

/// K and V packed for the micro-kernels (see `Task::kt` and `Task::vp`), zero-padded past Skv
/// (and V past D), so every register tile sweeps one contiguous panel: no cache-set conflicts
/// from a power-of-two row stride. About the size of K and V: the O(S * D) extra memory. Every
/// element is written once (padding included), so the buffers need no zeroing pass. Padding can
/// make them much larger than K and V when `Skv` and `D` are tiny (`Skv = D = 1`: 128 x 16 the
/// size of V), so their allocation is checked: a `Capacity` error, not an abort.
fn pack_kv(k: &[f32], v: &[f32], nbh: usize, skv: usize, d: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let nkb = skv.div_ceil(BC);
    let dp = d.div_ceil(16) * 16;
    let (kper, vper) = (nkb * BC * d, nkb * BC * dp);
    let alloc = |per: usize| -> Result<Vec<f32>> {
        let mut buf = Vec::new();
        per.checked_mul(nbh).and_then(|n| buf.try_reserve_exact(n).ok()).ok_or_else(|| {
            CoreError::Capacity(format!(
                "attention could not allocate {nbh} x {per} floats for packed K/V"
            ))
        })?;
        Ok(buf)
    };
    let (mut kt, mut vp) = (alloc(kper)?, alloc(vper)?);
    if kper > 0 {
        let ku = &mut kt.spare_capacity_mut()[..nbh * kper];
        let vu = &mut vp.spare_capacity_mut()[..nbh * vper];
        ku.par_chunks_mut(kper).zip(vu.par_chunks_mut(vper)).enumerate().for_each(
            |(bh, (kd, vd))| {
                let ks = &k[bh * skv * d..(bh + 1) * skv * d];
                let vs = &v[bh * skv * d..(bh + 1) * skv * d];
                // K: consecutive 16-key panels, each `d x 16`.
                for (p, dst) in kd.chunks_exact_mut(16 * d).enumerate() {
                    for jj in 0..16 {
                        let j = 16 * p + jj;
                        if j < skv {
                            for (c, &x) in ks[j * d..(j + 1) * d].iter().enumerate() {
                                dst[c * 16 + jj].write(x);
                            }
                        } else {
                            for c in 0..d {
                                dst[c * 16 + jj].write(0.0);
                            }
                        }
                    }
                }
                // V: key blocks, each `Dp/16` panels of `BC x 16`.
                for (blk, dst) in vd.chunks_exact_mut(BC * dp).enumerate() {
                    for jj in 0..BC {
                        let j = blk * BC + jj;
                        let row = if j < skv { &vs[j * d..(j + 1) * d] } else { &[] };
                        for cp in 0..dp / 16 {
                            let out = &mut dst[(cp * BC + jj) * 16..(cp * BC + jj + 1) * 16];
                            let part = row.get(cp * 16..d.min(cp * 16 + 16)).unwrap_or(&[]);
                            for (o, &x) in out.iter_mut().zip(part) {
                                o.write(x);
                            }
                            for o in out[part.len()..].iter_mut() {
                                o.write(0.0);
                            }
                        }
                    }
                }
            },
        );
    }
    // SAFETY: every element of both buffers' first `nbh * kper` / `nbh * vper` was written.
    unsafe {
        kt.set_len(nbh * kper);
        vp.set_len(nbh * vper);
    }
    Ok((kt, vp))
}

/// One task: query rows `r0..r0+BR` of head `(bi, hi)`.
pub(crate) struct Task<'a> {
    q: &'a [f32],
    /// K by key blocks and 16-key panels, each panel transposed: `(B, Hkv, nkb, BC/16, D, 16)`.
    kt: &'a [f32],
    /// V by key blocks and 16-dim panels: `(B, Hkv, nkb, Dp/16, BC, 16)`, zero past D.
    vp: &'a [f32],
    /// Key blocks per head.
    nkb: usize,
    dims: Dims,
    causal: bool,
    scale: f32,
    mask: Option<Mask<'a>>,
    bi: usize,
    hi: usize,
    r0: usize,
}

/// Per-thread buffers (see the module docs for their sizes).
pub(crate) struct Bufs {
    /// Q block, scaled, packed `[BR / RT][D][RT]`.
    qp: Vec<f32>,
    /// Scores, then probabilities, `BR x BC`.
    s: Vec<f32>,
    /// Unnormalised output `BR x Dp`.
    o: Vec<f32>,
    m: [f32; BR],
    l: [f32; BR],
}

impl Bufs {
    fn new(d: usize) -> Self {
        let dp = d.div_ceil(16) * 16;
        Bufs {
            qp: vec![0.0; BR * d],
            s: vec![0.0; BR * BC],
            o: vec![0.0; BR * dp],
            m: [0.0; BR],
            l: [0.0; BR],
        }
    }
}

/// The three steps of a key block, one implementation per instruction set.
///
/// Shapes: `nrt = nc.len()` register tiles of `RT` rows; `qp` is `[nrt][d][RT]`; `kt` is
/// `[BC/16][d][16]`; `s` is `nrt * RT x BC`; `v` is `[dp/16][BC][16]`; `o` is `nrt * RT x dp`,
/// `dp` a multiple of 16. `nc[t] <= BC` is the number of keys register tile `t` needs: all the
/// block's keys, except in the block that crosses the causal diagonal, where a tile stops at its
/// last row's diagonal (the triangle above it is neither computed nor multiplied by V).
pub(crate) trait Micro {
    /// `s[r][j] = sum_c qp[r][c] k[j][c]` for the rows `r` of tile `t` and `j < 16 *
    /// ceil(nc[t] / 16)`; later columns are left as they were.
    ///
    /// # Safety
    /// The slices hold the sizes above; SIMD implementations need their CPU features.
    unsafe fn scores(qp: &[f32], d: usize, kt: &[f32], nc: &[usize], s: &mut [f32]);
    /// Online-softmax update of one row: `srow` (a multiple of 8 scores, at most `BC`, `-inf`
    /// where masked) becomes `P = exp(srow - m')`; `m`, `l` and `orow` (`dp` floats) are updated
    /// as in the module docs. A NaN score makes `l` (so the row's output) NaN.
    ///
    /// # Safety
    /// As for [`Micro::scores`].
    unsafe fn softmax_row(srow: &mut [f32], m: &mut f32, l: &mut f32, orow: &mut [f32]);
    /// `o[r][c] += sum_{j < nc[t]} p[r][j] v[j][c]` for the rows `r` of tile `t`, `c < dp`.
    ///
    /// # Safety
    /// As for [`Micro::scores`].
    unsafe fn pv(p: &[f32], v: &[f32], nc: &[usize], dp: usize, o: &mut [f32]);
}

/// The portable reference (plain `a * b + c`, no FMA).
pub(crate) struct Scalar;

impl Micro for Scalar {
    unsafe fn scores(qp: &[f32], d: usize, kt: &[f32], nc: &[usize], s: &mut [f32]) {
        for (t, &n) in nc.iter().enumerate() {
            let q = &qp[t * d * RT..(t + 1) * d * RT];
            for r in 0..RT {
                let srow = &mut s[(t * RT + r) * BC..(t * RT + r + 1) * BC];
                for (j, sv) in srow[..n.div_ceil(16) * 16].iter_mut().enumerate() {
                    let mut acc = 0f32;
                    let kp = &kt[(j / 16) * d * 16 + j % 16..];
                    for c in 0..d {
                        acc += q[c * RT + r] * kp[c * 16];
                    }
                    *sv = acc;
                }
            }
        }
    }

    unsafe fn softmax_row(srow: &mut [f32], m: &mut f32, l: &mut f32, orow: &mut [f32]) {
        let (mut bm, mut nan) = (f32::NEG_INFINITY, false);
        for &x in srow.iter() {
            bm = if x > bm { x } else { bm };
            nan |= x.is_nan();
        }
        let mx = if nan {
            f32::NAN
        } else if bm > *m {
            bm
        } else {
            *m
        };
        if mx == f32::NEG_INFINITY {
            srow.fill(0.0);
            return;
        }
        let alpha = exp::<false>(*m - mx);
        let mut sum = 0f32;
        for s in srow.iter_mut() {
            *s = exp::<false>(*s - mx);
            sum += *s;
        }
        *l = *l * alpha + sum;
        *m = mx;
        if alpha != 1.0 {
            for o in orow.iter_mut() {
                *o *= alpha;
            }
        }
    }

    unsafe fn pv(p: &[f32], v: &[f32], nc: &[usize], dp: usize, o: &mut [f32]) {
        for r in 0..nc.len() * RT {
            for j in 0..nc[r / RT] {
                let pj = p[r * BC + j];
                for (c, ov) in o[r * dp..(r + 1) * dp].iter_mut().enumerate() {
                    *ov += pj * v[((c / 16) * BC + j) * 16 + c % 16];
                }
            }
        }
    }
}

/// The driver of one task (see the module docs), generic over the micro-kernels.
///
/// # Safety
/// `out` is the whole output buffer; the task writes rows `r0..r0+BR` of its head only. `K`'s
/// CPU features must be present (the AVX2 caller is a `target_feature` function).
#[inline(always)]
pub(crate) unsafe fn run<K: Micro>(t: &Task<'_>, b: &mut Bufs, out: *mut f32) {
    let Dims { h, hkv, sq, skv, d, .. } = t.dims;
    let dp = d.div_ceil(16) * 16;
    let rows = BR.min(sq - t.r0);
    let nrt = rows.div_ceil(RT);
    let g = t.hi / (h / hkv);
    let qbase = ((t.bi * h + t.hi) * sq + t.r0) * d;
    let off = skv as isize - sq as isize;
    // Q block, pre-scaled, packed by register tiles, zero rows past `rows`.
    // Full tiles column by column (contiguous stores of `RT` floats).
    let qp = &mut b.qp[..nrt * RT * d];
    let qrows = &t.q[qbase..qbase + rows * d];
    for (tile, dst) in qp.chunks_exact_mut(d * RT).enumerate() {
        let n = RT.min(rows - tile * RT);
        let src = &qrows[tile * RT * d..(tile * RT + n) * d];
        if n == RT {
            let rs: [&[f32]; RT] = std::array::from_fn(|r| &src[r * d..(r + 1) * d]);
            for (c, col) in dst.chunks_exact_mut(RT).enumerate() {
                for r in 0..RT {
                    col[r] = rs[r][c] * t.scale;
                }
            }
        } else {
            dst.fill(0.0);
            for (r, row) in src.chunks_exact(d).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    dst[c * RT + r] = x * t.scale;
                }
            }
        }
    }
    let o = &mut b.o[..nrt * RT * dp];
    o.fill(0.0);
    b.m = [f32::NEG_INFINITY; BR];
    b.l = [0.0; BR];
    // Keys this block can see: under `causal`, up to the last row's diagonal.
    let kend =
        if t.causal { ((t.r0 + rows) as isize + off).clamp(0, skv as isize) as usize } else { skv };
    let s = &mut b.s[..nrt * RT * BC];
    let mut nc = [0usize; BR / RT];
    let nc = &mut nc[..nrt];
    let mut j0 = 0;
    while j0 < kend {
        let bc = BC.min(kend - j0);
        let blk = (t.bi * hkv + g) * t.nkb + j0 / BC;
        let (ktb, vpb) = (blk * BC * d, blk * BC * dp);
        // Mask, causal cut (only the blocks that cross the diagonal), online softmax.
        let diag = t.causal && (j0 + BC) as isize > t.r0 as isize + off + 1;
        // Keys each register tile needs: up to its last row's diagonal in the diagonal block.
        for (tile, n) in nc.iter_mut().enumerate() {
            let last = t.r0 + rows.min((tile + 1) * RT) - 1;
            *n = if diag {
                (last as isize + off + 1 - j0 as isize).clamp(0, bc as isize) as usize
            } else {
                bc
            };
        }
        unsafe { K::scores(qp, d, &t.kt[ktb..ktb + d * BC], nc, s) };
        for r in 0..rows {
            let i = t.r0 + r;
            let srow = &mut s[r * BC..(r + 1) * BC];
            if let Some(mk) = t.mask {
                let mb = if mk.mb == 1 { 0 } else { t.bi };
                let mh = if mk.mh == 1 { 0 } else { t.hi };
                let base = ((mb * mk.mh + mh) * sq + i) * skv + j0;
                for (sv, mv) in srow[..bc].iter_mut().zip(&mk.data[base..base + bc]) {
                    *sv += mv;
                }
            }
            let lim = if diag {
                (i as isize + off + 1 - j0 as isize).clamp(0, bc as isize) as usize
            } else {
                bc
            };
            // The row's softmax covers the keys its tile multiplies by V (`nc`), to a whole
            // vector; those past its own limit are masked.
            let len = nc[r / RT].div_ceil(8) * 8;
            srow[lim..len].fill(f32::NEG_INFINITY);
            let (m, l, orow) = (&mut b.m[r], &mut b.l[r], &mut o[r * dp..(r + 1) * dp]);
            unsafe { K::softmax_row(&mut srow[..len], m, l, orow) };
        }
        s[rows * BC..].fill(0.0);
        unsafe { K::pv(s, &t.vp[vpb..vpb + BC * dp], nc, dp, o) };
        j0 += bc;
    }
    for r in 0..rows {
        let inv = 1.0 / b.l[r];
        // SAFETY: row r0 + r of head (bi, hi): this task's rows only (see the function docs).
        let dst = unsafe { std::slice::from_raw_parts_mut(out.add(qbase + r * d), d) };
        for (y, &x) in dst.iter_mut().zip(&o[r * dp..r * dp + d]) {
            *y = x * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(q: &[f32], k: &[f32], v: &[f32], dm: Dims, causal: bool, scale: f32) -> Vec<f64> {
        reference_masked(q, k, v, dm, causal, scale, None)
    }

    fn reference_masked(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dm: Dims,
        causal: bool,
        scale: f32,
        mask: Option<Mask<'_>>,
    ) -> Vec<f64> {
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
                            let add = mask.map_or(0.0, |m| {
                                let (mb, mh) = (bi.min(m.mb - 1), hi.min(m.mh - 1));
                                m.data[((mb * m.mh + mh) * sq + i) * skv + j] as f64
                            });
                            if causal && j as isize > i as isize + skv as isize - sq as isize {
                                f64::NEG_INFINITY
                            } else {
                                dot * scale as f64 + add
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

    fn gen(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    /// Every path against float64 at the tile edges: S not a multiple of BR, BC, RT or 16; D not
    /// a multiple of 8 or 16 (and D = 1); more queries than keys under `causal` (NaN rows, and
    /// register tiles that see no key of the diagonal block); the diagonal at several offsets
    /// within a key block (per-tile key counts); GQA; a broadcast additive mask with `-inf`
    /// entries.
    #[test]
    fn tile_edges_match_float64() {
        let cases = [
            (1, 1, 1, 1, 1),
            (1, 2, 1, 7, 3),
            (2, 3, 3, 50, 131),
            (1, 4, 2, 97, 97),
            (1, 2, 1, 1, 200),
            (1, 2, 2, 130, 64),
            (1, 1, 1, 49, 65),
            // Several key blocks, the causal diagonal crossing them at offsets 0 and 239.
            (1, 1, 1, 300, 300),
            (1, 2, 1, 150, 389),
        ];
        for (ci, &(b, h, hkv, sq, skv)) in cases.iter().enumerate() {
            for d in [1, 3, 16, 64, 80, 128, 256] {
                let dm = Dims { b, h, hkv, sq, skv, d };
                let q = gen(b * h * sq * d, 11 + ci as u32);
                let k = gen(b * hkv * skv * d, 12);
                let v = gen(b * hkv * skv * d, 13);
                let mut md = gen(h * sq * skv, 14);
                for (i, x) in md.iter_mut().enumerate() {
                    if i % 7 == 3 {
                        *x = f32::NEG_INFINITY;
                    }
                }
                let mask = Mask { data: &md, mb: 1, mh: h };
                let scale = 1.0 / (d as f32).sqrt();
                for (causal, mk) in
                    [(false, None), (true, None), (false, Some(mask)), (true, Some(mask))]
                {
                    let want = reference_masked(&q, &k, &v, dm, causal, scale, mk);
                    for isa in Isa::available() {
                        let mut out = vec![0f32; q.len()];
                        attention(isa, &q, &k, &v, dm, causal, scale, mk, &mut out).unwrap();
                        for (i, (a, w)) in out.iter().zip(&want).enumerate() {
                            let ok = if w.is_nan() {
                                a.is_nan()
                            } else {
                                (*a as f64 - w).abs() < 1e-5 * (d as f64).sqrt() + 1e-6
                            };
                            assert!(
                                ok,
                                "{isa:?} {dm:?} causal={causal} mask={} [{i}]: {a} vs {w}",
                                mk.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    /// NaN and Inf propagate as in `softmax(Q K^T) V` computed directly, on every path: a NaN
    /// in one query row makes that row NaN only; a NaN key or value makes every row that sees
    /// it NaN; a `+inf` score gives NaN (`inf - inf`).
    #[test]
    fn nan_and_inf_propagate() {
        let dm = Dims { b: 1, h: 1, hkv: 1, sq: 70, skv: 70, d: 32 };
        let base = (gen(70 * 32, 1), gen(70 * 32, 2), gen(70 * 32, 3));
        for isa in Isa::available() {
            let run = |q: &[f32], k: &[f32], v: &[f32], causal: bool| {
                let mut out = vec![0f32; q.len()];
                attention(isa, q, k, v, dm, causal, 0.2, None, &mut out).unwrap();
                out
            };
            let nan_rows = |o: &[f32]| -> Vec<bool> {
                o.chunks(32).map(|r| r.iter().any(|x| x.is_nan())).collect()
            };
            let (mut q, k, v) = base.clone();
            q[5 * 32 + 3] = f32::NAN;
            let rows = nan_rows(&run(&q, &k, &v, false));
            assert!(rows[5] && rows.iter().filter(|x| **x).count() == 1, "{isa:?} q NaN");
            let (q, mut k, _) = base.clone();
            k[60 * 32] = f32::NAN;
            let rows = nan_rows(&run(&q, &k, &v, true));
            assert!(rows.iter().enumerate().all(|(i, n)| *n == (i >= 60)), "{isa:?} k NaN");
            let (q, k, mut v) = base.clone();
            v[64 * 32 + 31] = f32::NAN;
            // Rows that see the NaN value are NaN; rows of the same register tile that do not see
            // it may be too (0 * NaN, as in NumPy's `P @ V`), rows of earlier tiles are not.
            let rows = nan_rows(&run(&q, &k, &v, true));
            assert!(rows[64..].iter().all(|n| *n), "{isa:?} v NaN");
            assert!(!rows[..64 / RT * RT].iter().any(|n| *n), "{isa:?} v NaN spread");
            let (mut q, k, v) = base.clone();
            q[2 * 32..3 * 32].fill(f32::INFINITY);
            let o = run(&q, &k, &v, false);
            assert!(o[2 * 32..3 * 32].iter().all(|x| x.is_nan()), "{isa:?} q inf");
            assert!(!o[3 * 32..].iter().any(|x| x.is_nan()), "{isa:?} q inf spread");
        }
    }
}
