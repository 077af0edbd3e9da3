//! The store's mutable state (behind one mutex) and capacity bookkeeping.

use super::buf::AlignedBuf;
use super::dtype::DType;
use super::fileio::FileLoc;
use super::policy::NamedEviction;
use super::stats::Counters;
use crate::{CoreError, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// One tensor. It is resident in exactly one tier (`tier`); `home` is its durable copy in the
/// store's home file tier (written when it was put: write-through), so pushing it down from
/// memory into the home tier costs no I/O.
pub struct Entry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub nbytes: u64,
    pub tier: usize,
    /// The bytes, when resident in a memory tier.
    pub mem: Option<Arc<AlignedBuf>>,
    /// The durable copy (home tier) or the adopted file.
    pub home: Option<FileLoc>,
    /// The tier `home` lives in.
    pub home_tier: Option<usize>,
    /// A copy in another (non-home) file tier, when resident there.
    pub resfile: Option<FileLoc>,
    pub pinned: bool,
    pub count: u64,
    /// The process (pid) moving this tensor right now, and the tier it reserved room in.
    pub busy: Option<(u32, usize)>,
    /// Brought up by a prefetch and not accessed since.
    pub prefetched: bool,
}

pub struct TierState {
    pub name: String,
    pub capacity: Option<u64>,
    /// File-backed: the folder of its files.
    pub dir: Option<std::path::PathBuf>,
    /// Bytes of resident tensors plus room reserved by moves in flight.
    pub used: u64,
}

impl TierState {
    pub fn is_file(&self) -> bool {
        self.dir.is_some()
    }
    pub fn free(&self) -> u64 {
        self.capacity.map(|c| c.saturating_sub(self.used)).unwrap_or(u64::MAX)
    }
}

pub struct State {
    pub entries: HashMap<String, Entry>,
    pub tiers: Vec<TierState>,
    pub generation: u64,
    /// The eviction policy's state (one implementation, shared with the simulator).
    pub eviction: NamedEviction,
    pub counters: Counters,
    pub closed: bool,
    /// Tensors whose files failed verification when the store was opened leniently.
    pub quarantined: HashMap<String, (String, super::manifest::ManifestEntry)>,
}

/// An eviction the caller must finish: a victim pushed down into a non-home file tier needs its
/// bytes written there (the only eviction that is not a pointer move).
pub struct Demotion {
    pub name: String,
    pub to: usize,
    /// A copy in a faster file tier that is no longer needed, to delete.
    pub drop_file: Option<std::path::PathBuf>,
}

impl State {
    pub fn touch(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            e.count += 1;
        }
        self.eviction.on_access(name);
    }

    /// Clear a `busy` mark left by a process that no longer runs the move (a fork child sees
    /// its parent's in-flight moves, whose threads did not survive the fork).
    pub fn clear_foreign_busy(&mut self) {
        let me = std::process::id();
        let mut release = Vec::new();
        for e in self.entries.values_mut() {
            if let Some((pid, reserved)) = e.busy {
                if pid != me {
                    e.busy = None;
                    release.push((reserved, e.nbytes, e.tier));
                }
            }
        }
        for (reserved, n, tier) in release {
            if reserved != tier {
                self.tiers[reserved].used = self.tiers[reserved].used.saturating_sub(n);
            }
        }
    }

    /// Make `need` bytes free in `tier` by pushing victims (policy order; never pinned, busy or
    /// `exclude`) one tier down, cascading. Victims into memory tiers or into the home file tier
    /// move without I/O; others are returned as [`Demotion`]s (already accounted) to finish.
    /// Err when no victim is left: names the sizes.
    pub fn make_room(
        &mut self,
        tier: usize,
        need: u64,
        exclude: &str,
        out: &mut Vec<Demotion>,
    ) -> Result<()> {
        loop {
            let t = &self.tiers[tier];
            if t.free() >= need {
                return Ok(());
            }
            if let Some(cap) = t.capacity {
                if need > cap {
                    return Err(CoreError::Capacity(format!(
                        "{need} bytes do not fit in tier {:?} of capacity {cap} bytes",
                        t.name
                    )));
                }
            }
            let cands = self.entries.iter().filter(|(n, e)| {
                e.tier == tier && !e.pinned && e.busy.is_none() && n.as_str() != exclude
            });
            let victim = self.eviction.victim(cands.map(|(n, _)| n.as_str())).map(str::to_owned);
            let Some(victim) = victim else {
                let t = &self.tiers[tier];
                let pinned: u64 = self
                    .entries
                    .values()
                    .filter(|e| e.tier == tier && e.pinned)
                    .map(|e| e.nbytes)
                    .sum();
                return Err(CoreError::Capacity(format!(
                    "tier {:?} is full: {need} bytes needed, {} of {} bytes free, and nothing can be evicted ({pinned} bytes pinned, the rest busy)",
                    t.name,
                    t.free(),
                    t.capacity.unwrap_or(u64::MAX)
                )));
            };
            let below = tier + 1;
            if below >= self.tiers.len() {
                return Err(CoreError::Capacity(format!(
                    "tier {:?} is full ({need} bytes needed, {} free) and it is the slowest tier: nothing can be evicted from it",
                    self.tiers[tier].name,
                    self.tiers[tier].free()
                )));
            }
            let vbytes = self.entries[&victim].nbytes;
            self.make_room(below, vbytes, exclude, out)?;
            let e = self.entries.get_mut(&victim).expect("victim exists");
            self.tiers[tier].used -= vbytes;
            self.tiers[below].used += vbytes;
            e.tier = below;
            e.prefetched = false;
            let below_is_file = self.tiers[below].is_file();
            if below_is_file {
                let mem = e.mem.take();
                if Some(below) != e.home_tier {
                    // Its bytes must be written into that tier: keep them until written.
                    e.mem = mem;
                    out.push(Demotion { name: victim.clone(), to: below, drop_file: None });
                } else if let Some(old) = e.resfile.take() {
                    out.push(Demotion {
                        name: victim.clone(),
                        to: below,
                        drop_file: Some(old.path),
                    });
                }
            }
            self.counters.evictions += 1;
            let (from, to) = (self.tiers[tier].name.clone(), self.tiers[below].name.clone());
            self.counters.link(&from, &to, vbytes, 0.0);
        }
    }
}
