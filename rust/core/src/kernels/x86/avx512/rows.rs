//! The row-wise kernels (`kernels/rows.rs`: norms, activations, softmax, rope) compiled with
//! AVX-512 F/BW/VL/DQ and FMA: their generic body with `mul_add` as one `vfmadd` (see
//! `vmath.rs`), vectorised by the compiler over 512-bit registers. The bodies keep their own
//! lanes (16-lane sums, element-wise maths), so every output is the same chain of operations as
//! under AVX2 + FMA: bit-identical to that body (tested here), whose bound against the scalar
//! reference is stated in `vmath.rs`.

use crate::kernels::rows::RowOp;

/// [`crate::kernels::rows::chunk`] with FMA, under AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub unsafe fn chunk<O: RowOp>(op: &O, i0: usize, x: &[f32], y: &mut [f32], d: usize) {
    crate::kernels::rows::chunk::<true, O>(op, i0, x, y, d)
}

#[cfg(test)]
mod tests {
    use crate::cpu::Isa;
    use crate::kernels::act::{activation, gated, softmax, Act};
    use crate::kernels::norm::{layer_norm, rms_norm};
    use crate::kernels::rope::rope;
    use crate::kernels::test_util::lcg;

    #[test]
    fn bit_identical_to_avx2() {
        if !super::super::dot::tests::avx512_here() {
            return;
        }
        // Row lengths around the 16-lane groups; enough rows for several tasks.
        for &d in &[1, 2, 15, 16, 17, 33, 64, 100, 4096] {
            let rows = 2 + 40000 / d;
            let x: Vec<f32> = lcg(rows * d, d as u64).iter().map(|v| v * 12.0).collect();
            let g = lcg(rows * d, 5);
            let w = lcg(d, 6);
            let b = lcg(d, 7);
            let run = |isa: Isa| {
                let mut outs = Vec::new();
                let mut y = vec![f32::NAN; rows * d];
                rms_norm(isa, &x, d, Some(&w), 1e-6, &mut y);
                outs.push(y.clone());
                layer_norm(isa, &x, d, Some(&w), Some(&b), 1e-5, &mut y);
                outs.push(y.clone());
                softmax(isa, &x, d, &mut y);
                outs.push(y.clone());
                for a in [Act::Silu, Act::GeluTanh, Act::GeluErf] {
                    activation(isa, a, &x, d, &mut y);
                    outs.push(y.clone());
                    gated(isa, a, &x, &g, d, &mut y);
                    outs.push(y.clone());
                }
                if d % 2 == 0 {
                    let pos: Vec<f64> = (0..rows).map(|p| p as f64 * 3.0).collect();
                    for inter in [false, true] {
                        rope(isa, &x, rows, d, &pos, 10000.0, inter, &mut y);
                        outs.push(y.clone());
                    }
                }
                outs
            };
            let (got, want) = (run(Isa::Avx512), run(Isa::Avx2));
            for (o, (a, b)) in got.iter().zip(&want).enumerate() {
                let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same, "d {d}, output {o}");
            }
        }
    }
}
