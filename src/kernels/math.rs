//! Branch-free f32 maths that loops vectorize (`f32::exp` and friends are a call per value).

/// `e^x` in f32 (relative error below 2e-7; inputs below -87.33 give about 1e-38, above
/// 88.72 infinity).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN_2_HI: f32 = 0.693_359_4;
    const LN_2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 * 2^23: adding and subtracting it rounds an f32 to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.33, 88.72);
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN_2_HI - n * LN_2_LO;
    // e^r on [-ln 2 / 2, ln 2 / 2] (Cephes' expf polynomial).
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e_r = p * r * r + r + 1.0;
    // 2^n from the integer n held in the low bits of `rounded` (no float-to-int cast, which
    // saturates and would keep the loop scalar); n = 128 at the upper clamp gives infinity.
    let n_int = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    e_r * scale
}

/// `erf` by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, 6e-7 in f32).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_given_exp(x, exp(-x * x))
}

/// [`erf`] given `e^(-x^2)`, for callers that need that exponential too (GELU's slope).
#[inline(always)]
pub fn erf_given_exp(x: f32, exp_minus_x_squared: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let sign = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + P * x);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    sign * (1.0 - poly * exp_minus_x_squared)
}

/// `tanh x = 1 - 2 / (e^(2x) + 1)` (absolute error below 3e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series (|x| <= 4 converges well in f64).
    fn erf_f64(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_1e6_of_the_exact_function() {
        for i in -4000..=4000 {
            let x = i as f32 / 1000.0;
            // The formula's bound, 1.5e-7, plus f32 rounding near zero (5.4e-7 at -0.046).
            assert!((erf(x) as f64 - erf_f64(x as f64)).abs() < 1e-6, "erf({x})");
        }
    }

    #[test]
    fn exp_is_within_2e7_relative_of_the_exact_function() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let exact = (x as f64).exp();
            let relative = (exp(x) as f64 - exact).abs() / exact;
            assert!(relative < 2e-7, "exp({x}): {} vs {exact}", exp(x));
        }
        assert!(exp(-100.0) < 1e-37);
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn tanh_and_sigmoid_match_the_exact_functions() {
        for i in -10_000..=10_000 {
            let x = i as f32 / 1000.0;
            assert!(
                (tanh(x) as f64 - (x as f64).tanh()).abs() < 3e-7,
                "tanh({x})"
            );
            let exact = 1.0 / (1.0 + (-x as f64).exp());
            assert!((sigmoid(x) as f64 - exact).abs() < 3e-7, "sigmoid({x})");
        }
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
    }
}
