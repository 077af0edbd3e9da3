//! The AVX2+FMA path of `kernels/sgemm.rs` (the blocking constants, the scalar reference and the
//! tests are there): the blocked loops, the packing of `A` and `B` panels and the 6 x 16
//! micro-kernel. The loops and the packing of `B` are generic over the micro-kernel ([`Tile`]),
//! so `x86/avx512/sgemm.rs` runs them with its own tile and block sizes.

use crate::kernels::sgemm::{avx2_available, KC, MC, MR, NC, NR, WHOLE_B};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::thread::LocalKey;

/// A micro-kernel and its block sizes (see `kernels/sgemm.rs` for the loops they size).
///
/// # Safety
/// The methods need the CPU features of the implementation (checked by the public entry
/// points); `NR` is a multiple of 8 and `MR * NR <= TMP`.
pub(crate) trait Tile {
    /// Micro-tile rows (broadcast `A` values per `k` step).
    const MR: usize;
    /// Micro-tile columns (vector lanes of `B` per `k` step).
    const NR: usize;
    /// Sum-index block.
    const KC: usize;
    /// Row block (a multiple of `MR`).
    const MC: usize;
    /// Column block.
    const NC: usize;
    /// `C[0..MR, 0..NR] <- (acc ? C : 0) + sum_p a[p MR + i] b[p NR + j]` over `kc` steps of the
    /// packed panels `a` (`kc MR` floats) and `b` (`kc NR` floats).
    unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool);
    /// Packs `A[0..mc, 0..kc]` into `MR`-row panels: panel `q` holds element `(q MR + i, p)` at
    /// `q MR kc + p MR + i`; rows past `mc` are zero.
    unsafe fn pack_a(mc: usize, kc: usize, a: View, dst: &mut [f32]);
}

/// Largest `MR * NR` of a [`Tile`] (the edge-tile buffer of [`macro_block`]).
const TMP: usize = 512;

/// The 6 x 16 AVX2 + FMA tile.
struct Avx2Tile;

impl Tile for Avx2Tile {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = KC;
    const MC: usize = MC;
    const NC: usize = NC;

    #[inline(always)]
    unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
        unsafe { kernel_6x16(kc, a, b, c, ldc, acc) }
    }

    #[inline(always)]
    unsafe fn pack_a(mc: usize, kc: usize, a: View, dst: &mut [f32]) {
        unsafe { pack_a(mc, kc, a, dst) }
    }
}

/// A pointer that may cross threads (each task writes a disjoint part of `C`).
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The pointer `off` elements on (a method, so closures capture the whole `Send` wrapper).
    unsafe fn add(self, off: usize) -> Ptr {
        Ptr(unsafe { self.0.add(off) })
    }
}

/// A strided read-only matrix view `(ptr, row stride, column stride)`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) p: *const f32,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// The view starting at element `(i, j)`.
    unsafe fn at(self, i: usize, j: usize) -> View {
        View { p: unsafe { self.p.add(i * self.rs + j * self.cs) }, ..self }
    }
}

/// Elements a strided `(rows, cols)` view needs in its slice (0 for an empty view).
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `C <- (accumulate ? C : 0) + A B` with the AVX2 + FMA micro-kernel, on up to `threads`
/// threads of the current rayon pool (call it inside `pool::install`).
///
/// Panics if a slice is too short for its strides, `ldc < n`, or the CPU lacks AVX2 / FMA.
pub fn sgemm_avx2(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    assert!(avx2_available(), "sgemm_avx2 needs AVX2 and FMA");
    // SAFETY: AVX2 + FMA are present.
    unsafe {
        sgemm_with::<Avx2Tile>(m, n, k, a, rsa, csa, b, rsb, csb, c, ldc, accumulate, threads)
    }
}

/// The driver of `sgemm_avx2` over the tile `T` (same contract; panics on the same bad input).
///
/// # Safety
/// The CPU has AVX2, FMA and the features of `T`.
pub(crate) unsafe fn sgemm_with<T: Tile>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    assert!(ldc >= n, "ldc {ldc} < n {n}");
    assert!(a.len() >= span(m, k, rsa, csa), "A too short");
    assert!(b.len() >= span(k, n, rsb, csb), "B too short");
    assert!(c.len() >= span(m, n, ldc, 1), "C too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let av = View { p: a.as_ptr(), rs: rsa, cs: csa };
    let bv = View { p: b.as_ptr(), rs: rsb, cs: csb };
    let threads = if (m * n).saturating_mul(k) < (1 << 21) { 1 } else { threads.max(1) };
    // SAFETY: the asserts above bound every element read and written; the caller checked the
    // CPU features.
    unsafe { blocked::<T>(m, n, k, av, bv, Ptr(c.as_mut_ptr()), ldc, accumulate, threads) }
}

thread_local! {
    /// Packed `A` block of the calling thread (reused across calls: no page faults per call).
    static BUF_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed `B` block of the thread that drives a product.
    static BUF_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer `key` grown to `len` elements (a fresh one if the buffer is
/// already borrowed, e.g. by a product that a waiting rayon worker interleaved).
fn with_buf<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    // 64-byte aligned start, so that a 16-float row of a B panel is one cache line.
    let aligned = |v: &mut Vec<f32>| -> usize {
        if v.len() < len + 16 {
            v.resize(len + 16, 0.0);
        }
        (v.as_ptr() as usize).wrapping_neg() % 64 / 4
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            let o = aligned(&mut v);
            f(&mut v[o..o + len])
        }
        Err(_) => {
            let mut v = Vec::new();
            let o = aligned(&mut v);
            f(&mut v[o..o + len])
        }
    })
}

/// `n` split into blocks of at most `max` (balanced, each a multiple of `tile`): the block size.
fn balanced(n: usize, max: usize, tile: usize) -> usize {
    n.div_ceil(n.div_ceil(max)).div_ceil(tile) * tile
}

/// The blocked loops. Per `(jc, pc)` block the `B` panels are packed once (in parallel) into the
/// driving thread's buffer; then the tasks are `(ic row block, group of NR panels)` pairs, at
/// least `4 threads` of them when the shape allows, that rayon balances over the pool (a thread
/// slowed by another process does not hold the others up). Each task packs its own `A` block.
#[target_feature(enable = "avx2,fma")]
unsafe fn blocked<T: Tile>(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: Ptr,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    use rayon::prelude::*;
    let kcb = balanced(k, T::KC, 1);
    let ncb = balanced(n, T::NC, T::NR);
    // Row blocks of at most T::MC; on 2+ threads, small enough for 2 per thread (splitting rows
    // shares the packed B; splitting columns would pack the same A block once per group), and
    // as many as a multiple of the threads when that is possible (7 blocks on 2 threads would
    // leave one thread idle for the last one at every KC block).
    let tasks = 2 * threads;
    let mcb = if threads == 1 {
        balanced(m, T::MC, T::MR)
    } else {
        let blocks = m.div_ceil(T::MC).max(tasks).div_ceil(threads) * threads;
        m.div_ceil(blocks).div_ceil(T::MR) * T::MR
    };
    let mblocks = m.div_ceil(mcb);
    let kblocks = k.div_ceil(kcb);
    // Threaded products whose `B[:, jc block]` fits in WHOLE_B pack all its `T::KC` blocks at once:
    // two parallel regions per `jc` block instead of two per `(jc, pc)` block, so fewer points
    // where the threads wait for each other.
    let span_k = if threads > 1 && ncb * k <= WHOLE_B { kblocks } else { 1 };
    let stride = ncb * kcb; // one packed `T::KC` block of B
    with_buf(&BUF_B, stride * span_k, |bufb| {
        for jc in (0..n).step_by(ncb) {
            let nc = ncb.min(n - jc);
            let panels = nc.div_ceil(T::NR);
            let groups = if threads == 1 { 1 } else { tasks.div_ceil(mblocks).min(panels) };
            let per = panels.div_ceil(groups);
            let groups = panels.div_ceil(per);
            for pb in (0..kblocks).step_by(span_k) {
                let pbs = pb..kblocks.min(pb + span_k);
                // Each T::KC block's panels in `threads` runs, one per thread.
                let pack = |(i, blk): (usize, &mut [f32])| {
                    let pc = (pb + i) * kcb;
                    let kc = kcb.min(k - pc);
                    let blk = &mut blk[..panels * T::NR * kc];
                    let run = panels.div_ceil(threads) * T::NR * kc;
                    let one = |(r, dst): (usize, &mut [f32])| {
                        // SAFETY: the panels read rows pc..pc+kc, columns jc.. of B (in bounds).
                        unsafe { pack_b::<T>(kc, nc, b.at(pc, jc), r * run / (T::NR * kc), dst) }
                    };
                    if threads == 1 {
                        one((0, blk));
                    } else {
                        blk.par_chunks_mut(run).enumerate().for_each(one);
                    }
                };
                let packed = &mut bufb[..stride * pbs.len()];
                if threads == 1 {
                    packed.chunks_mut(stride).enumerate().for_each(pack);
                } else {
                    packed.par_chunks_mut(stride).enumerate().for_each(pack);
                }
                let packed: &[f32] = packed;
                let task = |t: usize| {
                    let (ic, g) = ((t / groups) * mcb, t % groups);
                    let mc = mcb.min(m - ic);
                    let (q0, q1) = (g * per, ((g + 1) * per).min(panels));
                    with_buf(&BUF_A, mc.div_ceil(T::MR) * T::MR * kcb, |bufa| {
                        for (i, p) in pbs.clone().enumerate() {
                            let pc = p * kcb;
                            let kc = kcb.min(k - pc);
                            let acc = accumulate || pc > 0;
                            let bufa = &mut bufa[..mc.div_ceil(T::MR) * T::MR * kc];
                            let bp = &packed[i * stride..];
                            // SAFETY: the task reads A rows ic..ic+mc and writes the C tile rows
                            // ic..ic+mc, columns of panels q0..q1: disjoint between tasks.
                            unsafe {
                                T::pack_a(mc, kc, a.at(ic, pc), bufa);
                                macro_block::<T>(
                                    mc,
                                    kc,
                                    nc,
                                    q0,
                                    q1,
                                    bufa,
                                    bp,
                                    c.add(ic * ldc + jc),
                                    ldc,
                                    acc,
                                );
                            }
                        }
                    })
                };
                if threads == 1 {
                    (0..mblocks * groups).for_each(task);
                } else {
                    (0..mblocks * groups).into_par_iter().for_each(task);
                }
            }
        }
    });
}

/// The `jr`, `ir` loops over packed blocks: `C[0..mc, q0 NR..q1 NR] (+)= A_packed B_packed`.
#[target_feature(enable = "avx2,fma")]
unsafe fn macro_block<T: Tile>(
    mc: usize,
    kc: usize,
    nc: usize,
    q0: usize,
    q1: usize,
    bufa: &[f32],
    bufb: &[f32],
    c: Ptr,
    ldc: usize,
    acc: bool,
) {
    const { assert!(T::MR * T::NR <= TMP && T::NR % 8 == 0 && T::MC % T::MR == 0) };
    let mut tmp = [0f32; TMP];
    for q in q0..q1 {
        let jr = q * T::NR;
        let nr = T::NR.min(nc - jr);
        let bp = bufb[jr * kc..].as_ptr();
        for ir in (0..mc).step_by(T::MR) {
            let mr = T::MR.min(mc - ir);
            let ap = bufa[ir * kc..].as_ptr();
            unsafe {
                let cij = c.0.add(ir * ldc + jr);
                if mr == T::MR && nr == T::NR {
                    T::kernel(kc, ap, bp, cij, ldc, acc);
                } else {
                    T::kernel(kc, ap, bp, tmp.as_mut_ptr(), T::NR, false);
                    for i in 0..mr {
                        for j in 0..nr {
                            let d = cij.add(i * ldc + j);
                            let t = tmp[i * T::NR + j];
                            *d = if acc { *d + t } else { t };
                        }
                    }
                }
            }
        }
    }
}

/// Packs `A[0..mc, 0..kc]` into `MR`-row panels: panel `q` holds element `(q MR + i, p)` at
/// `q MR kc + p MR + i`; rows past `mc` are zero. Row-major full panels are transposed 8 columns
/// at a time in registers (an 8 x 8 transpose of 6 rows and 2 zero rows).
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(mc: usize, kc: usize, a: View, dst: &mut [f32]) {
    for (q, panel) in dst.chunks_exact_mut(MR * kc).take(mc.div_ceil(MR)).enumerate() {
        let i0 = q * MR;
        let rows = MR.min(mc - i0);
        let mut p0 = 0;
        if rows == MR && a.cs == 1 {
            let r: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.p.add((i0 + i) * a.rs) });
            let d = panel.as_mut_ptr();
            while p0 + 8 <= kc {
                unsafe {
                    let z = _mm256_setzero_ps();
                    let t0 = _mm256_unpacklo_ps(
                        _mm256_loadu_ps(r[0].add(p0)),
                        _mm256_loadu_ps(r[1].add(p0)),
                    );
                    let t1 = _mm256_unpackhi_ps(
                        _mm256_loadu_ps(r[0].add(p0)),
                        _mm256_loadu_ps(r[1].add(p0)),
                    );
                    let t2 = _mm256_unpacklo_ps(
                        _mm256_loadu_ps(r[2].add(p0)),
                        _mm256_loadu_ps(r[3].add(p0)),
                    );
                    let t3 = _mm256_unpackhi_ps(
                        _mm256_loadu_ps(r[2].add(p0)),
                        _mm256_loadu_ps(r[3].add(p0)),
                    );
                    let t4 = _mm256_unpacklo_ps(
                        _mm256_loadu_ps(r[4].add(p0)),
                        _mm256_loadu_ps(r[5].add(p0)),
                    );
                    let t5 = _mm256_unpackhi_ps(
                        _mm256_loadu_ps(r[4].add(p0)),
                        _mm256_loadu_ps(r[5].add(p0)),
                    );
                    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let s4 = _mm256_shuffle_ps::<0x44>(t4, z);
                    let s5 = _mm256_shuffle_ps::<0xEE>(t4, z);
                    let s6 = _mm256_shuffle_ps::<0x44>(t5, z);
                    let s7 = _mm256_shuffle_ps::<0xEE>(t5, z);
                    // Column p0 + j of the 6 rows, then 2 zeros; only the 6 values are stored.
                    let cols = [
                        _mm256_permute2f128_ps::<0x20>(s0, s4),
                        _mm256_permute2f128_ps::<0x20>(s1, s5),
                        _mm256_permute2f128_ps::<0x20>(s2, s6),
                        _mm256_permute2f128_ps::<0x20>(s3, s7),
                        _mm256_permute2f128_ps::<0x31>(s0, s4),
                        _mm256_permute2f128_ps::<0x31>(s1, s5),
                        _mm256_permute2f128_ps::<0x31>(s2, s6),
                        _mm256_permute2f128_ps::<0x31>(s3, s7),
                    ];
                    // Full 8-wide stores, each spilling 2 zeros that the next one overwrites;
                    // the last stores 4 + 2 values so nothing lands past the panel.
                    for (j, v) in cols.into_iter().enumerate().take(7) {
                        _mm256_storeu_ps(d.add((p0 + j) * MR), v);
                    }
                    let o = d.add((p0 + 7) * MR);
                    _mm_storeu_ps(o, _mm256_castps256_ps128(cols[7]));
                    _mm_storel_pd(
                        o.add(4) as *mut f64,
                        _mm_castps_pd(_mm256_extractf128_ps::<1>(cols[7])),
                    );
                }
                p0 += 8;
            }
        }
        for (p, d) in panel.chunks_exact_mut(MR).enumerate().skip(p0) {
            for i in 0..MR {
                d[i] = if i < rows { unsafe { *a.p.add((i0 + i) * a.rs + p * a.cs) } } else { 0.0 };
            }
        }
    }
}

/// Packs the `NR`-column panels `q0..` of `B[0..kc, 0..nc]` that fill `dst`: panel `q` at
/// `(q - q0) NR kc`, element `(p, q NR + j)` at `p NR + j` within it; columns past `nc` are zero.
/// Full row-major panels are copied row by row of `B` (sequential reads).
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b<T: Tile>(kc: usize, nc: usize, b: View, q0: usize, dst: &mut [f32]) {
    let q1 = q0 + dst.len() / (T::NR * kc);
    let full = if b.cs == 1 { (nc / T::NR).min(q1) } else { q0 };
    let d = dst.as_mut_ptr();
    if full > q0 {
        for p in 0..kc {
            for q in q0..full {
                unsafe {
                    let s = b.p.add(p * b.rs + q * T::NR);
                    let o = d.add((q - q0) * T::NR * kc + p * T::NR);
                    for h in (0..T::NR).step_by(8) {
                        _mm256_storeu_ps(o.add(h), _mm256_loadu_ps(s.add(h)));
                    }
                }
            }
        }
    }
    for q in full.max(q0)..q1 {
        let cols = T::NR.min(nc - q * T::NR);
        let panel = &mut dst[(q - q0) * T::NR * kc..(q - q0 + 1) * T::NR * kc];
        if cols == T::NR && b.rs == 1 {
            // Column-major B: 8 x 8 register transposes of 8 columns x 8 rows.
            let mut p0 = 0;
            while p0 + 8 <= kc {
                for h in 0..T::NR / 8 {
                    unsafe {
                        let col = |j: usize| b.p.add(p0 + (q * T::NR + h * 8 + j) * b.cs);
                        let t = transpose8(std::array::from_fn(|j| _mm256_loadu_ps(col(j))));
                        for (i, v) in t.into_iter().enumerate() {
                            _mm256_storeu_ps(panel.as_mut_ptr().add((p0 + i) * T::NR + h * 8), v);
                        }
                    }
                }
                p0 += 8;
            }
            for p in p0..kc {
                for j in 0..T::NR {
                    panel[p * T::NR + j] = unsafe { *b.p.add(p + (q * T::NR + j) * b.cs) };
                }
            }
            continue;
        }
        for (p, o) in panel.chunks_exact_mut(T::NR).enumerate() {
            for j in 0..T::NR {
                o[j] = if j < cols {
                    unsafe { *b.p.add(p * b.rs + (q * T::NR + j) * b.cs) }
                } else {
                    0.0
                };
            }
        }
    }
}

/// The transpose of 8 rows of 8 floats: lane `i` of output `j` is lane `j` of input `i`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// `C[0..6, 0..16] <- (acc ? C : 0) + sum_p a[p MR + i] b[p NR + j]` (packed panels, `kc` steps).
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
    let mut r = [[_mm256_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for i in 0..MR {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8) };
    }
    // One `k` step: 2 loads of B, 6 broadcasts of A, 12 FMAs.
    let step = |r: &mut [[__m256; 2]; MR], a: *const f32, b: *const f32| unsafe {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for i in 0..MR {
            let ai = _mm256_broadcast_ss(&*a.add(i));
            r[i][0] = _mm256_fmadd_ps(ai, b0, r[i][0]);
            r[i][1] = _mm256_fmadd_ps(ai, b1, r[i][1]);
        }
    };
    // Unrolled by 4, prefetching the A panel (streamed from L2) 8 steps ahead.
    for _ in 0..kc / 4 {
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(a.add(8 * MR) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(a.add(8 * MR + 16) as *const i8);
            for u in 0..4 {
                step(&mut r, a.add(u * MR), b.add(u * NR));
            }
            a = a.add(4 * MR);
            b = b.add(4 * NR);
        }
    }
    for _ in 0..kc % 4 {
        unsafe {
            step(&mut r, a, b);
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    for i in 0..MR {
        unsafe {
            let ci = c.add(i * ldc);
            let (mut v0, mut v1) = (r[i][0], r[i][1]);
            if acc {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(ci));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(ci.add(8)));
            }
            _mm256_storeu_ps(ci, v0);
            _mm256_storeu_ps(ci.add(8), v1);
        }
    }
}
