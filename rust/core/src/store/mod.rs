//! The tiered tensor store.
//!
//! Tiers are ordered fastest first: typically `fast` (a cache-sized staging buffer), `ram` (a
//! memory budget) and `disk` (file-backed). Every tensor is resident in exactly one tier. When the
//! store has a file tier, the slowest file tier is its *home*: every `put` is written through to a
//! safetensors file there (atomically, with a CRC-32 in the manifest) before it is acknowledged,
//! so a crash never loses a completed put and pushing a tensor down from memory to home costs no
//! I/O. A put or move into a full tier evicts by the store's policy one tier down, cascading;
//! pinned tensors are never evicted.
//!
//! Concurrency: one mutex guards the metadata; file reads and writes run outside it, with the
//! tensor marked busy (other callers wait, and the wait is counted as a stall). A busy mark left
//! by another process (a `fork()` child sees its parent's) is cleared, so the store keeps working
//! in a child.

pub mod buf;
pub mod decode;
pub mod dtype;
pub mod fileio;
pub mod gguf;
pub mod manifest;
pub mod names;
pub mod paged_kv;
pub mod policy;
mod prefetch;
mod safetensors_dir;
mod state;
pub mod stats;
pub mod tiers;

pub use buf::AlignedBuf;
pub use dtype::DType;
pub use fileio::FileLoc;
pub use policy::Policy;
pub use prefetch::Prefetch;
pub use tiers::{fmt_bytes, parse_size, TierSpec};

use crate::{CoreError, Result};
use manifest::{Manifest, ManifestEntry};
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::Serialize;
use state::{Demotion, Entry, State, TierState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How much `open` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Files exist with the expected sizes.
    Header,
    /// And every checksum matches (reads every byte).
    Full,
}

/// What a caller sees of a tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorMeta {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nbytes: u64,
    pub tier: String,
    pub tier_index: usize,
    pub pinned: bool,
    pub file: Option<PathBuf>,
    pub adopted: bool,
    pub accesses: u64,
}

/// Construction options.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The store's folder (manifest, lock, relative tier paths). `None`: memory only.
    pub root: Option<PathBuf>,
    pub tiers: Vec<TierSpec>,
    pub policy: Policy,
    /// Where `put` places tensors and `get` promotes them (index); default: the largest
    /// memory tier, else the home tier.
    pub default_tier: Option<usize>,
    /// Check CRC-32s on every whole-tensor read from a file tier.
    pub verify_reads: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    Get,
    Prefetch,
    Explicit,
}

/// A tensor being put: its name, bytes and target tier.
struct NewTensor<'a> {
    name: &'a str,
    dtype: &'a DType,
    shape: &'a [usize],
    data: &'a [u8],
    nbytes: u64,
    tier: usize,
}

/// A move of tensor `name` (`n` bytes) from tier `src` to tier `dst`.
struct Move<'a> {
    name: &'a str,
    src: usize,
    dst: usize,
    n: u64,
    reason: Reason,
    src_name: String,
    dst_name: String,
    dst_file: bool,
}

/// Where a move with I/O reads from and writes to, as the entry stood when it was marked busy.
struct MoveFrom {
    /// The generation naming the new file (file destinations).
    gen: u64,
    dst_dir: Option<PathBuf>,
    dtype: DType,
    shape: Vec<usize>,
    mem: Option<Arc<AlignedBuf>>,
    /// The file copy: the non-home one if any, else home.
    loc: Option<FileLoc>,
}

/// What a move's I/O produced: the new buffer (memory destination) or the new file.
type Moved = (Option<Arc<AlignedBuf>>, Option<FileLoc>);

/// The outcome of a move's checks.
enum Admitted {
    /// Already in the destination: its bytes, when in memory.
    Stays(Option<Arc<AlignedBuf>>),
    /// To move, with room made in the destination.
    Moves { src: usize, nbytes: u64 },
}

pub(crate) struct Inner {
    root: Option<PathBuf>,
    specs: Vec<TierSpec>,
    home: Option<usize>,
    default_tier: usize,
    policy: Policy,
    verify_reads: bool,
    /// Drop the OS page cache's copy of what [`Store::read_into`] read from a file tier.
    drop_after_read: AtomicBool,
    state: Mutex<State>,
    cv: Condvar,
    /// The folder lock (flock), released by `close`.
    folder_lock: Mutex<Option<std::fs::File>>,
}

/// A handle on a store; clones share it.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

fn lock_folder(root: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let p = root.join(".tierflow.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| CoreError::io(&p, e))?;
    // SAFETY: flock on a valid fd.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(CoreError::Value(format!(
            "the store at {} is open in another TieredStore (this or another process): close it first",
            root.display()
        )));
    }
    Ok(f)
}

fn validate_tiers(specs: &[TierSpec]) -> Result<()> {
    if specs.is_empty() {
        return Err(CoreError::Value("a store needs at least one tier".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for t in specs {
        if t.name.is_empty() || !seen.insert(t.name.clone()) {
            return Err(CoreError::Value(format!(
                "tier names must be non-empty and unique: {:?}",
                t.name
            )));
        }
    }
    Ok(())
}

/// The path of a store-owned tensor file: the tensor's file stem and the store generation that
/// names this copy (unique, so a new copy never overwrites a file the manifest refers to).
fn tensor_path(dir: &Path, name: &str, gen: u64) -> PathBuf {
    dir.join(format!("{}.{gen}.safetensors", names::file_stem(name)))
}

/// Remove a file written for an operation that failed (nothing refers to it).
fn remove_new_file(loc: &Option<FileLoc>) {
    if let Some(l) = loc {
        let _ = std::fs::remove_file(&l.path);
    }
}

/// Put back the entry `old` of `name` taken out by a failed replacement, counting its bytes in
/// its tier again.
fn restore_entry(st: &mut State, name: &str, old: Option<Entry>) {
    if let Some(o) = old {
        st.tiers[o.tier].used += o.nbytes;
        st.entries.insert(name.to_owned(), o);
    }
}

impl Store {
    /// Create a store, or reopen the one in `cfg.root` (its manifest's tensors are verified
    /// with [`Verify::Full`] and strictly).
    pub fn create(cfg: StoreConfig) -> Result<Store> {
        validate_tiers(&cfg.tiers)?;
        if let Some(root) = cfg.root.clone() {
            if manifest::load(&root)?.is_some() {
                return Store::open_with(&root, Some(cfg), Verify::Full, true);
            }
        }
        let lock = match &cfg.root {
            Some(root) => {
                std::fs::create_dir_all(root).map_err(|e| CoreError::io(root, e))?;
                Some(lock_folder(root)?)
            }
            None => None,
        };
        let store = Store::build(cfg, lock, 0)?;
        store.save_manifest(&store.lock())?;
        Ok(store)
    }

    fn build(cfg: StoreConfig, lock: Option<std::fs::File>, generation: u64) -> Result<Store> {
        let mut tiers = Vec::new();
        for t in &cfg.tiers {
            let dir = match (&t.path, &cfg.root) {
                (Some(p), Some(root)) if p.is_relative() => Some(root.join(p)),
                (Some(p), _) if p.is_absolute() => Some(p.clone()),
                (Some(_), _) => {
                    return Err(CoreError::Value(format!(
                        "tier {:?} has a relative path but the store has no folder",
                        t.name
                    )))
                }
                (None, _) => None,
            };
            if let Some(d) = &dir {
                std::fs::create_dir_all(d).map_err(|e| CoreError::io(d, e))?;
            }
            tiers.push(TierState { name: t.name.clone(), capacity: t.capacity, dir, used: 0 });
        }
        let home = tiers.iter().rposition(|t| t.is_file());
        if home.is_some() && cfg.root.is_none() {
            return Err(CoreError::Value("a store with a file tier needs a folder (path)".into()));
        }
        let default_tier = match cfg.default_tier {
            Some(i) if i < tiers.len() => i,
            Some(i) => return Err(CoreError::Value(format!("no tier number {i}"))),
            None => {
                let mem: Vec<usize> = (0..tiers.len()).filter(|&i| !tiers[i].is_file()).collect();
                mem.iter()
                    .copied()
                    .max_by_key(|&i| (tiers[i].capacity.unwrap_or(u64::MAX), std::cmp::Reverse(i)))
                    .or(home)
                    .unwrap_or(0)
            }
        };
        let state = State {
            entries: HashMap::new(),
            tiers,
            generation,
            eviction: policy::NamedEviction::new(cfg.policy),
            counters: Default::default(),
            closed: false,
            quarantined: HashMap::new(),
        };
        Ok(Store {
            inner: Arc::new(Inner {
                root: cfg.root,
                specs: cfg.tiers,
                home,
                default_tier,
                policy: cfg.policy,
                verify_reads: cfg.verify_reads,
                drop_after_read: AtomicBool::new(false),
                state: Mutex::new(state),
                cv: Condvar::new(),
                folder_lock: Mutex::new(lock),
            }),
        })
    }

    /// Reopen the store in `root` from its manifest, verifying every tensor. With `strict`,
    /// the first bad tensor is an error; otherwise bad tensors are quarantined (listed by
    /// [`Store::quarantined`], an error on access, kept in the manifest) and the rest open.
    pub fn open(root: &Path, verify: Verify, strict: bool) -> Result<Store> {
        Store::open_with(root, None, verify, strict)
    }

    fn open_with(
        root: &Path,
        cfg: Option<StoreConfig>,
        verify: Verify,
        strict: bool,
    ) -> Result<Store> {
        let m = manifest::load(root)?.ok_or_else(|| {
            CoreError::io(
                root.join(manifest::MANIFEST),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no tierflow store here"),
            )
        })?;
        let lock = lock_folder(root)?;
        let policy = Policy::parse(&m.policy)?;
        let cfg = match cfg {
            Some(c) => c,
            None => StoreConfig {
                root: Some(root.to_owned()),
                tiers: m.tiers.clone(),
                policy,
                default_tier: None,
                verify_reads: true,
            },
        };
        let store = Store::build(cfg, Some(lock), m.generation)?;
        {
            let mut st = store.lock();
            for (name, me) in &m.tensors {
                let loc = me.loc(root);
                let tier = me
                    .tier
                    .as_ref()
                    .and_then(|t| st.tiers.iter().position(|x| &x.name == t && x.is_file()))
                    .or(store.inner.home);
                let checked = (|| -> Result<Entry> {
                    let dtype = DType::parse(&me.dtype)?;
                    let tier = tier.ok_or_else(|| {
                        CoreError::corrupt(&loc.path, Some(name), "no file tier to hold it")
                    })?;
                    let f = std::fs::File::open(&loc.path).map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => {
                            CoreError::corrupt(&loc.path, Some(name), "file is missing")
                        }
                        _ => CoreError::io(&loc.path, e),
                    })?;
                    let len = f.metadata().map_err(|e| CoreError::io(&loc.path, e))?.len();
                    if len != loc.file_len {
                        return Err(CoreError::corrupt(
                            &loc.path,
                            Some(name),
                            format!("file has {len} bytes, the manifest says {}", loc.file_len),
                        ));
                    }
                    if verify == Verify::Full && loc.crc32.is_some() {
                        let mut b = AlignedBuf::for_overwrite(me.nbytes as usize)?;
                        fileio::read_into(&loc, name, 0, b.as_mut_slice(), true)?;
                    }
                    Ok(Entry {
                        dtype,
                        shape: me.shape.clone(),
                        nbytes: me.nbytes,
                        tier,
                        mem: None,
                        home: Some(loc.clone()),
                        home_tier: Some(tier),
                        resfile: None,
                        pinned: false,
                        count: 0,
                        busy: None,
                        prefetched: false,
                    })
                })();
                match checked {
                    Ok(e) => {
                        st.tiers[e.tier].used += e.nbytes;
                        st.entries.insert(name.clone(), e);
                    }
                    Err(e) if strict => return Err(e),
                    Err(e) => {
                        st.quarantined.insert(name.clone(), (e.to_string(), me.clone()));
                    }
                }
            }
            store.cleanup_orphans(&st);
        }
        Ok(store)
    }

    /// Remove temporary files and files no committed tensor refers to, in the store's own
    /// file-tier folders (never adopted files elsewhere).
    fn cleanup_orphans(&self, st: &State) {
        let Some(root) = &self.inner.root else { return };
        let mut referenced: std::collections::HashSet<PathBuf> =
            st.entries.values().filter_map(|e| e.home.as_ref().map(|l| l.path.clone())).collect();
        referenced.extend(st.quarantined.values().map(|(_, me)| me.loc(root).path));
        for t in &st.tiers {
            let Some(dir) = &t.dir else { continue };
            if !dir.starts_with(root) {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(dir) else { continue };
            for ent in rd.flatten() {
                let p = ent.path();
                let fname = ent.file_name().to_string_lossy().into_owned();
                let ours = fname.ends_with(".safetensors")
                    && fname
                        .rsplit('.')
                        .nth(1)
                        .is_some_and(|g| g.chars().all(|c| c.is_ascii_digit()));
                let tmp = fname.starts_with('.') && fname.contains(".tmp-");
                if tmp || (ours && !referenced.contains(&p)) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    fn check_open(st: &State) -> Result<()> {
        if st.closed {
            Err(CoreError::Closed("the store"))
        } else {
            Ok(())
        }
    }

    /// A tensor of `nbytes` can never be stored in tier `t` when that exceeds the tier's whole
    /// capacity (eviction cannot help): a `Capacity` error naming both sizes.
    fn check_fits(st: &State, t: usize, name: &str, nbytes: u64) -> Result<()> {
        if let Some(cap) = st.tiers[t].capacity {
            if nbytes > cap {
                return Err(CoreError::Capacity(format!(
                    "tensor {name:?} has {nbytes} bytes ({}), more than the capacity of tier {:?}: {cap} bytes ({})",
                    fmt_bytes(nbytes),
                    st.tiers[t].name,
                    fmt_bytes(cap)
                )));
            }
        }
        Ok(())
    }

    /// Persist the manifest (when the store has a home tier).
    fn save_manifest(&self, st: &State) -> Result<()> {
        let (Some(root), Some(_)) = (&self.inner.root, self.inner.home) else { return Ok(()) };
        let mut tensors = std::collections::BTreeMap::new();
        for (name, e) in &st.entries {
            let Some(loc) = &e.home else { continue };
            let file = loc
                .path
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| loc.path.clone());
            tensors.insert(
                name.clone(),
                ManifestEntry {
                    dtype: e.dtype.name(),
                    shape: e.shape.clone(),
                    nbytes: e.nbytes,
                    file: if loc.adopted { loc.path.clone() } else { file },
                    offset: loc.offset,
                    file_len: loc.file_len,
                    crc32: loc.crc32,
                    mtime_ns: loc.mtime_ns,
                    adopted: loc.adopted,
                    tier: e.home_tier.map(|t| st.tiers[t].name.clone()),
                },
            );
        }
        for (name, (_, me)) in &st.quarantined {
            tensors.entry(name.clone()).or_insert_with(|| me.clone());
        }
        let m = Manifest {
            format: manifest::FORMAT.into(),
            version: manifest::VERSION,
            generation: st.generation,
            policy: self.inner.policy.name().into(),
            tiers: self.inner.specs.clone(),
            tensors,
        };
        manifest::save(root, &m)
    }

    /// Index of the tier called `name`.
    pub fn tier_index(&self, name: &str) -> Result<usize> {
        let st = self.lock();
        st.tiers.iter().position(|t| t.name == name).ok_or_else(|| {
            CoreError::Value(format!(
                "no tier named {name:?}; tiers: {:?}",
                st.tiers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()
            ))
        })
    }

    /// The tiers as configured (absolute paths for file tiers).
    pub fn tiers(&self) -> Vec<TierSpec> {
        self.lock()
            .tiers
            .iter()
            .map(|t| TierSpec { name: t.name.clone(), capacity: t.capacity, path: t.dir.clone() })
            .collect()
    }

    pub fn policy(&self) -> Policy {
        self.inner.policy
    }
    pub fn default_tier(&self) -> usize {
        self.inner.default_tier
    }
    pub fn root(&self) -> Option<&Path> {
        self.inner.root.as_deref()
    }

    /// Wait until `name` is not being moved; `Ok(false)` if it does not exist.
    fn wait_idle(&self, st: &mut MutexGuard<'_, State>, name: &str, stall: bool) -> Result<bool> {
        let t0 = Instant::now();
        let mut waited = false;
        loop {
            Self::check_open(st)?;
            let Some(e) = st.entries.get(name) else { return Ok(false) };
            match e.busy {
                None => break,
                Some((pid, _)) if pid != std::process::id() => st.clear_foreign_busy(),
                Some(_) => {
                    waited = true;
                    self.inner.cv.wait(st);
                }
            }
        }
        if waited && stall {
            st.counters.stalls += 1;
            st.counters.stall_seconds += t0.elapsed().as_secs_f64();
        }
        Ok(true)
    }

    fn not_found(st: &State, name: &str) -> CoreError {
        match st.quarantined.get(name) {
            Some((why, _)) => CoreError::Value(format!("tensor {name:?} is quarantined: {why}")),
            None => CoreError::NotFound(name.to_owned()),
        }
    }

    /// Finish evictions that need I/O (a victim pushed into a non-home file tier, or a copy
    /// left in a faster file tier). Runs under the lock: such configurations are rare.
    fn finish_demotions(&self, st: &mut State, demos: Vec<Demotion>) -> Result<()> {
        for d in demos {
            if let Some(p) = d.drop_file {
                let _ = std::fs::remove_file(p);
                continue;
            }
            st.generation += 1;
            let gen = st.generation;
            let dir = st.tiers[d.to].dir.clone().expect("file tier");
            let e = st.entries.get_mut(&d.name).expect("victim");
            let dst = tensor_path(&dir, &d.name, gen);
            let loc = match (&e.mem, &e.resfile, &e.home) {
                (Some(m), _, _) => {
                    fileio::write_tensor_file(&dst, &d.name, &e.dtype, &e.shape, m.as_slice())?
                }
                (None, Some(src), _) | (None, None, Some(src)) => fileio::copy_tensor_file(
                    src,
                    &d.name,
                    e.nbytes as usize,
                    &dst,
                    &e.dtype,
                    &e.shape,
                    self.inner.verify_reads,
                )?,
                _ => {
                    return Err(CoreError::Internal(format!(
                        "tensor {:?} has no bytes to demote",
                        d.name
                    )))
                }
            };
            if let Some(old) = e.resfile.replace(loc) {
                let _ = std::fs::remove_file(old.path);
            }
            e.mem = None;
            st.counters.bytes_written += e.nbytes;
        }
        Ok(())
    }

    /// Store `data` (C-order bytes of `shape` x `dtype`) under `name` in `tier` (default: the
    /// default tier). Without `overwrite` an existing name is an error and the old tensor stays.
    ///
    /// Phases: `check_put_bytes`, `admit_put` (under the lock), `write_home` (outside it), the
    /// memory copy, `publish_put` (under the lock; its commit point is `commit_put`) and
    /// `settle_put`. A put that returns `Ok` is durable in the home tier and listed in the
    /// manifest; one that fails keeps every stored tensor stored (the old tensor of that name
    /// included; victims it evicted stay in the tier they reached) and removes the files it wrote.
    pub fn put(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: &[u8],
        tier: Option<usize>,
        overwrite: bool,
    ) -> Result<()> {
        self.put_with(name, dtype, shape, data, tier, overwrite, true)
    }

    /// [`Store::put`], with `durable = false` for a tensor that need not survive the store (a
    /// KV-cache page): put into a memory tier, it is not written through to the home tier and
    /// not listed in the manifest (no file written, no sync: a put costs a copy), so it is gone
    /// when the store is reopened; evicted into a file tier it is written there like any victim
    /// (still outside the manifest: a reopened store removes that file as an orphan). Into a
    /// file tier, or in a store without a home tier, `durable` changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn put_with(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: &[u8],
        tier: Option<usize>,
        overwrite: bool,
        durable: bool,
    ) -> Result<()> {
        Self::check_put_bytes(name, &dtype, shape, data)?;
        let t = NewTensor {
            name,
            dtype: &dtype,
            shape,
            data,
            nbytes: data.len() as u64,
            tier: tier.unwrap_or(self.inner.default_tier),
        };
        let (mut home_dir, gen) = self.admit_put(&t, overwrite)?;
        if !durable && !self.lock().tiers[t.tier].is_file() {
            home_dir = None; // a transient tensor in a memory tier: no home copy
        }
        // Write-through to home, outside the lock.
        let t0 = Instant::now();
        let home_loc = match &home_dir {
            Some(dir) => Some(Self::write_home(dir, gen, &t)?),
            None => None,
        };
        let write_secs = t0.elapsed().as_secs_f64();
        let tier_is_file = { self.lock().tiers[t.tier].is_file() };
        let mem = if tier_is_file {
            None
        } else {
            match AlignedBuf::from_slice(data) {
                Ok(b) => Some(Arc::new(b)),
                Err(e) => {
                    remove_new_file(&home_loc);
                    return Err(e);
                }
            }
        };
        let mut st = self.lock();
        let result = self.publish_put(&mut st, &t, overwrite, tier_is_file, &mem, &home_loc);
        drop(st);
        self.inner.cv.notify_all();
        self.settle_put(result, &t, &home_loc, write_secs)
    }

    /// Put, phase 1 (no lock, nothing touched): the name is valid and `data` has exactly the
    /// bytes `dtype` x `shape` needs (for dtypes of fixed element size).
    fn check_put_bytes(name: &str, dtype: &DType, shape: &[usize], data: &[u8]) -> Result<()> {
        names::validate(name)?;
        if let Some(n) = dtype::nbytes_of(dtype, shape)? {
            if n != data.len() {
                return Err(CoreError::Shape(format!(
                    "{} x {shape:?} needs {n} bytes, got {}",
                    dtype.name(),
                    data.len()
                )));
            }
        }
        Ok(())
    }

    /// Put, phase 2 (under the lock, early checks only): the store is open, the tier exists,
    /// the name is free unless `overwrite`, and the tensor fits in the target tier and the home
    /// tier at all. Takes a fresh generation for the home file's name, so no two puts write the
    /// same file; returns the home folder (`None` without a home tier) and that generation.
    /// Changes nothing else: an error here leaves the store untouched.
    fn admit_put(&self, t: &NewTensor<'_>, overwrite: bool) -> Result<(Option<PathBuf>, u64)> {
        let mut st = self.lock();
        Self::check_open(&st)?;
        if t.tier >= st.tiers.len() {
            return Err(CoreError::Value(format!("no tier number {}", t.tier)));
        }
        if !overwrite && st.entries.contains_key(t.name) {
            return Err(CoreError::Exists(t.name.to_owned()));
        }
        for tier in [Some(t.tier), self.inner.home].into_iter().flatten() {
            Self::check_fits(&st, tier, t.name, t.nbytes)?;
        }
        st.generation += 1;
        Ok((self.inner.home.map(|h| st.tiers[h].dir.clone().expect("file tier")), st.generation))
    }

    /// Put, phase 3 (outside the lock): the write-through to the home tier, a new file named by
    /// the generation `admit_put` took, written atomically and synced by
    /// [`fileio::write_tensor_file`]. The file is not yet referenced by the store or the
    /// manifest: until `publish_put` succeeds a crash leaves only an orphan that `open` removes.
    fn write_home(dir: &Path, gen: u64, t: &NewTensor<'_>) -> Result<FileLoc> {
        fileio::write_tensor_file(&tensor_path(dir, t.name, gen), t.name, t.dtype, t.shape, t.data)
    }

    /// Put, phase 4 (under the lock): waits for a move of the same name to finish, rechecks
    /// that the name is free, makes room in the target tier (evicting by the policy), writes the
    /// copy of a non-home file tier, then inserts the entry and saves the manifest; the manifest
    /// save is the commit point. On any error the old entry of that name is put back with its
    /// bytes counted again and the non-home copy is removed, so nothing already stored is lost
    /// (victims evicted on the way stay where they landed, still stored). Returns the files of
    /// the replaced entry the store owns, to remove once the lock is released.
    fn publish_put(
        &self,
        st: &mut MutexGuard<'_, State>,
        t: &NewTensor<'_>,
        overwrite: bool,
        tier_is_file: bool,
        mem: &Option<Arc<AlignedBuf>>,
        home_loc: &Option<FileLoc>,
    ) -> Result<Vec<PathBuf>> {
        let name = t.name;
        self.wait_idle(st, name, false)?;
        if !overwrite && st.entries.contains_key(name) {
            return Err(CoreError::Exists(name.to_owned()));
        }
        // Take the old entry out while making room (it must not be chosen as a victim and
        // its bytes no longer count); put it back if anything fails.
        let old = st.entries.remove(name);
        if let Some(o) = &old {
            st.tiers[o.tier].used -= o.nbytes;
        }
        let resfile = match self.place_put(st, t, tier_is_file) {
            Ok(r) => r,
            Err(e) => {
                restore_entry(st, name, old);
                return Err(e);
            }
        };
        let entry = Entry {
            dtype: t.dtype.clone(),
            shape: t.shape.to_vec(),
            nbytes: t.nbytes,
            tier: t.tier,
            mem: mem.clone(),
            home: home_loc.clone(),
            home_tier: self.inner.home.filter(|_| home_loc.is_some()),
            resfile,
            pinned: old.as_ref().is_some_and(|o| o.pinned),
            count: 1,
            busy: None,
            prefetched: false,
        };
        let old = self.commit_put(st, t, entry, old)?;
        let mut stale = Vec::new();
        if let Some(o) = old {
            stale.extend(o.home.filter(|l| !l.adopted).map(|l| l.path));
            stale.extend(o.resfile.map(|l| l.path));
        }
        Ok(stale)
    }

    /// Put, the commit point of phase 4 (under the lock): inserts `entry`, counts its bytes in
    /// its tier, marks it recently used and saves the manifest. Once the save succeeds the put is
    /// durable and visible. If the save fails, the new entry is taken out again, its non-home
    /// file copy removed and `old` put back, as if the put never happened. Returns `old`.
    fn commit_put(
        &self,
        st: &mut State,
        t: &NewTensor<'_>,
        entry: Entry,
        old: Option<Entry>,
    ) -> Result<Option<Entry>> {
        let name = t.name;
        st.tiers[t.tier].used += t.nbytes;
        // A tensor without a home file (a transient put) replacing none is not in the
        // manifest, before or after: nothing to save.
        let listed = entry.home.is_some() || old.as_ref().is_some_and(|o| o.home.is_some());
        st.entries.insert(name.to_owned(), entry);
        st.eviction.on_insert(name);
        if let Err(e) = if listed { self.save_manifest(st) } else { Ok(()) } {
            let new = st.entries.remove(name).expect("just inserted");
            st.tiers[t.tier].used -= t.nbytes;
            if let Some(r) = new.resfile {
                let _ = std::fs::remove_file(r.path);
            }
            restore_entry(st, name, old);
            return Err(e);
        }
        Ok(old)
    }

    /// Put, within phase 4 (under the lock): room for `t` in its tier, evicting by the policy
    /// (the demotions that need I/O finished here); then, for a file tier other than home, the
    /// tensor's copy there under a fresh generation. The room error wins over a demotion's.
    /// On an error the caller restores the old entry; a victim already demoted stays stored in
    /// the tier it reached.
    fn place_put(
        &self,
        st: &mut State,
        t: &NewTensor<'_>,
        tier_is_file: bool,
    ) -> Result<Option<FileLoc>> {
        let mut demos = Vec::new();
        let room = st.make_room(t.tier, t.nbytes, t.name, &mut demos);
        let finished = self.finish_demotions(st, demos);
        room.and(finished)?;
        if tier_is_file && Some(t.tier) != self.inner.home {
            let dir = st.tiers[t.tier].dir.clone().expect("file tier");
            st.generation += 1;
            let p = tensor_path(&dir, t.name, st.generation);
            return fileio::write_tensor_file(&p, t.name, t.dtype, t.shape, t.data).map(Some);
        }
        Ok(None)
    }

    /// Put, phase 5 (after the lock is released and waiters are woken): on success removes the
    /// replaced entry's files (the manifest no longer names them) and counts the home write; on
    /// failure removes the new home file, which nothing references.
    fn settle_put(
        &self,
        result: Result<Vec<PathBuf>>,
        t: &NewTensor<'_>,
        home_loc: &Option<FileLoc>,
        write_secs: f64,
    ) -> Result<()> {
        match result {
            Ok(stale) => {
                for p in stale {
                    let _ = std::fs::remove_file(p);
                }
                if home_loc.is_some() {
                    let mut st = self.lock();
                    st.counters.bytes_written += t.nbytes;
                    st.counters.write_seconds += write_secs;
                }
                Ok(())
            }
            Err(e) => {
                remove_new_file(home_loc);
                Err(e)
            }
        }
    }

    /// The tensor's bytes. From a memory tier: shared, no copy (a hit). From a file tier: read
    /// (a miss) and, with `promote`, placed in the default tier (evicting per the policy).
    pub fn get(&self, name: &str, promote: bool) -> Result<(TensorMeta, Arc<AlignedBuf>)> {
        let promote_to = {
            let mut st = self.lock();
            if !self.wait_idle(&mut st, name, true)? {
                return Err(Self::not_found(&st, name));
            }
            st.touch(name);
            let e = &st.entries[name];
            if !st.tiers[e.tier].is_file() {
                let buf = e.mem.clone().ok_or_else(|| {
                    CoreError::Internal(format!("{name:?} in a memory tier without bytes"))
                })?;
                let was_prefetched = e.prefetched;
                let meta = self.meta_of(&st, name);
                st.counters.hits += 1;
                if was_prefetched {
                    st.counters.prefetch_hits += 1;
                    st.entries.get_mut(name).expect("exists").prefetched = false;
                }
                return Ok((meta, buf));
            }
            let target = self.inner.default_tier;
            let up = (promote && target < e.tier && !st.tiers[target].is_file()).then_some(target);
            st.counters.misses += 1;
            up
        };
        if let Some(t) = promote_to {
            match self.move_inner(name, t, Reason::Get) {
                Ok(Some(buf)) => {
                    let st = self.lock();
                    return Ok((self.meta_of(&st, name), buf));
                }
                Ok(None) => {}
                Err(CoreError::Capacity(_)) => {} // no room up there (all pinned): read in place
                Err(e) => return Err(e),
            }
        }
        // Read in place without moving.
        let (meta, loc) = {
            let mut st = self.lock();
            if !self.wait_idle(&mut st, name, true)? {
                return Err(Self::not_found(&st, name));
            }
            let e = &st.entries[name];
            if let Some(m) = &e.mem {
                return Ok((self.meta_of(&st, name), m.clone()));
            }
            let loc = e
                .resfile
                .clone()
                .or_else(|| e.home.clone())
                .ok_or_else(|| CoreError::Internal(format!("{name:?} has no bytes")))?;
            (self.meta_of(&st, name), loc)
        };
        let mut buf = AlignedBuf::for_overwrite(meta.nbytes as usize)?;
        let t0 = Instant::now();
        fileio::read_into(&loc, name, 0, buf.as_mut_slice(), self.inner.verify_reads)?;
        let mut st = self.lock();
        st.counters.bytes_read += meta.nbytes;
        let src = meta.tier.clone();
        let l = st.counters.streamed.entry(src).or_default();
        l.bytes += meta.nbytes;
        l.tensors += 1;
        l.seconds += t0.elapsed().as_secs_f64();
        Ok((meta, Arc::new(buf)))
    }

    fn meta_of(&self, st: &State, name: &str) -> TensorMeta {
        let e = &st.entries[name];
        TensorMeta {
            name: name.to_owned(),
            dtype: e.dtype.name(),
            shape: e.shape.clone(),
            nbytes: e.nbytes,
            tier: st.tiers[e.tier].name.clone(),
            tier_index: e.tier,
            pinned: e.pinned,
            file: e.resfile.as_ref().or(e.home.as_ref()).map(|l| l.path.clone()),
            adopted: e.home.as_ref().is_some_and(|l| l.adopted),
            accesses: e.count,
        }
    }

    /// Metadata of `name`.
    pub fn meta(&self, name: &str) -> Result<TensorMeta> {
        let st = self.lock();
        Self::check_open(&st)?;
        if !st.entries.contains_key(name) {
            return Err(Self::not_found(&st, name));
        }
        Ok(self.meta_of(&st, name))
    }

    /// Move `name` into `tier` (up or down), evicting by the policy to make room.
    pub fn move_to(&self, name: &str, tier: usize) -> Result<()> {
        self.move_inner(name, tier, Reason::Explicit).map(|_| ())
    }

    /// Move `name` into tier `dst`, returning its bytes when it ends in a memory tier.
    ///
    /// Phases: `admit_move` (checks and room, under the lock), then either `move_without_io`
    /// (under the lock), or `start_move_io` (under the lock), `move_io` (outside it, the tensor
    /// marked busy) and `finish_move_io` (under the lock). The tensor stays stored throughout:
    /// its old copy is dropped only after the new one is complete, and a failed move leaves it
    /// where it was.
    fn move_inner(
        &self,
        name: &str,
        dst: usize,
        reason: Reason,
    ) -> Result<Option<Arc<AlignedBuf>>> {
        let mut st = self.lock();
        let (src, n) = match self.admit_move(&mut st, name, dst, reason)? {
            Admitted::Stays(mem) => return Ok(mem),
            Admitted::Moves { src, nbytes } => (src, nbytes),
        };
        let mv = Move {
            name,
            src,
            dst,
            n,
            reason,
            src_name: st.tiers[src].name.clone(),
            dst_name: st.tiers[dst].name.clone(),
            dst_file: st.tiers[dst].is_file(),
        };
        let src_file = st.tiers[src].is_file();
        let dst_home = Some(dst) == st.entries[name].home_tier;
        // Cheap moves, under the lock: memory <-> memory, or down into the home copy.
        if (!src_file && !mv.dst_file) || (mv.dst_file && dst_home) {
            return Ok(self.move_without_io(st, &mv));
        }
        // Moves with I/O: reserve room, mark busy, work outside the lock.
        let from = Self::start_move_io(st, &mv);
        let t0 = Instant::now();
        let io = self.move_io(&mv, &from);
        let secs = t0.elapsed().as_secs_f64();
        self.finish_move_io(&mv, io, secs)
    }

    /// Move, phase 1 (under the lock): the tier exists, the tensor exists and no other move of
    /// it is in flight (waits for one), and it fits in `dst` at all; then makes room in `dst` by
    /// the policy, one tier down, cascading. A tensor already in `dst` stays
    /// ([`Admitted::Stays`], nothing changed). An error before the room is made changes
    /// nothing; victims demoted before a later failure stay stored where they landed.
    fn admit_move(
        &self,
        st: &mut MutexGuard<'_, State>,
        name: &str,
        dst: usize,
        reason: Reason,
    ) -> Result<Admitted> {
        if dst >= st.tiers.len() {
            return Err(CoreError::Value(format!("no tier number {dst}")));
        }
        if !self.wait_idle(st, name, reason == Reason::Get)? {
            return Err(Self::not_found(st, name));
        }
        let (src, n) = {
            let e = &st.entries[name];
            (e.tier, e.nbytes)
        };
        if src == dst {
            return Ok(Admitted::Stays(st.entries[name].mem.clone()));
        }
        Self::check_fits(st, dst, name, n)?;
        let mut demos = Vec::new();
        let room = st.make_room(dst, n, name, &mut demos);
        self.finish_demotions(st, demos)?;
        room?;
        Ok(Admitted::Moves { src, nbytes: n })
    }

    /// Move, the I/O-free case (under the lock, then releases it): between memory tiers (the
    /// buffer is shared, not copied) or down into the tier holding the home copy (the memory
    /// copy and any non-home file copy are dropped, the durable home file stays). Moves the
    /// accounting from `src` to `dst`, counts the link, removes the dropped file after the lock
    /// is released and wakes waiters. Returns the bytes when `dst` is a memory tier.
    fn move_without_io(
        &self,
        mut st: MutexGuard<'_, State>,
        mv: &Move<'_>,
    ) -> Option<Arc<AlignedBuf>> {
        let (src, dst, n) = (mv.src, mv.dst, mv.n);
        st.tiers[src].used -= n;
        st.tiers[dst].used += n;
        let e = st.entries.get_mut(mv.name).expect("exists");
        e.tier = dst;
        let up = dst < src;
        e.prefetched = mv.reason == Reason::Prefetch && dst < src;
        let mut drop_file = None;
        if mv.dst_file {
            e.mem = None;
            drop_file = e.resfile.take();
        }
        let mem = e.mem.clone();
        if up {
            st.eviction.on_insert(mv.name);
        }
        st.counters.link(&mv.src_name, &mv.dst_name, mv.n, 0.0);
        drop(st);
        if let Some(l) = drop_file {
            let _ = std::fs::remove_file(l.path);
        }
        self.inner.cv.notify_all();
        mem
    }

    /// Move with I/O, phase 2 (under the lock, then releases it): reserves `n` bytes in `dst`
    /// (the room `admit_move` made), takes a fresh generation for a new file's name, marks the
    /// tensor busy (this process, `dst`) so other callers wait and `delete` cannot remove it,
    /// and snapshots where its bytes are now. The entry itself is unchanged.
    fn start_move_io(mut st: MutexGuard<'_, State>, mv: &Move<'_>) -> MoveFrom {
        st.tiers[mv.dst].used += mv.n;
        st.generation += 1;
        let gen = st.generation;
        let dst_dir = st.tiers[mv.dst].dir.clone();
        let e = st.entries.get_mut(mv.name).expect("exists");
        e.busy = Some((std::process::id(), mv.dst));
        let from = MoveFrom {
            gen,
            dst_dir,
            dtype: e.dtype.clone(),
            shape: e.shape.clone(),
            mem: e.mem.clone(),
            loc: e.resfile.clone().or_else(|| e.home.clone()),
        };
        drop(st);
        from
    }

    /// Move with I/O, phase 3 (outside the lock): into a memory tier, reads the file copy into
    /// a new buffer; into a file tier, writes the memory copy, or copies the file, to a new
    /// file (atomic and synced, see [`fileio`]). Touches no store state: the new copy is not
    /// referenced until `finish_move_io` publishes it.
    fn move_io(&self, mv: &Move<'_>, from: &MoveFrom) -> Result<Moved> {
        let (name, n) = (mv.name, mv.n);
        if !mv.dst_file {
            let loc = from
                .loc
                .as_ref()
                .ok_or_else(|| CoreError::Internal(format!("{name:?} has no file")))?;
            let mut buf = AlignedBuf::for_overwrite(n as usize)?;
            fileio::read_into(loc, name, 0, buf.as_mut_slice(), self.inner.verify_reads)?;
            Ok((Some(Arc::new(buf)), None))
        } else {
            let p = tensor_path(from.dst_dir.as_ref().expect("file tier"), name, from.gen);
            let l = match (&from.mem, &from.loc) {
                (Some(m), _) => {
                    fileio::write_tensor_file(&p, name, &from.dtype, &from.shape, m.as_slice())?
                }
                (None, Some(src)) => fileio::copy_tensor_file(
                    src,
                    name,
                    n as usize,
                    &p,
                    &from.dtype,
                    &from.shape,
                    self.inner.verify_reads,
                )?,
                _ => return Err(CoreError::Internal(format!("{name:?} has no bytes"))),
            };
            Ok((None, Some(l)))
        }
    }

    /// Move with I/O, phase 4 (under the lock, then releases it): clears the busy mark. After a
    /// failed I/O, releases the reservation in `dst` and leaves the tensor where it was. After
    /// a successful one, points the entry at its new copy, moves the accounting, counts the
    /// link and bytes, and only after the lock is released removes the replaced non-home file
    /// copy. Wakes waiters either way.
    fn finish_move_io(
        &self,
        mv: &Move<'_>,
        io: Result<Moved>,
        secs: f64,
    ) -> Result<Option<Arc<AlignedBuf>>> {
        let (name, src, dst, n) = (mv.name, mv.src, mv.dst, mv.n);
        let mut st = self.lock();
        let Some(e) = st.entries.get_mut(name) else {
            // Cannot happen: delete waits for busy tensors. Release the reservation anyway.
            st.tiers[dst].used -= n;
            self.inner.cv.notify_all();
            return Err(CoreError::Internal(format!("{name:?} vanished while it was moved")));
        };
        e.busy = None;
        match io {
            Err(err) => {
                st.tiers[dst].used -= n;
                drop(st);
                self.inner.cv.notify_all();
                Err(err)
            }
            Ok((buf, newfile)) => {
                let old_res = if mv.dst_file {
                    e.resfile.replace(newfile.expect("written"))
                } else {
                    e.resfile.take()
                };
                e.mem = buf.clone();
                e.tier = dst;
                e.prefetched = mv.reason == Reason::Prefetch && dst < src;
                if dst < src {
                    st.eviction.on_insert(name); // brought up: recently used, not the next victim
                }
                st.tiers[src].used -= n;
                st.counters.link(&mv.src_name, &mv.dst_name, n, secs);
                if mv.dst_file {
                    st.counters.bytes_written += n;
                } else {
                    st.counters.bytes_read += n;
                }
                drop(st);
                if let Some(l) = old_res {
                    let _ = std::fs::remove_file(l.path);
                }
                self.inner.cv.notify_all();
                Ok(buf)
            }
        }
    }

    /// Push `name` one tier down; returns the tier it lands in.
    pub fn evict(&self, name: &str) -> Result<usize> {
        let (tier, ntiers) = {
            let st = self.lock();
            Self::check_open(&st)?;
            let e = st.entries.get(name).ok_or_else(|| Self::not_found(&st, name))?;
            if e.pinned {
                return Err(CoreError::Value(format!(
                    "tensor {name:?} is pinned: unpin it before evicting it"
                )));
            }
            (e.tier, st.tiers.len())
        };
        if tier + 1 >= ntiers {
            return Err(CoreError::Value(format!(
                "tensor {name:?} is already in the slowest tier"
            )));
        }
        self.move_inner(name, tier + 1, Reason::Explicit)?;
        self.lock().counters.evictions += 1;
        Ok(tier + 1)
    }

    /// Remove `name` and its files (never an adopted file).
    pub fn delete(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        if !self.wait_idle(&mut st, name, false)? {
            if st.quarantined.remove(name).is_some() {
                return self.save_manifest(&st);
            }
            return Err(Self::not_found(&st, name));
        }
        let e = st.entries.remove(name).expect("exists");
        st.tiers[e.tier].used -= e.nbytes;
        // (a tensor without a home file is not in the manifest: nothing to save)
        if let Err(err) = if e.home.is_some() { self.save_manifest(&st) } else { Ok(()) } {
            st.tiers[e.tier].used += e.nbytes;
            st.entries.insert(name.to_owned(), e);
            return Err(err);
        }
        drop(st);
        for l in [e.home, e.resfile].into_iter().flatten() {
            if !l.adopted {
                let _ = std::fs::remove_file(l.path);
            }
        }
        self.inner.cv.notify_all();
        Ok(())
    }

    /// Pin (never evicted) or unpin `name`.
    pub fn set_pinned(&self, name: &str, pinned: bool) -> Result<()> {
        let mut st = self.lock();
        Self::check_open(&st)?;
        match st.entries.get_mut(name) {
            Some(e) => {
                e.pinned = pinned;
                Ok(())
            }
            None => Err(Self::not_found(&st, name)),
        }
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().entries.keys().cloned().collect();
        v.sort();
        v
    }
    pub fn contains(&self, name: &str) -> bool {
        self.lock().entries.contains_key(name)
    }
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Tensors that failed verification at open (name, reason).
    pub fn quarantined(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            self.lock().quarantined.iter().map(|(k, (w, _))| (k.clone(), w.clone())).collect();
        v.sort();
        v
    }

    /// The future access sequence the `planned` policy evicts by (Belady).
    pub fn set_future(&self, seq: Vec<String>) {
        self.lock().eviction.set_future(&seq);
    }

    /// Statistics as JSON: tiers, traffic, hits, misses, prefetch hits, stalls.
    pub fn stats(&self) -> serde_json::Value {
        let st = self.lock();
        let tiers: Vec<serde_json::Value> = st
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let resident: Vec<&Entry> = st.entries.values().filter(|e| e.tier == i).collect();
                serde_json::json!({
                    "name": t.name,
                    "kind": if t.is_file() { "file" } else { "memory" },
                    "capacity": t.capacity,
                    "used": resident.iter().map(|e| e.nbytes).sum::<u64>(),
                    "reserved": t.used - resident.iter().map(|e| e.nbytes).sum::<u64>(),
                    "tensors": resident.len(),
                    "pinned": resident.iter().filter(|e| e.pinned).count(),
                    "path": t.dir,
                })
            })
            .collect();
        serde_json::json!({
            "policy": self.inner.policy.name(),
            "tiers": tiers,
            "counters": st.counters,
            "quarantined": st.quarantined.len(),
        })
    }

    pub fn reset_stats(&self) {
        self.lock().counters = Default::default();
    }

    /// Make sure the manifest on disk is current and durable.
    pub fn flush(&self) -> Result<()> {
        let st = self.lock();
        Self::check_open(&st)?;
        self.save_manifest(&st)
    }

    /// Flush and close; later calls fail with `Closed`. Idempotent.
    pub fn close(&self) -> Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Ok(());
        }
        while st.entries.values().any(|e| e.busy.is_some_and(|(p, _)| p == std::process::id())) {
            self.inner.cv.wait(&mut st);
        }
        let r = self.save_manifest(&st);
        st.closed = true;
        st.entries.clear();
        drop(st);
        self.inner.folder_lock.lock().take();
        self.inner.cv.notify_all();
        r
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Copy bytes `[offset, offset + out.len())` of `name` into `out` from wherever it lives,
    /// without moving it (kernels stream weight panels this way). Counted as streamed traffic.
    /// Whether [`Store::read_into`] drops the OS page cache's copy of the bytes it reads from
    /// a file tier right after reading them (`posix_fadvise(POSIX_FADV_DONTNEED)` on that range;
    /// advice only). For weights streamed once per step under a memory limit that charges the
    /// page cache (a memory cgroup): the kernels hold the bytes in their own panel buffers, so a
    /// cached copy only takes room the limit needs for other things. Off by default.
    pub fn set_drop_after_read(&self, on: bool) {
        self.inner.drop_after_read.store(on, Ordering::Relaxed);
    }

    /// See [`Store::set_drop_after_read`].
    pub fn drop_after_read(&self) -> bool {
        self.inner.drop_after_read.load(Ordering::Relaxed)
    }

    pub fn read_into(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let (mem, loc, tier, n) = {
            let mut st = self.lock();
            if !self.wait_idle(&mut st, name, true)? {
                return Err(Self::not_found(&st, name));
            }
            if offset == 0 {
                st.touch(name);
            }
            let e = &st.entries[name];
            (
                e.mem.clone(),
                e.resfile.clone().or_else(|| e.home.clone()),
                st.tiers[e.tier].name.clone(),
                e.nbytes,
            )
        };
        let end = offset.checked_add(out.len() as u64).filter(|&e| e <= n);
        if end.is_none() {
            return Err(CoreError::Value(format!(
                "range {offset}+{} is outside tensor {name:?} ({n} bytes)",
                out.len()
            )));
        }
        let t0 = Instant::now();
        match (mem, loc) {
            (Some(m), _) => {
                out.copy_from_slice(&m.as_slice()[offset as usize..offset as usize + out.len()])
            }
            (None, Some(l)) => {
                fileio::read_into(&l, name, offset, out, false)?;
                if self.inner.drop_after_read.load(Ordering::Relaxed) {
                    fileio::drop_cached(&l, offset, out.len() as u64);
                }
            }
            _ => return Err(CoreError::Internal(format!("{name:?} has no bytes"))),
        }
        let mut st = self.lock();
        let l = st.counters.streamed.entry(tier).or_default();
        l.bytes += out.len() as u64;
        l.seconds += t0.elapsed().as_secs_f64();
        if offset == 0 {
            l.tensors += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
