//! Binding of the fused one-token decode step (`tierflow_core::store::decode`), used by
//! `python/tierflow/models/llama.py` when every matmul weight is in the decode layout and the KV
//! cache is paged in a store.

use crate::errors::err;
use crate::kernels::{gated_act, pick_isa};
use crate::store::PyStore;
use crate::utils::run;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadwriteArray1};
use pyo3::prelude::*;
use tierflow_core::store::decode::{llama_decode_step, DecodeLayer, DecodeShape};

/// One layer from Python: the seven weight names (q, k, v, o, gate, up, down), the two norm
/// weights, the q/k/v biases or None, the names of the full KV pages, the partial page.
type LayerArg<'py> = (
    Vec<String>,
    PyReadonlyArray1<'py, f32>,
    PyReadonlyArray1<'py, f32>,
    Option<(PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f32>)>,
    Vec<String>,
    Bound<'py, PyArray1<f32>>,
);

fn slice<'a>(a: &'a PyReadonlyArray1<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    a.as_slice().map_err(|_| err("InvalidArgumentError", format!("{what} must be C-contiguous")))
}

/// One token through every layer and the head of a Llama-family decoder: `x` `(hidden)` in
/// (the embedding) and out (the final residual stream), `logits` `(vocab)` out. `sizes` is
/// `(heads, kv_heads, head_dim, page, pos)`.
#[pyfunction]
#[pyo3(signature = (weights, kv, x, layers, final_norm, head, logits, sizes, eps, theta, act="swiglu", promote=false, prefetch=true, isa=None))]
#[allow(clippy::too_many_arguments)]
fn _llama_decode_step<'py>(
    py: Python<'py>,
    weights: PyRef<'py, PyStore>,
    kv: PyRef<'py, PyStore>,
    mut x: PyReadwriteArray1<'py, f32>,
    mut layers: Vec<LayerArg<'py>>,
    final_norm: PyReadonlyArray1<'py, f32>,
    head: String,
    mut logits: PyReadwriteArray1<'py, f32>,
    sizes: (usize, usize, usize, usize, usize),
    eps: f32,
    theta: f64,
    act: &str,
    promote: bool,
    prefetch: bool,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let act = gated_act(act)?;
    let (heads, kv_heads, head_dim, page, pos) = sizes;
    let sh = DecodeShape {
        heads,
        kv_heads,
        head_dim,
        page,
        pos,
        eps,
        theta,
        act,
        promote_kv: promote,
        prefetch,
    };
    // The tails are borrowed for writing one by one: the same array twice is an error here,
    // not a TypeError from the argument conversion.
    let mut tails: Vec<PyReadwriteArray1<'py, f32>> = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        tails.push(l.5.try_readwrite().map_err(|_| {
            err("InvalidArgumentError", format!("layer {i}'s KV tail is an array already in use"))
        })?);
    }
    let mut ls = Vec::with_capacity(layers.len());
    for (i, ((names, n_in, n_post, bias, pages, _), tail)) in
        layers.iter_mut().zip(tails.iter_mut()).enumerate()
    {
        let w: [&str; 7] = std::array::from_fn(|j| names.get(j).map_or("", String::as_str));
        if names.len() != 7 {
            return Err(err(
                "ShapeError",
                format!("layer {i}: {} weight names, not 7", names.len()),
            ));
        }
        let bias = match bias {
            Some((q, k, v)) => {
                [Some(slice(q, "bias")?), Some(slice(k, "bias")?), Some(slice(v, "bias")?)]
            }
            None => [None, None, None],
        };
        ls.push(DecodeLayer {
            weights: w,
            norms: [slice(n_in, "norm")?, slice(n_post, "norm")?],
            bias,
            pages: pages.iter().map(String::as_str).collect(),
            tail: tail
                .as_slice_mut()
                .map_err(|_| err("InvalidArgumentError", "the KV tail must be C-contiguous"))?,
        });
    }
    let xs = x.as_slice_mut().map_err(|_| err("InvalidArgumentError", "x must be C-contiguous"))?;
    let fns = slice(&final_norm, "norm")?;
    let ys = logits
        .as_slice_mut()
        .map_err(|_| err("InvalidArgumentError", "logits must be C-contiguous"))?;
    let (ws, kvs) = (&weights.inner, &kv.inner);
    run(py, move || llama_decode_step(isa, ws, kvs, xs, &mut ls, fns, &head, ys, sh))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_llama_decode_step, m)?)?;
    Ok(())
}
