//! The latency model of one forward pass of a transformer node (router, expert, post-processor).
//!
//! A pass over `n` new tokens with `c` tokens of context on a device takes
//!
//! ```text
//! t(n, c) = max( 2 * params * n / (peak_flops * compute_efficiency),        (compute roofline)
//!                (weight_bytes + kv_bytes_per_token * c) / (read_bw * bw_efficiency) )  (memory roofline)
//!         + layers * (kernels_per_layer * launch_overhead + 2 * collective_latency [tp > 1])
//! ```
//!
//! Prefill is one pass with `n = prompt tokens` (compute bound for long prompts); each further
//! output token is one pass with `n = 1` (bound by reading all weights once: decode is memory
//! bound). The fixed per-layer term is what kernel fusion removes.

use super::device::DeviceSpec;

/// The size and shape of a node, independent of any device.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Bytes of weights.
    pub bytes: u64,
    /// Parameters (2 FLOPs per parameter per token).
    pub params: f64,
    /// Transformer layers (the unit of the per-layer overhead).
    pub layers: u32,
    /// KV-cache bytes read per context token per pass.
    pub kv_bytes_per_token: f64,
}

/// A node's pass-time coefficients on one device.
#[derive(Clone, Copy, Debug)]
pub struct NodeCost {
    /// Seconds of compute per token.
    pub flop_s: f64,
    /// Seconds to stream the weights once.
    pub weight_s: f64,
    /// Seconds per context token of KV reads.
    pub kv_s: f64,
    /// Fixed seconds per pass.
    pub fixed_s: f64,
}

impl NodeCost {
    pub fn new(node: &NodeSpec, d: &DeviceSpec) -> Self {
        let bw = d.read_bandwidth * d.bw_efficiency;
        let coll = if d.tp > 1 { 2.0 * d.collective_latency } else { 0.0 };
        NodeCost {
            flop_s: 2.0 * node.params / (d.peak_flops * d.compute_efficiency),
            weight_s: node.bytes as f64 / bw,
            kv_s: node.kv_bytes_per_token / bw,
            fixed_s: node.layers as f64 * (d.kernels_per_layer * d.launch_overhead + coll),
        }
    }

    /// One pass over `n` tokens with `ctx` tokens of context.
    #[inline]
    pub fn pass(&self, n: f64, ctx: f64) -> f64 {
        (self.flop_s * n).max(self.weight_s + self.kv_s * ctx) + self.fixed_s
    }

    /// Sum over decode steps `i = 1..steps` of `pass(b, ctx0 + b * i)`, in O(1):
    /// the memory term grows with `i`, the compute term does not, so the max switches from
    /// compute to memory at most once.
    pub fn decode(&self, b: f64, ctx0: f64, steps: u32) -> f64 {
        if steps == 0 {
            return 0.0;
        }
        let s = steps as f64;
        let comp = self.flop_s * b;
        let mem = |i: f64| self.weight_s + self.kv_s * (ctx0 + b * i);
        // first step index at which memory >= compute
        let cross = if mem(1.0) >= comp {
            1.0
        } else if self.kv_s * b <= 0.0 {
            s + 1.0
        } else {
            ((comp - self.weight_s - self.kv_s * ctx0) / (self.kv_s * b)).ceil().max(1.0)
        };
        let k = (cross - 1.0).clamp(0.0, s); // compute-bound steps
        let m = s - k; // memory-bound steps, i = k+1 ..= s
        let sum_i = (s * (s + 1.0) - k * (k + 1.0)) / 2.0;
        k * comp + m * (self.weight_s + self.kv_s * ctx0) + self.kv_s * b * sum_i + s * self.fixed_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::device::test_device;

    #[test]
    fn decode_closed_form_matches_loop() {
        let d = test_device(100, 100);
        for kv in [0.0, 1e5, 5e5] {
            let node =
                NodeSpec { bytes: 1_000_000_000, params: 5e8, layers: 32, kv_bytes_per_token: kv };
            let c = NodeCost::new(&node, &d);
            for b in [1.0, 8.0, 3000.0] {
                for steps in [0, 1, 7, 199] {
                    let want: f64 = (1..=steps).map(|i| c.pass(b, 100.0 + b * i as f64)).sum();
                    let got = c.decode(b, 100.0, steps);
                    assert!(
                        (got - want).abs() <= 1e-9 * want.max(1.0),
                        "{got} {want} b={b} kv={kv}"
                    );
                }
            }
        }
    }
}
