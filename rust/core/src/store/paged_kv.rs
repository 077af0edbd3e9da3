//! Paged decode attention over pages that may be tensors of the store: each stored page is read
//! once per call wherever it lives (a view of a memory tier's buffer, or a read from a file tier
//! that the store counts in its statistics), then the pure kernel
//! [`crate::kernels::paged::paged_decode_pages`] runs over the slices.

use super::{AlignedBuf, Store};
use crate::cpu::Isa;
use crate::kernels::paged::{paged_decode_pages, PageList};
use crate::{CoreError, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// One page for [`paged_decode_store`]: a slice the caller holds, or a tensor of the store.
#[derive(Clone, Copy, Debug)]
pub enum PageRef<'a> {
    Slice(&'a [f32]),
    Stored(&'a str),
}

/// [`paged_decode_pages`] with pages that may be tensors of `store` (each a float32
/// `(2, Hkv, P, D)` tensor). Every stored page is fetched once with [`Store::get`]: from a memory
/// tier a shared view (no copy); from a file tier a read (counted in the store's statistics;
/// these run in parallel) that, with `promote`, also moves the page up into the default tier.
/// Read pages are held only for the call.
///
/// Errors: a missing page (`NotFound`), a page of another dtype (`DType`) or shape (`Shape`),
/// stored pages without a store (`Value`), and whatever the store's read reports.
pub fn paged_decode_store(
    isa: Isa,
    store: Option<&Store>,
    q: &[f32],
    pages: &[PageRef<'_>],
    counts: &[usize],
    p: PageList,
    lens: &[usize],
    scale: f32,
    promote: bool,
    out: &mut [f32],
) -> Result<()> {
    let shape = [2, p.hkv, p.page, p.d];
    let fetch = |r: &PageRef<'_>| -> Result<Option<Arc<AlignedBuf>>> {
        let PageRef::Stored(name) = *r else { return Ok(None) };
        let st = store.ok_or_else(|| {
            CoreError::Value(format!("page {name:?} is a store tensor, but no store was given"))
        })?;
        let (meta, buf) = st.get(name, promote)?;
        if meta.dtype != "float32" {
            return Err(CoreError::DType(format!(
                "KV page {name:?} is {}, pages are float32",
                meta.dtype
            )));
        }
        if meta.shape != shape {
            return Err(CoreError::Shape(format!(
                "KV page {name:?} has shape {:?}, the cache's pages are {shape:?}",
                meta.shape
            )));
        }
        Ok(Some(buf))
    };
    // Pages in a memory tier are shared views (a lookup each): fetched in turn. Pages in a file
    // tier are reads: fetched in parallel.
    let mut bufs: Vec<Option<Arc<AlignedBuf>>> = vec![None; pages.len()];
    let mut slow = Vec::new();
    if let Some(st) = store {
        let file_tier: Vec<bool> = st.tiers().iter().map(|t| t.path.is_some()).collect();
        for (i, r) in pages.iter().enumerate() {
            if let PageRef::Stored(name) = r {
                if file_tier.get(st.meta(name)?.tier_index).copied().unwrap_or(true) {
                    slow.push(i);
                } else {
                    bufs[i] = fetch(r)?;
                }
            }
        }
    } else if let Some(r) = pages.iter().find(|r| matches!(r, PageRef::Stored(_))) {
        fetch(r)?; // the error: a stored page without a store
    }
    // (`install` hands the closure to a rayon worker, a wake-up of tens of microseconds: only
    // when there is something to read)
    let read: Vec<Option<Arc<AlignedBuf>>> = if slow.is_empty() {
        Vec::new()
    } else {
        crate::pool::install(|| slow.par_iter().map(|&i| fetch(&pages[i])).collect::<Result<_>>())?
    };
    for (i, b) in slow.into_iter().zip(read) {
        bufs[i] = b;
    }
    let slices: Vec<&[f32]> = pages
        .iter()
        .zip(&bufs)
        .map(|(r, b)| match (r, b) {
            (_, Some(buf)) => as_f32(buf.as_slice()),
            (PageRef::Slice(s), None) => Ok(*s),
            (PageRef::Stored(n), None) => Err(CoreError::Internal(format!("page {n:?} not read"))),
        })
        .collect::<Result<_>>()?;
    paged_decode_pages(isa, q, &slices, counts, p, lens, scale, out)
}

/// The float32 values of a store buffer (64-byte aligned, so the cast never shifts).
fn as_f32(bytes: &[u8]) -> Result<&[f32]> {
    // SAFETY: every bit pattern is a valid f32; `align_to` returns only whole, aligned elements.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    if !pre.is_empty() || !post.is_empty() {
        return Err(CoreError::Internal("a store buffer is not float32-aligned".into()));
    }
    Ok(mid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::paged::tests::{reference, rnd, setup, LENS, P};
    use crate::store::{DType, Policy, StoreConfig, TierSpec};

    #[test]
    fn pages_from_a_store_in_every_tier() {
        let dir = tempfile::tempdir().unwrap();
        let (h, hkv, d) = (4, 2, 16);
        let (kv, pages, counts) = setup(d);
        let b = LENS.len();
        let page_bytes = (2 * hkv * P * d * 4) as u64;
        let s = Store::create(StoreConfig {
            root: Some(dir.path().to_owned()),
            tiers: vec![
                TierSpec { name: "ram".into(), capacity: Some(2 * page_bytes), path: None },
                TierSpec { name: "disk".into(), capacity: None, path: Some("disk".into()) },
            ],
            policy: Policy::Lru,
            default_tier: None,
            verify_reads: true,
        })
        .unwrap();
        let names: Vec<String> = (0..pages.len()).map(|i| format!("kv/p{i}")).collect();
        for (n, pg) in names.iter().zip(&pages) {
            let bytes: Vec<u8> = pg.iter().flat_map(|x| x.to_le_bytes()).collect();
            s.put(n, DType::F32, &[2, hkv, P, d], &bytes, None, false).unwrap();
        }
        // 5 pages, room for 2 in RAM: the first ones spilled to disk.
        assert_eq!(s.meta("kv/p0").unwrap().tier, "disk");
        let last = names.len() - 1;
        assert_eq!(s.meta(&names[last]).unwrap().tier, "ram");
        // The last page is passed as a slice (a page being filled, outside the store).
        let mut refs: Vec<PageRef> = names.iter().map(|n| PageRef::Stored(n)).collect();
        refs[last] = PageRef::Slice(&pages[last]);
        let q: Vec<f32> = (0..b * h * d).map(|i| rnd(i, 5)).collect();
        let scale = 1.0 / (d as f32).sqrt();
        let pl = PageList { b, h, hkv, d, page: P };
        let slices: Vec<&[f32]> = pages.iter().map(|p| p.as_slice()).collect();
        let mut want = vec![0f32; b * h * d];
        paged_decode_pages(Isa::Scalar, &q, &slices, &counts, pl, &LENS, scale, &mut want).unwrap();
        s.reset_stats();
        let mut got = vec![0f32; b * h * d];
        paged_decode_store(
            Isa::Scalar,
            Some(&s),
            &q,
            &refs,
            &counts,
            pl,
            &LENS,
            scale,
            false,
            &mut got,
        )
        .unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let st = s.stats();
        let disk_pages = names.iter().filter(|n| s.meta(n).unwrap().tier == "disk").count() as u64;
        assert!(disk_pages >= 2);
        assert_eq!(st["counters"]["misses"], disk_pages);
        assert_eq!(st["counters"]["bytes_read"], disk_pages * page_bytes);
        assert_eq!(s.meta("kv/p0").unwrap().tier, "disk", "promote=false leaves pages in place");
        let r = reference(&q, &kv, h, hkv, d);
        assert!(got.iter().zip(&r).all(|(g, w)| g.is_nan() || (*g as f64 - w).abs() < 2e-5));
        // Errors: a missing page, a wrong shape, stored pages without a store.
        let gone = [PageRef::Stored("kv/nope")];
        let pl1 = PageList { b: 1, h, hkv, d, page: P };
        let mut o = vec![0f32; h * d];
        let e = paged_decode_store(
            Isa::Scalar,
            Some(&s),
            &q[..h * d],
            &gone,
            &[1],
            pl1,
            &[3],
            1.0,
            false,
            &mut o,
        );
        assert!(matches!(e, Err(CoreError::NotFound(_))), "{e:?}");
        s.put(
            "kv/odd",
            DType::F32,
            &[2, hkv, P, d / 2],
            &vec![0u8; 2 * hkv * P * d * 2],
            None,
            false,
        )
        .unwrap();
        let odd = [PageRef::Stored("kv/odd")];
        let e = paged_decode_store(
            Isa::Scalar,
            Some(&s),
            &q[..h * d],
            &odd,
            &[1],
            pl1,
            &[3],
            1.0,
            false,
            &mut o,
        );
        assert!(matches!(e, Err(CoreError::Shape(_))), "{e:?}");
        let e = paged_decode_store(
            Isa::Scalar,
            None,
            &q[..h * d],
            &refs[..1],
            &[1],
            pl1,
            &[3],
            1.0,
            false,
            &mut o,
        );
        assert!(matches!(e, Err(CoreError::Value(_))), "{e:?}");
    }
}
