//! Bindings of `tierflow_core::store` (mirrors `python/tierflow/store.py`, which wraps them).

use crate::utils::{guard, run};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::os::raw::{c_int, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use tierflow_core::store::{
    self, AlignedBuf, DType, Policy, Prefetch, Store, StoreConfig, TierSpec, Verify,
};

/// A read-only buffer over tensor bytes owned by the store (zero copy: NumPy views it with
/// `numpy.frombuffer`; the bytes stay alive while any view does, even after an eviction).
#[pyclass(module = "tierflow._tierflow", frozen)]
pub struct TensorBuffer {
    pub(crate) buf: Arc<AlignedBuf>,
}

#[pymethods]
impl TensorBuffer {
    /// Size in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.buf.len()
    }

    fn __len__(&self) -> usize {
        self.buf.len()
    }

    /// # Safety
    /// Called by CPython with a valid `Py_buffer`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("tierflow tensor buffers are read-only"));
        }
        let (ptr, len) = {
            let b = &slf.get().buf;
            (b.as_ptr() as *mut c_void, b.len() as ffi::Py_ssize_t)
        };
        // SAFETY: `view` is valid; the buffer lives as long as `slf`, which the view references.
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr, len, 1, flags) };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython; nothing to release (the view holds a reference to `self`).
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

/// A background prefetch.
#[pyclass(name = "Prefetch", module = "tierflow._tierflow", frozen)]
pub struct PyPrefetch {
    inner: Prefetch,
}

#[pymethods]
impl PyPrefetch {
    /// Whether it has finished (successfully or not).
    fn done(&self) -> bool {
        self.inner.done()
    }

    /// Wait (without the GIL) up to `timeout` seconds (forever when None). Returns the number of
    /// tensors moved, or None on timeout; raises the error the prefetch met.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<usize>> {
        let t = match timeout {
            Some(t) if !(t >= 0.0 && t.is_finite()) => {
                return Err(crate::errors::err(
                    "InvalidArgumentError",
                    format!("timeout must be a non-negative number of seconds, got {t}"),
                ))
            }
            Some(t) => Some(std::time::Duration::from_secs_f64(t)),
            None => None,
        };
        let p = self.inner.clone();
        run(py, move || p.wait(t))
    }
}

/// The native tiered store. Use `tierflow.TieredStore`, which wraps it.
#[pyclass(name = "Store", module = "tierflow._tierflow", frozen)]
pub struct PyStore {
    pub(crate) inner: Store,
}

type TierTuple = (String, Option<u64>, Option<PathBuf>);

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (root, tiers, policy="lru", default_tier=None, verify_reads=true))]
    fn new(
        py: Python<'_>,
        root: Option<PathBuf>,
        tiers: Vec<TierTuple>,
        policy: &str,
        default_tier: Option<usize>,
        verify_reads: bool,
    ) -> PyResult<Self> {
        let policy = guard(|| Policy::parse(policy))?;
        let tiers = tiers
            .into_iter()
            .map(|(name, capacity, path)| TierSpec { name, capacity, path })
            .collect();
        let cfg = StoreConfig { root, tiers, policy, default_tier, verify_reads };
        Ok(PyStore { inner: run(py, move || Store::create(cfg))? })
    }

    /// Reopen the store in `root`; verify "full" (checksums) or "header" (sizes).
    #[staticmethod]
    #[pyo3(signature = (root, verify="full", strict=true))]
    fn open(py: Python<'_>, root: PathBuf, verify: &str, strict: bool) -> PyResult<Self> {
        let verify = match verify {
            "full" => Verify::Full,
            "header" => Verify::Header,
            other => {
                return Err(crate::errors::err(
                    "InvalidArgumentError",
                    format!("verify must be \"full\" or \"header\", got {other:?}"),
                ))
            }
        };
        Ok(PyStore { inner: run(py, move || Store::open(&root, verify, strict))? })
    }

    fn tiers(&self) -> Vec<TierTuple> {
        self.inner.tiers().into_iter().map(|t| (t.name, t.capacity, t.path)).collect()
    }

    fn tier_index(&self, name: &str) -> PyResult<usize> {
        guard(|| self.inner.tier_index(name))
    }

    fn default_tier(&self) -> usize {
        self.inner.default_tier()
    }

    fn policy(&self) -> &'static str {
        self.inner.policy().name()
    }

    fn root(&self) -> Option<PathBuf> {
        self.inner.root().map(|p| p.to_path_buf())
    }

    #[pyo3(signature = (name, dtype, shape, data, tier=None, overwrite=false, durable=true))]
    fn put(
        &self,
        py: Python<'_>,
        name: &str,
        dtype: &str,
        shape: Vec<usize>,
        data: PyReadonlyArray1<'_, u8>,
        tier: Option<usize>,
        overwrite: bool,
        durable: bool,
    ) -> PyResult<()> {
        let dtype = guard(|| DType::parse(dtype))?;
        let bytes = data
            .as_slice()
            .map_err(|_| crate::errors::err("InternalError", "put needs a contiguous byte view"))?;
        let s = &self.inner;
        run(py, move || s.put_with(name, dtype, &shape, bytes, tier, overwrite, durable))
    }

    /// (dtype, shape, buffer) of `name`.
    #[pyo3(signature = (name, promote=true))]
    fn get(
        &self,
        py: Python<'_>,
        name: &str,
        promote: bool,
    ) -> PyResult<(String, Vec<usize>, TensorBuffer)> {
        let s = &self.inner;
        let (meta, buf) = run(py, move || s.get(name, promote))?;
        Ok((meta.dtype, meta.shape, TensorBuffer { buf }))
    }

    /// Metadata of `name` as JSON.
    fn meta_json(&self, name: &str) -> PyResult<String> {
        let m = guard(|| self.inner.meta(name))?;
        Ok(serde_json_string(&m))
    }

    fn move_to(&self, py: Python<'_>, name: &str, tier: usize) -> PyResult<()> {
        let s = &self.inner;
        run(py, move || s.move_to(name, tier))
    }

    fn evict(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        let s = &self.inner;
        run(py, move || s.evict(name))
    }

    fn delete(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let s = &self.inner;
        run(py, move || s.delete(name))
    }

    fn set_pinned(&self, name: &str, pinned: bool) -> PyResult<()> {
        guard(|| self.inner.set_pinned(name, pinned))
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn quarantined(&self) -> Vec<(String, String)> {
        self.inner.quarantined()
    }

    fn set_future(&self, names: Vec<String>) {
        self.inner.set_future(names)
    }

    fn stats_json(&self) -> String {
        self.inner.stats().to_string()
    }

    fn reset_stats(&self) {
        self.inner.reset_stats()
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let s = &self.inner;
        run(py, move || s.flush())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let s = &self.inner;
        run(py, move || s.close())
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn prefetch(&self, names: Vec<String>, tier: usize) -> PyResult<PyPrefetch> {
        Ok(PyPrefetch { inner: guard(|| self.inner.prefetch(names, tier))? })
    }

    #[pyo3(signature = (path, tier=None, prefix="", overwrite=false))]
    fn load_safetensors(
        &self,
        py: Python<'_>,
        path: PathBuf,
        tier: Option<usize>,
        prefix: &str,
        overwrite: bool,
    ) -> PyResult<Vec<String>> {
        let s = &self.inner;
        run(py, move || s.load_safetensors(&path, tier, prefix, overwrite))
    }

    #[pyo3(signature = (path, tier=None, prefix="", overwrite=false, rename=None))]
    fn load_gguf(
        &self,
        py: Python<'_>,
        path: PathBuf,
        tier: Option<usize>,
        prefix: &str,
        overwrite: bool,
        rename: Option<std::collections::BTreeMap<String, String>>,
    ) -> PyResult<Vec<String>> {
        let s = &self.inner;
        let rename = rename.unwrap_or_default();
        run(py, move || s.load_gguf(&path, tier, prefix, overwrite, &rename))
    }

    /// Whether bytes read from a file tier by `read_into` and the streaming kernels are dropped
    /// from the OS page cache right after (posix_fadvise DONTNEED on the range read).
    #[getter]
    fn get_drop_after_read(&self) -> bool {
        self.inner.drop_after_read()
    }

    #[setter]
    fn set_drop_after_read(&self, on: bool) {
        self.inner.set_drop_after_read(on)
    }

    /// Copy bytes [offset, offset + len(out)) of `name` into the writable uint8 array `out`.
    fn read_into(
        &self,
        py: Python<'_>,
        name: &str,
        offset: u64,
        mut out: numpy::PyReadwriteArray1<'_, u8>,
    ) -> PyResult<()> {
        let slice = out.as_slice_mut().map_err(|_| {
            crate::errors::err("InvalidArgumentError", "out must be a contiguous uint8 array")
        })?;
        let s = &self.inner;
        run(py, move || s.read_into(name, offset, slice))
    }
}

fn serde_json_string<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Parse a capacity string ("512MiB", "2GB", 1024): bytes, or None for unbounded.
#[pyfunction]
fn parse_size(s: &str) -> PyResult<Option<u64>> {
    guard(|| store::parse_size(s))
}

/// The validated header of a safetensors file, as JSON.
#[pyfunction]
fn read_safetensors_header(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let h = run(py, move || store::fileio::read_header(&path))?;
    let tensors: Vec<serde_json::Value> = h
        .tensors
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "dtype": format!("{:?}", t.dtype), "shape": t.shape, "start": t.start, "end": t.end}))
        .collect();
    Ok(serde_json::json!({"tensors": tensors, "metadata": h.metadata, "file_len": h.file_len})
        .to_string())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStore>()?;
    m.add_class::<PyPrefetch>()?;
    m.add_class::<TensorBuffer>()?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(read_safetensors_header, m)?)?;
    Ok(())
}
