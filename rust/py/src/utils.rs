//! The one helper every long native call goes through.

use crate::errors::{err, to_pyerr};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tierflow_core::Result as CoreResult;

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Release the GIL, run `f`, convert its error, and turn a panic into
/// `tierflow.InternalError` instead of a crash. `f` must not touch Python objects.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> CoreResult<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(e)),
        Err(p) => Err(err(
            "InternalError",
            format!("internal error (a bug in tierflow): {}", panic_message(p)),
        )),
    }
}

/// Like [`run`] but keeps the GIL (for short calls that still must not crash on a panic).
pub fn guard<T>(f: impl FnOnce() -> CoreResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(e)),
        Err(p) => Err(err(
            "InternalError",
            format!("internal error (a bug in tierflow): {}", panic_message(p)),
        )),
    }
}
