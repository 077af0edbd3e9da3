//! Decode attention against a paged KV cache: one new query row per sequence,
//! `o = softmax(q K^T * scale) V` over the sequence's `len` cached keys, which live in
//! fixed-size pages of a shared pool (as in vLLM's PagedAttention), found through a block table.
//!
//! Layout: `q`, `o` `(B, H, D)`; pools `(NB, Hkv, P, D)` (page `blk`, kv head `g`, slot `j`);
//! `table` `(B, max_blocks)` page ids; `lens` `(B)`. Query head `h` reads kv head
//! `h / (H / Hkv)`. Per (sequence, head) the pages are visited in order with an online softmax
//! (`m`, `l`, `o` rescaled per page), so the extra memory is `P` scores and `D` accumulators.
//! One generic body (see `vmath.rs`) for the scalar reference and the AVX2+FMA path.

use super::dot::SendPtr;
use super::rows::{lanes_max, lanes_sum};
use super::vmath::{exp, fma};
use crate::cpu::Isa;
use crate::{CoreError, Result};
use rayon::prelude::*;

/// Sizes of a paged decode call.
#[derive(Clone, Copy, Debug)]
pub struct Paged {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// Pages in the pool.
    pub nb: usize,
    /// Slots per page.
    pub page: usize,
    pub max_blocks: usize,
}

/// `out[b, h] = softmax(q[b, h] . K_b^T * scale) V_b` over the first `lens[b]` cached positions.
pub fn paged_decode(
    isa: Isa,
    q: &[f32],
    kpool: &[f32],
    vpool: &[f32],
    p: Paged,
    table: &[i64],
    lens: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let Paged { b, h, hkv, d, nb, page, max_blocks } = p;
    let chk = |a: usize, c: &[usize]| c.iter().try_fold(a, |x, y| x.checked_mul(*y));
    if hkv == 0 || h % hkv != 0 || page == 0 {
        return Err(CoreError::Shape(format!("bad paged attention sizes {p:?}")));
    }
    if chk(b, &[h, d]).map_or(true, |n| q.len() != n || out.len() != n)
        || chk(nb, &[hkv, page, d]).map_or(true, |n| kpool.len() != n || vpool.len() != n)
        || chk(b, &[max_blocks]) != Some(table.len())
        || lens.len() != b
    {
        return Err(CoreError::Shape(format!("paged attention buffers do not match {p:?}")));
    }
    for (bi, &len) in lens.iter().enumerate() {
        let used = len.div_ceil(page);
        if used > max_blocks {
            return Err(CoreError::Shape(format!(
                "sequence {bi} has {len} positions but only {max_blocks} pages"
            )));
        }
        if let Some(&bad) = table[bi * max_blocks..bi * max_blocks + used]
            .iter()
            .find(|&&t| t < 0 || t as usize >= nb)
        {
            return Err(CoreError::Value(format!(
                "sequence {bi} maps to page {bad}, outside the pool of {nb}"
            )));
        }
    }
    let op = SendPtr(out.as_mut_ptr());
    crate::runtime::install(|| {
        (0..b * h).into_par_iter().for_each_init(
            || (vec![0f32; page], vec![0f32; d]),
            |(s, o), t| {
                // SAFETY: task t writes only out[t * d..(t + 1) * d].
                let dst = unsafe { std::slice::from_raw_parts_mut(op.get().add(t * d), d) };
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx2 {
                    return unsafe { avx2(q, kpool, vpool, p, table, lens, scale, t, s, o, dst) };
                }
                one::<false>(q, kpool, vpool, p, table, lens, scale, t, s, o, dst)
            },
        )
    });
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2(
    q: &[f32],
    kp: &[f32],
    vp: &[f32],
    p: Paged,
    table: &[i64],
    lens: &[usize],
    scale: f32,
    t: usize,
    s: &mut [f32],
    o: &mut [f32],
    dst: &mut [f32],
) {
    one::<true>(q, kp, vp, p, table, lens, scale, t, s, o, dst)
}

#[inline(always)]
fn one<const F: bool>(
    q: &[f32],
    kp: &[f32],
    vp: &[f32],
    p: Paged,
    table: &[i64],
    lens: &[usize],
    scale: f32,
    t: usize,
    s: &mut [f32],
    o: &mut [f32],
    dst: &mut [f32],
) {
    let Paged { h, hkv, d, page, max_blocks, .. } = p;
    let (bi, hi) = (t / h, t % h);
    let g = hi / (h / hkv);
    let qr = &q[t * d..(t + 1) * d];
    let len = lens[bi];
    o.fill(0.0);
    let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
    for pg in 0..len.div_ceil(page) {
        let blk = table[bi * max_blocks + pg] as usize;
        let n = page.min(len - pg * page);
        let base = (blk * hkv + g) * page * d;
        for j in 0..n {
            let kr = &kp[base + j * d..base + (j + 1) * d];
            let mut acc = [0f32; 16];
            let mut c = 0;
            while c + 16 <= d {
                for i in 0..16 {
                    acc[i] = fma::<F>(qr[c + i], kr[c + i], acc[i]);
                }
                c += 16;
            }
            let mut dot = acc.iter().sum::<f32>();
            for i in c..d {
                dot = fma::<F>(qr[i], kr[i], dot);
            }
            s[j] = dot * scale;
        }
        let bm = lanes_max(&s[..n]);
        let mx = if bm > m || bm.is_nan() { bm } else { m };
        let alpha = exp::<F>(m - mx);
        for x in s[..n].iter_mut() {
            *x = exp::<F>(*x - mx);
        }
        l = fma::<F>(l, alpha, lanes_sum(&s[..n], |x| x));
        m = mx;
        for x in o.iter_mut() {
            *x *= alpha;
        }
        for j in 0..n {
            let vr = &vp[base + j * d..base + (j + 1) * d];
            let pj = s[j];
            for (x, &v) in o.iter_mut().zip(vr) {
                *x = fma::<F>(pj, v, *x);
            }
        }
    }
    let inv = 1.0 / l;
    for (y, &x) in dst.iter_mut().zip(o.iter()) {
        *y = x * inv;
    }
}
