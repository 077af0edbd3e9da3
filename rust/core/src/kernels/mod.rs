//! Kernels: matmul on float and quantised weights (decode-shape streaming kernels written here,
//! large products through the `gemm` crate), attention, and fused transformer ops.
//!
//! Every SIMD kernel has one function per instruction set and a scalar reference that is always
//! compiled; the path is picked by the caller from [`crate::cpu::Isa::detect`] (`TIERFLOW_ISA`
//! forces one). This crate has no AVX-512 kernels of its own: an AVX-512 machine runs the AVX2
//! kernels (the build machine has no AVX-512 to test one on), while the `gemm` crate uses its own
//! AVX-512 micro-kernels where the CPU has them.

pub mod act;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod attention_avx2;
pub mod axpy;
pub mod bandwidth;
pub mod dot;
pub mod gemm;
pub mod norm;
pub mod paged;
pub mod qdot;
pub mod quant;
pub mod rope;
pub mod rows;
pub mod stream;
pub mod vmath;
