//! Decode attention against a paged KV cache: one new query row per sequence,
//! `o = softmax(q K^T * scale) V` over the sequence's `len` cached keys, which live in
//! fixed-size pages (as in vLLM's PagedAttention).
//!
//! Two ways to find the pages, one kernel body:
//! - [`paged_decode`]: pages of two shared pools `(NB, Hkv, P, D)` (page `blk`, kv head `g`,
//!   slot `j`), found through a block table `(B, max_blocks)` of page ids;
//! - [`paged_decode_pages`]: a list of separate pages, each `(2, Hkv, P, D)` (keys then values),
//!   sequence `b` owning the next `counts[b]` entries (`store::paged_kv` fills that list from
//!   tensors of the tiered store).
//!
//! `q`, `o` are `(B, H, D)`; `lens` `(B)`. Query head `h` reads kv head `h / (H / Hkv)`. Per
//! (sequence, head) the pages are visited in order with an online softmax (`m`, `l`, `o`
//! rescaled per page), so the extra memory is `P` scores and `D` accumulators. A sequence of
//! length 0 gives NaN (`0 / 0`, as softmax over no keys). One generic body (see `vmath.rs`) for
//! the scalar reference and the AVX2+FMA path.

use super::backend::{dispatch, Backend};
use super::dot::SendPtr;
use super::rows::{lanes_max, lanes_sum};
use super::vmath::{exp, fma};
#[cfg(target_arch = "x86_64")]
use super::x86::avx2::paged as avx2;
use crate::cpu::Isa;
use crate::{CoreError, Result};

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

/// Sizes of a decode call over a list of pages (see [`paged_decode_pages`]).
#[derive(Clone, Copy, Debug)]
pub struct PageList {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// Slots per page.
    pub page: usize,
}

/// The keys and values of one page for one kv head: `P * D` floats each, slot-major.
pub(crate) trait PageSource: Sync {
    fn kv(&self, bi: usize, pg: usize, g: usize) -> (&[f32], &[f32]);
}

/// Pages of two pools through a block table.
struct Pool<'a> {
    k: &'a [f32],
    v: &'a [f32],
    table: &'a [i64],
    p: Paged,
}

impl PageSource for Pool<'_> {
    #[inline(always)]
    fn kv(&self, bi: usize, pg: usize, g: usize) -> (&[f32], &[f32]) {
        let Paged { hkv, d, page, max_blocks, .. } = self.p;
        let blk = self.table[bi * max_blocks + pg] as usize;
        let base = (blk * hkv + g) * page * d;
        (&self.k[base..base + page * d], &self.v[base..base + page * d])
    }
}

/// Separate `(2, Hkv, P, D)` pages; sequence `bi` owns `pages[starts[bi]..]`.
struct List<'a> {
    pages: &'a [&'a [f32]],
    starts: Vec<usize>,
    hkv: usize,
    pd: usize,
}

impl PageSource for List<'_> {
    #[inline(always)]
    fn kv(&self, bi: usize, pg: usize, g: usize) -> (&[f32], &[f32]) {
        let pd = self.pd;
        let pgs = self.pages[self.starts[bi] + pg];
        let (kb, vb) = (g * pd, (self.hkv + g) * pd);
        (&pgs[kb..kb + pd], &pgs[vb..vb + pd])
    }
}

fn bad_sizes(h: usize, hkv: usize, page: usize) -> bool {
    hkv == 0 || h % hkv != 0 || page == 0
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
    if bad_sizes(h, hkv, page) {
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
    let src = Pool { k: kpool, v: vpool, table, p };
    decode(isa, &src, q, (h, hkv, d, page), lens, scale, out);
    Ok(())
}

/// Paged decode over separate pages: `pages` holds `counts[0]` pages of sequence 0, then
/// `counts[1]` of sequence 1, ...; each page is `(2, Hkv, P, D)` float32 (keys `[0]`, values
/// `[1]`), and sequence `b` needs at least `ceil(lens[b] / P)` of them (slots past `lens[b]` in
/// its last page are ignored). Same result as [`paged_decode`] on the same data, bit for bit.
pub fn paged_decode_pages(
    isa: Isa,
    q: &[f32],
    pages: &[&[f32]],
    counts: &[usize],
    p: PageList,
    lens: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let PageList { b, h, hkv, d, page } = p;
    if bad_sizes(h, hkv, page) {
        return Err(CoreError::Shape(format!("bad paged attention sizes {p:?}")));
    }
    let pd = page
        .checked_mul(d)
        .ok_or_else(|| CoreError::Shape(format!("page size overflows: {p:?}")))?;
    let want = pd.checked_mul(2 * hkv);
    if b.checked_mul(h)
        .and_then(|n| n.checked_mul(d))
        .map_or(true, |n| q.len() != n || out.len() != n)
        || lens.len() != b
        || counts.len() != b
    {
        return Err(CoreError::Shape(format!(
            "paged attention buffers do not match {p:?}: q {}, out {}, {} lengths, {} page counts",
            q.len(),
            out.len(),
            lens.len(),
            counts.len()
        )));
    }
    let total = counts.iter().try_fold(0usize, |a, &c| a.checked_add(c));
    if total != Some(pages.len()) {
        return Err(CoreError::Shape(format!(
            "the page counts add up to {total:?}, but {} pages were given",
            pages.len()
        )));
    }
    if let Some((i, pg)) = pages.iter().enumerate().find(|(_, pg)| Some(pg.len()) != want) {
        return Err(CoreError::Shape(format!(
            "page {i} has {} floats, a (2, {hkv}, {page}, {d}) page has {want:?}",
            pg.len()
        )));
    }
    let mut starts = Vec::with_capacity(b);
    let mut at = 0;
    for (bi, (&len, &c)) in lens.iter().zip(counts).enumerate() {
        if len.div_ceil(page) > c {
            return Err(CoreError::Shape(format!(
                "sequence {bi} has {len} positions but only {c} pages of {page}"
            )));
        }
        starts.push(at);
        at += c;
    }
    let src = List { pages, starts, hkv, pd };
    decode(isa, &src, q, (h, hkv, d, page), lens, scale, out);
    Ok(())
}

/// Query heads per task: the whole GQA group (`H / Hkv` heads that read the same kv head), so
/// each page is read once per (sequence, kv head) and every key/value row is reused by all the
/// group's heads while it is in L1; halved while that leaves fewer tasks than threads. The
/// arithmetic of each head is the same whatever the grouping (same order), so results are too.
fn heads_per_task(b: usize, h: usize, hkv: usize) -> usize {
    let threads = crate::pool::num_threads().max(1);
    let mut gsz = h / hkv;
    while gsz % 2 == 0 && b * (h / gsz) < threads {
        gsz /= 2;
    }
    gsz
}

/// Run every task (sequence, run of `gsz` query heads of one kv head) over `src` in parallel;
/// `dims` = `(H, Hkv, D, P)`.
fn decode<S: PageSource>(
    isa: Isa,
    src: &S,
    q: &[f32],
    dims: (usize, usize, usize, usize),
    lens: &[usize],
    scale: f32,
    out: &mut [f32],
) {
    let gsz = heads_per_task(lens.len(), dims.0, dims.1);
    decode_grouped(isa, src, q, dims, gsz, lens, scale, out)
}

/// [`decode`] with `gsz` query heads per task (`gsz` divides `H / Hkv`).
fn decode_grouped<S: PageSource>(
    isa: Isa,
    src: &S,
    q: &[f32],
    dims: (usize, usize, usize, usize),
    gsz: usize,
    lens: &[usize],
    scale: f32,
    out: &mut [f32],
) {
    let (h, _, d, page) = dims;
    let a = PagedArgs { src, q, dims, gsz, lens, scale };
    let op = SendPtr(out.as_mut_ptr());
    // Bytes of keys and values read (every kv head of every sequence once), for the team's
    // decision to run short calls on the calling thread.
    let kv_bytes = lens.iter().sum::<usize>() * dims.1 * d * 2 * 4;
    let tasks = lens.len() * (h / gsz);
    crate::pool::for_tasks(tasks, kv_bytes, |t| {
        let mut sc = Scratch {
            s: vec![0f32; gsz * page],
            o: vec![0f32; gsz * d],
            m: vec![0f32; gsz],
            l: vec![0f32; gsz],
        };
        // SAFETY: task t writes only out[t * gsz * d..(t + 1) * gsz * d] (its heads).
        let dst = unsafe { std::slice::from_raw_parts_mut(op.get().add(t * gsz * d), gsz * d) };
        // SAFETY: the CPU runs `isa`.
        dispatch!(isa, B => unsafe { B::paged_task(a, t, &mut sc, dst) })
    });
}

/// The arguments that every task of one paged decode shares: the pages `src`, the queries
/// `q` (`B x H x D`), `dims` = `(H, Hkv, D, P)`, `gsz` query heads per task (`gsz` divides
/// `H / Hkv`), the sequence lengths `lens` (`B`) and the score scale.
pub(crate) struct PagedArgs<'a, S> {
    pub src: &'a S,
    pub q: &'a [f32],
    pub dims: (usize, usize, usize, usize),
    pub gsz: usize,
    pub lens: &'a [usize],
    pub scale: f32,
}

// Not derived: a derive would ask `S: Copy`, and only the reference to `S` is copied.
impl<S> Clone for PagedArgs<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for PagedArgs<'_, S> {}

/// Per-thread buffers of a task: scores `(gsz, P)`, accumulators `(gsz, D)`, running max and
/// sum per head.
pub(crate) struct Scratch {
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

/// `q . k` over 16 lanes (fixed-size chunks, so no bounds checks stop the vectorizer), the lanes
/// summed as a tree, then the tail of `D mod 16` elements in order.
#[inline(always)]
fn dot<const F: bool>(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (qc, kc) = (q.chunks_exact(16), k.chunks_exact(16));
    let (qt, kt) = (qc.remainder(), kc.remainder());
    for (a, b) in qc.zip(kc) {
        let a: &[f32; 16] = a.try_into().expect("16");
        let b: &[f32; 16] = b.try_into().expect("16");
        for i in 0..16 {
            acc[i] = fma::<F>(a[i], b[i], acc[i]);
        }
    }
    let mut s = tree_sum(acc);
    for (a, b) in qt.iter().zip(kt) {
        s = fma::<F>(*a, *b, s);
    }
    s
}

/// `sum(acc)` as a pairwise tree (`acc[i] + acc[i + 8]`, then 4, 2, 1): four vector adds of
/// short latency instead of a chain of 15 dependent scalar adds per key row and head.
#[inline(always)]
fn tree_sum(mut acc: [f32; 16]) -> f32 {
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Task `t` = (sequence `t / (H / gsz)`, query heads `h0 .. h0 + gsz`): the online softmax of
/// each head over the sequence's pages, which are read once for all `gsz` heads.
#[inline(always)]
pub(crate) fn one<const F: bool, S: PageSource>(
    a: PagedArgs<'_, S>,
    t: usize,
    sc: &mut Scratch,
    dst: &mut [f32],
) {
    let PagedArgs { src, q, dims: (h, hkv, d, page), gsz, lens, scale } = a;
    let per_seq = h / gsz;
    let (bi, h0) = (t / per_seq, (t % per_seq) * gsz);
    let g = h0 / (h / hkv);
    let qs = &q[(bi * h + h0) * d..(bi * h + h0 + gsz) * d];
    let len = lens[bi];
    let Scratch { s, o, m, l } = sc;
    o.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    for pg in 0..len.div_ceil(page) {
        let (kp, vp) = src.kv(bi, pg, g);
        let n = page.min(len - pg * page);
        #[cfg(target_arch = "x86_64")]
        if F {
            // SAFETY: F (FMA) is only set on the AVX2+FMA path.
            unsafe { avx2::scores(qs, &kp[..n * d], d, scale, s, page) };
        }
        if !F || cfg!(not(target_arch = "x86_64")) {
            for j in 0..n {
                let kr = &kp[j * d..(j + 1) * d];
                for (hh, qr) in qs.chunks_exact(d).enumerate() {
                    s[hh * page + j] = dot::<F>(qr, kr) * scale;
                }
            }
        }
        for hh in 0..gsz {
            let sh = &mut s[hh * page..hh * page + n];
            let bm = lanes_max(sh);
            let mx = if bm > m[hh] || bm.is_nan() { bm } else { m[hh] };
            let alpha = exp::<F>(m[hh] - mx);
            for x in sh.iter_mut() {
                *x = exp::<F>(*x - mx);
            }
            l[hh] = fma::<F>(l[hh], alpha, lanes_sum(sh, |x| x));
            m[hh] = mx;
            for x in o[hh * d..(hh + 1) * d].iter_mut() {
                *x *= alpha;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if F {
            // SAFETY: F (FMA) is only set on the AVX2+FMA path.
            unsafe { avx2::accumulate(o, s, &vp[..n * d], d, page) };
        }
        if !F || cfg!(not(target_arch = "x86_64")) {
            for j in 0..n {
                let vr = &vp[j * d..(j + 1) * d];
                for (hh, oh) in o.chunks_exact_mut(d).enumerate() {
                    let pj = s[hh * page + j];
                    for (x, &v) in oh.iter_mut().zip(vr) {
                        *x = fma::<F>(pj, v, *x);
                    }
                }
            }
        }
    }
    for hh in 0..gsz {
        let inv = 1.0 / l[hh];
        for (y, &x) in dst[hh * d..(hh + 1) * d].iter_mut().zip(&o[hh * d..(hh + 1) * d]) {
            *y = x * inv;
        }
    }
}

#[cfg(test)]
#[path = "paged_tests.rs"]
pub(crate) mod tests;
