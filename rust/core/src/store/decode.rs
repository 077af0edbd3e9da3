//! One decode step of a Llama-family decoder (Llama 2/3, Mistral, Qwen2) in one call: every
//! layer and the head for one new token, over weights held in the store and a paged KV cache
//! whose full pages are store tensors. A weight is a `(K, N)` operand in the VNNI decode layout
//! (`block:q8_0x16` / `block:q4_0x16`, `kernels::qpack`), in a block format (`block:q8_0`,
//! `block:q4_0`, ...: `N` rows of `K`), or a float32 / float16 / bfloat16 tensor of shape
//! `(N, K)` (a checkpoint's `(out, in)` layout, rows of `K`).
//!
//! Per layer `l`, with `x` the residual stream `(hidden)` and `pos` the token's position:
//!
//! ```text
//! h = rms_norm(x, n_in)
//! q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)        one team job (matmul_packed_group)
//! q, k = rope(q, pos), rope(k, pos)                   half-split, base theta
//! tail[0, :, slot], tail[1, :, slot] = k, v           the KV cache's partial page
//! a = softmax(q K^T / sqrt(D)) V                      paged decode over pages + tail
//! x = x + a Wo
//! x = x + mlp_packed(rms_norm(x, n_post))             down(act(h Wg) * (h Wu))
//! ```
//!
//! then `logits = rms_norm(x, n_final) W_head`. Each line is the kernel the Python forward pass
//! calls for it, on the same operands in the same order, so the logits are bit for bit those of
//! the per-layer path; what this removes is the return to Python between the ~15 kernels of a
//! layer (per token, about a quarter of a small quantised model's step).
//!
//! Weights are fetched by name with [`Store::get`] (promoted from a slower tier if evicted,
//! counted in the statistics as any read), and while a layer runs the next one's are
//! prefetched (a no-op when they are resident), as the Python forward pass does per layer; the
//! cache's bookkeeping (lengths, putting a page that fills) stays with the caller.
//!
//! Which kernel each product takes is the one the Python path picks for the same operands:
//! q/k/v and gate/up as one group (`qpack::matmul_packed_group` when all are in the decode
//! layout, else `group::matmul_group` when all are rows, else one by one), the others through
//! `qpack::matmul_packed` or `gemm::matmul`. Each of those gives every output bit for bit what
//! that weight alone gives, so the result never depends on the grouping.

use super::paged_kv::{paged_decode_store, PageRef};
use super::{AlignedBuf, Store};
use crate::cpu::Isa;
use crate::kernels::act::{gated, Act};
use crate::kernels::gemm::{matmul, Weight};
use crate::kernels::group::{matmul_group, GroupOut};
use crate::kernels::norm::rms_norm;
use crate::kernels::paged::PageList;
use crate::kernels::qpack::{matmul_packed, matmul_packed_group, mlp_packed, PackedOut, PackedW};
use crate::kernels::quant::{Format, QWeight};
use crate::kernels::rope::rope;
use crate::{CoreError, Result};
use std::sync::Arc;

/// One layer of [`llama_decode_step`].
pub struct DecodeLayer<'a> {
    /// Store names of `Wq, Wk, Wv, Wo, W_gate, W_up, W_down` (see the module docs for the
    /// forms a weight may take).
    pub weights: [&'a str; 7],
    /// RMSNorm weights before attention and before the MLP, `(hidden)` each.
    pub norms: [&'a [f32]; 2],
    /// Biases of q, k, v (Qwen2), or `None`.
    pub bias: [Option<&'a [f32]>; 3],
    /// Store names of the cache's full pages, in order, each `(2, Hkv, P, D)` float32.
    pub pages: Vec<&'a str>,
    /// The partial page `(2, Hkv, P, D)`: this step writes slot `pos % P`.
    pub tail: &'a mut [f32],
}

/// Sizes and constants of [`llama_decode_step`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions per KV page.
    pub page: usize,
    /// The token's position (cached positions before it: `pos`).
    pub pos: usize,
    pub eps: f32,
    pub theta: f64,
    pub act: Act,
    /// Whether KV pages read from a file tier move up (`PagedKVCache`'s `promote`).
    pub promote_kv: bool,
    /// Prefetch the next layer's weights into the default tier while a layer runs.
    pub prefetch: bool,
}

/// How a weight is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// The VNNI decode layout.
    Packed,
    /// `N` rows of `K` in a block or float format.
    Rows,
}

/// A weight's form and `(k, n)`, checked before the step.
#[derive(Clone, Copy, Debug)]
struct Spec {
    kind: Kind,
    fmt: Format,
    k: usize,
    n: usize,
}

/// A weight read for the step.
struct Fetched {
    s: Spec,
    buf: Arc<AlignedBuf>,
}

impl Fetched {
    fn bytes(&self) -> &[u8] {
        self.buf.as_slice()
    }
    fn packed(&self) -> PackedW<'_> {
        (self.s.fmt, self.s.k, self.s.n, self.bytes())
    }
    fn rows(&self) -> Result<QWeight<'_>> {
        QWeight::with_len_check(self.s.fmt, self.s.k, self.s.n, self.bytes())
    }
}

/// The form and `(k, n)` of weight `name` from its dtype and shape, checked against the step's
/// sizes (`n` `None`: any).
fn check(store: &Store, name: &str, k: usize, n: Option<usize>) -> Result<Spec> {
    let meta = store.meta(name)?;
    let bad_dtype = || {
        CoreError::DType(format!(
            "{name:?} is {}: the decode step takes weights in the decode layout (block:q8_0x16, \
             block:q4_0x16), a block format, or float32 / float16 / bfloat16 (N, K) rows",
            meta.dtype
        ))
    };
    let (a, b) = match meta.shape[..] {
        [a, b] => (a, b),
        _ => {
            return Err(CoreError::Shape(format!(
                "{name:?} has shape {:?}, not a matrix",
                meta.shape
            )))
        }
    };
    let spec = if let Some(f) = meta.dtype.strip_prefix("block:") {
        match f.strip_suffix("x16") {
            Some(base @ ("q8_0" | "q4_0")) => {
                Spec { kind: Kind::Packed, fmt: Format::parse(base)?, k: a, n: b }
            }
            Some(_) => return Err(bad_dtype()),
            None => Spec {
                kind: Kind::Rows,
                fmt: Format::parse(f).map_err(|_| bad_dtype())?,
                k: a,
                n: b,
            },
        }
    } else {
        let fmt = match meta.dtype.as_str() {
            "float32" => Format::F32,
            "float16" => Format::F16,
            "bfloat16" => Format::Bf16,
            _ => return Err(bad_dtype()),
        };
        Spec { kind: Kind::Rows, fmt, k: b, n: a }
    };
    if spec.k != k || n.is_some_and(|n| n != spec.n) {
        let want = n.map_or_else(|| format!("K = {k}"), |n| format!("(K, N) = ({k}, {n})"));
        return Err(CoreError::Shape(format!(
            "{name:?} is a ({}, {}) operand, the step needs {want}",
            spec.k, spec.n
        )));
    }
    Ok(spec)
}

/// Weight `name` as checked by [`check`], read now (a view of a memory tier's buffer, or read
/// back and promoted from a file tier).
fn fetch(store: &Store, name: &str, s: Spec) -> Result<Fetched> {
    let (meta, buf) = store.get(name, true)?;
    let (a, b) = if s.kind == Kind::Rows && !meta.dtype.starts_with("block:") {
        (s.n, s.k)
    } else {
        (s.k, s.n)
    };
    if meta.shape != [a, b] {
        return Err(CoreError::Value(format!("{name:?} changed during the decode step")));
    }
    Ok(Fetched { s, buf })
}

/// `c = x w (+ bias)` for one activation row.
fn mm(isa: Isa, x: &[f32], w: &Fetched, bias: Option<&[f32]>, c: &mut [f32]) -> Result<()> {
    let Spec { kind, fmt, k, n } = w.s;
    match kind {
        Kind::Packed => matmul_packed(isa, x, 1, fmt, k, n, w.bytes(), bias, c, n),
        Kind::Rows => matmul(isa, x, 1, Weight::Rows(w.rows()?), bias, c, n),
    }
}

/// `c_j = x w_j (+ bias_j)` for weights sharing `x`: one job when all have the same form.
fn group(isa: Isa, x: &[f32], parts: &mut [(&Fetched, Option<&[f32]>, &mut [f32])]) -> Result<()> {
    if parts.iter().all(|p| p.0.s.kind == Kind::Packed) {
        let mut outs: Vec<PackedOut<'_>> = parts
            .iter_mut()
            .map(|(w, bias, c)| PackedOut {
                fmt: w.s.fmt,
                k: w.s.k,
                n: w.s.n,
                packed: w.bytes(),
                bias: *bias,
                ldc: w.s.n,
                c,
            })
            .collect();
        return matmul_packed_group(isa, x, 1, &mut outs);
    }
    if parts.iter().all(|p| p.0.s.kind == Kind::Rows) {
        let mut outs = Vec::with_capacity(parts.len());
        for (w, bias, c) in parts.iter_mut() {
            outs.push(GroupOut { w: w.rows()?, bias: *bias, ldc: w.s.n, c });
        }
        return matmul_group(isa, x, 1, &mut outs);
    }
    for (w, bias, c) in parts.iter_mut() {
        mm(isa, x, w, *bias, c)?;
    }
    Ok(())
}

/// `out = down(act(x gate) * (x up))`, as `mlp_packed` / the Python `mlp` compute it.
fn mlp(isa: Isa, x: &[f32], w: [&Fetched; 3], act: Act, out: &mut [f32]) -> Result<()> {
    let [g, u, d] = w;
    if w.iter().all(|f| f.s.kind == Kind::Packed) {
        return mlp_packed(isa, x, 1, g.packed(), u.packed(), d.packed(), act, out);
    }
    let inter = g.s.n;
    let (mut gv, mut uv, mut hv) = (vec![0f32; inter], vec![0f32; inter], vec![0f32; inter]);
    group(isa, x, &mut [(g, None, &mut gv), (u, None, &mut uv)])?;
    if inter > 0 {
        gated(isa, act, &gv, &uv, inter, &mut hv);
    }
    mm(isa, &hv, d, None, out)
}

/// `dst += b` element-wise (numpy's float32 `x + y`).
fn add(dst: &mut [f32], b: &[f32]) {
    for (d, &y) in dst.iter_mut().zip(b) {
        *d += y;
    }
}

/// Ask the store to bring `names` into its default tier in the background (nothing happens
/// when they are there). A name it cannot find is reported by the fetch that follows.
fn prefetch(store: &Store, names: &[&str]) {
    let _ = store.prefetch(names.iter().map(|n| (*n).to_owned()).collect(), store.default_tier());
}

/// One token through every layer and the head (see the module docs): `x` `(hidden)` is the
/// token's embedding on entry and the final residual stream on return, `logits` `(vocab)` the
/// head's output. Every weight's form and shape and every buffer is checked before the first
/// layer runs, so a bad operand leaves `x`, the tails and `logits` untouched; an error met
/// later (a weight that cannot be read back from a file tier) leaves them partly written,
/// which the caller's unchanged cache lengths ignore.
#[allow(clippy::too_many_arguments)]
pub fn llama_decode_step(
    isa: Isa,
    weights: &Store,
    kv: &Store,
    x: &mut [f32],
    layers: &mut [DecodeLayer<'_>],
    final_norm: &[f32],
    head: &str,
    logits: &mut [f32],
    sh: DecodeShape,
) -> Result<()> {
    let hid = x.len();
    let DecodeShape { heads: nh, kv_heads: nkv, head_dim: d, page, pos, .. } = sh;
    if hid == 0 || nh == 0 || nkv == 0 || d == 0 || d % 2 != 0 || nh % nkv != 0 || page == 0 {
        return Err(CoreError::Shape(format!("bad decode step sizes: hidden {hid}, {sh:?}")));
    }
    let qd = nh.checked_mul(d).ok_or_else(|| CoreError::Shape("heads overflow".into()))?;
    let kd = nkv * d;
    let tail_len = kd
        .checked_mul(2 * page)
        .ok_or_else(|| CoreError::Shape("the KV page size overflows".into()))?;
    let slot = pos % page;
    if final_norm.len() != hid {
        return Err(CoreError::Shape(format!("the final norm weight is not ({hid})")));
    }
    for (l, layer) in layers.iter().enumerate() {
        if layer.norms.iter().any(|n| n.len() != hid) {
            return Err(CoreError::Shape(format!("layer {l}: norm weights are not ({hid})")));
        }
        if layer.tail.len() != tail_len {
            return Err(CoreError::Shape(format!(
                "layer {l}: the KV tail has {} floats, a (2, {nkv}, {page}, {d}) page has {tail_len}",
                layer.tail.len()
            )));
        }
        if layer.pages.len() != pos / page {
            return Err(CoreError::Shape(format!(
                "layer {l}: {} full KV pages for position {pos} with pages of {page}",
                layer.pages.len()
            )));
        }
        for (b, want) in layer.bias.iter().zip([qd, kd, kd]) {
            if b.is_some_and(|b| b.len() != want) {
                return Err(CoreError::Shape(format!("layer {l}: a q/k/v bias is not ({want})")));
            }
        }
    }
    // Every weight's form and shape, before anything is written.
    let mut specs = Vec::with_capacity(layers.len());
    for layer in layers.iter() {
        let [wq, wk, wv, wo, wg, wu, wd] = layer.weights;
        let g = check(weights, wg, hid, None)?;
        let inter = g.n;
        specs.push([
            check(weights, wq, hid, Some(qd))?,
            check(weights, wk, hid, Some(kd))?,
            check(weights, wv, hid, Some(kd))?,
            check(weights, wo, qd, Some(hid))?,
            g,
            check(weights, wu, hid, Some(inter))?,
            check(weights, wd, inter, Some(hid))?,
        ]);
    }
    let head_spec = check(weights, head, hid, Some(logits.len()))?;
    let scale = (1.0f64 / (d as f64).sqrt()) as f32;
    let posf = [pos as f64];
    let (mut h, mut y) = (vec![0f32; hid], vec![0f32; hid]);
    let (mut yq, mut yk, mut yv) = (vec![0f32; qd], vec![0f32; kd], vec![0f32; kd]);
    let (mut q, mut k, mut a) = (vec![0f32; qd], vec![0f32; kd], vec![0f32; qd]);
    let n_layers = layers.len();
    for l in 0..n_layers {
        if sh.prefetch {
            match layers.get(l + 1) {
                Some(next) => prefetch(weights, &next.weights),
                None => prefetch(weights, &[head]),
            }
        }
        let layer = &mut layers[l];
        let f: Vec<Fetched> = layer
            .weights
            .iter()
            .zip(&specs[l])
            .map(|(n, &s)| fetch(weights, n, s))
            .collect::<Result<_>>()?;
        let [fq, fk, fv, fo, fg, fu, fd] = &f[..] else { unreachable!("seven weights") };

        rms_norm(isa, x, hid, Some(layer.norms[0]), sh.eps, &mut h);
        group(
            isa,
            &h,
            &mut [
                (fq, layer.bias[0], &mut yq),
                (fk, layer.bias[1], &mut yk),
                (fv, layer.bias[2], &mut yv),
            ],
        )?;
        rope(isa, &yq, 1, d, &posf, sh.theta, false, &mut q);
        rope(isa, &yk, 1, d, &posf, sh.theta, false, &mut k);
        // the new key and value into their slot of the tail (2, Hkv, P, D)
        for g in 0..nkv {
            let at = (g * page + slot) * d;
            layer.tail[at..at + d].copy_from_slice(&k[g * d..(g + 1) * d]);
            let at = kd * page + at;
            layer.tail[at..at + d].copy_from_slice(&yv[g * d..(g + 1) * d]);
        }
        let mut refs: Vec<PageRef<'_>> = layer.pages.iter().map(|n| PageRef::Stored(n)).collect();
        refs.push(PageRef::Slice(layer.tail));
        let counts = [refs.len()];
        let p = PageList { b: 1, h: nh, hkv: nkv, d, page };
        paged_decode_store(
            isa,
            Some(kv),
            &q,
            &refs,
            &counts,
            p,
            &[pos + 1],
            scale,
            sh.promote_kv,
            &mut a,
        )?;
        mm(isa, &a, fo, None, &mut y)?;
        add(x, &y);
        rms_norm(isa, x, hid, Some(layer.norms[1]), sh.eps, &mut h);
        mlp(isa, &h, [fg, fu, fd], sh.act, &mut y)?;
        add(x, &y);
    }
    if sh.prefetch {
        if let Some(first) = layers.first() {
            prefetch(weights, &first.weights); // the next step's first layer
        }
    }
    let fh = fetch(weights, head, head_spec)?;
    rms_norm(isa, x, hid, Some(final_norm), sh.eps, &mut h);
    mm(isa, &h, &fh, None, logits)
}
