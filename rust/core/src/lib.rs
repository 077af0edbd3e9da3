//! tierflow-core: the pure-Rust core of tierflow (no PyO3, so `cargo test` needs no libpython).
//!
//! Three pillars over a small base:
//!
//! - [`store`]: the tiered tensor store (fast / RAM / file tiers, eviction, prefetch,
//!   persistence, safetensors files; `store::paged_kv`: paged decode attention over stored
//!   pages);
//! - [`kernels`]: blocked, streaming, SIMD kernels (matmul, attention, fused transformer ops),
//!   one module per operation and one folder per instruction set (`kernels/x86/avx2`);
//! - [`sim`]: the discrete-event simulator of Compositions of Experts on tiered devices;
//! - base: [`error`] (`CoreError`), [`cpu`] (instruction sets found at run time), [`pool`] (the
//!   worker threads), [`eviction`] (LRU / LFU / FIFO / Belady, shared by the store and the
//!   simulator).
//!
//! Layers point down only; a module uses just the ones listed after it:
//!
//! | module     | may use                                   |
//! |------------|-------------------------------------------|
//! | `error`    | -                                         |
//! | `cpu`      | -                                         |
//! | `pool`     | `error`                                   |
//! | `eviction` | `error`                                   |
//! | `kernels`  | `cpu`, `error`, `pool`                    |
//! | `store`    | `cpu`, `error`, `pool`, `eviction`, `kernels` |
//! | `sim`      | `error`, `eviction`                       |
//!
//! `tests/layers.rs` checks every `crate::` path of the sources against this table (and that
//! SIMD intrinsics appear only under `kernels/x86/`).

pub mod cpu;
pub mod error;
pub mod eviction;
pub mod kernels;
pub mod pool;
pub mod sim;
pub mod store;

pub use error::{CoreError, Result};
