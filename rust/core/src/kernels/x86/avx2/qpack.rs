//! AVX2 bodies of `kernels/qpack.rs` (the layout, the driver and the tests are there): the
//! AVX-512-VNNI kernel's scheme (`x86/avx512/qpack.rs`) on 256-bit vectors, each 16-row tile's
//! record taken as two halves of 8 rows (lane `r` of a half is row `8 h + r`):
//!
//! - [`tiles_vnni`] (AVX-VNNI, 256-bit `vpdpbusd`): per half and block, `P = sum_k
//!   vpdpbusd(T_k, broadcast(qx[4k..4k+4]))` is the exact `sum u qx` of each row's unsigned
//!   bytes `u` (Q8_0 `w + 128`, Q4_0 the nibble `w + 8`), `isum = P - OFF * sum(qx)`;
//! - [`tiles`] (plain AVX2, no VNNI): Q4_0 nibbles go through `vpmaddubsw` (`u * qx` pairs in
//!   16 bits: at most `2 * 15 * 127`, eight of them summed stay below `2^15`) and one
//!   `vpmaddwd` by ones; Q8_0 through the sign trick `vpmaddubsw(|w|, sign(qx, w))` on the
//!   signed `w = u ^ 0x80` (`|w| <= 128`, `|qx| <= 127`: a pair is at most `32512`, no
//!   saturation) and `vpmaddwd`, which is `sum w qx` itself (no offset to remove).
//!
//! Both give the exact integer block sums, then `acc + (dw * dx) * float(isum)` (a multiply, a
//! multiply, an add, no FMA) block after block, the scalar reference's chain for each row:
//! bit-identical to `qdot::scalar_task`, as the tests check.

use crate::kernels::qdot::{store_sums, QActs};
use crate::kernels::qpack::{record_bytes, TILE};
use crate::kernels::quant::{Format, QK};
use std::arch::x86_64::*;

/// Activation rows per pass over a tile.
const MR: usize = 4;

/// How the 8 operands `T_k` of one half-record meet one activation block.
trait Dot {
    /// The exact `sum_k dot(T_k, qx[4k..4k+4])` per lane, `qx` the activation block at `xp`,
    /// minus `corr` where the sum carries the format's offset.
    unsafe fn isum(fmt: Format, tk: &[__m256i; 8], xp: *const i32, corr: i32) -> __m256i;
}

struct Vnni;
struct Plain;

/// The 4 bytes at `p` (unaligned) in every 32-bit lane.
#[inline(always)]
unsafe fn bcast32(p: *const i32) -> __m256i {
    unsafe { _mm256_set1_epi32(p.read_unaligned()) }
}

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn isum(_fmt: Format, tk: &[__m256i; 8], xp: *const i32, corr: i32) -> __m256i {
        unsafe {
            let z = _mm256_setzero_si256();
            let mut p0 = _mm256_dpbusd_avx_epi32(z, tk[0], bcast32(xp));
            let mut p1 = _mm256_dpbusd_avx_epi32(z, tk[1], bcast32(xp.add(1)));
            p0 = _mm256_dpbusd_avx_epi32(p0, tk[2], bcast32(xp.add(2)));
            p1 = _mm256_dpbusd_avx_epi32(p1, tk[3], bcast32(xp.add(3)));
            p0 = _mm256_dpbusd_avx_epi32(p0, tk[4], bcast32(xp.add(4)));
            p1 = _mm256_dpbusd_avx_epi32(p1, tk[5], bcast32(xp.add(5)));
            p0 = _mm256_dpbusd_avx_epi32(p0, tk[6], bcast32(xp.add(6)));
            p1 = _mm256_dpbusd_avx_epi32(p1, tk[7], bcast32(xp.add(7)));
            _mm256_sub_epi32(_mm256_add_epi32(p0, p1), _mm256_set1_epi32(corr))
        }
    }
}

/// `|w| * sign(qx, w)` pairs of one Q8_0 operand (`t` holds `w + 128`) in 16 bits.
#[inline(always)]
unsafe fn q8_pairs(t: __m256i, x: __m256i) -> __m256i {
    unsafe {
        let w = _mm256_xor_si256(t, _mm256_set1_epi8(-128));
        _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
    }
}

impl Dot for Plain {
    #[inline(always)]
    unsafe fn isum(fmt: Format, tk: &[__m256i; 8], xp: *const i32, corr: i32) -> __m256i {
        unsafe {
            let ones = _mm256_set1_epi16(1);
            if fmt == Format::Q8_0 {
                // sum w qx directly (the offset never enters): `corr` is not used
                let p = [
                    _mm256_madd_epi16(q8_pairs(tk[0], bcast32(xp)), ones),
                    _mm256_madd_epi16(q8_pairs(tk[1], bcast32(xp.add(1))), ones),
                    _mm256_madd_epi16(q8_pairs(tk[2], bcast32(xp.add(2))), ones),
                    _mm256_madd_epi16(q8_pairs(tk[3], bcast32(xp.add(3))), ones),
                    _mm256_madd_epi16(q8_pairs(tk[4], bcast32(xp.add(4))), ones),
                    _mm256_madd_epi16(q8_pairs(tk[5], bcast32(xp.add(5))), ones),
                    _mm256_madd_epi16(q8_pairs(tk[6], bcast32(xp.add(6))), ones),
                    _mm256_madd_epi16(q8_pairs(tk[7], bcast32(xp.add(7))), ones),
                ];
                let s0 =
                    _mm256_add_epi32(_mm256_add_epi32(p[0], p[1]), _mm256_add_epi32(p[2], p[3]));
                let s1 =
                    _mm256_add_epi32(_mm256_add_epi32(p[4], p[5]), _mm256_add_epi32(p[6], p[7]));
                _mm256_add_epi32(s0, s1)
            } else {
                // nibble * qx pairs: |pair| <= 2 * 15 * 128, eight summed < 2^15
                let s0 = _mm256_add_epi16(
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(tk[0], bcast32(xp)),
                        _mm256_maddubs_epi16(tk[1], bcast32(xp.add(1))),
                    ),
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(tk[2], bcast32(xp.add(2))),
                        _mm256_maddubs_epi16(tk[3], bcast32(xp.add(3))),
                    ),
                );
                let s1 = _mm256_add_epi16(
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(tk[4], bcast32(xp.add(4))),
                        _mm256_maddubs_epi16(tk[5], bcast32(xp.add(5))),
                    ),
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(tk[6], bcast32(xp.add(6))),
                        _mm256_maddubs_epi16(tk[7], bcast32(xp.add(7))),
                    ),
                );
                let p = _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones);
                _mm256_sub_epi32(p, _mm256_set1_epi32(corr))
            }
        }
    }
}

/// 32 bytes at `p` (unaligned).
#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// The low nibble of every byte.
#[inline(always)]
unsafe fn lo4(v: __m256i) -> __m256i {
    unsafe { _mm256_and_si256(v, _mm256_set1_epi8(0x0f)) }
}

/// The high nibble of every byte.
#[inline(always)]
unsafe fn hi4(v: __m256i) -> __m256i {
    unsafe { _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi8(0x0f)) }
}

/// The operands `T_k` of half `h` (rows `8 h ..`) of the record at `q` (past its scales).
#[inline(always)]
unsafe fn operands(fmt: Format, q: *const u8) -> [__m256i; 8] {
    unsafe {
        if fmt == Format::Q8_0 {
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
            [lo4(v[0]), lo4(v[1]), lo4(v[2]), lo4(v[3]), hi4(v[0]), hi4(v[1]), hi4(v[2]), hi4(v[3])]
        }
    }
}

/// The body shared by [`tiles`] and [`tiles_vnni`]: tiles `tile .. tile + NT` for every
/// activation row, the `NT` records read side by side block after block, the records `pfd`
/// bytes ahead prefetched while the first activation rows run.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<D: Dot, const NT: usize>(
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
        // acc[u][t][h]: tile u, activation row i + t, half h
        let mut acc = [[[unsafe { _mm256_setzero_ps() }; 2]; MR]; NT];
        for b in 0..nb {
            for (u, accu) in acc.iter_mut().enumerate() {
                unsafe {
                    let r = base.add(u * tb + b * rec);
                    if i == 0 && pfd > 0 {
                        let mut o = 0;
                        while o < rec {
                            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(pfd + o) as *const i8);
                            o += 64;
                        }
                    }
                    for h in 0..2 {
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(r.add(16 * h) as *const __m128i));
                        let tk = operands(fmt, r.add(32 + 32 * h));
                        for (t, at) in accu.iter_mut().enumerate().take(mr) {
                            let e = (i + t) * nb + b;
                            let xp = a.q.as_ptr().add((i + t) * k + b * QK) as *const i32;
                            let isum = D::isum(fmt, &tk, xp, *corr.get_unchecked(e));
                            let d = _mm256_mul_ps(dw, _mm256_set1_ps(*a.d.get_unchecked(e)));
                            at[h] =
                                _mm256_add_ps(at[h], _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)));
                        }
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
                    _mm256_storeu_ps(out.as_mut_ptr(), at[0]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(8), at[1]);
                    store_sums(&out[..valid], bias, c, (i + t) * ldc + j, j);
                }
            }
        }
        i += mr;
    }
}

/// Tiles `tile .. tile + NT` of `C = X W^T + bias` with AVX-VNNI (see the module docs);
/// `corr[e]` is `OFF * sum(qx)` of activation block `e` (`qdot::block_corr`).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-VNNI; `packed` is the decode layout of a `(a.k, n)`
/// weight in `fmt` with at least `tile + NT` tiles; `c` holds `a.m` rows of stride
/// `ldc >= n`, and no other thread writes these tiles' columns.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tiles_vnni<const NT: usize>(
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
    unsafe { body::<Vnni, NT>(a, corr, fmt, n, packed, bias, c, ldc, tile, pfd) }
}

/// [`tiles_vnni`] without VNNI (`vpmaddubsw` + `vpmaddwd`; see the module docs). For Q8_0
/// `corr` is not read (the sums carry no offset).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; otherwise as [`tiles_vnni`].
#[target_feature(enable = "avx2,fma,f16c")]
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
    unsafe { body::<Plain, NT>(a, corr, fmt, n, packed, bias, c, ldc, tile, pfd) }
}
