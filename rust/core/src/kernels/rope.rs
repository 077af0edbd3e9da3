//! Rotary position embedding over the last axis of `(N, S, D)` (`D` even): the pair `(a, b)` of
//! frequency `i` at position `p` becomes `(a cos t - b sin t, b cos t + a sin t)` with
//! `t = p * base^(-2i / D)`. Pairs are `(i, i + D/2)` in the Llama / GPT-NeoX half-split layout
//! and `(2i, 2i + 1)` in the interleaved (GPT-J, original RoFormer) layout. Angles are computed
//! in float64 once per call (a `(S, D/2)` table), so long positions keep their accuracy.

use super::rows::{for_rows, RowOp};
use super::vmath::fma;
use crate::cpu::Isa;

struct Rope<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    s: usize,
    interleaved: bool,
}

impl RowOp for Rope<'_> {
    #[inline(always)]
    fn row<const F: bool>(&self, i: usize, x: &[f32], y: &mut [f32]) {
        let h = x.len() / 2;
        let p = i % self.s;
        let (c, s) = (&self.cos[p * h..(p + 1) * h], &self.sin[p * h..(p + 1) * h]);
        if self.interleaved {
            for j in 0..h {
                let (a, b) = (x[2 * j], x[2 * j + 1]);
                y[2 * j] = fma::<F>(a, c[j], -b * s[j]);
                y[2 * j + 1] = fma::<F>(b, c[j], a * s[j]);
            }
        } else {
            let (xa, xb) = x.split_at(h);
            let (ya, yb) = y.split_at_mut(h);
            for j in 0..h {
                ya[j] = fma::<F>(xa[j], c[j], -xb[j] * s[j]);
                yb[j] = fma::<F>(xb[j], c[j], xa[j] * s[j]);
            }
        }
    }
}

/// Rotate `x` (`N x S x D` rows) into `y`; `pos` gives the position of each of the `S` rows.
pub fn rope(
    isa: Isa,
    x: &[f32],
    s: usize,
    d: usize,
    pos: &[f64],
    base: f64,
    interleaved: bool,
    y: &mut [f32],
) {
    let h = d / 2;
    let mut cos = vec![0f32; s * h];
    let mut sin = vec![0f32; s * h];
    for (p, &ps) in pos.iter().enumerate().take(s) {
        for j in 0..h {
            let t = ps * base.powf(-2.0 * j as f64 / d as f64);
            cos[p * h + j] = t.cos() as f32;
            sin[p * h + j] = t.sin() as f32;
        }
    }
    for_rows(isa, &Rope { cos: &cos, sin: &sin, s, interleaved }, x, y, d)
}
