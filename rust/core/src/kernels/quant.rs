//! Weight formats and their block layouts.
//!
//! A weight `W` of logical shape `(K, N)` (so that `y = x W`) is stored, as in ggml/GGUF, as `N`
//! rows of `K` elements each (the row of output column `n` is `W[:, n]`), each row a run of blocks
//! along the input dimension `K`:
//!
//! | format | block (elements) | block bytes | block layout |
//! |--------|------------------|-------------|--------------|
//! | `f32`  | 1  | 4  | little-endian IEEE binary32 (the "packed" form of a float32 weight) |
//! | `f16`  | 1  | 2  | IEEE binary16 |
//! | `bf16` | 1  | 2  | bfloat16 (the upper half of a binary32) |
//! | `q8_0` | 32 | 34 | `d: f16`, then 32 `i8` values `q`; element `i` is `d * q[i]` |
//! | `q4_0` | 32 | 18 | `d: f16`, then 16 bytes; byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble; element `i` is `d * (nibble(i) - 8)` |
//!
//! These are byte for byte GGUF's `F32`, `F16`, `BF16`, `Q8_0` and `Q4_0` tensor data, so GGUF
//! weights load unconverted. Quantisation follows ggml's reference (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`): Q8_0 has `d = max|x| / 127` and `q = round(x / d)`; Q4_0 takes the
//! element `m` of largest magnitude, `d = m / -8` and `q = min(15, trunc(x / d + 8.5))`.
//! The error bound per element is `|d| / 2` for Q8_0 and `|d|` for Q4_0 (within a block).

use crate::{CoreError, Result};
use half::{bf16, f16};

/// Elements per Q8_0 / Q4_0 block.
pub const QK: usize = 32;

/// A weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
}

impl Format {
    /// Parse a format name (`"f32"`, `"f16"`, `"bf16"`, `"q8_0"`, `"q4_0"`).
    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Format::F32,
            "f16" | "float16" => Format::F16,
            "bf16" | "bfloat16" => Format::Bf16,
            "q8_0" => Format::Q8_0,
            "q4_0" => Format::Q4_0,
            _ => {
                return Err(CoreError::DType(format!(
                    "unknown weight format {s:?} (expected one of 'f32', 'f16', 'bf16', 'q8_0', 'q4_0')"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::Bf16 => "bf16",
            Format::Q8_0 => "q8_0",
            Format::Q4_0 => "q4_0",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Format::Q8_0 | Format::Q4_0 => QK,
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::F16 | Format::Bf16 => 2,
            Format::Q8_0 => 34,
            Format::Q4_0 => 18,
        }
    }

    /// Bytes of one row of `k` elements (checked: `k` must be a whole number of blocks).
    pub fn row_bytes(self, k: usize) -> Result<usize> {
        let be = self.block_elems();
        if k % be != 0 {
            return Err(CoreError::Shape(format!(
                "format {} stores blocks of {be} elements along K, but K = {k} is not a multiple of {be}",
                self.name()
            )));
        }
        (k / be)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| CoreError::Shape(format!("K = {k} overflows the size of a row")))
    }

    /// Total bytes of a `(K, N)` weight in this format (checked for overflow).
    pub fn total_bytes(self, k: usize, n: usize) -> Result<usize> {
        let rb = self.row_bytes(k)?;
        let total = rb.checked_mul(n).filter(|&t| t <= isize::MAX as usize);
        total.ok_or_else(|| {
            CoreError::Shape(format!(
                "a ({k}, {n}) weight in {} overflows the address space",
                self.name()
            ))
        })
    }
}

/// Quantise one row of `k` floats (`src`, length `k`) into `dst` (length `row_bytes(k)`).
pub fn quantize_row(fmt: Format, src: &[f32], dst: &mut [u8]) {
    match fmt {
        Format::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        Format::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        Format::Bf16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        Format::Q8_0 => {
            for (blk, xs) in dst.chunks_exact_mut(34).zip(src.chunks_exact(QK)) {
                let amax = xs.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                blk[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                for (q, &v) in blk[2..].iter_mut().zip(xs) {
                    *q = ((v * id).round() as i8) as u8;
                }
            }
        }
        Format::Q4_0 => {
            for (blk, xs) in dst.chunks_exact_mut(18).zip(src.chunks_exact(QK)) {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in xs {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                blk[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..QK / 2 {
                    blk[2 + j] = q(xs[j]) | (q(xs[j + QK / 2]) << 4);
                }
            }
        }
    }
}

/// Dequantise one row: `dst[i]` = element `i` of the row `src`.
pub fn dequantize_row(fmt: Format, src: &[u8], dst: &mut [f32]) {
    match fmt {
        Format::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Format::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        Format::Bf16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        Format::Q8_0 => {
            for (blk, ys) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
                let d = block_scale(blk);
                for (y, &q) in ys.iter_mut().zip(&blk[2..]) {
                    *y = d * (q as i8) as f32;
                }
            }
        }
        Format::Q4_0 => {
            for (blk, ys) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
                let d = block_scale(blk);
                for j in 0..QK / 2 {
                    ys[j] = d * ((blk[2 + j] & 0x0f) as i32 - 8) as f32;
                    ys[j + QK / 2] = d * ((blk[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
        }
    }
}

/// The f16 scale `d` at the start of a Q8_0 / Q4_0 block.
#[inline(always)]
pub fn block_scale(blk: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32()
}

/// A weight `(K, N)` stored as `N` rows of `K` elements in `fmt` (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct QWeight<'a> {
    pub fmt: Format,
    pub k: usize,
    pub n: usize,
    pub data: &'a [u8],
}

impl<'a> QWeight<'a> {
    /// Wrap `data`, checking its length and (for block formats) that every scale is finite:
    /// a wrong length or a NaN/Inf scale is a `Corrupt` error (data cannot be trusted).
    /// The scale check reads every block, so it costs a pass over the data: callers that hold
    /// already-checked data (a built `QuantizedTensor`) use [`QWeight::with_len_check`].
    pub fn new(fmt: Format, k: usize, n: usize, data: &'a [u8]) -> Result<Self> {
        let w = Self::with_len_check(fmt, k, n, data)?;
        if matches!(fmt, Format::Q8_0 | Format::Q4_0) {
            let bb = fmt.block_bytes();
            // An f16 is NaN or infinite exactly when its five exponent bits are all ones.
            let bad = |b: &[u8]| (u16::from_le_bytes([b[0], b[1]]) & 0x7c00) == 0x7c00;
            if let Some(i) = data.chunks_exact(bb).position(bad) {
                return Err(CoreError::corrupt(
                    "<memory>",
                    None,
                    format!("{} block {i} has a non-finite scale (corrupt block data)", fmt.name()),
                ));
            }
        }
        Ok(w)
    }

    /// Wrap `data`, checking only its length (a wrong length is a `Corrupt` error).
    pub fn with_len_check(fmt: Format, k: usize, n: usize, data: &'a [u8]) -> Result<Self> {
        let want = fmt.total_bytes(k, n)?;
        if data.len() != want {
            return Err(CoreError::corrupt(
                "<memory>",
                None,
                format!(
                    "{} weight of shape ({k}, {n}) needs {want} bytes of block data, got {}",
                    fmt.name(),
                    data.len()
                ),
            ));
        }
        Ok(QWeight { fmt, k, n, data })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.fmt.row_bytes(self.k).expect("checked at construction")
    }

    /// Row `n` (the `K` elements of output column `n`).
    pub fn row(&self, n: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[n * rb..(n + 1) * rb]
    }
}

/// Quantise a row-major `(K, N)` float32 weight into `fmt` (rows of blocks along K), in parallel.
pub fn quantize(fmt: Format, w: &[f32], k: usize, n: usize) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    let total = fmt.total_bytes(k, n)?;
    if w.len() != k.saturating_mul(n) {
        return Err(CoreError::Shape(format!(
            "weight buffer of {} elements is not ({k}, {n})",
            w.len()
        )));
    }
    let rb = fmt.row_bytes(k)?;
    let mut out = vec![0u8; total];
    if rb == 0 {
        return Ok(out);
    }
    crate::pool::install(|| {
        out.par_chunks_mut(rb).enumerate().with_min_len(16).for_each_init(
            || vec![0f32; k],
            |col, (j, dst)| {
                for (i, c) in col.iter_mut().enumerate() {
                    *c = w[i * n + j];
                }
                quantize_row(fmt, col, dst);
            },
        );
    });
    Ok(out)
}

/// Dequantise into a row-major `(K, N)` float32 array.
pub fn dequantize(w: &QWeight<'_>) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let mut out = vec![0f32; k * n];
    let mut row = vec![0f32; k];
    for j in 0..n {
        dequantize_row(w.fmt, w.row(j), &mut row);
        for (i, v) in row.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_round_trip_within_half_scale() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.31).collect();
        let mut b = vec![0u8; Format::Q8_0.row_bytes(64).unwrap()];
        assert_eq!(b.len(), 68);
        quantize_row(Format::Q8_0, &x, &mut b);
        let mut y = vec![0f32; 64];
        dequantize_row(Format::Q8_0, &b, &mut y);
        for blk in 0..2 {
            let d = block_scale(&b[blk * 34..]);
            for i in 0..32 {
                let e = (x[blk * 32 + i] - y[blk * 32 + i]).abs();
                assert!(e <= d * 0.5 + 1e-3 * d, "{e} > {d}/2");
            }
        }
    }

    #[test]
    fn q4_layout_low_then_high_nibbles() {
        // Element i = i - 8 for i < 16 (low nibbles), and elements 16..31 are 0.
        let mut x = vec![0f32; 32];
        for i in 0..16 {
            x[i] = i as f32 - 8.0;
        }
        let mut b = vec![0u8; 18];
        quantize_row(Format::Q4_0, &x, &mut b);
        // max magnitude element is -8 -> d = 1, q = x + 8.
        assert_eq!(block_scale(&b), 1.0);
        for j in 0..16 {
            assert_eq!(b[2 + j] & 0x0f, j as u8);
            assert_eq!(b[2 + j] >> 4, 8);
        }
    }

    #[test]
    fn corrupt_lengths_and_scales() {
        assert!(QWeight::new(Format::Q8_0, 32, 2, &[0u8; 67]).is_err());
        let mut b = vec![0u8; 34];
        b[0] = 0x00;
        b[1] = 0x7c; // f16 +inf
        assert!(matches!(QWeight::new(Format::Q8_0, 32, 1, &b), Err(CoreError::Corrupt { .. })));
        assert!(Format::Q4_0.row_bytes(33).is_err());
        assert!(Format::F32.total_bytes(usize::MAX / 2, 3).is_err());
    }
}
