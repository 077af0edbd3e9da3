//! Kernels: matmul on float and quantised weights (decode-shape streaming kernels written here;
//! large float32 products through `sgemm.rs`, a BLIS-style AVX2+FMA GEMM, or the `gemm` crate
//! for small square-ish products, where it measured faster), attention, and fused transformer
//! ops.
//!
//! Layout, as matrixmultiply and ggml-cpu arrange theirs:
//!
//! - one module per operation (`dot.rs`, `qdot.rs`, `axpy.rs`, `paged.rs`, `attention.rs`,
//!   `sgemm.rs`, `rows.rs` with `act.rs` / `norm.rs` / `rope.rs`, ...): its API, the driver that
//!   splits work over [`crate::pool`], the scalar reference (always compiled) and the tests that
//!   run every [`crate::cpu::Isa::available`] path against that reference;
//! - `x86/avx2/` (and `x86/mod.rs`, helpers shared by x86 instruction sets): intrinsics only,
//!   one file per operation;
//! - `backend.rs`: the instruction-set x weight-format dispatch, written once: a `Backend`
//!   trait with one impl per instruction set (`backend::Scalar`, `x86::avx2::Avx2`,
//!   `x86::avx512::Avx512`) and the `dispatch!` macro mapping an `Isa` to its impl. Adding an
//!   instruction set is adding its folder, one `impl Backend` and one arm of `dispatch!`.
//!
//! The path is picked by the caller from [`crate::cpu::Isa::detect`] (`TIERFLOW_ISA` forces
//! one). Within a backend, optional extensions (AVX-512-VNNI, AVX-512-BF16, AVX-VNNI) are
//! checked per call from the CPU's features, never assumed from the instruction set.
//!
//! The kernels use only [`crate::cpu`], [`crate::error`] and [`crate::pool`] (see the crate
//! docs); tensors held by the store reach them as slices (`store::paged_kv`).

pub mod act;
pub mod attention;
pub mod axpy;
pub(crate) mod backend;
pub mod bandwidth;
pub mod dot;
pub mod gemm;
pub mod group;
pub mod norm;
pub mod paged;
pub mod qdot;
pub mod qpack;
pub mod quant;
pub mod rope;
pub mod rows;
pub mod rows_f32;
pub mod sgemm;
pub mod stream;
pub mod vmath;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// Helpers shared by the kernels' unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// `n` pseudo-random floats in [-0.5, 0.5) (a 64-bit LCG: reproducible, no dependency).
    pub fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }
}
