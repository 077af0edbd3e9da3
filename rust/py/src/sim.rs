//! Bindings of `tierflow_core::sim` (mirrors `python/tierflow/simulate.py` and `policies.py`).
//!
//! The Python side builds plain dicts (device, model, config) and NumPy arrays (workload); the
//! simulation itself runs without the GIL through `utils::run`.

use crate::errors::err;
use crate::utils::{guard, run};
use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tierflow_core::sim::{
    place as core_place, simulate as core_simulate, Batching, Config, DeviceSpec, Eviction,
    EvictionKind, Model, NodeSpec, Placement, Tier, Workload,
};

fn item<'py, T: FromPyObjectOwned<'py>>(
    d: &Bound<'py, PyDict>,
    what: &str,
    key: &str,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v.extract::<T>().map_err(|e| {
            let e: PyErr = e.into();
            err("InvalidArgumentError", format!("{what}: field {key:?} has the wrong type ({e})"))
        }),
        None => Err(err("InvalidArgumentError", format!("{what}: missing field {key:?}"))),
    }
}

fn device(d: &Bound<'_, PyDict>) -> PyResult<DeviceSpec> {
    let tiers: Vec<Bound<'_, PyDict>> = item(d, "device", "tiers")?;
    let mut ts = Vec::new();
    for t in &tiers {
        ts.push(Tier {
            name: item(t, "tier", "name")?,
            capacity: item(t, "tier", "capacity")?,
            link_bandwidth: item(t, "tier", "bandwidth")?,
            latency: item(t, "tier", "latency")?,
        });
    }
    Ok(DeviceSpec {
        name: item(d, "device", "name")?,
        tiers: ts,
        exec_tier: item(d, "device", "exec_tier")?,
        read_bandwidth: item(d, "device", "read_bandwidth")?,
        bw_efficiency: item(d, "device", "bw_efficiency")?,
        peak_flops: item(d, "device", "peak_flops")?,
        compute_efficiency: item(d, "device", "compute_efficiency")?,
        launch_overhead: item(d, "device", "launch_overhead")?,
        kernels_per_layer: item(d, "device", "kernels_per_layer")?,
        collective_latency: item(d, "device", "collective_latency")?,
        tp: item(d, "device", "tp")?,
        reserved: item(d, "device", "reserved")?,
    })
}

fn node(d: &Bound<'_, PyDict>) -> PyResult<NodeSpec> {
    Ok(NodeSpec {
        bytes: item(d, "node", "bytes")?,
        params: item(d, "node", "params")?,
        layers: item(d, "node", "layers")?,
        kv_bytes_per_token: item(d, "node", "kv_bytes_per_token")?,
    })
}

fn model(d: &Bound<'_, PyDict>) -> PyResult<Model> {
    let nodes: Vec<Bound<'_, PyDict>> = item(d, "model", "nodes")?;
    let router: Option<Bound<'_, PyDict>> = item(d, "model", "router")?;
    Ok(Model {
        names: item(d, "model", "names")?,
        nodes: nodes.iter().map(node).collect::<PyResult<_>>()?,
        post: item(d, "model", "post")?,
        router: router.as_ref().map(node).transpose()?,
    })
}

fn config(d: &Bound<'_, PyDict>) -> PyResult<Config> {
    let ev: String = item(d, "policy", "eviction")?;
    let pl: String = item(d, "policy", "placement")?;
    let bt: String = item(d, "policy", "batching")?;
    let frac: f64 = item(d, "policy", "pinned_fraction")?;
    let size: u32 = item(d, "policy", "batch_size")?;
    let wait: f64 = item(d, "policy", "max_wait")?;
    let factor: f64 = item(d, "policy", "replica_factor")?;
    let mut placement = guard(|| Placement::parse(&pl, frac))?;
    if let Placement::Replicate { fraction, .. } = placement {
        placement = Placement::Replicate { fraction, factor };
    }
    Ok(Config {
        eviction: guard(|| EvictionKind::parse(&ev))?,
        placement,
        batching: guard(|| Batching::parse(&bt, size, wait))?,
        prefetch: item(d, "policy", "prefetch")?,
        instances: item(d, "policy", "instances")?,
        popularity: item(d, "policy", "popularity")?,
    })
}

/// Run one simulation; `tierflow.simulate` builds the arguments.
///
/// Args:
///     device_spec: `Device.native()` (tiers, exec tier, bandwidths, overheads).
///     model_spec: `CoE.native()` (names, node sizes, later-stage links, router).
///     arrival, prompt, output, expert, alt: one entry per request (float64, uint32, uint32,
///         uint32, int32); `alt` is the router's second choice or -1.
///     user: closed loop: the user of each request (then `arrival` is the think time), or None.
///     policy: `Policy.native()`.
///
/// Returns:
///     dict of NumPy arrays per request (arrival, ttft, latency, queue, instance), per node
///     (node_loads, home) and per instance stats (switches, link_bytes, occupancy, ...).
///
/// Raises:
///     InvalidArgumentError: a field out of range (named); ScheduleError: the CoE does not fit.
#[pyfunction]
#[pyo3(signature = (device_spec, model_spec, arrival, prompt, output, expert, alt, user, policy))]
fn simulate<'py>(
    py: Python<'py>,
    device_spec: &Bound<'py, PyDict>,
    model_spec: &Bound<'py, PyDict>,
    arrival: PyReadonlyArray1<'py, f64>,
    prompt: PyReadonlyArray1<'py, u32>,
    output: PyReadonlyArray1<'py, u32>,
    expert: PyReadonlyArray1<'py, u32>,
    alt: PyReadonlyArray1<'py, i32>,
    user: Option<PyReadonlyArray1<'py, u32>>,
    policy: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let dev = device(device_spec)?;
    let m = model(model_spec)?;
    let cfg = config(policy)?;
    let w = Workload {
        arrival: arrival.as_array().to_vec(),
        prompt: prompt.as_array().to_vec(),
        output: output.as_array().to_vec(),
        expert: expert.as_array().to_vec(),
        alt: alt.as_array().to_vec(),
        user: user.map(|u| u.as_array().to_vec()),
    };
    let rep = run(py, || core_simulate(&dev, &m, &w, &cfg))?;
    let d = PyDict::new(py);
    d.set_item("arrival", rep.arrival.into_pyarray(py))?;
    d.set_item("ttft", rep.ttft.into_pyarray(py))?;
    d.set_item("latency", rep.latency.into_pyarray(py))?;
    d.set_item("queue", rep.queue.into_pyarray(py))?;
    d.set_item("instance", rep.instance.into_pyarray(py))?;
    d.set_item("node_loads", rep.node_loads.into_pyarray(py))?;
    d.set_item("home", rep.home.into_pyarray(py))?;
    d.set_item("pinned", rep.pinned)?;
    d.set_item("exec_capacity", rep.exec_capacity)?;
    d.set_item("makespan", rep.makespan)?;
    d.set_item("batches", rep.batches)?;
    let insts = PyList::empty(py);
    for s in rep.instances {
        let i = PyDict::new(py);
        i.set_item("switches", s.switches)?;
        i.set_item("hits", s.hits)?;
        i.set_item("misses", s.misses)?;
        i.set_item("prefetches", s.prefetches)?;
        i.set_item("link_bytes", s.link_bytes)?;
        i.set_item("busy", s.busy)?;
        i.set_item("stall", s.stall)?;
        let (t, b): (Vec<f64>, Vec<u64>) = s.occupancy.into_iter().unzip();
        i.set_item("occupancy_t", t.into_pyarray(py))?;
        i.set_item("occupancy_bytes", b.into_pyarray(py))?;
        insts.append(i)?;
    }
    d.set_item("instances", insts)?;
    Ok(d)
}

/// Experts pinned per instance by a placement policy (see `tierflow.policies.place`).
///
/// Args:
///     placement: none | static | pack | replicate.
///     sizes, popularity: per expert (bytes; any non-negative scale).
///     capacity: bytes per instance available to experts; instances: how many.
///     fraction: share of capacity that may be pinned; factor: replica multiplier.
///
/// Returns:
///     list (per instance) of expert indices, most popular first.
#[pyfunction]
#[pyo3(signature = (placement, sizes, popularity, capacity, instances, fraction=1.0, factor=1.0))]
fn place(
    placement: &str,
    sizes: Vec<u64>,
    popularity: Vec<f64>,
    capacity: u64,
    instances: usize,
    fraction: f64,
    factor: f64,
) -> PyResult<Vec<Vec<u32>>> {
    guard(|| {
        let mut p = Placement::parse(placement, fraction)?;
        if let Placement::Replicate { fraction, .. } = p {
            p = Placement::Replicate { fraction, factor };
        }
        if sizes.len() != popularity.len() {
            return Err(tierflow_core::CoreError::Value(format!(
                "sizes ({}) and popularity ({}) must have the same length",
                sizes.len(),
                popularity.len()
            )));
        }
        if instances == 0 {
            return Err(tierflow_core::CoreError::Value("instances must be at least 1".into()));
        }
        Ok(core_place(p, &sizes, &popularity, capacity, instances))
    })
}

/// An eviction policy over experts `0..n` that a runtime drives (the simulator uses the same code).
///
/// Call `on_access(e)` on every use, `on_insert(e)` when `e` becomes resident, `on_evict(e)` when it
/// leaves, and `victim(resident)` to choose whom to evict. Belady needs `set_future(sequence)`.
#[pyclass(name = "EvictionPolicy", module = "tierflow._tierflow")]
struct PyEviction {
    inner: Eviction,
}

#[pymethods]
impl PyEviction {
    #[new]
    fn new(kind: &str, n: usize) -> PyResult<Self> {
        let k = guard(|| EvictionKind::parse(kind))?;
        Ok(PyEviction { inner: Eviction::new(k, n) })
    }
    /// The policy name (lru, lfu, fifo, belady).
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }
    fn __len__(&self) -> usize {
        self.inner.len()
    }
    fn on_access(&mut self, e: u32) -> PyResult<()> {
        guard(|| self.inner.access(e))
    }
    fn on_insert(&mut self, e: u32) -> PyResult<()> {
        guard(|| self.inner.insert(e))
    }
    fn on_evict(&mut self, e: u32) -> PyResult<()> {
        guard(|| {
            self.inner.pick(&[e])?;
            self.inner.on_evict(e);
            Ok(())
        })
    }
    fn victim(&self, resident: Vec<u32>) -> PyResult<Option<u32>> {
        guard(|| self.inner.pick(&resident))
    }
    fn set_future(&mut self, sequence: Vec<u32>) -> PyResult<()> {
        guard(|| self.inner.set_future(&sequence))
    }
    fn __repr__(&self) -> String {
        format!("EvictionPolicy({:?}, n={})", self.inner.kind().name(), self.inner.len())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(place, m)?)?;
    m.add_class::<PyEviction>()?;
    Ok(())
}
