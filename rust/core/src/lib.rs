//! tierflow-core: the pure-Rust core of tierflow (no PyO3, so `cargo test` needs no libpython).
//!
//! - [`store`]: the tiered tensor store (fast / RAM / file tiers, eviction, prefetch, persistence);
//! - [`kernels`]: blocked, streaming, SIMD kernels (matmul, attention, fused transformer ops);
//! - [`sim`]: the discrete-event simulator of Compositions of Experts on tiered devices.

pub mod cpu;
pub mod error;
pub mod eviction;
pub mod kernels;
pub mod pool;
pub mod sim;
pub mod store;

pub use error::{CoreError, Result};
