//! Bindings of `tierflow_core::store` (mirrors `python/tierflow/store.py`).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
