//! `tierflow._tierflow`: the private native module behind the `tierflow` package.
//! One file per domain, each mirroring a Python module: store, kernels, kvcache, sim, gguf,
//! decode (the fused decode step of `models/llama.py`).

use pyo3::prelude::*;

mod decode;
mod errors;
mod gguf;
mod kernels;
mod kvcache;
mod sim;
mod store;
mod utils;

/// Version, CPU features and kernel paths of this build and machine.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    use tierflow_core::cpu::{features, Isa};
    let d = pyo3::types::PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("target_arch", std::env::consts::ARCH)?;
    let feats = pyo3::types::PyDict::new(py);
    for (k, v) in features() {
        feats.set_item(k, v)?;
    }
    d.set_item("cpu_features", feats)?;
    let avail: Vec<&str> = Isa::available().into_iter().map(Isa::name).collect();
    d.set_item("isa_available", avail)?;
    d.set_item("isa_selected", Isa::detect().name())?;
    let ext: Vec<&str> = tierflow_core::cpu::Ext::active().into_iter().map(|e| e.name()).collect();
    d.set_item("isa_extensions", ext)?;
    d.set_item("num_threads", tierflow_core::pool::num_threads())?;
    d.set_item("spin_us", tierflow_core::pool::spin_us())?;
    Ok(d)
}

/// Set the number of worker threads for kernels and copies (None: the default).
#[pyfunction]
#[pyo3(signature = (n=None))]
fn set_num_threads(n: Option<i64>) -> PyResult<()> {
    let n = match n {
        Some(v) if v < 1 => {
            return Err(errors::err(
                "InvalidArgumentError",
                format!("the number of threads must be at least 1, got {v}"),
            ))
        }
        Some(v) => Some(v as usize),
        None => None,
    };
    utils::guard(|| tierflow_core::pool::set_num_threads(n))
}

/// The number of worker threads in use.
#[pyfunction]
fn get_num_threads() -> usize {
    tierflow_core::pool::num_threads()
}

/// Panic inside the GIL-releasing call helper: tests check that a panic reaches Python as
/// `tierflow.InternalError`, never a crash.
#[pyfunction]
fn _debug_panic(py: Python<'_>) -> PyResult<()> {
    utils::run(py, || -> tierflow_core::Result<()> {
        panic!("a deliberate panic (tierflow self-test)")
    })
}

#[pymodule]
fn _tierflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    store::register(m)?;
    kernels::register(m)?;
    kvcache::register(m)?;
    sim::register(m)?;
    gguf::register(m)?;
    decode::register(m)?;
    Ok(())
}
