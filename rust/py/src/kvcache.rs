//! Bindings of the paged KV cache's decode kernel over pages that live in a store
//! (`tierflow_core::store::paged_kv::paged_decode_store`; mirrors `python/tierflow/kvcache.py`,
//! which checks shapes and builds the page list). The pool form, `_paged_decode`, is in
//! `kernels.rs`.

use crate::errors::err;
use crate::kernels::pick_isa;
use crate::store::PyStore;
use crate::utils::run;
use numpy::{PyReadonlyArray1, PyReadwriteArray1};
use pyo3::prelude::*;
use pyo3::types::PyString;
use tierflow_core::kernels::paged::PageList;
use tierflow_core::store::paged_kv::{paged_decode_store, PageRef};

/// One entry of the page list as Python gave it.
enum Src<'py> {
    Name(String),
    Array(PyReadonlyArray1<'py, f32>),
}

/// Decode attention over a list of `(2, Hkv, P, D)` pages: sequence `b` owns the next
/// `counts[b]` entries of `pages`, each a store tensor name (read from `store` once per call with
/// the GIL released, wherever it lives) or a flat C-contiguous float32 array.
#[pyfunction]
#[pyo3(signature = (q, pages, counts, sizes, lens, scale, out, store=None, promote=false, isa=None))]
fn _paged_decode_pages<'py>(
    py: Python<'py>,
    q: PyReadonlyArray1<'py, f32>,
    pages: Vec<Bound<'py, PyAny>>,
    counts: Vec<usize>,
    sizes: (usize, usize, usize, usize, usize),
    lens: Vec<usize>,
    scale: f32,
    mut out: PyReadwriteArray1<'py, f32>,
    store: Option<PyRef<'py, PyStore>>,
    promote: bool,
    isa: Option<&str>,
) -> PyResult<()> {
    let isa = pick_isa(isa)?;
    let (b, h, hkv, d, page) = sizes;
    let mut srcs = Vec::with_capacity(pages.len());
    for (i, p) in pages.iter().enumerate() {
        if let Ok(s) = p.cast::<PyString>() {
            srcs.push(Src::Name(s.to_str()?.to_owned()));
        } else {
            let a = p.extract::<PyReadonlyArray1<'py, f32>>().map_err(|_| {
                err(
                    "DTypeError",
                    format!("page {i} is neither a store name nor a 1-D float32 array"),
                )
            })?;
            srcs.push(Src::Array(a));
        }
    }
    let refs =
        srcs.iter()
            .enumerate()
            .map(|(i, s)| match s {
                Src::Name(n) => Ok(PageRef::Stored(n.as_str())),
                Src::Array(a) => a.as_slice().map(PageRef::Slice).map_err(|_| {
                    err("InvalidArgumentError", format!("page {i} must be C-contiguous"))
                }),
            })
            .collect::<PyResult<Vec<_>>>()?;
    let qs = q.as_slice().map_err(|_| err("InvalidArgumentError", "q must be C-contiguous"))?;
    let os =
        out.as_slice_mut().map_err(|_| err("InvalidArgumentError", "out must be C-contiguous"))?;
    let st = store.as_ref().map(|s| &s.inner);
    let p = PageList { b, h, hkv, d, page };
    run(py, move || paged_decode_store(isa, st, qs, &refs, &counts, p, &lens, scale, promote, os))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_paged_decode_pages, m)?)?;
    Ok(())
}
