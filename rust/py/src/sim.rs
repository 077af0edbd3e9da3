//! Bindings of `tierflow_core::sim` (mirrors `python/tierflow/sim.py`).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
