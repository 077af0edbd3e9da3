//! Devices: ordered memory tiers plus the constants of the latency model (see [`super::cost`]).
//!
//! Tier `i` is faster than tier `i + 1`; `link_bandwidth[i]` is the copy bandwidth between tier
//! `i` and tier `i + 1` (bytes/s) and `latency[i]` its fixed cost per copy (s). Experts execute
//! from `exec_tier`, reading it at `read_bandwidth` (bytes/s) with efficiency `bw_efficiency`.

use crate::error::{CoreError, Result};

/// One memory tier.
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub name: String,
    /// Bytes.
    pub capacity: u64,
    /// Bytes/s to the next (slower) tier; ignored for the last tier.
    pub link_bandwidth: f64,
    /// Seconds of fixed cost per copy over the link to the next tier.
    pub latency: f64,
}

/// A device (or a node of several chips in tensor parallel) as the simulator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSpec {
    pub name: String,
    pub tiers: Vec<Tier>,
    /// The tier experts execute from (weights must be resident there).
    pub exec_tier: usize,
    /// Bytes/s at which compute streams weights from the exec tier (all chips together).
    pub read_bandwidth: f64,
    /// Achieved fraction of `read_bandwidth` (0, 1].
    pub bw_efficiency: f64,
    /// Peak FLOP/s of the dtype the experts use (all chips together).
    pub peak_flops: f64,
    /// Achieved fraction of `peak_flops` in compute-bound passes (0, 1].
    pub compute_efficiency: f64,
    /// Seconds per kernel launch.
    pub launch_overhead: f64,
    /// Kernels launched per transformer layer per forward pass (fusion lowers it).
    pub kernels_per_layer: f64,
    /// Seconds per tensor-parallel collective (two per layer when `tp > 1`).
    pub collective_latency: f64,
    /// Chips in tensor parallel.
    pub tp: u32,
    /// Bytes of the exec tier kept for the router, KV cache and activations.
    pub reserved: u64,
}

impl DeviceSpec {
    /// Check every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, why: String| {
            Err(CoreError::Value(format!("device {:?}: {f} {why}", self.name)))
        };
        if self.tiers.is_empty() {
            return bad("tiers", "must hold at least one tier".into());
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if t.capacity == 0 {
                return bad(
                    &format!("tiers[{i}].capacity ({})", t.name),
                    "must be positive, got 0".into(),
                );
            }
            if i + 1 < self.tiers.len() && !(t.link_bandwidth.is_finite() && t.link_bandwidth > 0.0)
            {
                return bad(
                    &format!("tiers[{i}].bandwidth ({})", t.name),
                    format!("must be a positive number of bytes/s, got {}", t.link_bandwidth),
                );
            }
            if !(t.latency.is_finite() && t.latency >= 0.0) {
                return bad(
                    &format!("tiers[{i}].latency ({})", t.name),
                    format!("must be >= 0, got {}", t.latency),
                );
            }
        }
        if self.exec_tier >= self.tiers.len() {
            return bad(
                "exec_tier",
                format!("{} is not a tier index (0..{})", self.exec_tier, self.tiers.len()),
            );
        }
        for (f, v) in [("read_bandwidth", self.read_bandwidth), ("peak_flops", self.peak_flops)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(f, format!("must be positive, got {v}"));
            }
        }
        for (f, v) in
            [("bw_efficiency", self.bw_efficiency), ("compute_efficiency", self.compute_efficiency)]
        {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return bad(f, format!("must be in (0, 1], got {v}"));
            }
        }
        for (f, v) in [
            ("launch_overhead", self.launch_overhead),
            ("kernels_per_layer", self.kernels_per_layer),
            ("collective_latency", self.collective_latency),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(f, format!("must be >= 0, got {v}"));
            }
        }
        if self.tp == 0 {
            return bad("tp", "must be at least 1".into());
        }
        let exec = &self.tiers[self.exec_tier];
        if self.reserved >= exec.capacity {
            return bad(
                "reserved",
                format!(
                    "({} bytes) leaves no room in tier {:?} ({} bytes)",
                    self.reserved, exec.name, exec.capacity
                ),
            );
        }
        Ok(())
    }

    /// Bytes of the exec tier available to experts.
    pub fn exec_capacity(&self) -> u64 {
        self.tiers[self.exec_tier].capacity - self.reserved
    }

    /// Seconds to copy `bytes` from tier `home` up to the exec tier: the links in between are
    /// pipelined, so time = sum of latencies + bytes / min(link bandwidth).
    pub fn copy_time(&self, home: usize, bytes: u64) -> f64 {
        if home <= self.exec_tier {
            return 0.0;
        }
        let mut lat = 0.0;
        let mut bw = f64::INFINITY;
        for l in self.exec_tier..home {
            lat += self.tiers[l].latency;
            bw = bw.min(self.tiers[l].link_bandwidth);
        }
        lat + bytes as f64 / bw
    }
}

#[cfg(test)]
pub(crate) fn test_device(exec_cap: u64, ddr_cap: u64) -> DeviceSpec {
    DeviceSpec {
        name: "test".into(),
        tiers: vec![
            Tier { name: "hbm".into(), capacity: exec_cap, link_bandwidth: 1e9, latency: 0.0 },
            Tier { name: "ddr".into(), capacity: ddr_cap, link_bandwidth: 1e9, latency: 0.0 },
        ],
        exec_tier: 0,
        read_bandwidth: 1e12,
        bw_efficiency: 1.0,
        peak_flops: 1e15,
        compute_efficiency: 1.0,
        launch_overhead: 0.0,
        kernels_per_layer: 0.0,
        collective_latency: 0.0,
        tp: 1,
        reserved: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_switch_times() {
        // docs/sources.md, "The CoE experiment": a 13.5 GB expert copies in 13.5 ms at 1 TB/s,
        // 0.42 s at 32 GB/s, 0.21 s at 64 GB/s.
        let mut d = test_device(100, 100);
        for (bw, want) in [(1e12, 13.5e-3), (32e9, 0.421875), (64e9, 0.2109375)] {
            d.tiers[0].link_bandwidth = bw;
            assert!((d.copy_time(1, 13_500_000_000) - want).abs() < 1e-9);
        }
    }

    #[test]
    fn validation_names_fields() {
        let mut d = test_device(100, 100);
        d.tiers[0].link_bandwidth = -1.0;
        assert!(d.validate().unwrap_err().to_string().contains("tiers[0].bandwidth"));
        let mut d = test_device(100, 100);
        d.tiers[1].capacity = 0;
        assert!(d.validate().unwrap_err().to_string().contains("tiers[1].capacity"));
        let mut d = test_device(100, 100);
        d.bw_efficiency = 1.5;
        assert!(d.validate().unwrap_err().to_string().contains("bw_efficiency"));
    }
}
