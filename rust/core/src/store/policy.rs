//! The store's eviction policy: a thin adapter from tensor names to the one policy
//! implementation shared with the simulator ([`crate::eviction::Eviction`]).
//!
//! - `lru`: least recently used (a load into a tier counts as a use);
//! - `lfu`: least frequently used (ties: least recent);
//! - `fifo`: first put or brought up;
//! - `planned`: Belady's MIN: given the future access sequence (`set_future`), evict the tensor
//!   whose next use is furthest away (never used again first). Optimal in misses for a known future.

use crate::eviction::{Eviction, EvictionKind};
use crate::{CoreError, Result};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Lru,
    Lfu,
    Fifo,
    Planned,
}

impl Policy {
    pub fn parse(s: &str) -> Result<Policy> {
        match s.to_ascii_lowercase().as_str() {
            "lru" => Ok(Policy::Lru),
            "lfu" => Ok(Policy::Lfu),
            "fifo" => Ok(Policy::Fifo),
            "planned" | "belady" | "min" => Ok(Policy::Planned),
            _ => Err(CoreError::Value(format!(
                "unknown eviction policy {s:?}: expected \"lru\", \"lfu\", \"fifo\" or \"planned\""
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Lfu => "lfu",
            Policy::Fifo => "fifo",
            Policy::Planned => "planned",
        }
    }
    fn kind(self) -> EvictionKind {
        match self {
            Policy::Lru => EvictionKind::Lru,
            Policy::Lfu => EvictionKind::Lfu,
            Policy::Fifo => EvictionKind::Fifo,
            Policy::Planned => EvictionKind::Belady,
        }
    }
}

/// Policy state over the store's tensor names.
#[derive(Clone, Debug)]
pub struct NamedEviction {
    ev: Eviction,
    ids: HashMap<String, u32>,
}

impl NamedEviction {
    pub fn new(policy: Policy) -> Self {
        NamedEviction { ev: Eviction::new(policy.kind(), 0), ids: HashMap::new() }
    }

    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.insert(name.to_owned(), i);
        self.ev.ensure_len(i as usize + 1);
        i
    }

    /// A use of `name` (get, put).
    pub fn on_access(&mut self, name: &str) {
        let i = self.id(name);
        self.ev.on_access(i);
    }

    /// `name` was put or brought up into a tier.
    pub fn on_insert(&mut self, name: &str) {
        let i = self.id(name);
        self.ev.on_insert(i);
    }

    /// The known future access sequence (`planned`).
    pub fn set_future(&mut self, seq: &[String]) {
        let ids: Vec<u32> = seq.iter().map(|n| self.id(n)).collect();
        // ids are all registered, so this cannot fail
        let _ = self.ev.set_future(&ids);
    }

    /// The victim among `cands`.
    pub fn victim<'a>(&mut self, cands: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        let named: Vec<(&'a str, u32)> = cands.map(|n| (n, self.id(n))).collect();
        let v = self.ev.victim(named.iter().map(|c| c.1))?;
        named.iter().find(|c| c.1 == v).map(|c| c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn victims() {
        let mut lru = NamedEviction::new(Policy::Lru);
        for n in ["a", "b", "c", "a"] {
            lru.on_access(n);
        }
        assert_eq!(lru.victim(["a", "b", "c"].into_iter()), Some("b"));
        lru.on_insert("b"); // brought up: recent
        assert_eq!(lru.victim(["a", "b", "c"].into_iter()), Some("c"));
        let mut planned = NamedEviction::new(Policy::Planned);
        planned.set_future(&["a", "b", "c", "a"].map(String::from));
        planned.on_access("a");
        planned.on_access("b");
        // next uses: a at 3, b never, c at 2 -> b goes first
        assert_eq!(planned.victim(["a", "b", "c"].into_iter()), Some("b"));
        assert!(Policy::parse("nope").is_err());
    }
}
