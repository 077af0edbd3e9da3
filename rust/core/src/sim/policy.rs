//! Scheduling policies of the simulator, also driven by the Python serving code.
//!
//! - [`Eviction`]: re-exported from [`crate::eviction`] (the one implementation, shared with the
//!   store);
//! - [`Placement`]: which experts are pinned in which device instance before traffic starts.
//! - [`Batching`]: how queued requests are grouped.

use crate::error::{CoreError, Result};
pub use crate::eviction::{Eviction, EvictionKind};

/// Placement of experts before traffic starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// Nothing pinned: the fast tier is a pure cache.
    None,
    /// Every instance pins the most popular experts, up to `fraction` of its expert capacity.
    Static { fraction: f64 },
    /// Experts in popularity order go to the instance with the least pinned popularity that has
    /// room (capacity-aware packing across instances); each expert on at most one instance.
    Pack { fraction: f64 },
    /// Like `Pack`, but an expert with popularity share `p` gets `ceil(p * instances * factor)`
    /// replicas (at least one) on distinct instances.
    Replicate { fraction: f64, factor: f64 },
}

impl Placement {
    pub fn parse(s: &str, fraction: f64) -> Result<Self> {
        if !(fraction.is_finite() && (0.0..=1.0).contains(&fraction)) {
            return Err(CoreError::Value(format!(
                "pinned_fraction must be in [0, 1], got {fraction}"
            )));
        }
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" | "" => Self::None,
            "static" => Self::Static { fraction },
            "pack" => Self::Pack { fraction },
            "replicate" => Self::Replicate { fraction, factor: 1.0 },
            _ => {
                return Err(CoreError::Value(format!(
                    "placement: unknown policy {s:?} (expected none, static, pack or replicate)"
                )))
            }
        })
    }
}

/// Experts pinned per instance. `sizes[e]` bytes, `popularity[e]` >= 0 (any scale), `capacity`
/// bytes per instance available to experts.
pub fn place(
    p: Placement,
    sizes: &[u64],
    popularity: &[f64],
    capacity: u64,
    instances: usize,
) -> Vec<Vec<u32>> {
    let mut order: Vec<u32> = (0..sizes.len() as u32).collect();
    order.sort_by(|&a, &b| {
        popularity[b as usize].total_cmp(&popularity[a as usize]).then(a.cmp(&b))
    });
    let total: f64 = popularity.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let mut pinned = vec![Vec::new(); instances];
    let (fraction, replicas) = match p {
        Placement::None => return pinned,
        Placement::Static { fraction } => {
            let budget = (capacity as f64 * fraction) as u64;
            let mut used = 0u64;
            for &e in &order {
                if used + sizes[e as usize] <= budget {
                    used += sizes[e as usize];
                    for inst in &mut pinned {
                        inst.push(e);
                    }
                }
            }
            return pinned;
        }
        Placement::Pack { fraction } => (fraction, None),
        Placement::Replicate { fraction, factor } => (fraction, Some(factor)),
    };
    let budget = (capacity as f64 * fraction) as u64;
    let mut used = vec![0u64; instances];
    let mut load = vec![0f64; instances];
    for &e in &order {
        let s = sizes[e as usize];
        let share = popularity[e as usize] / total;
        let want = match replicas {
            None => 1,
            Some(f) => ((share * instances as f64 * f).ceil() as usize).clamp(1, instances),
        };
        let mut cand: Vec<usize> = (0..instances).filter(|&k| used[k] + s <= budget).collect();
        cand.sort_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)));
        let n = cand.len().min(want);
        for &k in &cand[..n] {
            used[k] += s;
            load[k] += share / n as f64;
            pinned[k].push(e);
        }
    }
    pinned
}

/// How queued requests are grouped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Batching {
    /// The paper's: take up to `size` queued requests, run the router once on them, then run
    /// each (prompt, expert) pair in sequence.
    Paper { size: u32 },
    /// Expert affinity: serve the expert with the most queued requests among resident experts
    /// (else the oldest request's expert), up to `size` requests of that expert run together
    /// in one batched pass; a request older than `max_wait` seconds is served first.
    Affinity { size: u32, max_wait: f64 },
}

impl Batching {
    pub fn parse(s: &str, size: u32, max_wait: f64) -> Result<Self> {
        if size == 0 {
            return Err(CoreError::Value("batch_size must be at least 1".into()));
        }
        Ok(match s.to_ascii_lowercase().as_str() {
            "paper" | "fifo" => Self::Paper { size },
            "affinity" => {
                if !(max_wait.is_finite() && max_wait >= 0.0) {
                    return Err(CoreError::Value(format!(
                        "max_wait must be >= 0 seconds, got {max_wait}"
                    )));
                }
                Self::Affinity { size, max_wait }
            }
            _ => {
                return Err(CoreError::Value(format!(
                    "batching: unknown policy {s:?} (expected paper, fifo or affinity)"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_respects_capacity() {
        let sizes = vec![10u64; 10];
        let pop: Vec<f64> = (0..10).map(|i| 10.0 - i as f64).collect();
        let p = place(Placement::Pack { fraction: 1.0 }, &sizes, &pop, 30, 2);
        assert_eq!(p[0].len() + p[1].len(), 6);
        let r = place(Placement::Replicate { fraction: 1.0, factor: 4.0 }, &sizes, &pop, 30, 2);
        assert!(r[0].contains(&0) && r[1].contains(&0));
        let s = place(Placement::Static { fraction: 0.5 }, &sizes, &pop, 40, 2);
        assert_eq!(s[0], vec![0, 1]);
    }
}
