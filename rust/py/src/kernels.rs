//! Bindings of `tierflow_core::kernels` (mirrors `python/tierflow/kernels.py`, which checks and
//! normalises arguments: the functions here take C-contiguous arrays of the right dtype).
//! Every call runs through `utils::run`, which releases the GIL.

use crate::errors::err;
use crate::utils::run;
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2,
    PyUntypedArrayMethods,
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
    let b = match &bias {
        Some(b) => Some(slice(b, "bias")?),
        None => None,
    };
    let ldc = out.shape()[1];
    let cs =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
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
    let b = match &bias {
        Some(b) => Some(slice(b, "bias")?),
        None => None,
    };
    let ldc = out.shape()[1];
    let cs =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    run(py, || {
        let q = QWeight::new(fmt, k, n, ds)?;
        matmul(isa, xs, m, Weight::Rows(q), b, cs, ldc)
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_matmul_plain, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(_check_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(_format_nbytes, m)?)?;
    m.add_function(wrap_pyfunction!(_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(memory_bandwidth, m)?)?;
    Ok(())
}
