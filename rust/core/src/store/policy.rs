//! Eviction policies: which resident tensor leaves a full tier.
//!
//! - `lru`: least recently used; `lfu`: least frequently used (ties: least recent);
//! - `fifo`: first to have entered the tier;
//! - `planned`: Belady's MIN: given the future access sequence (`set_future`), evict the tensor
//!   whose next use is furthest away (never used again first). Optimal in misses for a known future.

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
}

/// What a policy knows of a candidate.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub last_access: u64,
    pub count: u64,
    pub entered: u64,
}

/// The known future for `planned`: the access sequence and the position reached.
#[derive(Clone, Debug, Default)]
pub struct Future {
    seq: Vec<String>,
    pos: usize,
    at: HashMap<String, Vec<usize>>,
}

impl Future {
    pub fn new(seq: Vec<String>) -> Future {
        let mut at: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in seq.iter().enumerate() {
            at.entry(n.clone()).or_default().push(i);
        }
        Future { seq, pos: 0, at }
    }
    /// Record an access: advance past it when it is the next expected one (a miss-predicted
    /// access leaves the position where it is).
    pub fn on_access(&mut self, name: &str) {
        if let Some(i) = self.at.get(name).and_then(|v| v.iter().find(|&&i| i >= self.pos)) {
            // Accept accesses slightly ahead of the expected position (prefetch order may differ).
            if *i < self.pos + 64 {
                self.pos = i + 1;
            }
        }
    }
    /// Index of the next use of `name` at or after the current position (`usize::MAX`: never).
    pub fn next_use(&self, name: &str) -> usize {
        self.at
            .get(name)
            .and_then(|v| {
                let k = v.partition_point(|&i| i < self.pos);
                v.get(k).copied()
            })
            .unwrap_or(usize::MAX)
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn len(&self) -> usize {
        self.seq.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

/// Pick the victim among `cands` (name, usage); `None` if there is none.
pub fn choose<'a>(
    policy: Policy,
    future: &Future,
    cands: impl Iterator<Item = (&'a str, Usage)>,
) -> Option<&'a str> {
    match policy {
        Policy::Lru => cands.min_by_key(|(_, u)| u.last_access).map(|c| c.0),
        Policy::Lfu => cands.min_by_key(|(_, u)| (u.count, u.last_access)).map(|c| c.0),
        Policy::Fifo => cands.min_by_key(|(_, u)| u.entered).map(|c| c.0),
        Policy::Planned => cands
            .max_by_key(|(n, u)| (future.next_use(n), std::cmp::Reverse(u.last_access)))
            .map(|c| c.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn u(l: u64, c: u64, e: u64) -> Usage {
        Usage { last_access: l, count: c, entered: e }
    }
    #[test]
    fn victims() {
        let f = Future::new(["a", "b", "c", "a"].iter().map(|s| s.to_string()).collect());
        let c = || vec![("a", u(5, 1, 1)), ("b", u(3, 9, 2)), ("c", u(4, 2, 0))].into_iter();
        assert_eq!(choose(Policy::Lru, &f, c()), Some("b"));
        assert_eq!(choose(Policy::Lfu, &f, c()), Some("a"));
        assert_eq!(choose(Policy::Fifo, &f, c()), Some("c"));
        assert_eq!(choose(Policy::Planned, &f, c()), Some("c"));
        let mut f2 = f.clone();
        f2.on_access("a");
        f2.on_access("b");
        assert_eq!(f2.next_use("a"), 3);
        assert_eq!(f2.next_use("b"), usize::MAX);
        assert!(Policy::parse("nope").is_err());
    }
}
