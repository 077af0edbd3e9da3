//! AVX-512-VNNI body of `kernels/qpack.rs` (the layout, the driver and the tests are there): one
//! 16-row tile of a Q8_0 / Q4_0 weight in the decode layout against every activation row.
//!
//! Per block: the 16 scales are one 32-byte load (`vcvtph2ps`), the 8 operands `T_k` are 8
//! loads (Q8_0) or 4 loads split into low and high nibbles (Q4_0); then for each activation row
//! the arithmetic of `x86/avx512/qdot.rs`'s `tile` after its transposition: 8 `vpdpbusd`
//! against the row's block broadcast 4 bytes at a time, minus `OFF * sum(qx)`, and
//! `acc += (dw * dx) * float(isum)` (a multiply, a multiply, an add), so each lane is the
//! scalar reference's chain for its row: bit-identical.

use super::qdot::block_step;
use crate::kernels::qdot::{store_sums, QActs};
use crate::kernels::qpack::{record_bytes, TILE};
use crate::kernels::quant::{Format, QK};
use std::arch::x86_64::*;

/// Activation rows per pass over a tile.
const MR: usize = 4;

/// Tiles `tile .. tile + NT` (rows `16 tile ..`) of `C = X W^T + bias` for every activation
/// row, the `NT` tiles' records read side by side block after block (`NT` sequential streams,
/// one activation broadcast shared by them).
///
/// `corr[e]` is `OFF * sum(qx)` of activation block `e` (`qdot::block_corr`); while the first
/// activation rows run, the records `pfd` bytes ahead are prefetched.
///
/// # Safety
/// The CPU has AVX-512 F/BW + VNNI; `packed` is the decode layout of a `(a.k, n)` weight in
/// `fmt` with at least `tile + NT` tiles; `c` holds `a.m` rows of stride `ldc >= n`, and no
/// other thread writes these tiles' columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tiles<const NT: usize>(
    a: &QActs,
    corr: &[i32],
    fmt: Format,
    n: usize,
    packed: &[u8],
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    tile: usize,
    pfd: usize,
) {
    let (k, nb) = (a.k, a.k / QK);
    let rec = record_bytes(fmt);
    let tb = nb * rec;
    let base = packed[tile * tb..(tile + NT) * tb].as_ptr();
    let mut i = 0;
    while i < a.m {
        let mr = MR.min(a.m - i);
        let mut acc = [[_mm512_setzero_ps(); MR]; NT];
        for b in 0..nb {
            unsafe {
                for (u, accu) in acc.iter_mut().enumerate() {
                    let r = base.add(u * tb + b * rec);
                    if i == 0 && pfd > 0 {
                        let mut o = 0;
                        while o < rec {
                            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(pfd + o) as *const i8);
                            o += 64;
                        }
                    }
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(r as *const __m256i));
                    let q = r.add(32);
                    // (no closures around intrinsics: out of line they lose this function's
                    // target features; see `qdot::tile_m1`)
                    let tk: [__m512i; 8] = if fmt == Format::Q8_0 {
                        [
                            load(q),
                            load(q.add(64)),
                            load(q.add(128)),
                            load(q.add(192)),
                            load(q.add(256)),
                            load(q.add(320)),
                            load(q.add(384)),
                            load(q.add(448)),
                        ]
                    } else {
                        let v = [load(q), load(q.add(64)), load(q.add(128)), load(q.add(192))];
                        [
                            lo4(v[0]),
                            lo4(v[1]),
                            lo4(v[2]),
                            lo4(v[3]),
                            hi4(v[0]),
                            hi4(v[1]),
                            hi4(v[2]),
                            hi4(v[3]),
                        ]
                    };
                    for (t, at) in accu.iter_mut().enumerate().take(mr) {
                        let (e, q0) = ((i + t) * nb + b, (i + t) * k + b * QK);
                        *at = block_step(a, &tk, dw, corr, e, q0, *at);
                    }
                }
            }
        }
        let mut out = [0f32; 16];
        for (u, accu) in acc.iter().enumerate() {
            let j = (tile + u) * TILE;
            let valid = (n - j).min(TILE);
            for (t, at) in accu.iter().enumerate().take(mr) {
                unsafe {
                    _mm512_storeu_ps(out.as_mut_ptr(), *at);
                    store_sums(&out[..valid], bias, c, (i + t) * ldc + j, j);
                }
            }
        }
        i += mr;
    }
}

/// 64 bytes at `p` (unaligned).
#[inline(always)]
unsafe fn load(p: *const u8) -> __m512i {
    unsafe { _mm512_loadu_si512(p as *const __m512i) }
}

/// The low nibble of every byte.
#[inline(always)]
unsafe fn lo4(v: __m512i) -> __m512i {
    unsafe { _mm512_and_si512(v, _mm512_set1_epi8(0x0f)) }
}

/// The high nibble of every byte.
#[inline(always)]
unsafe fn hi4(v: __m512i) -> __m512i {
    unsafe { _mm512_and_si512(_mm512_srli_epi16::<4>(v), _mm512_set1_epi8(0x0f)) }
}
