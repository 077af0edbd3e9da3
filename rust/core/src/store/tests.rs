//! Unit tests of the store core (the Python suite covers the API end to end).

use super::*;

fn cfg(root: &Path, ram: u64) -> StoreConfig {
    StoreConfig {
        root: Some(root.to_owned()),
        tiers: vec![
            TierSpec { name: "fast".into(), capacity: Some(64), path: None },
            TierSpec { name: "ram".into(), capacity: Some(ram), path: None },
            TierSpec { name: "disk".into(), capacity: None, path: Some("disk".into()) },
        ],
        policy: Policy::Lru,
        default_tier: None,
        verify_reads: true,
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn put_get_evict_reopen() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(cfg(d.path(), 100)).unwrap();
    assert_eq!(s.default_tier(), 1);
    s.put("a", DType::U8, &[40], &bytes(40, 1), None, false).unwrap();
    s.put("b", DType::U8, &[40], &bytes(40, 2), None, false).unwrap();
    // a third 40-byte tensor does not fit in 100 bytes: LRU evicts "a" to disk.
    s.put("c", DType::U8, &[40], &bytes(40, 3), None, false).unwrap();
    assert_eq!(s.meta("a").unwrap().tier, "disk");
    assert_eq!(s.meta("c").unwrap().tier, "ram");
    assert!(matches!(s.put("a", DType::U8, &[1], &[0], None, false), Err(CoreError::Exists(_))));
    let (_, buf) = s.get("a", true).unwrap();
    assert_eq!(buf.as_slice(), &bytes(40, 1)[..]);
    assert_eq!(s.meta("a").unwrap().tier, "ram");
    let st = s.stats();
    assert_eq!(st["counters"]["misses"], 1);
    assert!(matches!(
        s.put("big", DType::U8, &[200], &bytes(200, 0), None, false),
        Err(CoreError::Capacity(_))
    ));
    s.close().unwrap();
    assert!(matches!(s.get("a", true), Err(CoreError::Closed(_))));
    let s2 = Store::open(d.path(), Verify::Full, true).unwrap();
    assert_eq!(s2.names(), vec!["a", "b", "c"]);
    for (n, seed) in [("a", 1), ("b", 2), ("c", 3)] {
        assert_eq!(s2.get(n, false).unwrap().1.as_slice(), &bytes(40, seed)[..]);
    }
}

#[test]
fn pinned_never_evicted_and_planned_policy() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 100);
    c.policy = Policy::Planned;
    let s = Store::create(c).unwrap();
    s.set_future(["a", "b", "c", "a", "b"].iter().map(|x| x.to_string()).collect());
    s.put("a", DType::U8, &[50], &bytes(50, 1), None, false).unwrap();
    s.put("b", DType::U8, &[50], &bytes(50, 2), None, false).unwrap();
    s.set_pinned("a", true).unwrap();
    s.put("c", DType::U8, &[50], &bytes(50, 3), None, false).unwrap();
    assert_eq!(s.meta("a").unwrap().tier, "ram");
    assert_eq!(s.meta("b").unwrap().tier, "disk");
    s.set_pinned("c", true).unwrap();
    let e = s.move_to("b", 1).unwrap_err();
    assert!(matches!(e, CoreError::Capacity(_)), "{e}");
    assert!(e.to_string().contains("pinned"));
}

#[test]
fn corrupt_files_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(cfg(d.path(), 1000)).unwrap();
    s.put("w", DType::F32, &[4], &bytes(16, 9), Some(2), false).unwrap();
    let file = s.meta("w").unwrap().file.unwrap();
    s.close().unwrap();
    drop(s);
    // flip one data byte: the checksum catches it
    let mut raw = std::fs::read(&file).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    std::fs::write(&file, &raw).unwrap();
    match Store::open(d.path(), Verify::Full, true) {
        Err(CoreError::Corrupt { tensor, .. }) => assert_eq!(tensor.as_deref(), Some("w")),
        other => panic!("expected a corrupt-file error, got {:?}", other.err()),
    }
    let s = Store::open(d.path(), Verify::Full, false).unwrap();
    assert_eq!(s.quarantined().len(), 1);
    assert!(s.get("w", false).is_err());
}

#[test]
fn adopt_and_detect_truncation() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("x.safetensors");
    let data = bytes(64, 5);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 4], &data).unwrap();
    safetensors::tensor::serialize_to_file([("t", view)], None, &f).unwrap();
    let s = Store::create(cfg(&d.path().join("store"), 1000)).unwrap();
    assert_eq!(s.load_safetensors(&f, None, "m.", false).unwrap(), vec!["m.t"]);
    assert_eq!(s.get("m.t", false).unwrap().1.as_slice(), &data[..]);
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 8).unwrap();
    assert!(matches!(s.get("m.t", false), Err(CoreError::Corrupt { .. })));
}

/// How many pages of `path`'s bytes `[off, off + len)` the OS page cache holds (`mincore`).
fn cached_pages(path: &Path, off: u64, len: usize) -> usize {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let start = off / page * page;
    let n = (off + len as u64 - start) as usize;
    let mut v = vec![0u8; n.div_ceil(page as usize)];
    // SAFETY: a read-only shared mapping of an open file, unmapped before returning; mincore
    // writes one byte per page of it into `v`, which has that many.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as libc::off_t,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::mincore(p, n, v.as_mut_ptr()), 0);
        libc::munmap(p, n);
    }
    v.iter().filter(|b| **b & 1 != 0).count()
}

#[test]
fn drop_after_read_leaves_the_range_out_of_the_page_cache() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("x.safetensors");
    let data = bytes(1 << 20, 7);
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![512, 512], &data)
        .unwrap();
    safetensors::tensor::serialize_to_file([("t", view)], None, &f).unwrap();
    std::fs::File::open(&f).unwrap().sync_all().unwrap(); // clean pages: DONTNEED can drop them
    let off = std::fs::metadata(&f).unwrap().len() - data.len() as u64;
    let s = Store::create(cfg(&d.path().join("store"), 1 << 30)).unwrap();
    s.load_safetensors(&f, Some(2), "m.", false).unwrap();
    assert_eq!(s.meta("m.t").unwrap().tier, "disk");
    let mut out = vec![0u8; data.len()];
    assert!(!s.drop_after_read());
    s.read_into("m.t", 0, &mut out).unwrap();
    assert_eq!(out, data);
    let before = cached_pages(&f, off, data.len());
    s.set_drop_after_read(true);
    assert!(s.drop_after_read());
    out.fill(0);
    s.read_into("m.t", 0, &mut out).unwrap();
    assert_eq!(out, data);
    let after = cached_pages(&f, off, data.len());
    // tmpfs keeps its pages (they are the file): the advice cannot drop them there
    // SAFETY: statfs fills the struct for a valid NUL-terminated path.
    let tmpfs = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let p = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        libc::statfs(p.as_ptr(), &mut st) == 0 && st.f_type == 0x0102_1994
    };
    if !tmpfs {
        assert!(before >= 250, "the first read left {before} of 256 pages cached");
        assert!(after <= 2, "{after} pages still cached after drop_after_read (edges only)");
    }
}

#[test]
fn non_durable_puts_stay_out_of_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(cfg(d.path(), 100)).unwrap();
    s.put("a", DType::U8, &[40], &bytes(40, 1), None, false).unwrap();
    let files = |p: &Path| std::fs::read_dir(p.join("disk")).unwrap().count();
    let before = files(d.path());
    s.put_with("t", DType::U8, &[40], &bytes(40, 2), None, false, false).unwrap();
    assert_eq!(files(d.path()), before, "a non-durable put writes no file");
    assert!(s.meta("t").unwrap().file.is_none());
    // two more 40-byte tensors: the LRU victim ("a", then "t") goes to disk, bytes intact
    s.put_with("u", DType::U8, &[40], &bytes(40, 3), None, false, false).unwrap();
    s.put_with("v", DType::U8, &[40], &bytes(40, 4), None, false, false).unwrap();
    assert_eq!(s.meta("t").unwrap().tier, "disk");
    assert_eq!(s.get("t", false).unwrap().1.as_slice(), &bytes(40, 2)[..]);
    s.delete("u").unwrap();
    s.close().unwrap();
    let s2 = Store::open(d.path(), Verify::Full, true).unwrap();
    assert_eq!(s2.names(), vec!["a"]);
    assert_eq!(files(d.path()), before, "the evicted copy was an orphan, removed at open");
}
