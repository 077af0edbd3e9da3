//! Bindings of `tierflow_core::store::gguf`: the GGUF header reader (`read_gguf`); adoption into
//! a store is `Store.load_gguf` in `store.rs`.

use crate::utils::run;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use tierflow_core::store::gguf::{self, Value};

fn value<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::U8(x) => x.into_pyobject(py)?.into_any(),
        Value::I8(x) => x.into_pyobject(py)?.into_any(),
        Value::U16(x) => x.into_pyobject(py)?.into_any(),
        Value::I16(x) => x.into_pyobject(py)?.into_any(),
        Value::U32(x) => x.into_pyobject(py)?.into_any(),
        Value::I32(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::F32(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => x.into_pyobject(py)?.into_any(),
        Value::Bool(x) => pyo3::types::PyBool::new(py, *x).to_owned().into_any(),
        Value::Str(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(_, items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(value(py, it)?)?;
            }
            l.into_any()
        }
    })
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(et, _) => format!("array[{et}]"),
        v => v.type_name().to_owned(),
    }
}

/// Parse and validate a GGUF header: a dict with `version`, `alignment`, `data_offset`,
/// `file_size`, `metadata` (key -> value, arrays as lists), `metadata_types` (key -> GGUF type
/// name) and `tensors` (dicts of `name`, `type`, `ne`, `offset` (absolute), `nbytes`).
#[pyfunction]
fn read_gguf(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let g = run(py, move || gguf::read_gguf(&path))?;
    let d = PyDict::new(py);
    d.set_item("version", g.version)?;
    d.set_item("alignment", g.alignment)?;
    d.set_item("data_offset", g.data_offset)?;
    d.set_item("file_size", g.file_len)?;
    let meta = PyDict::new(py);
    let types = PyDict::new(py);
    for (k, v) in &g.metadata {
        meta.set_item(k, value(py, v)?)?;
        types.set_item(k, type_name(v))?;
    }
    d.set_item("metadata", meta)?;
    d.set_item("metadata_types", types)?;
    let tensors = PyList::empty(py);
    for t in &g.tensors {
        let td = PyDict::new(py);
        td.set_item("name", &t.name)?;
        td.set_item("type", t.ty.name)?;
        td.set_item("ne", t.ne.clone())?;
        td.set_item("offset", t.offset)?;
        td.set_item("nbytes", t.nbytes)?;
        tensors.append(td)?;
    }
    d.set_item("tensors", tensors)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_gguf, m)?)?;
    Ok(())
}
