//! Element-wise activations and the row softmax:
//! - `silu(x) = x / (1 + e^{-x})`;
//! - `gelu(x) = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2` (exact), or the tanh form
//!   `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`;
//! - `softmax(x)_j = e^{x_j - max x} / sum_k e^{x_k - max x}` over the last axis;
//! - `swiglu(g, u) = silu(g) * u` (the SwiGLU MLP's fused epilogue, in place on `g`).

use super::rows::{for_rows, lanes_max, RowOp};
use super::vmath::{erf, exp, tanh};
use crate::cpu::Isa;

/// An activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    GeluTanh,
    GeluErf,
}

#[inline(always)]
pub fn act<const F: bool>(a: Act, x: f32) -> f32 {
    match a {
        Act::Silu => x / (1.0 + exp::<F>(-x)),
        Act::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            0.5 * x * (1.0 + tanh::<F>(C * (x + 0.044_715 * x * x * x)))
        }
        Act::GeluErf => 0.5 * x * (1.0 + erf::<F>(x * std::f32::consts::FRAC_1_SQRT_2)),
    }
}

struct Elem(Act);
impl RowOp for Elem {
    #[inline(always)]
    fn row<const F: bool>(&self, _i: usize, x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = act::<F>(self.0, v);
        }
    }
}

struct Softmax;
impl RowOp for Softmax {
    #[inline(always)]
    fn row<const F: bool>(&self, _i: usize, x: &[f32], y: &mut [f32]) {
        let m = lanes_max(x);
        let mut acc = [0f32; 16];
        for (j, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            *o = exp::<F>(v - m);
            acc[j % 16] += *o;
        }
        let inv = 1.0 / acc.iter().sum::<f32>();
        for o in y.iter_mut() {
            *o *= inv;
        }
    }
}

/// `y = act(x)` element-wise (`x` viewed as rows of `d`).
pub fn activation(isa: Isa, a: Act, x: &[f32], d: usize, y: &mut [f32]) {
    for_rows(isa, &Elem(a), x, y, d)
}

/// Row softmax of `x` (`rows x d`) into `y`.
pub fn softmax(isa: Isa, x: &[f32], d: usize, y: &mut [f32]) {
    for_rows(isa, &Softmax, x, y, d)
}

struct Glu<'a> {
    a: Act,
    up: &'a [f32],
    d: usize,
}
impl RowOp for Glu<'_> {
    #[inline(always)]
    fn row<const F: bool>(&self, i: usize, x: &[f32], y: &mut [f32]) {
        let u = &self.up[i * self.d..(i + 1) * self.d];
        for ((o, &g), &uv) in y.iter_mut().zip(x).zip(u) {
            *o = act::<F>(self.a, g) * uv;
        }
    }
}

/// `y = act(gate) * up` element-wise (rows of `d`).
pub fn gated(isa: Isa, a: Act, gate: &[f32], up: &[f32], d: usize, y: &mut [f32]) {
    for_rows(isa, &Glu { a, up, d }, gate, y, d)
}
