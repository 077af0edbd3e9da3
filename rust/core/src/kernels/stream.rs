//! Streaming matmul: `C = X W (+ bias)` with the row-stored weight `W` (`N` rows of `K` in a
//! block format, see `quant.rs`) left wherever it lives and pulled through two panel buffers.
//!
//! A reader thread fills one buffer with the next panel (a contiguous byte range: `rows` weight
//! rows) while the pool multiplies the previous one, so I/O and compute overlap; the buffers
//! are the only fast-memory footprint (`2 * panel_bytes`). Panels hold a multiple of 64 rows,
//! the large-`M` path's dequantisation panel, and every output element is computed by the same
//! code on the same bytes as in memory, so the result is bit-identical to `gemm::matmul` on
//! the whole weight.

use super::axpy::{ColW, ColsAcc};
use super::gemm::{matmul, Weight, DECODE_MAX_M};
use super::quant::{Format, QWeight};
use crate::cpu::Isa;
use crate::{CoreError, Result};
use std::sync::mpsc::sync_channel;

/// Rows per (full-size) panel: a multiple of 64 near `panel_bytes`. Every panel is a multiple
/// of 64 rows, the large-`M` path's dequantisation panel, so results do not depend on it.
pub fn panel_rows(row_bytes: usize, panel_bytes: usize) -> usize {
    ((panel_bytes / row_bytes.max(1)) / 64).max(1) * 64
}

/// A reader of a weight's bytes: `read(offset, buf)` fills `buf` from byte `offset`.
pub type ReadFn<'a> = &'a (dyn Fn(u64, &mut [u8]) -> Result<()> + Sync);

/// Run the panel loop with the kernels on one thread fewer than the pool (at least one), so
/// the reader thread has a core of its own. The result does not depend on the thread count.
fn compute_beside_reader<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = crate::pool::num_threads();
    if threads >= 2 {
        crate::pool::with_threads(threads - 1, f)
    } else {
        f()
    }
}

/// Read `units` units of `unit_bytes` bytes, `per` units per panel, through two buffers: a
/// reader thread fills the next panel while `f(first_unit, count, bytes)` runs on the current
/// one. The buffers are 8-byte aligned (a panel of float32 can be viewed in place).
fn pipeline(
    read: ReadFn<'_>,
    unit_bytes: usize,
    units: usize,
    per: usize,
    grain: usize,
    mut f: impl FnMut(usize, usize, &[u8]) -> Result<()>,
) -> Result<()> {
    // Panel sizes ramp up: per/8, per/4, per/2, then per (multiples of `grain` units), so the
    // first read, which nothing overlaps, is short.
    let mut spans = Vec::new();
    let (mut u0, mut size) = (0, (per / 8 / grain * grain).max(grain).min(per));
    while u0 < units {
        let cnt = size.min(units - u0);
        spans.push((u0, cnt));
        u0 += cnt;
        size = (size * 2).min(per);
    }
    let panels = spans.len();
    let words = (per * unit_bytes).div_ceil(8);
    let (free_tx, free_rx) = sync_channel::<Vec<u64>>(2);
    let (full_tx, full_rx) = sync_channel::<(usize, Vec<u64>, Result<()>)>(2);
    for _ in 0..2.min(panels) {
        free_tx.send(take_buffer(words)).expect("channel");
    }
    let view = |buf: &mut Vec<u64>, len: usize| -> &mut [u8] {
        // SAFETY: u64 storage viewed as bytes; len <= 8 * buf.len().
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, len) }
    };
    let spans = &spans;
    std::thread::scope(|s| {
        s.spawn(move || {
            for (p, &(u0, cnt)) in spans.iter().enumerate() {
                let Ok(mut buf) = free_rx.recv() else { return };
                let r = read((u0 * unit_bytes) as u64, view(&mut buf, cnt * unit_bytes));
                let failed = r.is_err();
                if full_tx.send((p, buf, r)).is_err() || failed {
                    return;
                }
            }
        });
        let result = (|| -> Result<()> {
            for (p, &(u0, cnt)) in spans.iter().enumerate() {
                let (got, mut buf, r) = full_rx
                    .recv()
                    .map_err(|_| CoreError::Internal("panel reader stopped".into()))?;
                r?;
                debug_assert_eq!(got, p);
                f(u0, cnt, view(&mut buf, cnt * unit_bytes))?;
                if p + 2 < panels {
                    let _ = free_tx.send(buf); // the reader fills it with panel p + 2
                } else {
                    give_buffer(buf);
                }
            }
            Ok(())
        })();
        // Unblock the reader whether we finished or failed part-way, and keep the buffers.
        drop(free_tx);
        while let Ok((_, buf, _)) = full_rx.recv() {
            give_buffer(buf);
        }
        result
    })
}

/// Panel buffers kept between calls (a model streams hundreds of weights per token: fresh
/// buffers would cost page faults and the kernel's zeroing every time). At most eight.
static BUFFERS: parking_lot::Mutex<Vec<Vec<u64>>> = parking_lot::Mutex::new(Vec::new());

/// A buffer of at least `words` words: the smallest kept one that is large enough (a model's
/// weights have a few panel sizes, all close), else a new one.
fn take_buffer(words: usize) -> Vec<u64> {
    let mut kept = BUFFERS.lock();
    let fit = kept
        .iter()
        .enumerate()
        .filter(|(_, b)| b.len() >= words && b.len() <= 2 * words)
        .min_by_key(|(_, b)| b.len())
        .map(|(i, _)| i);
    match fit {
        Some(i) => kept.swap_remove(i),
        None => vec![0u64; words],
    }
}

fn give_buffer(buf: Vec<u64>) {
    let mut kept = BUFFERS.lock();
    if kept.len() >= 8 {
        // Drop the smallest: the large ones are the costly ones to rebuild.
        if let Some(i) = (0..kept.len()).min_by_key(|&i| kept[i].len()) {
            kept.swap_remove(i);
        }
    }
    kept.push(buf);
}

/// `C[:m, :n] = X W + bias`, reading `W`'s bytes with `read(offset, buf)`.
pub fn matmul_streamed(
    isa: Isa,
    x: &[f32],
    m: usize,
    fmt: Format,
    k: usize,
    n: usize,
    read: ReadFn<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    panel_bytes: usize,
) -> Result<()> {
    let rb = fmt.row_bytes(k)?;
    fmt.total_bytes(k, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if rb == 0 {
        return matmul(isa, x, m, Weight::Rows(QWeight::new(fmt, k, n, &[])?), bias, c, ldc);
    }
    if c.len() < (m - 1) * ldc + n || ldc < n {
        return Err(CoreError::Shape("streamed matmul output too small".into()));
    }
    let rows = panel_rows(rb, panel_bytes).min(n);
    compute_beside_reader(|| {
        pipeline(read, rb, n, rows, 64, |j0, nb, buf| {
            // The block scales are validated only when the panel's output is not finite: a NaN
            // or infinite scale always makes its whole output column non-finite, so a finite
            // panel cannot hold one (checking every scale up front was a second pass over each
            // panel, 15% of a streamed q8_0 decode).
            let q = QWeight::with_len_check(fmt, k, nb, buf)?;
            let b = bias.map(|b| &b[j0..j0 + nb]);
            let clen = (m - 1) * ldc + nb;
            let cp = &mut c[j0..j0 + clen];
            matmul(isa, x, m, Weight::Rows(q), b, cp, ldc)?;
            let finite = (0..m).all(|i| cp[i * ldc..i * ldc + nb].iter().all(|v| v.is_finite()));
            if !finite {
                QWeight::new(fmt, k, nb, buf)?;
            }
            Ok(())
        })
    })
}

/// Element type of a plain row-major `(K, N)` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainKind {
    F32,
    F16,
    Bf16,
}

/// `C[:m, :n] = X W + bias` for a plain row-major `(K, N)` weight (float32, float16 or
/// bfloat16, as NumPy holds it) read with `read(offset, buf)` in panels of whole rows of `K`
/// (contiguous bytes), for decode shapes (`m <= DECODE_MAX_M`). Bit-identical to
/// [`matmul`] on the whole weight: the decode kernel continues the same accumulators from one
/// panel to the next (see [`ColsAcc`]).
pub fn matmul_streamed_plain(
    isa: Isa,
    x: &[f32],
    m: usize,
    kind: PlainKind,
    k: usize,
    n: usize,
    read: ReadFn<'_>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    panel_bytes: usize,
) -> Result<()> {
    if m > DECODE_MAX_M {
        return Err(CoreError::Value(format!(
            "a plain weight streams for at most {DECODE_MAX_M} rows of x, got {m}"
        )));
    }
    let es = if kind == PlainKind::F32 { 4 } else { 2 };
    let row =
        n.checked_mul(es).filter(|r| r.checked_mul(k).is_some_and(|t| t <= isize::MAX as usize));
    let rb = row.ok_or_else(|| CoreError::Shape(format!("a ({k}, {n}) weight overflows")))?;
    if x.len() < m * k || (m > 0 && (c.len() < (m - 1) * ldc + n || ldc < n)) {
        return Err(CoreError::Shape("streamed matmul buffers too small".into()));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(CoreError::Shape(format!("bias has {} elements, expected {n}", b.len())));
        }
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        let w = match kind {
            PlainKind::F32 => ColW::F32(&[]),
            PlainKind::F16 => ColW::F16(&[]),
            PlainKind::Bf16 => ColW::Bf16(&[]),
        };
        return matmul(isa, x, m, Weight::Plain { w, k, n }, bias, c, ldc);
    }
    let per = (panel_bytes / rb).max(1).min(k);
    compute_beside_reader(|| {
        let mut acc = ColsAcc::begin(isa, m, n, bias, c, ldc);
        pipeline(read, rb, k, per, 1, |k0, kb, buf| {
            let len = kb * n;
            // SAFETY: the pipeline's buffers are 8-byte aligned and hold kb * n elements.
            let w = unsafe {
                let (p16, p32) = (buf.as_ptr() as *const u16, buf.as_ptr() as *const f32);
                match kind {
                    PlainKind::F32 => ColW::F32(std::slice::from_raw_parts(p32, len)),
                    PlainKind::F16 => ColW::F16(std::slice::from_raw_parts(p16, len)),
                    PlainKind::Bf16 => ColW::Bf16(std::slice::from_raw_parts(p16, len)),
                }
            };
            acc.feed(x, k, k0, w, c);
            Ok(())
        })?;
        acc.finish(c);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize;

    #[test]
    fn streamed_plain_is_bit_identical() {
        let (k, n) = (37, 300);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0).collect();
        let wb: Vec<u16> = w.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        for m in [1, 5, 32] {
            let x: Vec<f32> =
                (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 700.0 - 0.6).collect();
            for isa in Isa::available() {
                for (kind, cw, bytes) in [
                    (
                        PlainKind::F32,
                        ColW::F32(&w),
                        w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                    ),
                    (
                        PlainKind::Bf16,
                        ColW::Bf16(&wb),
                        wb.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                ] {
                    let mut want = vec![0f32; m * n];
                    matmul(isa, &x, m, Weight::Plain { w: cw, k, n }, Some(&bias), &mut want, n)
                        .unwrap();
                    let read = |off: u64, buf: &mut [u8]| {
                        buf.copy_from_slice(&bytes[off as usize..off as usize + buf.len()]);
                        Ok(())
                    };
                    for panel in [1, 3 * n * 4, 1 << 20] {
                        let mut got = vec![0f32; m * n];
                        matmul_streamed_plain(
                            isa,
                            &x,
                            m,
                            kind,
                            k,
                            n,
                            &read,
                            Some(&bias),
                            &mut got,
                            n,
                            panel,
                        )
                        .unwrap();
                        assert!(
                            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{kind:?} {isa:?} m={m} panel={panel}"
                        );
                    }
                }
            }
        }
        let x = vec![0f32; 33 * k];
        let mut c = vec![0f32; 33 * n];
        let read = |_: u64, _: &mut [u8]| Ok(());
        let r = matmul_streamed_plain(
            Isa::detect(),
            &x,
            33,
            PlainKind::F32,
            k,
            n,
            &read,
            None,
            &mut c,
            n,
            1024,
        );
        assert!(r.is_err());
    }

    #[test]
    fn streamed_is_bit_identical() {
        for &(m, fmt) in
            &[(1, Format::Q4_0), (5, Format::Q8_0), (40, Format::F32), (3, Format::Bf16)]
        {
            let (k, n) = (96, 300);
            let x: Vec<f32> =
                (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 700.0 - 0.6).collect();
            let w: Vec<f32> =
                (0..k * n).map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let data = quantize(fmt, &w, k, n).unwrap();
            let mut want = vec![0f32; m * n];
            let q = QWeight::new(fmt, k, n, &data).unwrap();
            matmul(Isa::detect(), &x, m, Weight::Rows(q), Some(&bias), &mut want, n).unwrap();
            let read = |off: u64, buf: &mut [u8]| {
                buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
                Ok(())
            };
            let mut got = vec![0f32; m * n];
            let rb = fmt.row_bytes(k).unwrap();
            matmul_streamed(
                Isa::detect(),
                &x,
                m,
                fmt,
                k,
                n,
                &read,
                Some(&bias),
                &mut got,
                n,
                rb * 64,
            )
            .unwrap();
            assert!(
                got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{fmt:?} m={m}"
            );
        }
    }
}
