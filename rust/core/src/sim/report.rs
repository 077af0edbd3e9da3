//! What a simulation measures.

/// Per device instance.
#[derive(Clone, Debug, Default)]
pub struct InstanceStats {
    /// Expert loads into the exec tier (demand misses + prefetches).
    pub switches: u64,
    pub hits: u64,
    pub misses: u64,
    pub prefetches: u64,
    /// Bytes copied over each link `l` (tier `l` <-> tier `l + 1`).
    pub link_bytes: Vec<u64>,
    /// Seconds spent serving batches (router, waiting for loads, execution).
    pub busy: f64,
    /// Seconds the instance stalled waiting for an expert copy.
    pub stall: f64,
    /// (time, bytes of experts resident in the exec tier) at every change.
    pub occupancy: Vec<(f64, u64)>,
}

/// The result of one simulation.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Per request (trace order): arrival, time to first token, end-to-end latency, queueing.
    pub arrival: Vec<f64>,
    pub ttft: Vec<f64>,
    pub latency: Vec<f64>,
    pub queue: Vec<f64>,
    /// Device instance that served each request.
    pub instance: Vec<u32>,
    pub instances: Vec<InstanceStats>,
    /// Loads of each node (all instances).
    pub node_loads: Vec<u64>,
    /// Home tier of each node.
    pub home: Vec<u32>,
    /// Experts pinned per instance.
    pub pinned: Vec<Vec<u32>>,
    /// Bytes of the exec tier available to experts (per instance).
    pub exec_capacity: u64,
    /// Time of the last completion.
    pub makespan: f64,
    /// Router passes (batches).
    pub batches: u64,
}
