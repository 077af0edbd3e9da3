//! Element-wise maths written so that LLVM vectorises it: no branches, no libm calls.
//!
//! The attention and fused-op kernels are generic over `const FMA: bool` and compiled twice:
//! once plainly (the scalar reference, `a * b + c`) and once inside a
//! `#[target_feature(enable = "avx2,fma")]` function (`mul_add`, which becomes `vfmadd` there).
//! One body, so the two paths cannot diverge except by FMA rounding.

/// `a * b + c`, fused on the FMA path.
#[inline(always)]
pub fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for f32, relative error below 2e-7 on the normal range; `exp(-inf) = 0`,
/// `exp(+inf) = +inf`, `exp(NaN) = NaN`, results below the normal range flush to 0.
///
/// `x = n ln2 + r` with `n = round(x / ln2)` (by the 1.5 * 2^23 trick) and `|r| <= ln2 / 2`;
/// `e^r` by its degree-6 Taylor polynomial (Horner); `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + MAGIC) - MAGIC;
    let r = fma::<FMA>(-n, LN2_LO, fma::<FMA>(-n, LN2_HI, xc));
    let mut p = 1.0 / 720.0;
    p = fma::<FMA>(p, r, 1.0 / 120.0);
    p = fma::<FMA>(p, r, 1.0 / 24.0);
    p = fma::<FMA>(p, r, 1.0 / 6.0);
    p = fma::<FMA>(p, r, 0.5);
    p = fma::<FMA>(p, r, 1.0);
    p = fma::<FMA>(p, r, 1.0);
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    // Outside the clamp: 0 below, +inf above; NaN stays NaN (comparisons are false).
    let y = if x < -87.0 { 0.0 } else { y };
    if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`, saturating to +-1; NaN stays NaN.
#[inline(always)]
pub fn tanh<const FMA: bool>(x: f32) -> f32 {
    let e = exp::<FMA>(2.0 * x.clamp(-20.0, 20.0));
    let t = 1.0 - 2.0 / (e + 1.0);
    if x.is_nan() {
        x
    } else {
        t
    }
}

/// `erf(x) = 1 - erfc(|x|)` (odd), with Numerical Recipes' Chebyshev fit
/// `erfc(z) = t exp(-z^2 + P(t))`, `t = 1 / (1 + z / 2)` (fractional error < 1.2e-7);
/// saturates to +-1; NaN stays NaN.
#[inline(always)]
pub fn erf<const FMA: bool>(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77f32;
    const C: [f32; 9] = [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    for c in C {
        p = fma::<FMA>(p, t, c);
    }
    let erfc = t * exp::<FMA>(-z * z + p);
    let r = 1.0 - erfc;
    let r = if x < 0.0 { -r } else { r };
    if x.is_nan() {
        x
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn exp_tanh_erf_accuracy() {
        let mut x = -90.0f32;
        while x < 90.0 {
            let want = (x as f64).exp();
            let got = exp::<false>(x) as f64;
            if (-87.0..=88.0).contains(&x) {
                assert!(((got - want) / want).abs() < 5e-7, "exp({x}) = {got}, want {want}");
            }
            x += 0.0137;
        }
        assert_eq!(exp::<true>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp::<true>(f32::INFINITY), f32::INFINITY);
        assert!(exp::<true>(f32::NAN).is_nan());
        let mut x = -6.0f32;
        while x < 6.0 {
            assert!((tanh::<false>(x) as f64 - (x as f64).tanh()).abs() < 3e-7, "tanh {x}");
            x += 0.01;
        }
        // erf against a high-precision series for |x| < 3 and saturation beyond.
        let erf64 = |x: f64| {
            let (mut s, mut term, mut k) = (0.0f64, x, 0);
            while term.abs() > 1e-17 || k < 5 {
                s += term / (2 * k + 1) as f64;
                k += 1;
                term *= -x * x / k as f64;
                if k > 200 {
                    break;
                }
            }
            s * 2.0 / std::f64::consts::PI.sqrt()
        };
        let mut x = -3.0f32;
        while x < 3.0 {
            assert!((erf::<false>(x) as f64 - erf64(x as f64)).abs() < 5e-7, "erf {x}");
            x += 0.01;
        }
        assert_eq!(erf::<false>(10.0), 1.0);
    }
}
