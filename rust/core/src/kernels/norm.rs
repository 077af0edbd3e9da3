//! Normalisations over the last axis of `(rows, D)`:
//! - `rms_norm`: `y = x / sqrt(mean(x^2) + eps) * w`;
//! - `layer_norm`: `y = (x - mean(x)) / sqrt(var(x) + eps) * w + b`, with the two-pass variance
//!   `var = mean((x - mean)^2)` (no cancellation).
//!
//! Sums run in float32 over 16 lanes (error about `D * eps32` relative, tested against float64).

use super::rows::{for_rows, lanes_sum, RowOp};
use super::vmath::fma;
use crate::cpu::Isa;

struct Rms<'a> {
    w: Option<&'a [f32]>,
    eps: f32,
}

impl RowOp for Rms<'_> {
    #[inline(always)]
    fn row<const F: bool>(&self, _i: usize, x: &[f32], y: &mut [f32]) {
        let ss = lanes_sum(x, |v| v * v);
        let inv = 1.0 / (ss / x.len() as f32 + self.eps).sqrt();
        match self.w {
            Some(w) => {
                for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
                    *o = v * inv * g;
                }
            }
            None => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = v * inv;
                }
            }
        }
    }
}

struct Ln<'a> {
    w: Option<&'a [f32]>,
    b: Option<&'a [f32]>,
    eps: f32,
}

impl RowOp for Ln<'_> {
    #[inline(always)]
    fn row<const F: bool>(&self, _i: usize, x: &[f32], y: &mut [f32]) {
        let n = x.len() as f32;
        let mean = lanes_sum(x, |v| v) / n;
        let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for (j, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            let g = self.w.map_or(1.0, |w| w[j]);
            let b = self.b.map_or(0.0, |b| b[j]);
            *o = fma::<F>((v - mean) * inv, g, b);
        }
    }
}

/// RMSNorm of each row of `x` (`rows x d`) into `y`.
pub fn rms_norm(isa: Isa, x: &[f32], d: usize, w: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    for_rows(isa, &Rms { w, eps }, x, y, d)
}

/// LayerNorm of each row of `x` (`rows x d`) into `y`.
pub fn layer_norm(
    isa: Isa,
    x: &[f32],
    d: usize,
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    for_rows(isa, &Ln { w, b, eps }, x, y, d)
}
