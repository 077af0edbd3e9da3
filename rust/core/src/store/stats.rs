//! Store statistics: per tier occupancy, per pair of tiers the traffic and the time it took,
//! hits, misses, prefetch hits and the time callers stalled.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Link {
    pub bytes: u64,
    pub tensors: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// `get` served from a memory tier.
    pub hits: u64,
    /// `get` that had to read from a file tier.
    pub misses: u64,
    /// Hits on tensors brought up by `prefetch` and not accessed since.
    pub prefetch_hits: u64,
    /// Time callers waited for a tensor that was being moved (seconds), and how often.
    pub stall_seconds: f64,
    pub stalls: u64,
    /// Tensors pushed one tier down to make room.
    pub evictions: u64,
    /// Bytes written to and read from files.
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Time spent writing tensors through to their files (seconds).
    pub write_seconds: f64,
    /// Bytes streamed to kernels without moving the tensor, per source tier.
    pub streamed: BTreeMap<String, Link>,
    /// Traffic between tiers, keyed "src->dst".
    pub links: BTreeMap<String, Link>,
}

impl Counters {
    pub fn link(&mut self, src: &str, dst: &str, bytes: u64, secs: f64) {
        let l = self.links.entry(format!("{src}->{dst}")).or_default();
        l.bytes += bytes;
        l.tensors += 1;
        l.seconds += secs;
    }
}
