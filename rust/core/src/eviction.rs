//! Eviction: which resident item leaves a full tier when another must come in, implemented once
//! and used by both the tiered store (over tensor names, `store::policy`) and the simulator (over
//! expert indices, `sim::engine`).
//!
//! LRU, LFU, FIFO, and Belady's planned policy that evicts the item used furthest in a known
//! future. Driven by `on_access` / `on_insert` / `on_evict` / `victim`.

use crate::error::{CoreError, Result};

/// Eviction policy kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionKind {
    Lru,
    Lfu,
    Fifo,
    Belady,
}

impl EvictionKind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "lru" => Self::Lru,
            "lfu" => Self::Lfu,
            "fifo" => Self::Fifo,
            "belady" | "planned" | "opt" => Self::Belady,
            _ => {
                return Err(CoreError::Value(format!(
                    "eviction: unknown policy {s:?} (expected lru, lfu, fifo or belady)"
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Lfu => "lfu",
            Self::Fifo => "fifo",
            Self::Belady => "belady",
        }
    }
}

/// The state of one eviction policy over experts `0..n`.
///
/// Every access calls [`Eviction::on_access`]; a load calls [`Eviction::on_insert`]; when room is
/// needed the caller asks [`Eviction::victim`] among the evictable resident experts and then calls
/// [`Eviction::on_evict`]. For Belady the caller first gives the planned access sequence with
/// [`Eviction::set_future`]; each `on_access` then advances through it (an access that departs from
/// the plan is still counted, the plan resynchronises on the next matching access).
#[derive(Clone, Debug)]
pub struct Eviction {
    kind: EvictionKind,
    clock: u64,
    /// LRU: last access; FIFO: insert time; LFU: tie-break by last access.
    stamp: Vec<u64>,
    count: Vec<u64>,
    /// Belady: positions of each expert's accesses in the plan, and a cursor per expert.
    future: Vec<Vec<u64>>,
    cursor: Vec<usize>,
    pos: u64,
}

impl Eviction {
    pub fn new(kind: EvictionKind, n: usize) -> Self {
        Eviction {
            kind,
            clock: 0,
            stamp: vec![0; n],
            count: vec![0; n],
            future: vec![Vec::new(); if kind == EvictionKind::Belady { n } else { 0 }],
            cursor: vec![0; if kind == EvictionKind::Belady { n } else { 0 }],
            pos: 0,
        }
    }
    pub fn kind(&self) -> EvictionKind {
        self.kind
    }
    pub fn len(&self) -> usize {
        self.stamp.len()
    }
    pub fn is_empty(&self) -> bool {
        self.stamp.is_empty()
    }
    fn check(&self, e: u32) -> Result<usize> {
        let i = e as usize;
        if i >= self.stamp.len() {
            return Err(CoreError::Value(format!(
                "expert index {e} out of range (0..{})",
                self.stamp.len()
            )));
        }
        Ok(i)
    }

    /// Give Belady the planned sequence of accesses (ignored by the other policies).
    pub fn set_future(&mut self, seq: &[u32]) -> Result<()> {
        if self.kind != EvictionKind::Belady {
            return Ok(());
        }
        for f in &mut self.future {
            f.clear();
        }
        for (p, &e) in seq.iter().enumerate() {
            let i = self.check(e)?;
            self.future[i].push(p as u64);
        }
        self.cursor.iter_mut().for_each(|c| *c = 0);
        self.pos = 0;
        Ok(())
    }

    /// Record an access to expert `e` (hit or miss).
    #[inline]
    pub fn on_access(&mut self, e: u32) {
        let i = e as usize;
        self.clock += 1;
        self.count[i] += 1;
        if self.kind != EvictionKind::Fifo {
            self.stamp[i] = self.clock;
        }
        if self.kind == EvictionKind::Belady {
            // advance this expert's cursor past the current plan position
            let f = &self.future[i];
            let mut c = self.cursor[i];
            while c < f.len() && f[c] < self.pos {
                c += 1;
            }
            if c < f.len() {
                self.pos = f[c] + 1;
                c += 1;
            }
            self.cursor[i] = c;
        }
    }

    /// Record that `e` became resident. A load counts as a use for LRU (a prefetched expert is
    /// not the next victim before anyone had a chance to use it) and starts FIFO's clock.
    #[inline]
    pub fn on_insert(&mut self, e: u32) {
        self.clock += 1;
        self.stamp[e as usize] = self.clock;
    }

    /// Grow to at least `n` experts (the store registers tensors as they arrive).
    pub fn ensure_len(&mut self, n: usize) {
        if n > self.stamp.len() {
            self.stamp.resize(n, 0);
            self.count.resize(n, 0);
            if self.kind == EvictionKind::Belady {
                self.future.resize(n, Vec::new());
                self.cursor.resize(n, 0);
            }
        }
    }

    /// Record that `e` left.
    #[inline]
    pub fn on_evict(&mut self, _e: u32) {}

    /// The next planned use of `e` (u64::MAX: never).
    #[inline]
    fn next_use(&self, i: usize) -> u64 {
        let f = &self.future[i];
        let mut c = self.cursor[i];
        while c < f.len() && f[c] < self.pos {
            c += 1;
        }
        f.get(c).copied().unwrap_or(u64::MAX)
    }

    /// The expert to evict among `candidates` (None if empty).
    pub fn victim(&self, candidates: impl IntoIterator<Item = u32>) -> Option<u32> {
        let mut best: Option<(u32, (u64, u64))> = None;
        for e in candidates {
            let i = e as usize;
            // smaller key = better victim
            let key = match self.kind {
                EvictionKind::Lru | EvictionKind::Fifo => (self.stamp[i], 0),
                EvictionKind::Lfu => (self.count[i], self.stamp[i]),
                EvictionKind::Belady => (u64::MAX - self.next_use(i), self.stamp[i]),
            };
            if best.map_or(true, |(_, k)| key < k) {
                best = Some((e, key));
            }
        }
        best.map(|b| b.0)
    }

    /// Checked variant of `on_access` for callers outside the simulator.
    pub fn access(&mut self, e: u32) -> Result<()> {
        self.check(e)?;
        self.on_access(e);
        Ok(())
    }
    /// Checked variant of `on_insert`.
    pub fn insert(&mut self, e: u32) -> Result<()> {
        self.check(e)?;
        self.on_insert(e);
        Ok(())
    }
    /// Checked variant of `victim`.
    pub fn pick(&self, candidates: &[u32]) -> Result<Option<u32>> {
        for &e in candidates {
            self.check(e)?;
        }
        Ok(self.victim(candidates.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn misses(kind: EvictionKind, seq: &[u32], slots: usize, n: usize) -> u64 {
        let mut ev = Eviction::new(kind, n);
        ev.set_future(seq).unwrap();
        let mut res: Vec<u32> = Vec::new();
        let mut m = 0;
        for &e in seq {
            if !res.contains(&e) {
                m += 1;
                if res.len() == slots {
                    let v = ev.victim(res.iter().copied()).unwrap();
                    res.retain(|&x| x != v);
                    ev.on_evict(v);
                }
                res.push(e);
                ev.on_insert(e);
            }
            ev.on_access(e);
        }
        m
    }

    #[test]
    fn belady_textbook() {
        // Classic example: 3 frames, OPT = 9 faults, LRU = 12, FIFO = 15.
        let seq = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];
        assert_eq!(misses(EvictionKind::Belady, &seq, 3, 8), 9);
        assert_eq!(misses(EvictionKind::Lru, &seq, 3, 8), 12);
        assert_eq!(misses(EvictionKind::Fifo, &seq, 3, 8), 15);
    }
}
