//! The one mapping from core errors to Python exceptions.
//!
//! The exception classes live in `python/tierflow/errors.py` (plain Python, so that each can also
//! subclass its natural built-in: `KeyError`, `ValueError`, `OSError`, ...). This file builds
//! instances of them from [`CoreError`]s.

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tierflow_core::CoreError;

/// A core error on its way to Python: `?` converts a [`CoreError`] into it, and it into `PyErr`.
pub struct TfError(pub CoreError);

impl From<CoreError> for TfError {
    fn from(e: CoreError) -> Self {
        TfError(e)
    }
}

impl From<TfError> for PyErr {
    fn from(e: TfError) -> PyErr {
        to_pyerr(e.0)
    }
}

/// Build an instance of `tierflow.errors.<class>` with `args`; on failure (the Python package is
/// broken) fall back to a RuntimeError carrying the message.
fn make(
    py: Python<'_>,
    class: &str,
    args: Bound<'_, PyTuple>,
    attrs: &[(&str, Option<String>)],
) -> PyErr {
    let built = (|| -> PyResult<PyErr> {
        let cls = py.import("tierflow.errors")?.getattr(class)?;
        let inst = cls.call1(args.clone())?;
        for (k, v) in attrs {
            inst.setattr(*k, v.clone())?;
        }
        Ok(PyErr::from_value(inst))
    })();
    match built {
        Ok(e) => e,
        Err(e) => e,
    }
}

/// Map a core error to the matching `tierflow.errors` class.
pub fn to_pyerr(e: CoreError) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        let one = |py| PyTuple::new(py, [msg.clone()]).expect("tuple");
        match &e {
            CoreError::Capacity(_) => make(py, "CapacityError", one(py), &[]),
            CoreError::NotFound(name) => {
                make(py, "TensorNotFoundError", one(py), &[("name", Some(name.clone()))])
            }
            CoreError::Exists(name) => {
                make(py, "TensorExistsError", one(py), &[("name", Some(name.clone()))])
            }
            CoreError::InvalidName(name, _) => {
                make(py, "InvalidNameError", one(py), &[("name", Some(name.clone()))])
            }
            CoreError::DType(_) => make(py, "DTypeError", one(py), &[]),
            CoreError::Shape(_) => make(py, "ShapeError", one(py), &[]),
            CoreError::Corrupt { path, tensor, .. } => make(
                py,
                "CorruptFileError",
                one(py),
                &[("path", Some(path.display().to_string())), ("tensor", tensor.clone())],
            ),
            CoreError::Io { path, source } => {
                let class = match source.kind() {
                    std::io::ErrorKind::NotFound => "MissingFileError",
                    std::io::ErrorKind::PermissionDenied => "AccessDeniedError",
                    _ => "StorageError",
                };
                let errno = source.raw_os_error().unwrap_or(0);
                let args = (errno, source.to_string(), path.display().to_string());
                let args = args.into_pyobject(py).expect("tuple");
                make(py, class, args, &[])
            }
            CoreError::Value(_) => make(py, "InvalidArgumentError", one(py), &[]),
            CoreError::Schedule(_) => make(py, "ScheduleError", one(py), &[]),
            CoreError::Closed(_) => make(py, "ClosedError", one(py), &[]),
            CoreError::Internal(_) => make(py, "InternalError", one(py), &[]),
        }
    })
}

/// Raise `tierflow.errors.<class>(msg)` from binding code.
pub fn err(class: &str, msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    Python::attach(|py| make(py, class, PyTuple::new(py, [msg]).expect("tuple"), &[]))
}
