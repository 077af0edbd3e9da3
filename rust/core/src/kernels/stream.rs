//! Streaming matmul: `C = X W (+ bias)` with the row-stored weight `W` (`N` rows of `K` in a
//! block format, see `quant.rs`) left wherever it lives and pulled through two panel buffers.
//!
//! A reader thread fills one buffer with the next panel (a contiguous byte range: `rows` weight
//! rows) while the pool multiplies the previous one, so I/O and compute overlap; the buffers
//! are the only fast-memory footprint (`2 * panel_bytes`). Panels hold a multiple of 64 rows,
//! the large-`M` path's dequantisation panel, and every output element is computed by the same
//! code on the same bytes as in memory, so the result is bit-identical to `gemm::matmul` on
//! the whole weight.

use super::gemm::{matmul, Weight};
use super::quant::{Format, QWeight};
use crate::cpu::Isa;
use crate::{CoreError, Result};
use std::sync::mpsc::sync_channel;

/// Rows per panel: a multiple of 64 near `panel_bytes`.
pub fn panel_rows(row_bytes: usize, panel_bytes: usize) -> usize {
    ((panel_bytes / row_bytes.max(1)) / 64).max(1) * 64
}

/// `C[:m, :n] = X W + bias`, reading `W`'s bytes with `read(offset, buf)`.
pub fn matmul_streamed(
    isa: Isa,
    x: &[f32],
    m: usize,
    fmt: Format,
    k: usize,
    n: usize,
    read: &(dyn Fn(u64, &mut [u8]) -> Result<()> + Sync),
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
    let panels = n.div_ceil(rows);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2);
    let (full_tx, full_rx) = sync_channel::<(usize, Vec<u8>, Result<()>)>(2);
    for _ in 0..2.min(panels) {
        free_tx.send(vec![0u8; rows * rb]).expect("channel");
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            for p in 0..panels {
                let Ok(mut buf) = free_rx.recv() else { return };
                let j0 = p * rows;
                let nb = rows.min(n - j0);
                buf.resize(nb * rb, 0);
                let r = read((j0 * rb) as u64, &mut buf);
                let failed = r.is_err();
                if full_tx.send((p, buf, r)).is_err() || failed {
                    return;
                }
            }
        });
        let result = (|| -> Result<()> {
            for p in 0..panels {
                let (got, buf, r) = full_rx
                    .recv()
                    .map_err(|_| CoreError::Internal("panel reader stopped".into()))?;
                r?;
                debug_assert_eq!(got, p);
                let j0 = p * rows;
                let nb = rows.min(n - j0);
                let q = QWeight::new(fmt, k, nb, &buf)?;
                let b = bias.map(|b| &b[j0..j0 + nb]);
                let clen = (m - 1) * ldc + nb;
                matmul(isa, x, m, Weight::Rows(q), b, &mut c[j0..j0 + clen], ldc)?;
                let _ = free_tx.send(buf);
            }
            Ok(())
        })();
        // Unblock the reader whether we finished or failed part-way.
        drop(free_tx);
        drop(full_rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize;

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
