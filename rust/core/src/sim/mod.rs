//! The Composition-of-Experts simulator: devices with memory tiers, a roofline-plus-overhead
//! latency model, scheduling policies (placement, eviction, batching, prefetch) and a
//! discrete-event engine that reports per-request latency and per-device traffic.
//!
//! - [`device`]: tiers and device constants, copy times;
//! - [`cost`]: the pass-time model of a node;
//! - [`policy`]: placement / batching (eviction is [`crate::eviction`], shared with the store);
//! - [`engine`]: the event loop; [`report`]: what it measures.

pub mod cost;
pub mod device;
pub mod engine;
pub mod policy;
pub mod report;

pub use cost::{NodeCost, NodeSpec};
pub use device::{DeviceSpec, Tier};
pub use engine::{simulate, Config, Model, Workload};
pub use policy::{place, Batching, Eviction, EvictionKind, Placement};
pub use report::{InstanceStats, SimReport};
