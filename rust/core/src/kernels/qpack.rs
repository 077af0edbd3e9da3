//! A decode layout for Q8_0 / Q4_0 weights, repacked once from GGUF blocks for the VNNI
//! kernels (what llama.cpp's extra CPU buffer types do at load).
//!
//! The `N` rows are taken 16 at a time (a tile; the last one padded with zero rows), and each
//! tile is stored block after block, `16 * BB` bytes of GGUF data becoming one record of `R`
//! bytes: the 16 rows' f16 scales (32 bytes), then the quants already in the operand order of
//! `vpdpbusd` with one row per 32-bit lane: `T_k` (64 bytes) holds bytes `4k..4k+4` of each of
//! the 16 rows' 32 values. Q8_0 stores the 8 `T_k` as unsigned bytes `w + 128` (`R = 544`);
//! Q4_0 stores 4 vectors `V_k` whose low nibbles are `T_k` and high nibbles `T_{k+4}`, the
//! values `nibble = w + 8` (`R = 288`). Same size as the GGUF data plus the padding rows.
//!
//! A tile is then one sequential stream, and the kernel (`x86/avx512/qpack.rs`) needs neither the
//! in-register transposition of `x86/avx512/qdot.rs` nor a gather for the scales. Each output
//! is the same chain of operations as the scalar reference `qdot::scalar_task` (exact integer
//! block sums, `s += (dw * dx) * isum` block by block): bit-identical, as the tests check.

use super::qdot::{is_int_format, quantize_acts, QActs};
use super::quant::{Format, QWeight, QK};
use crate::cpu::Isa;
use crate::{CoreError, Result};

/// Rows per tile.
pub const TILE: usize = 16;

/// Bytes ahead of the record being read that the kernel prefetches (a tile is one sequential
/// stream; measured over 512 MiB of distinct 4096^2 weights, 2 threads: q4_0 read at 14-19 GB/s
/// without, 20-24 GB/s at 1-2 KiB ahead, less again at 4 KiB).
const PF: usize = 1536;

/// Bytes of one tile's record for one block.
pub fn record_bytes(fmt: Format) -> usize {
    32 + if fmt == Format::Q8_0 { 8 * 64 } else { 4 * 64 }
}

/// Bytes of the packed layout of a `(k, n)` weight.
pub fn packed_bytes(fmt: Format, k: usize, n: usize) -> Result<usize> {
    if !is_int_format(fmt) || k % QK != 0 {
        return Err(CoreError::Value(format!(
            "the VNNI decode layout takes q8_0 / q4_0 weights with K a multiple of 32, not {} with K = {k}",
            fmt.name()
        )));
    }
    n.div_ceil(TILE)
        .checked_mul(k / QK)
        .and_then(|v| v.checked_mul(record_bytes(fmt)))
        .ok_or_else(|| CoreError::Value(format!("a ({k}, {n}) weight is too large to pack")))
}

/// Repack GGUF block data (`N` rows of `K`, checked by `QWeight::new`) into the decode layout.
pub fn pack(fmt: Format, k: usize, n: usize, data: &[u8]) -> Result<Vec<u8>> {
    let total = packed_bytes(fmt, k, n)?;
    let w = QWeight::new(fmt, k, n, data)?;
    let (nb, bb, rb, rec) = (k / QK, fmt.block_bytes(), w.row_bytes(), record_bytes(fmt));
    let mut out = vec![0u8; total];
    for (t, tile) in out.chunks_exact_mut(nb * rec).enumerate() {
        for (b, r) in tile.chunks_exact_mut(rec).enumerate() {
            for row in 0..TILE.min(n - t * TILE) {
                let blk = &data[(t * TILE + row) * rb + b * bb..][..bb];
                r[2 * row..2 * row + 2].copy_from_slice(&blk[..2]);
                let q = &blk[2..];
                if fmt == Format::Q8_0 {
                    for kk in 0..8 {
                        for j in 0..4 {
                            r[32 + 64 * kk + 4 * row + j] = q[4 * kk + j] ^ 0x80;
                        }
                    }
                } else {
                    for kk in 0..4 {
                        r[32 + 64 * kk + 4 * row..][..4].copy_from_slice(&q[4 * kk..4 * kk + 4]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `packed` holds exactly the decode layout of a `(k, n)` weight in `fmt`.
fn check_packed(fmt: Format, k: usize, n: usize, packed: &[u8]) -> Result<()> {
    let total = packed_bytes(fmt, k, n)?;
    if packed.len() != total {
        return Err(CoreError::Shape(format!(
            "packed {} data of {} bytes, expected {total} for ({k}, {n})",
            fmt.name(),
            packed.len()
        )));
    }
    Ok(())
}

/// The GGUF block data back from the decode layout (the inverse of [`pack`]).
pub fn unpack(fmt: Format, k: usize, n: usize, packed: &[u8]) -> Result<Vec<u8>> {
    check_packed(fmt, k, n, packed)?;
    let (nb, bb, rec) = (k / QK, fmt.block_bytes(), record_bytes(fmt));
    let rb = nb * bb;
    let mut out = vec![0u8; fmt.total_bytes(k, n)?];
    for (t, tile) in packed.chunks_exact(nb * rec).enumerate() {
        for (b, r) in tile.chunks_exact(rec).enumerate() {
            for row in 0..TILE.min(n - t * TILE) {
                let blk = &mut out[(t * TILE + row) * rb + b * bb..][..bb];
                blk[..2].copy_from_slice(&r[2 * row..2 * row + 2]);
                let q = &mut blk[2..];
                if fmt == Format::Q8_0 {
                    for kk in 0..8 {
                        for j in 0..4 {
                            q[4 * kk + j] = r[32 + 64 * kk + 4 * row + j] ^ 0x80;
                        }
                    }
                } else {
                    for kk in 0..4 {
                        q[4 * kk..4 * kk + 4].copy_from_slice(&r[32 + 64 * kk + 4 * row..][..4]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `C = X W (+ bias)` with `W` in the decode layout, `X` `(m, k)`: the AVX-512-VNNI kernel at
/// decode shapes (`m <= DECODE_MAX_M`, `X` finite, the CPU has it); otherwise the block data
/// are unpacked and `gemm::matmul` runs (the same results: every path is exact or the
/// reference's).
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed(
    isa: Isa,
    x: &[f32],
    m: usize,
    fmt: Format,
    k: usize,
    n: usize,
    packed: &[u8],
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    check_packed(fmt, k, n, packed)?;
    super::gemm::check_operands(x, m, k, n, bias, c, ldc)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512
        && crate::cpu::Ext::Avx512Vnni.present()
        && m <= super::gemm::DECODE_MAX_M
        && k > 0
    {
        if let Some(a) = quantize_acts(isa, x, m, k) {
            run_tiles(&a, fmt, n, packed, bias, c, ldc);
            return Ok(());
        }
    }
    let data = unpack(fmt, k, n, packed)?;
    let w = QWeight::with_len_check(fmt, k, n, &data)?;
    super::gemm::matmul(isa, x, m, super::gemm::Weight::Rows(w), bias, c, ldc)
}

/// The tiles on the task team, a run of tiles per task.
#[cfg(target_arch = "x86_64")]
fn run_tiles(
    a: &QActs,
    fmt: Format,
    n: usize,
    packed: &[u8],
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    use super::dot::SendPtr;
    let tiles = n.div_ceil(TILE);
    let threads = crate::pool::num_threads().max(1);
    let tile_bytes = (a.k / QK) * record_bytes(fmt);
    let per = tiles.div_ceil(threads * 4).max((256 * 1024 / tile_bytes.max(1)).max(1).min(tiles));
    let corr = super::qdot::block_corr(a, if fmt == Format::Q8_0 { 128 } else { 8 });
    let cp = SendPtr(c.as_mut_ptr());
    crate::pool::for_tasks(tiles.div_ceil(per), packed.len(), |t| {
        for tile in t * per..((t + 1) * per).min(tiles) {
            // SAFETY: the CPU has AVX-512 + VNNI (checked by the caller); the task writes only
            // the columns of its tiles (16 * tile .. min(n, 16 * tile + 16)) of the m rows of C,
            // which `check_operands` showed in bounds.
            unsafe {
                super::x86::avx512::qpack::tile(
                    a,
                    &corr,
                    fmt,
                    n,
                    packed,
                    bias,
                    cp.get(),
                    ldc,
                    tile,
                    PF,
                )
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::qdot::tests::expect;
    use crate::kernels::quant::quantize;
    use crate::kernels::test_util::lcg;

    #[test]
    fn pack_round_trips_and_sizes() {
        for fmt in [Format::Q8_0, Format::Q4_0] {
            for &(k, n) in &[(32, 1), (64, 16), (96, 17), (256, 40)] {
                let data = quantize(fmt, &lcg(k * n, 3), k, n).unwrap();
                let p = pack(fmt, k, n, &data).unwrap();
                assert_eq!(p.len(), packed_bytes(fmt, k, n).unwrap());
                assert_eq!(unpack(fmt, k, n, &p).unwrap(), data, "{fmt:?} {k} {n}");
            }
        }
        assert!(pack(Format::F32, 32, 1, &[0; 128]).is_err());
        assert!(unpack(Format::Q8_0, 32, 1, &[0; 10]).is_err());
    }

    /// Bit-identical to `matmul` on the GGUF blocks (the scalar reference's chain) on every
    /// path, for 1-9 and 33 activation rows, with and without a bias.
    #[test]
    fn packed_matmul_equals_the_reference() {
        let vnni = expect(crate::cpu::Ext::Avx512Vnni);
        for fmt in [Format::Q8_0, Format::Q4_0] {
            for &(k, n) in &[(32, 1), (96, 17), (256, 40), (512, 300)] {
                let mut wf = lcg(k * n, 9);
                wf[..32].iter_mut().for_each(|v| *v *= 50.0); // a block with a large scale
                let data = quantize(fmt, &wf, k, n).unwrap();
                let p = pack(fmt, k, n, &data).unwrap();
                let w = QWeight::new(fmt, k, n, &data).unwrap();
                let bias = lcg(n, 4);
                for m in (1..=9).chain([33]) {
                    let x = lcg(m * k, 5 + m as u64);
                    for b in [None, Some(&bias[..])] {
                        let ldc = n + 3;
                        crate::pool::set_num_threads(Some(2)).unwrap();
                        for isa in Isa::available() {
                            // Decode shapes: the scalar reference; above, `matmul` on the
                            // blocks with the same ISA (the packed path unpacks and calls it).
                            let mut want = vec![f32::NAN; m * ldc];
                            let risa = if m <= 32 { Isa::Scalar } else { isa };
                            let wr = crate::kernels::gemm::Weight::Rows(w);
                            crate::kernels::gemm::matmul(risa, &x, m, wr, b, &mut want, ldc)
                                .unwrap();
                            if isa == Isa::Scalar || (m <= 32 && isa == Isa::Avx512 && !vnni) {
                                continue;
                            }
                            let mut got = vec![f32::NAN; m * ldc];
                            matmul_packed(isa, &x, m, fmt, k, n, &p, b, &mut got, ldc).unwrap();
                            if m <= 32 && isa == Isa::Avx2 && !crate::cpu::Ext::AvxVnni.present() {
                                continue; // the plain AVX2 body is within a bound, not exact
                            }
                            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                                assert_eq!(
                                    g.to_bits(),
                                    e.to_bits(),
                                    "{isa:?} {fmt:?} m={m} k={k} n={n} at {i}: {g} vs {e}"
                                );
                            }
                        }
                        crate::pool::set_num_threads(None).unwrap();
                    }
                }
            }
        }
    }
}
