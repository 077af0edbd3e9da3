//! Bindings of `tierflow_core::kernels` (mirrors `python/tierflow/kernels.py`, which checks and
//! normalises arguments: the functions here take C-contiguous arrays of the right dtype).
//! Every call runs through `utils::run`, which releases the GIL.

use crate::errors::err;
use crate::utils::run;
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1,
    PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use tierflow_core::cpu::Isa;
use tierflow_core::kernels::axpy::ColW;
use tierflow_core::kernels::gemm::{matmul, Weight};
use tierflow_core::kernels::quant::{self, Format, QWeight};
use tierflow_core::CoreError;

/// The instruction-set path: `isa` when given (it must be supported here), else the detected one.
pub(crate) fn pick_isa(isa: Option<&str>) -> PyResult<Isa> {
    match isa {
        None => Ok(Isa::detect()),
        Some(s) => match Isa::parse(s) {
            Some(i) if i.supported() => Ok(i),
            Some(i) => Err(err(
                "InvalidArgumentError",
                format!("this CPU cannot run the {} path", i.name()),
            )),
            None => Err(err("InvalidArgumentError", format!("unknown instruction set {s:?}"))),
        },
    }
}

fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| err("InvalidArgumentError", format!("{what} must be C-contiguous")))
}
fn slice2<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| err("InvalidArgumentError", format!("{what} must be C-contiguous")))
}

/// The bias as a slice, when given.
fn opt_bias<'a>(b: &'a Option<PyReadonlyArray1<'_, f32>>) -> PyResult<Option<&'a [f32]>> {
    b.as_ref().map(|b| slice(b, "bias")).transpose()
}

/// The output's rows as one slice and its row stride.
fn out_rows<'a>(out: &'a mut PyReadwriteArray2<'_, f32>) -> PyResult<(&'a mut [f32], usize)> {
    let ldc = out.shape()[1];
    let cs =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    Ok((cs, ldc))
}

/// `out = x @ w (+ bias)` with a plain `(K, N)` weight; `wkind` is "f32", "f16" or "bf16" (the
/// last two as uint16 bit patterns).
#[pyfunction]
#[pyo3(signature = (x, w32, w16, wkind, out, bias=None, isa=None))]
fn _matmul_plain(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    w32: Option<PyReadonlyArray2<'_, f32>>,
    w16: Option<PyReadonlyArray2<'_, u16>>,
    wkind: &str,
    mut out: PyReadwriteArray2<'_, f32>,
    bias: Option<PyReadonlyArray1<'_, f32>>,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let (k, n, cw) = match (wkind, &w32, &w16) {
        ("f32", Some(w), _) => (w.shape()[0], w.shape()[1], ColW::F32(slice2(w, "w")?)),
        ("f16", _, Some(w)) => (w.shape()[0], w.shape()[1], ColW::F16(slice2(w, "w")?)),
        ("bf16", _, Some(w)) => (w.shape()[0], w.shape()[1], ColW::Bf16(slice2(w, "w")?)),
        _ => return Err(err("DTypeError", format!("unsupported weight kind {wkind:?}"))),
    };
    let b = opt_bias(&bias)?;
    let (cs, ldc) = out_rows(&mut out)?;
    run(py, || matmul(isa, xs, m, Weight::Plain { w: cw, k, n }, b, cs, ldc))
}

/// `out = x @ W (+ bias)` with `W` `(k, n)` stored as block data in `fmt`.
#[pyfunction]
#[pyo3(signature = (x, fmt, k, n, data, out, bias=None, isa=None))]
fn _matmul_blocks(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    fmt: &str,
    k: usize,
    n: usize,
    data: PyReadonlyArray1<'_, u8>,
    mut out: PyReadwriteArray2<'_, f32>,
    bias: Option<PyReadonlyArray1<'_, f32>>,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let ds = slice(&data, "data")?;
    let b = opt_bias(&bias)?;
    let (cs, ldc) = out_rows(&mut out)?;
    // The scales were checked when the QuantizedTensor was built (`_check_blocks`); a second
    // pass here would read the whole weight twice.
    run(py, || {
        let q = QWeight::with_len_check(fmt, k, n, ds)?;
        matmul(isa, xs, m, Weight::Rows(q), b, cs, ldc)
    })
}

/// Q8_0 / Q4_0 block data repacked into the VNNI decode layout (`kernels::qpack`).
#[pyfunction]
fn _pack_vnni<'py>(
    py: Python<'py>,
    fmt: &str,
    k: usize,
    n: usize,
    data: PyReadonlyArray1<'py, u8>,
) -> PyResult<Bound<'py, numpy::PyArray1<u8>>> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let ds = slice(&data, "data")?;
    let v = run(py, || tierflow_core::kernels::qpack::pack(fmt, k, n, ds))?;
    Ok(numpy::PyArray1::from_vec(py, v))
}

/// The GGUF block data back from the VNNI decode layout (`kernels::qpack::unpack`).
#[pyfunction]
fn _unpack_vnni<'py>(
    py: Python<'py>,
    fmt: &str,
    k: usize,
    n: usize,
    packed: PyReadonlyArray1<'py, u8>,
) -> PyResult<Bound<'py, numpy::PyArray1<u8>>> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let ps = slice(&packed, "packed")?;
    let v = run(py, || tierflow_core::kernels::qpack::unpack(fmt, k, n, ps))?;
    Ok(numpy::PyArray1::from_vec(py, v))
}

/// Bytes of the VNNI decode layout of a `(k, n)` weight in `fmt` (`ValueError` subclass for a
/// format other than q8_0 / q4_0, K not a multiple of 32, or an overflow).
#[pyfunction]
fn _packed_nbytes(fmt: &str, k: usize, n: usize) -> PyResult<usize> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    tierflow_core::kernels::qpack::packed_bytes(fmt, k, n).map_err(crate::errors::to_pyerr)
}

/// `out = x @ W (+ bias)` with `W` in the VNNI decode layout (`kernels::qpack`).
#[pyfunction]
#[pyo3(signature = (x, fmt, k, n, packed, out, bias=None, isa=None))]
#[allow(clippy::too_many_arguments)]
fn _matmul_packed(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    fmt: &str,
    k: usize,
    n: usize,
    packed: PyReadonlyArray1<'_, u8>,
    mut out: PyReadwriteArray2<'_, f32>,
    bias: Option<PyReadonlyArray1<'_, f32>>,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let ps = slice(&packed, "packed")?;
    let b = opt_bias(&bias)?;
    let (cs, ldc) = out_rows(&mut out)?;
    run(py, || tierflow_core::kernels::qpack::matmul_packed(isa, xs, m, fmt, k, n, ps, b, cs, ldc))
}

/// One weight of [`_matmul_blocks_group`]: `(fmt, k, n, data, out, bias)`.
type GroupPart<'py> = (
    String,
    usize,
    usize,
    PyReadonlyArray1<'py, u8>,
    PyReadwriteArray2<'py, f32>,
    Option<PyReadonlyArray1<'py, f32>>,
);

/// `out_j = x @ W_j (+ bias_j)` for several row-stored weights sharing `x`, in one pool job at
/// decode shapes (`tierflow_core::kernels::group`).
#[pyfunction]
#[pyo3(signature = (x, parts, isa=None))]
fn _matmul_blocks_group(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    mut parts: Vec<GroupPart<'_>>,
    isa: Option<&str>,
) -> PyResult<()> {
    use tierflow_core::kernels::group::{matmul_group, GroupOut};
    let isa = pick_isa(isa)?;
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let mut specs = Vec::with_capacity(parts.len());
    for (fmt, k, n, data, out, bias) in parts.iter_mut() {
        let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
        let ds = slice(data, "data")?;
        let b = opt_bias(bias)?;
        let (cs, ldc) = out_rows(out)?;
        specs.push((fmt, *k, *n, ds, b, cs, ldc));
    }
    run(py, || {
        let mut outs = Vec::with_capacity(specs.len());
        for (fmt, k, n, ds, b, cs, ldc) in specs {
            let w = QWeight::with_len_check(fmt, k, n, ds)?;
            outs.push(GroupOut { w, bias: b, c: cs, ldc });
        }
        matmul_group(isa, xs, m, &mut outs)
    })
}

/// `out_j = x @ W_j (+ bias_j)` for several weights in the VNNI decode layout sharing `x`, in
/// one pool job at decode shapes (`tierflow_core::kernels::qpack::matmul_packed_group`); parts
/// are `(fmt, k, n, packed, out, bias)` with `fmt` the base format (q8_0 / q4_0).
#[pyfunction]
#[pyo3(signature = (x, parts, isa=None))]
fn _matmul_packed_group(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    mut parts: Vec<GroupPart<'_>>,
    isa: Option<&str>,
) -> PyResult<()> {
    use tierflow_core::kernels::qpack::{matmul_packed_group, PackedOut};
    let isa = pick_isa(isa)?;
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let mut outs = Vec::with_capacity(parts.len());
    for (fmt, k, n, data, out, bias) in parts.iter_mut() {
        let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
        let packed = slice(data, "packed")?;
        let bias = opt_bias(bias)?;
        let (c, ldc) = out_rows(out)?;
        outs.push(PackedOut { fmt, k: *k, n: *n, packed, bias, c, ldc });
    }
    run(py, || matmul_packed_group(isa, xs, m, &mut outs))
}

/// The activation of a gated MLP named `swiglu`, `geglu_tanh` or `geglu_erf`.
pub(crate) fn gated_act(kind: &str) -> PyResult<tierflow_core::kernels::act::Act> {
    use tierflow_core::kernels::act::Act;
    match kind {
        "swiglu" => Ok(Act::Silu),
        "geglu_tanh" => Ok(Act::GeluTanh),
        "geglu_erf" => Ok(Act::GeluErf),
        other => Err(err("InvalidArgumentError", format!("unknown gated op {other:?}"))),
    }
}

/// One packed weight from Python: `(fmt, k, n, packed)`.
type PackedArg<'py> = (String, usize, usize, PyReadonlyArray1<'py, u8>);

/// The gated MLP over three weights in the VNNI decode layout, in one call
/// (`tierflow_core::kernels::qpack::mlp_packed`); `kind` is swiglu / geglu_tanh / geglu_erf.
#[pyfunction]
#[pyo3(signature = (x, gate, up, down, kind, out, isa=None))]
#[allow(clippy::too_many_arguments)]
fn _mlp_packed(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    gate: PackedArg<'_>,
    up: PackedArg<'_>,
    down: PackedArg<'_>,
    kind: &str,
    mut out: PyReadwriteArray2<'_, f32>,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let act = gated_act(kind)?;
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let w =
        |a: &(String, usize, usize, PyReadonlyArray1<'_, u8>)| -> PyResult<(Format, usize, usize)> {
            Ok((Format::parse(&a.0).map_err(crate::errors::to_pyerr)?, a.1, a.2))
        };
    let (g, u, d) = (w(&gate)?, w(&up)?, w(&down)?);
    let (gs, us, ds) = (slice(&gate.3, "gate")?, slice(&up.3, "up")?, slice(&down.3, "down")?);
    let (cs, ldc) = out_rows(&mut out)?;
    if ldc != d.2 || cs.len() != m * d.2 {
        return Err(err("ShapeError", "out must be (m, n_down) and C-contiguous"));
    }
    run(py, || {
        use tierflow_core::kernels::qpack::mlp_packed;
        mlp_packed(
            isa,
            xs,
            m,
            (g.0, g.1, g.2, gs),
            (u.0, u.1, u.2, us),
            (d.0, d.1, d.2, ds),
            act,
            cs,
        )
    })
}

/// Quantise a row-major `(K, N)` float32 weight into `fmt` block data (`N` rows along `K`).
#[pyfunction]
fn _quantize<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    fmt: &str,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let ws = slice2(&w, "w")?;
    let v = run(py, || quant::quantize(fmt, ws, k, n))?;
    Ok(PyArray1::from_vec(py, v))
}

/// Check block data (length, finite scales): raises CorruptFileError.
#[pyfunction]
fn _check_blocks(
    py: Python<'_>,
    fmt: &str,
    k: usize,
    n: usize,
    data: PyReadonlyArray1<'_, u8>,
) -> PyResult<()> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let ds = slice(&data, "data")?;
    run(py, || QWeight::new(fmt, k, n, ds).map(|_| ()))
}

/// Bytes of a `(k, n)` weight in `fmt` (ShapeError when K is not a whole number of blocks or the
/// size overflows).
#[pyfunction]
fn _format_nbytes(fmt: &str, k: usize, n: usize) -> PyResult<usize> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    crate::utils::guard(|| fmt.total_bytes(k, n))
}

/// Dequantise block data into a `(k, n)` float32 array.
#[pyfunction]
fn _dequantize<'py>(
    py: Python<'py>,
    fmt: &str,
    k: usize,
    n: usize,
    data: PyReadonlyArray1<'py, u8>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let ds = slice(&data, "data")?;
    let v = run(py, || {
        let q = QWeight::new(fmt, k, n, ds)?;
        Ok(quant::dequantize(&q))
    })?;
    let a = PyArray1::from_vec(py, v);
    a.reshape([k, n])
}

/// Memory read bandwidth in bytes per second (multi-threaded STREAM-like read of `nbytes`).
#[pyfunction]
#[pyo3(signature = (nbytes=256 << 20, reps=5))]
fn memory_bandwidth(py: Python<'_>, nbytes: usize, reps: usize) -> PyResult<f64> {
    if nbytes < 64 {
        return Err(err("InvalidArgumentError", "nbytes must be at least 64"));
    }
    run(py, || Ok::<_, CoreError>(tierflow_core::kernels::bandwidth::read_bandwidth(nbytes, reps)))
}

/// Flash attention on contiguous (B, H, S, D) float32 arrays; `mask` is (Mb, Mh, Sq, Skv).
#[pyfunction]
#[pyo3(signature = (q, k, v, dims, causal, scale, out, mask=None, mask_bh=(1, 1), isa=None))]
fn _attention(
    py: Python<'_>,
    q: PyReadonlyArray1<'_, f32>,
    k: PyReadonlyArray1<'_, f32>,
    v: PyReadonlyArray1<'_, f32>,
    dims: (usize, usize, usize, usize, usize, usize),
    causal: bool,
    scale: f32,
    mut out: PyReadwriteArray1<'_, f32>,
    mask: Option<PyReadonlyArray1<'_, f32>>,
    mask_bh: (usize, usize),
    isa: Option<&str>,
) -> PyResult<()> {
    use tierflow_core::kernels::attention::{attention, Dims, Mask};
    let isa = pick_isa(isa)?;
    let (b, h, hkv, sq, skv, d) = dims;
    let (qs, ks, vs) = (slice(&q, "q")?, slice(&k, "k")?, slice(&v, "v")?);
    let ms = match &mask {
        Some(m) => Some(Mask { data: slice(m, "mask")?, mb: mask_bh.0, mh: mask_bh.1 }),
        None => None,
    };
    let os =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    run(py, || attention(isa, qs, ks, vs, Dims { b, h, hkv, sq, skv, d }, causal, scale, ms, os))
}

/// Row-wise ops on a contiguous float32 buffer viewed as rows of `d`: `op` is one of "rms_norm",
/// "layer_norm", "silu", "gelu_tanh", "gelu_erf", "softmax", "swiglu" (`aux` = up),
/// "geglu_tanh"/"geglu_erf" (`aux` = up).
#[pyfunction]
#[pyo3(signature = (op, x, d, out, w=None, b=None, aux=None, eps=1e-6, isa=None))]
fn _rowwise(
    py: Python<'_>,
    op: &str,
    x: PyReadonlyArray1<'_, f32>,
    d: usize,
    mut out: PyReadwriteArray1<'_, f32>,
    w: Option<PyReadonlyArray1<'_, f32>>,
    b: Option<PyReadonlyArray1<'_, f32>>,
    aux: Option<PyReadonlyArray1<'_, f32>>,
    eps: f32,
    isa: Option<&str>,
) -> PyResult<()> {
    use tierflow_core::kernels::act::{activation, gated, softmax, Act};
    use tierflow_core::kernels::norm::{layer_norm, rms_norm};
    let isa = pick_isa(isa)?;
    let xs = slice(&x, "x")?;
    let ws = match &w {
        Some(a) => Some(slice(a, "weight")?),
        None => None,
    };
    let bs = match &b {
        Some(a) => Some(slice(a, "bias")?),
        None => None,
    };
    let aux_s = match &aux {
        Some(a) => Some(slice(a, "up")?),
        None => None,
    };
    let ys =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    if ys.len() != xs.len() || d == 0 && !xs.is_empty() || d > 0 && xs.len() % d != 0 {
        return Err(err("ShapeError", "rowwise buffers do not match"));
    }
    if ws.is_some_and(|w| w.len() != d)
        || bs.is_some_and(|b| b.len() != d)
        || aux_s.is_some_and(|a| a.len() != xs.len())
    {
        return Err(err("ShapeError", "rowwise parameter sizes do not match"));
    }
    let op = op.to_owned();
    run(py, move || {
        match op.as_str() {
            "rms_norm" => rms_norm(isa, xs, d, ws, eps, ys),
            "layer_norm" => layer_norm(isa, xs, d, ws, bs, eps, ys),
            "silu" => activation(isa, Act::Silu, xs, d, ys),
            "gelu_tanh" => activation(isa, Act::GeluTanh, xs, d, ys),
            "gelu_erf" => activation(isa, Act::GeluErf, xs, d, ys),
            "softmax" => softmax(isa, xs, d, ys),
            "swiglu" | "geglu_tanh" | "geglu_erf" => {
                let a = match op.as_str() {
                    "swiglu" => Act::Silu,
                    "geglu_tanh" => Act::GeluTanh,
                    _ => Act::GeluErf,
                };
                let up = aux_s.ok_or_else(|| CoreError::Value("gated op needs `aux`".into()))?;
                gated(isa, a, xs, up, d, ys)
            }
            other => return Err(CoreError::Value(format!("unknown row op {other:?}"))),
        }
        Ok(())
    })
}

/// Rotary embedding of a contiguous (N, S, D) float32 buffer.
#[pyfunction]
#[pyo3(signature = (x, s, d, pos, base, interleaved, out, isa=None))]
fn _rope(
    py: Python<'_>,
    x: PyReadonlyArray1<'_, f32>,
    s: usize,
    d: usize,
    pos: PyReadonlyArray1<'_, f64>,
    base: f64,
    interleaved: bool,
    mut out: PyReadwriteArray1<'_, f32>,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let xs = slice(&x, "x")?;
    let ps = slice(&pos, "positions")?;
    let ys =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    if d % 2 != 0 || ps.len() != s || ys.len() != xs.len() || (s * d > 0 && xs.len() % (s * d) != 0)
    {
        return Err(err("ShapeError", "rope buffers do not match"));
    }
    run(py, || {
        tierflow_core::kernels::rope::rope(isa, xs, s, d, ps, base, interleaved, ys);
        Ok::<_, CoreError>(())
    })
}

/// `out = x @ W (+ bias)` with `W` the tensor `name` of a store, streamed from its tier in panels
/// of about `panel_bytes` through a double buffer: `N` rows of `K` in the block format `fmt`, or
/// with `plain` a row-major `(K, N)` float array (`fmt` f32, f16 or bf16; decode shapes only).
#[pyfunction]
#[pyo3(signature = (x, store, name, fmt, k, n, out, bias=None, panel_bytes=8 << 20, isa=None, plain=false))]
fn _matmul_streamed(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    store: PyRef<'_, crate::store::PyStore>,
    name: &str,
    fmt: &str,
    k: usize,
    n: usize,
    mut out: PyReadwriteArray2<'_, f32>,
    bias: Option<PyReadonlyArray1<'_, f32>>,
    panel_bytes: usize,
    isa: Option<&str>,
    plain: bool,
) -> PyResult<()> {
    use tierflow_core::kernels::stream::{matmul_streamed_plain, PlainKind};
    let isa = pick_isa(isa)?;
    let fmt = Format::parse(fmt).map_err(crate::errors::to_pyerr)?;
    let kind = match fmt {
        Format::F32 => Some(PlainKind::F32),
        Format::F16 => Some(PlainKind::F16),
        Format::Bf16 => Some(PlainKind::Bf16),
        _ => None,
    };
    if plain && kind.is_none() {
        return Err(err("DTypeError", format!("cannot stream a plain {} weight", fmt.name())));
    }
    let m = x.shape()[0];
    let xs = slice2(&x, "x")?;
    let b = opt_bias(&bias)?;
    let (cs, ldc) = out_rows(&mut out)?;
    let st = store.inner.clone();
    let name = name.to_owned();
    run(py, move || {
        let read = |off: u64, buf: &mut [u8]| st.read_into(&name, off, buf);
        match kind {
            Some(kind) if plain => {
                matmul_streamed_plain(isa, xs, m, kind, k, n, &read, b, cs, ldc, panel_bytes)
            }
            _ => tierflow_core::kernels::stream::matmul_streamed(
                isa,
                xs,
                m,
                fmt,
                k,
                n,
                &read,
                b,
                cs,
                ldc,
                panel_bytes,
            ),
        }
    })
}

/// Decode attention against a paged KV cache (see `tierflow_core::kernels::paged`).
#[pyfunction]
#[pyo3(signature = (q, kpool, vpool, sizes, table, lens, scale, out, isa=None))]
fn _paged_decode(
    py: Python<'_>,
    q: PyReadonlyArray1<'_, f32>,
    kpool: PyReadonlyArray1<'_, f32>,
    vpool: PyReadonlyArray1<'_, f32>,
    sizes: (usize, usize, usize, usize, usize, usize, usize),
    table: PyReadonlyArray1<'_, i64>,
    lens: Vec<usize>,
    scale: f32,
    mut out: PyReadwriteArray1<'_, f32>,
    isa: Option<&str>,
) -> PyResult<()> {
    use tierflow_core::kernels::paged::{paged_decode, Paged};
    let isa = pick_isa(isa)?;
    let (b, h, hkv, d, nb, page, max_blocks) = sizes;
    let (qs, ks, vs) = (slice(&q, "q")?, slice(&kpool, "k pool")?, slice(&vpool, "v pool")?);
    let ts = slice(&table, "block table")?;
    let os =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    let p = Paged { b, h, hkv, d, nb, page, max_blocks };
    run(py, || paged_decode(isa, qs, ks, vs, p, ts, &lens, scale, os))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_paged_decode, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_streamed, m)?)?;
    m.add_function(wrap_pyfunction!(_attention, m)?)?;
    m.add_function(wrap_pyfunction!(_rowwise, m)?)?;
    m.add_function(wrap_pyfunction!(_rope, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_plain, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_blocks_group, m)?)?;
    m.add_function(wrap_pyfunction!(_pack_vnni, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_packed, m)?)?;
    m.add_function(wrap_pyfunction!(_unpack_vnni, m)?)?;
    m.add_function(wrap_pyfunction!(_mlp_packed, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_packed_group, m)?)?;
    m.add_function(wrap_pyfunction!(_packed_nbytes, m)?)?;
    m.add_function(wrap_pyfunction!(_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(_check_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(_format_nbytes, m)?)?;
    m.add_function(wrap_pyfunction!(_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(memory_bandwidth, m)?)?;
    Ok(())
}
