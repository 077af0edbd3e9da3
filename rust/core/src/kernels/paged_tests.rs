//! Tests of `paged.rs`: the pool and page-list paths against each other and a float64
//! reference on every instruction-set path, errors (pages read from the store: `store/paged_kv.rs`).

use super::*;

/// A deterministic pseudo-random float in [-1, 1).
pub(crate) fn rnd(i: usize, seed: u64) -> f32 {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// Contiguous keys/values of every sequence: `kv[b][0 or 1][g][pos][c]`, lengths `lens`.
pub(crate) fn data(lens: &[usize], hkv: usize, d: usize) -> Vec<[Vec<Vec<Vec<f32>>>; 2]> {
    let mut i = 0;
    let mut gen = |n: usize| {
        (0..hkv)
            .map(|_| {
                (0..n)
                    .map(|_| {
                        (0..d)
                            .map(|_| {
                                i += 1;
                                rnd(i, 7)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    };
    lens.iter().map(|&n| [gen(n), gen(n)]).collect()
}

/// The float64 reference: softmax(q . k * scale) v per (sequence, head).
pub(crate) fn reference(
    q: &[f32],
    kv: &[[Vec<Vec<Vec<f32>>>; 2]],
    h: usize,
    hkv: usize,
    d: usize,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f64; kv.len() * h * d];
    for (bi, [k, v]) in kv.iter().enumerate() {
        for hi in 0..h {
            let g = hi / (h / hkv);
            let qr = &q[(bi * h + hi) * d..][..d];
            let s: Vec<f64> = k[g]
                .iter()
                .map(|kr| {
                    kr.iter().zip(qr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                let o = e.iter().zip(&v[g]).map(|(p, vr)| p * vr[c] as f64).sum::<f64>();
                out[(bi * h + hi) * d + c] = o / z;
            }
        }
    }
    out
}

/// One `(2, Hkv, P, D)` page: positions `pg * P ..` of sequence `kv` (zeros past the end).
pub(crate) fn page_of(kv: &[Vec<Vec<Vec<f32>>>; 2], pg: usize, page: usize) -> Vec<f32> {
    let (hkv, d) = (kv[0].len(), kv[0][0].first().map_or(0, |r| r.len()));
    let mut p = vec![0f32; 2 * hkv * page * d];
    for (w, t) in kv.iter().enumerate() {
        for g in 0..hkv {
            for j in 0..page {
                if let Some(r) = t[g].get(pg * page + j) {
                    p[((w * hkv + g) * page + j) * d..][..d].copy_from_slice(r);
                }
            }
        }
    }
    p
}

pub(crate) const LENS: [usize; 4] = [37, 0, 16, 1];
pub(crate) const P: usize = 16;

pub(crate) fn setup(d: usize) -> (Vec<[Vec<Vec<Vec<f32>>>; 2]>, Vec<Vec<f32>>, Vec<usize>) {
    let kv = data(&LENS, 2, d);
    let mut pages = vec![];
    let mut counts = vec![];
    for s in &kv {
        let n = s[0][0].len().div_ceil(P);
        counts.push(n);
        pages.extend((0..n).map(|pg| page_of(s, pg, P)));
    }
    (kv, pages, counts)
}

#[test]
fn pages_match_pool_and_reference_on_every_path() {
    let (h, hkv, d) = (6, 2, 40);
    let (kv, pages, counts) = setup(d);
    let b = LENS.len();
    let q: Vec<f32> = (0..b * h * d).map(|i| rnd(i, 3)).collect();
    let want = reference(&q, &kv, h, hkv, d);
    // The same pages scattered in reverse order through pools and a block table.
    let nb = pages.len();
    let (mut kp, mut vp) = (vec![0f32; nb * hkv * P * d], vec![0f32; nb * hkv * P * d]);
    let half = hkv * P * d;
    for (i, pg) in pages.iter().enumerate() {
        let blk = nb - 1 - i;
        kp[blk * half..][..half].copy_from_slice(&pg[..half]);
        vp[blk * half..][..half].copy_from_slice(&pg[half..]);
    }
    let mb = *counts.iter().max().unwrap();
    let mut table = vec![-1i64; b * mb];
    let mut at = 0;
    for (bi, &c) in counts.iter().enumerate() {
        for j in 0..c {
            table[bi * mb + j] = (nb - 1 - at) as i64;
            at += 1;
        }
    }
    let refs: Vec<&[f32]> = pages.iter().map(|p| p.as_slice()).collect();
    for isa in Isa::available() {
        let (mut o1, mut o2) = (vec![0f32; b * h * d], vec![0f32; b * h * d]);
        let pp = Paged { b, h, hkv, d, nb, page: P, max_blocks: mb };
        paged_decode(isa, &q, &kp, &vp, pp, &table, &LENS, 1.0 / (d as f32).sqrt(), &mut o1)
            .unwrap();
        let pl = PageList { b, h, hkv, d, page: P };
        paged_decode_pages(isa, &q, &refs, &counts, pl, &LENS, 1.0 / (d as f32).sqrt(), &mut o2)
            .unwrap();
        let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&o1) == bits(&o2), "{isa:?}: pages differ from the pool");
        for (i, (&g, &w)) in o2.iter().zip(&want).enumerate() {
            if LENS[i / (h * d)] == 0 {
                assert!(g.is_nan(), "an empty sequence gives NaN");
            } else {
                assert!((g as f64 - w).abs() < 2e-5, "{isa:?} [{i}]: {g} vs {w}");
            }
        }
    }
}

#[test]
fn any_grouping_of_query_heads_gives_the_same_bits() {
    let (h, hkv, d) = (12, 2, 20);
    let (_, pages, counts) = setup(d);
    let b = LENS.len();
    let q: Vec<f32> = (0..b * h * d).map(|i| rnd(i, 9)).collect();
    let refs: Vec<&[f32]> = pages.iter().map(|p| p.as_slice()).collect();
    let mut starts = vec![0];
    for c in &counts[..b - 1] {
        starts.push(starts.last().unwrap() + c);
    }
    let src = List { pages: &refs, starts, hkv, pd: P * d };
    for isa in Isa::available() {
        let mut first: Option<Vec<u32>> = None;
        for gsz in [1, 2, 3, 6] {
            let mut o = vec![0f32; b * h * d];
            decode_grouped(isa, &src, &q, (h, hkv, d, P), gsz, &LENS, 0.3, &mut o);
            let bits: Vec<u32> = o.iter().map(|x| x.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(f) => assert!(*f == bits, "{isa:?}: gsz {gsz} differs from gsz 1"),
            }
        }
    }
}

#[test]
fn bad_page_lists_are_errors() {
    let (h, hkv, d) = (4, 2, 8);
    let pg = vec![0f32; 2 * hkv * P * d];
    let short = vec![0f32; 5];
    let q = vec![0f32; h * d];
    let mut o = vec![0f32; h * d];
    let pl = PageList { b: 1, h, hkv, d, page: P };
    let s = 1.0;
    // too few pages for the length, counts not adding up, a short page, bad head counts
    assert!(paged_decode_pages(Isa::Scalar, &q, &[&pg], &[1], pl, &[P + 1], s, &mut o).is_err());
    assert!(paged_decode_pages(Isa::Scalar, &q, &[&pg], &[2], pl, &[1], s, &mut o).is_err());
    assert!(paged_decode_pages(Isa::Scalar, &q, &[&short], &[1], pl, &[1], s, &mut o).is_err());
    let bad = PageList { h: 3, ..pl };
    assert!(paged_decode_pages(Isa::Scalar, &q, &[&pg], &[1], bad, &[1], s, &mut o).is_err());
    let huge = PageList { page: usize::MAX, ..pl };
    assert!(paged_decode_pages(Isa::Scalar, &q, &[&pg], &[1], huge, &[1], s, &mut o).is_err());
    assert!(paged_decode_pages(Isa::Scalar, &q, &[&pg], &[1], pl, &[P], s, &mut o).is_ok());
}
