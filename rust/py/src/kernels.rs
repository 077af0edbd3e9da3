//! Bindings of `tierflow_core::kernels` (mirrors `python/tierflow/kernels.py`).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
