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

/// Bytes ahead of each record being read that the kernel prefetches (a tile is one sequential
/// stream; measured over 512 MiB of distinct 4096^2 weights, 2 threads, one tile at a time:
/// q4_0 read at 14-19 GB/s without, 20-24 GB/s at 1-2 KiB ahead, less again at 4 KiB; with
/// four tiles side by side 2 KiB was 1-2% ahead of 1-1.5 KiB on the 8-layer Llama's weights).
const PF: usize = 2048;

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
    if total == 0 {
        return Ok(out); // K = 0 or N = 0: no blocks
    }
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
    if packed.is_empty() {
        return Ok(out); // K = 0 or N = 0: no blocks
    }
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

/// One weight of [`matmul_packed_group`]: the decode layout of a `(k, n)` weight in `fmt`,
/// with its bias and its output (`m` rows of stride `ldc`).
pub struct PackedOut<'a> {
    pub fmt: Format,
    pub k: usize,
    pub n: usize,
    pub packed: &'a [u8],
    pub bias: Option<&'a [f32]>,
    pub c: &'a mut [f32],
    pub ldc: usize,
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
    let mut part = [PackedOut { fmt, k, n, packed, bias, c, ldc }];
    matmul_packed_group(isa, x, m, &mut part)
}

/// `C_j = X W_j (+ bias_j)` for several weights in the decode layout sharing `X` (`(m, k)`,
/// every `W_j` of the same `K`): at decode shapes on a CPU with AVX-512-VNNI, `X` is rounded
/// to Q8 blocks once and the tiles of all the weights form one task list for the team (the
/// weights stream back to back: one start and one tail, not one per weight); otherwise each
/// weight goes through [`matmul_packed`]'s fallback. Each output is bit for bit what that weight
/// alone gives. Every operand is checked before anything is written.
pub fn matmul_packed_group(
    isa: Isa,
    x: &[f32],
    m: usize,
    parts: &mut [PackedOut<'_>],
) -> Result<()> {
    for p in parts.iter() {
        check_packed(p.fmt, p.k, p.n, p.packed)?;
        super::gemm::check_operands(x, m, p.k, p.n, p.bias, p.c, p.ldc)?;
    }
    if m == 0 || parts.iter().all(|p| p.n == 0) {
        return Ok(());
    }
    let k = parts[0].k;
    #[cfg(target_arch = "x86_64")]
    if let Some(body) = Body::pick(isa) {
        if m <= super::gemm::DECODE_MAX_M && k > 0 && parts.iter().all(|p| p.k == k) {
            if let Some(a) = quantize_acts(isa, x, m, k) {
                run_tiles(&a, parts, body);
                return Ok(());
            }
        }
    }
    for p in parts.iter_mut() {
        if p.n == 0 {
            continue;
        }
        let data = unpack(p.fmt, p.k, p.n, p.packed)?;
        let w = QWeight::with_len_check(p.fmt, p.k, p.n, &data)?;
        super::gemm::matmul(isa, x, m, super::gemm::Weight::Rows(w), p.bias, p.c, p.ldc)?;
    }
    Ok(())
}

/// One weight in the decode layout: `(format, k, n, packed bytes)`.
pub type PackedW<'a> = (Format, usize, usize, &'a [u8]);

/// The gated MLP `(act(X Wg) * (X Wu)) Wd` with the three weights in the decode layout, in one
/// call: [`matmul_packed_group`] for the gate and up products, the gating product
/// (`act::gated`), then [`matmul_packed`] for the down product: bit for bit what the three
/// calls give one by one (the same functions in the same order), without the returns to Python
/// between them. `X` is `(m, k)`, `out` `(m, n_down)` row-major.
#[allow(clippy::too_many_arguments)]
pub fn mlp_packed(
    isa: Isa,
    x: &[f32],
    m: usize,
    gate: PackedW<'_>,
    up: PackedW<'_>,
    down: PackedW<'_>,
    act: super::act::Act,
    out: &mut [f32],
) -> Result<()> {
    let (inter, nd) = (gate.2, down.2);
    if up.1 != gate.1 || up.2 != inter || down.1 != inter {
        return Err(CoreError::Shape(format!(
            "mlp weights do not chain: gate ({}, {inter}), up ({}, {}), down ({}, {nd})",
            gate.1, up.1, up.2, down.1
        )));
    }
    let size = m
        .checked_mul(inter)
        .ok_or_else(|| CoreError::Shape(format!("an ({m}, {inter}) intermediate overflows")))?;
    let (mut g, mut u) = (vec![0f32; size], vec![0f32; size]);
    {
        let mut parts = [
            PackedOut {
                fmt: gate.0,
                k: gate.1,
                n: inter,
                packed: gate.3,
                bias: None,
                c: &mut g,
                ldc: inter,
            },
            PackedOut {
                fmt: up.0,
                k: up.1,
                n: inter,
                packed: up.3,
                bias: None,
                c: &mut u,
                ldc: inter,
            },
        ];
        matmul_packed_group(isa, x, m, &mut parts)?;
    }
    let mut h = vec![0f32; size];
    if size > 0 {
        super::act::gated(isa, act, &g, &u, inter, &mut h);
    }
    matmul_packed(isa, &h, m, down.0, inter, nd, down.3, None, out, nd)
}

/// The kernel body [`run_tiles`] runs: one per instruction set (see `x86/avx512/qpack.rs`,
/// `x86/avx2/qpack.rs`), all bit-identical to the scalar reference.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq)]
enum Body {
    /// AVX-512-VNNI, 16 rows per vector.
    Avx512Vnni,
    /// AVX-VNNI, two vectors of 8 rows.
    AvxVnni,
    /// AVX2 without VNNI (`vpmaddubsw` + `vpmaddwd`).
    Avx2,
}

#[cfg(target_arch = "x86_64")]
impl Body {
    /// The body for `isa` on this CPU (None: scalar, where the blocks are unpacked).
    fn pick(isa: Isa) -> Option<Body> {
        use crate::cpu::Ext;
        match isa {
            Isa::Avx512 if Ext::Avx512Vnni.present() => Some(Body::Avx512Vnni),
            Isa::Avx512 | Isa::Avx2 if Ext::AvxVnni.present() => Some(Body::AvxVnni),
            Isa::Avx512 | Isa::Avx2 => Some(Body::Avx2),
            Isa::Scalar => None,
        }
    }
}

/// Whether [`matmul_packed`] runs a packed kernel (not the unpacking fallback) at decode
/// shapes on `isa` here: every instruction set but the scalar one.
pub fn packed_kernel_available(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Body::pick(isa).is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Smallest task of [`run_tiles`] in bytes of weight (below it the team's hand-off costs more
/// than the split gains).
const MIN_TASK_BYTES: usize = 64 << 10;

/// The tiles of every part on the task team: about four tasks per thread over all the parts'
/// bytes (at least [`MIN_TASK_BYTES`] each; the last quarter of the bytes in tasks a quarter
/// that size), a task being a run of tiles of one part, taken four at a time: four record streams side by side keep more reads in flight per core than
/// one (measured on the 8-layer Llama's q4_0 / q8_0 weights, 2 threads, 235 / 444 MB per
/// token: one tile 22-29 GB/s, two 24-30, four 25-31, the read probe ~35).
#[cfg(target_arch = "x86_64")]
fn run_tiles(a: &QActs, parts: &mut [PackedOut<'_>], body: Body) {
    use super::dot::SendPtr;
    let threads = crate::pool::num_threads().max(1);
    let total: usize = parts.iter().map(|p| p.packed.len()).sum();
    let task_bytes = (total / (threads * 4)).max(MIN_TASK_BYTES);
    // (part, first tile, end tile)
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let tiles = p.n.div_ceil(TILE);
        if tiles == 0 {
            continue;
        }
        let count = p.packed.len().div_ceil(task_bytes).clamp(1, tiles);
        let per = tiles.div_ceil(count).next_multiple_of(4).min(tiles);
        let mut t0 = 0;
        while t0 < tiles {
            tasks.push((j, t0, (t0 + per).min(tiles)));
            t0 += per;
        }
    }
    {
        // The tail: the tasks holding the last quarter of the bytes, split in four (the team
        // takes tasks in order, so the last ones are short and the threads finish together;
        // measured 1-2% faster on 512 MiB of distinct weights and on the 8-layer Llama).
        let tile_bytes: Vec<usize> =
            parts.iter().map(|p| p.packed.len() / p.n.div_ceil(TILE).max(1)).collect();
        let mut acc = 0;
        let mut cut = tasks.len();
        while cut > 0 && acc < total / 4 {
            cut -= 1;
            let (j, t0, t1) = tasks[cut];
            acc += (t1 - t0) * tile_bytes[j];
        }
        let tail: Vec<(usize, usize, usize)> = tasks.split_off(cut);
        for (j, t0, t1) in tail {
            let sub = (t1 - t0).div_ceil(4).next_multiple_of(4).max(4);
            let mut s0 = t0;
            while s0 < t1 {
                tasks.push((j, s0, (s0 + sub).min(t1)));
                s0 += sub;
            }
        }
    }
    let corr8 = super::qdot::block_corr(a, 128);
    let corr4 = super::qdot::block_corr(a, 8);
    let outs: Vec<(SendPtr<f32>, usize)> =
        parts.iter_mut().map(|p| (SendPtr(p.c.as_mut_ptr()), p.ldc)).collect();
    let parts = &*parts;
    crate::pool::for_tasks(tasks.len(), total, |t| {
        let (j, mut tile, end) = tasks[t];
        let p = &parts[j];
        let corr = if p.fmt == Format::Q8_0 { &corr8 } else { &corr4 };
        let (c, ldc) = (outs[j].0.get(), outs[j].1);
        use super::x86::{avx2::qpack as v2, avx512::qpack as v512};
        while tile < end {
            let nt = if end - tile >= 4 {
                4
            } else if end - tile >= 2 {
                2
            } else {
                1
            };
            // SAFETY: the CPU has the body's instruction set (`Body::pick`); the task writes
            // only the columns of its tiles (16 * tile .. min(n, 16 * end)) of the m rows of
            // part j's C, which `check_operands` showed in bounds, disjoint from every other
            // task.
            unsafe {
                let (f, n, w, b) = (p.fmt, p.n, p.packed, p.bias);
                match (body, nt) {
                    (Body::Avx512Vnni, 4) => {
                        v512::tiles::<4>(a, corr, f, n, w, b, c, ldc, tile, PF)
                    }
                    (Body::Avx512Vnni, 2) => {
                        v512::tiles::<2>(a, corr, f, n, w, b, c, ldc, tile, PF)
                    }
                    (Body::Avx512Vnni, _) => {
                        v512::tiles::<1>(a, corr, f, n, w, b, c, ldc, tile, PF)
                    }
                    (Body::AvxVnni, 4) => {
                        v2::tiles_vnni::<4>(a, corr, f, n, w, b, c, ldc, tile, PF)
                    }
                    (Body::AvxVnni, 2) => {
                        v2::tiles_vnni::<2>(a, corr, f, n, w, b, c, ldc, tile, PF)
                    }
                    (Body::AvxVnni, _) => {
                        v2::tiles_vnni::<1>(a, corr, f, n, w, b, c, ldc, tile, PF)
                    }
                    (Body::Avx2, 4) => v2::tiles::<4>(a, corr, f, n, w, b, c, ldc, tile, PF),
                    (Body::Avx2, 2) => v2::tiles::<2>(a, corr, f, n, w, b, c, ldc, tile, PF),
                    (Body::Avx2, _) => v2::tiles::<1>(a, corr, f, n, w, b, c, ldc, tile, PF),
                }
            }
            tile += nt;
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
        for (k, n) in [(0, 16), (64, 0), (0, 0)] {
            assert!(pack(Format::Q4_0, k, n, &[]).unwrap().is_empty());
            assert!(unpack(Format::Q4_0, k, n, &[]).unwrap().is_empty());
        }
        assert!(unpack(Format::Q8_0, 32, 1, &[0; 10]).is_err());
    }

    /// Bit-identical to `matmul` on the GGUF blocks (the scalar reference's chain) on every
    /// path, for 1-9 and 33 activation rows, with and without a bias.
    #[test]
    fn packed_matmul_equals_the_reference() {
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
                            if isa == Isa::Scalar {
                                continue;
                            }
                            let mut got = vec![f32::NAN; m * ldc];
                            matmul_packed(isa, &x, m, fmt, k, n, &p, b, &mut got, ldc).unwrap();
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

    /// Every kernel body this CPU can run (AVX-512-VNNI, AVX-VNNI and plain AVX2, whichever
    /// the ISA picks by default), each forced in turn, is bit-identical to the scalar
    /// reference at decode shapes, tiles taken 4, 2 and 1 at a time.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_packed_body_equals_the_reference() {
        use crate::cpu::Ext;
        let mut bodies = Vec::new();
        if expect(Ext::Avx512Vnni) {
            bodies.push(Body::Avx512Vnni);
        }
        if expect(Ext::AvxVnni) {
            bodies.push(Body::AvxVnni);
        }
        if Isa::Avx2.supported() {
            bodies.push(Body::Avx2);
        }
        let want_isa = std::env::var("TIERFLOW_EXPECT_ISA").unwrap_or_default();
        assert!(
            !matches!(want_isa.trim(), "avx2" | "avx512") || bodies.contains(&Body::Avx2),
            "CI expects AVX2 but the plain AVX2 body did not run"
        );
        let (k, n) = (256, 16 * 7 + 5); // 8 tiles: runs of 4, 2, 1 and a partial one
        for fmt in [Format::Q8_0, Format::Q4_0] {
            let mut wf = lcg(k * n, 11);
            wf[..32].iter_mut().for_each(|v| *v *= 50.0);
            let mut data = quantize(fmt, &wf, k, n).unwrap();
            if fmt == Format::Q8_0 {
                data[2..34].fill(0x80); // w = -128 (valid GGUF data the quantiser never writes)
            }
            let packed = pack(fmt, k, n, &data).unwrap();
            let w = QWeight::new(fmt, k, n, &data).unwrap();
            for m in [1usize, 3, 5, 32] {
                let mut x = lcg(m * k, 40 + m as u64);
                x[..32].iter_mut().for_each(|v| *v = if *v < 0.0 { -1.0 } else { 1.0 }); // +-127
                let mut want = vec![f32::NAN; m * n];
                let wr = crate::kernels::gemm::Weight::Rows(w);
                crate::kernels::gemm::matmul(Isa::Scalar, &x, m, wr, None, &mut want, n).unwrap();
                for &body in &bodies {
                    let a = quantize_acts(Isa::Avx2, &x, m, k).expect("finite activations");
                    let mut got = vec![f32::NAN; m * n];
                    let mut parts =
                        [PackedOut { fmt, k, n, packed: &packed, bias: None, c: &mut got, ldc: n }];
                    run_tiles(&a, &mut parts, body);
                    let same = got.iter().zip(&want).all(|(g, e)| g.to_bits() == e.to_bits());
                    assert!(same, "{body:?} {fmt:?} m={m}");
                }
            }
        }
    }

    /// The grouped call gives each part the bits of that part alone, on every path, with
    /// mixed formats and sizes (tiles split across tasks in runs of 4, 2 and 1).
    #[test]
    fn packed_group_equals_separate_calls() {
        let k = 128;
        let specs = [(Format::Q8_0, 300usize), (Format::Q4_0, 16), (Format::Q4_0, 1000)];
        let packs: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(j, &(f, n))| {
                let d = quantize(f, &lcg(k * n, 20 + j as u64), k, n).unwrap();
                pack(f, k, n, &d).unwrap()
            })
            .collect();
        let bias = lcg(1000, 8);
        crate::pool::set_num_threads(Some(2)).unwrap();
        for m in [1usize, 5, 33] {
            let x = lcg(m * k, 30 + m as u64);
            for isa in Isa::available() {
                let mut want: Vec<Vec<f32>> = Vec::new();
                for (j, &(f, n)) in specs.iter().enumerate() {
                    let mut c = vec![f32::NAN; m * n];
                    let b = (j != 1).then(|| &bias[..n]);
                    matmul_packed(isa, &x, m, f, k, n, &packs[j], b, &mut c, n).unwrap();
                    want.push(c);
                }
                let mut got: Vec<Vec<f32>> =
                    specs.iter().map(|&(_, n)| vec![7f32; m * n]).collect();
                let mut parts: Vec<PackedOut<'_>> = specs
                    .iter()
                    .zip(&packs)
                    .zip(got.iter_mut())
                    .enumerate()
                    .map(|(j, ((&(fmt, n), packed), c))| PackedOut {
                        fmt,
                        k,
                        n,
                        packed,
                        bias: (j != 1).then(|| &bias[..n]),
                        c,
                        ldc: n,
                    })
                    .collect();
                matmul_packed_group(isa, &x, m, &mut parts).unwrap();
                drop(parts);
                for j in 0..specs.len() {
                    let same = got[j].iter().zip(&want[j]).all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{isa:?} m={m} part {j}");
                }
            }
        }
        crate::pool::set_num_threads(None).unwrap();
    }
}
