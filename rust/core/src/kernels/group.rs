//! Several row-stored weights against one activation block in one pool job:
//! `C_j = X W_j (+ bias_j)` for `j = 0..J`, all `W_j` sharing `K` (a layer's q, k and v
//! projections; an MLP's gate and up projections).
//!
//! At decode shapes each weight alone is a short bandwidth-bound call: issued one by one, every
//! call pays its own start (the memory streams ramping up, the workers picking the job up) and
//! its own tail (one thread finishing the last rows while the other waits). Here the row tasks
//! of all the weights form one list that the team works through, so the weights stream back to
//! back, and `X` is rounded to Q8 blocks once for all the Q8_0 / Q4_0 ones.
//!
//! Each output is bit for bit what [`matmul`](super::gemm::matmul) gives for that weight alone:
//! every output element is computed by the same task body as there (the row kernels compute
//! each output column on its own, so how the rows are split into tasks does not change it).
//! Outside the decode shapes (`M > DECODE_MAX_M`), and for a weight that `matmul` would send
//! elsewhere (the AVX2 row-stored float32 kernel at `M >= 2`), the weights go one by one
//! through `matmul`.

use super::dot::{rows_per_task, rows_task, RowsOut, SendPtr};
use super::gemm::{check_operands, matmul, Weight, DECODE_MAX_M};
use super::qdot::{self, is_int_format, quantize_acts, QActs, QRowsOut};
use super::quant::{Format, QWeight};
use crate::cpu::Isa;
use crate::Result;

/// One weight of a [`matmul_group`] call, with its bias and its output (`m` rows of stride
/// `ldc`).
pub struct GroupOut<'a> {
    pub w: QWeight<'a>,
    pub bias: Option<&'a [f32]>,
    pub c: &'a mut [f32],
    pub ldc: usize,
}

/// How one weight of the group is computed.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// The dot-product row tasks of `dot.rs`.
    Rows,
    /// The integer row tasks of `qdot.rs` on the shared Q8 activations.
    Q,
    /// Alone, through `matmul`.
    Alone,
}

/// `C_j = X W_j (+ bias_j)` for every part, `X` `(m, k)` row-major (see the module doc). All
/// operands are checked before anything is written.
pub fn matmul_group(isa: Isa, x: &[f32], m: usize, parts: &mut [GroupOut<'_>]) -> Result<()> {
    for p in parts.iter() {
        check_operands(x, m, p.w.k, p.w.n, p.bias, p.c, p.ldc)?;
        // The block data's length (QWeight::with_len_check) is the caller's.
    }
    if m == 0 {
        return Ok(());
    }
    let grouped = m <= DECODE_MAX_M && isa != Isa::Scalar;
    // X rounded to Q8 blocks once, when some weight takes the integer kernels (None: X holds
    // Inf / NaN, or K is not a whole number of blocks: those weights take the float rows).
    let int_k = parts.iter().find(|p| is_int_format(p.w.fmt) && p.w.k > 0 && p.w.n > 0);
    let acts: Option<QActs> = match int_k {
        Some(p) if grouped => quantize_acts(isa, x, m, p.w.k),
        _ => None,
    };
    let routes: Vec<Route> = parts
        .iter()
        .map(|p| {
            if !grouped || p.w.k == 0 || p.w.n == 0 || rows_f32_takes(isa, m, &p.w) {
                Route::Alone
            } else if is_int_format(p.w.fmt) && acts.as_ref().is_some_and(|a| a.k == p.w.k) {
                Route::Q
            } else {
                Route::Rows
            }
        })
        .collect();
    for (p, r) in parts.iter_mut().zip(&routes) {
        if *r == Route::Alone {
            matmul(isa, x, m, Weight::Rows(p.w), p.bias, p.c, p.ldc)?;
        }
    }
    // The task list: (part, first row) for every task of every grouped part.
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    let mut bytes = 0usize;
    for (j, p) in parts.iter().enumerate() {
        if routes[j] == Route::Alone {
            continue;
        }
        let per = rows_per_task(p.w.n, p.w.row_bytes());
        let mut n0 = 0;
        while n0 < p.w.n {
            tasks.push((j, n0, (n0 + per).min(p.w.n)));
            n0 += per;
        }
        bytes += p.w.data.len();
    }
    if tasks.is_empty() {
        return Ok(());
    }
    let outs: Vec<(SendPtr<f32>, usize)> =
        parts.iter_mut().map(|p| (SendPtr(p.c.as_mut_ptr()), p.ldc)).collect();
    let parts = &*parts;
    crate::pool::for_tasks(tasks.len(), bytes, |t| {
        let (j, n0, n1) = tasks[t];
        let p = &parts[j];
        let (c, ldc) = (outs[j].0.get(), outs[j].1);
        // SAFETY: the task writes only columns n0..n1 of part j's output (checked above to
        // hold m rows of stride ldc), disjoint from every other task; the CPU runs `isa`.
        unsafe {
            match (routes[j], &acts) {
                (Route::Q, Some(a)) => {
                    qdot::task(isa, QRowsOut { a, w: &p.w, bias: p.bias, c, ldc }, n0, n1)
                }
                _ => rows_task(isa, RowsOut { x, m, w: &p.w, bias: p.bias, c, ldc }, n0, n1),
            }
        }
    });
    Ok(())
}

/// Whether `matmul` sends this weight to the AVX2 row-stored float32 kernel (`rows_f32.rs`),
/// which the group does not run.
fn rows_f32_takes(isa: Isa, m: usize, w: &QWeight<'_>) -> bool {
    w.fmt == Format::F32 && m >= super::rows_f32::MIN_M && isa == Isa::Avx2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize;

    /// Every part equals `matmul` alone, bit for bit, on every ISA, for float and integer formats
    /// mixed in one group, at decode shapes and above.
    #[test]
    fn group_equals_separate_matmuls() {
        // Over 256 KiB of weight in all: the team runs the tasks (smaller calls run inline).
        let k = 256;
        let ns = [300usize, 64, 700];
        for &m in &[1usize, 3, 8, 33] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            for fmts in [
                [Format::F32, Format::F32, Format::F32],
                [Format::Q8_0, Format::Q4_0, Format::Q8_0],
                [Format::F16, Format::Q8_0, Format::Bf16],
            ] {
                let datas: Vec<Vec<u8>> = ns
                    .iter()
                    .zip(fmts)
                    .enumerate()
                    .map(|(j, (&n, f))| {
                        let w: Vec<f32> = (0..k * n)
                            .map(|i| (((i + j) * 53 % 97) as f32 - 48.0) / 40.0)
                            .collect();
                        quantize(f, &w, k, n).unwrap()
                    })
                    .collect();
                let biases: Vec<Vec<f32>> =
                    ns.iter().map(|&n| (0..n).map(|i| i as f32 * 0.25).collect()).collect();
                for isa in Isa::available() {
                    let ws: Vec<QWeight<'_>> = datas
                        .iter()
                        .zip(ns)
                        .zip(fmts)
                        .map(|((d, n), f)| QWeight::with_len_check(f, k, n, d).unwrap())
                        .collect();
                    let mut want: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0f32; m * n]).collect();
                    for (j, w) in ws.iter().enumerate() {
                        let b = (j != 1).then_some(&biases[j][..]);
                        matmul(isa, &x, m, Weight::Rows(*w), b, &mut want[j], ns[j]).unwrap();
                    }
                    let mut got: Vec<Vec<f32>> = ns.iter().map(|&n| vec![7f32; m * n]).collect();
                    let mut parts: Vec<GroupOut<'_>> = ws
                        .iter()
                        .zip(got.iter_mut())
                        .enumerate()
                        .map(|(j, (w, c))| GroupOut {
                            w: *w,
                            bias: (j != 1).then_some(&biases[j][..]),
                            c,
                            ldc: ns[j],
                        })
                        .collect();
                    crate::pool::set_num_threads(Some(2)).unwrap();
                    matmul_group(isa, &x, m, &mut parts).unwrap();
                    crate::pool::set_num_threads(None).unwrap();
                    drop(parts);
                    for j in 0..3 {
                        assert!(got[j] == want[j], "{isa:?} m={m} {:?} part {j}", fmts[j]);
                    }
                }
            }
        }
    }

    #[test]
    fn group_checks_every_part_before_writing() {
        let (k, n, m) = (32, 4, 1);
        let x = vec![1f32; m * k];
        let d = quantize(Format::F32, &vec![1f32; k * n], k, n).unwrap();
        let w = QWeight::with_len_check(Format::F32, k, n, &d).unwrap();
        let mut c0 = vec![5f32; n];
        let mut c1 = vec![5f32; n - 1]; // too small
        let mut parts = vec![
            GroupOut { w, bias: None, c: &mut c0, ldc: n },
            GroupOut { w, bias: None, c: &mut c1, ldc: n },
        ];
        assert!(matmul_group(Isa::detect(), &x, m, &mut parts).is_err());
        assert!(c0.iter().all(|&v| v == 5.0), "nothing written when a part is bad");
    }
}
