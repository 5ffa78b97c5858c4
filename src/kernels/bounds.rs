//! Error bounds of f32 arithmetic, for the tests that hold a kernel against an f64
//! reference. A tolerance follows from the arithmetic (the depth of each sum and the sizes of
//! its terms), never from what one CPU happened to give: the order of summation follows the
//! blocking, which follows the cache sizes each CPU reports (`VIT_CACHE_SIZES` sets them).

/// f32's unit roundoff, 2^-24: a correctly rounded operation is off by at most this much,
/// relative to its exact result.
pub const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;

/// `γ(n) = n u / (1 - n u)`: `n` f32 roundings in sequence move a result by at most `γ(n)`
/// relative to the terms they touch, so a sum of `n` terms in any order (with or without
/// fused multiply-adds) is off the exact sum by at most `γ(n)` times the sum of the terms'
/// magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1-3.5).
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * UNIT_ROUNDOFF;
    assert!(nu < 0.5, "{n} roundings: the bound no longer holds");
    nu / (1.0 - nu)
}

/// A dot product in f64 (exact but for f64's own rounding, 2^29 times finer than f32's)
/// beside the largest error of any f32 evaluation of it: `γ(k) Σ|a_i b_i|`.
#[derive(Debug, Clone, Copy)]
pub struct Dot {
    pub value: f64,
    pub bound: f64,
}

impl Dot {
    /// `Σ a_i b_i` of two slices of equal length.
    pub fn of(a: &[f32], b: &[f32]) -> Self {
        Self::strided(a.len(), |i| a[i], |i| b[i])
    }

    /// `Σ a(i) b(i)` for `i` below `k`.
    pub fn strided(k: usize, a: impl Fn(usize) -> f32, b: impl Fn(usize) -> f32) -> Self {
        let (mut value, mut magnitude) = (0f64, 0f64);
        for i in 0..k {
            let term = a(i) as f64 * b(i) as f64;
            value += term;
            magnitude += term.abs();
        }
        Self {
            value,
            bound: gamma(k.max(1)) * magnitude,
        }
    }
}

/// The largest slope of the activations the epilogues apply (GELU's is 1.129, SiLU's and
/// QuickGELU's 1.0998, ReLU's 1): an input off by `e` moves the output by at most this
/// times `e`.
pub const ACTIVATION_SLOPE: f64 = 1.13;

/// The bound after a few more f32 roundings and an activation: the error `carried` from
/// the products, times the activation's slope, plus `steps` roundings of each magnitude in
/// `magnitudes` (the values the epilogue adds, and its results).
pub fn after_epilogue(carried: f64, steps: usize, magnitudes: &[f64]) -> f64 {
    let touched: f64 = magnitudes.iter().map(|m| m.abs()).sum();
    ACTIVATION_SLOPE * carried + gamma(steps) * touched + f64::from(f32::MIN_POSITIVE)
}

/// Asserts that every `got[i]` is within `bound[i]` of `expected[i]`, naming the first
/// that is not.
pub fn assert_within(got: &[f32], expected: &[f64], bound: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    for (i, ((&g, &e), &b)) in got.iter().zip(expected).zip(bound).enumerate() {
        assert!(
            (g as f64 - e).abs() <= b,
            "{what}: [{i}] {g} vs {e}: off by {:e}, bound {b:e}",
            (g as f64 - e).abs()
        );
    }
}

/// Scaled dot-product attention of one query in f64, beside the bound of an f32
/// evaluation: `(output, bound)`, each `d` values. `score(j)` is the query's dot product
/// with key `j` (with its own bound), `scale` multiplies the scores, `value(j, c)` is
/// value `j`'s channel `c`.
///
/// The scores are off by at most `δ_j` (their products' bound, one rounding for the scale
/// and one for the subtraction of the row's maximum); a softmax of scores off by at most
/// `δ` gives each probability within a factor `e^{±2δ}` of the exact one, and the
/// exponential (relative error below 2e-7, `kernels::math::exp`; 1 ulp in libm), the sum
/// of `n` terms and the division add their own; the weighted sum of the values adds `γ(n)`
/// of `Σ_j p_j |v_j|`, which also scales everything before it.
pub fn attention_row(
    n: usize,
    d: usize,
    score: impl Fn(usize) -> Dot,
    scale: f64,
    value: impl Fn(usize, usize) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    const EXP_RELATIVE_ERROR: f64 = 2e-7;
    let scores: Vec<Dot> = (0..n).map(&score).collect();
    let max = scores
        .iter()
        .map(|s| s.value * scale)
        .fold(f64::MIN, f64::max);
    let delta = scores
        .iter()
        .map(|s| {
            let scaled = (s.value * scale).abs();
            s.bound * scale.abs() + UNIT_ROUNDOFF * (scaled + (s.value * scale - max).abs())
        })
        .fold(0f64, f64::max);
    let exps: Vec<f64> = scores
        .iter()
        .map(|s| (s.value * scale - max).exp())
        .collect();
    let total: f64 = exps.iter().sum();
    let relative = (2.0 * delta).exp_m1() + EXP_RELATIVE_ERROR + gamma(n + 1);
    let mut output = vec![0f64; d];
    let mut bound = vec![0f64; d];
    for (j, e) in exps.iter().enumerate() {
        let p = e / total;
        for c in 0..d {
            let v = value(j, c) as f64;
            output[c] += p * v;
            bound[c] += p * v.abs();
        }
    }
    for b in &mut bound {
        *b = (relative + gamma(n + 1) * (1.0 + relative)) * *b + f64::from(f32::MIN_POSITIVE);
    }
    (output, bound)
}

/// Attention of `qkv` laid out `(batch, seq, 3, heads, d)` in f64, as
/// `(batch, seq, heads, d)`, beside the bound of an f32 evaluation
/// ([`attention_row`]).
pub fn attention(
    qkv: &[f32],
    (batch, seq, heads, d): (usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let at = |b: usize, s: usize, part: usize, h: usize, c: usize| {
        qkv[(((b * seq + s) * 3 + part) * heads + h) * d + c]
    };
    let (mut out, mut bound) = (
        vec![0f64; batch * seq * heads * d],
        vec![0f64; batch * seq * heads * d],
    );
    for b in 0..batch {
        for s in 0..seq {
            for h in 0..heads {
                let (row, row_bound) = attention_row(
                    seq,
                    d,
                    |j| Dot::strided(d, |c| at(b, s, 0, h, c), |c| at(b, j, 1, h, c)),
                    1.0 / (d as f64).sqrt(),
                    |j, c| at(b, j, 2, h, c),
                );
                let start = ((b * seq + s) * heads + h) * d;
                out[start..start + d].copy_from_slice(&row);
                bound[start..start + d].copy_from_slice(&row_bound);
            }
        }
    }
    (out, bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_f32_stay_within_gamma_whatever_the_order() {
        let k = 4096;
        let a: Vec<f32> = (0..k)
            .map(|i| ((i * 7919) % 1000) as f32 / 999.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k)
            .map(|i| ((i * 104_729) % 997) as f32 / 996.0 - 0.5)
            .collect();
        let dot = Dot::of(&a, &b);
        let forward: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let backward: f32 = a.iter().zip(&b).rev().map(|(x, y)| x * y).sum();
        let pairs: f32 = a
            .chunks(2)
            .zip(b.chunks(2))
            .map(|(x, y)| x[0].mul_add(y[0], x[1] * y[1]))
            .sum();
        for sum in [forward, backward, pairs] {
            assert!(
                (sum as f64 - dot.value).abs() <= dot.bound,
                "{sum} vs {dot:?}"
            );
        }
        // The bound is not vacuous: it is a small share of the terms' magnitudes.
        assert!(dot.bound < 1e-3 * k as f64 * 0.0625);
    }

    #[test]
    fn a_wrong_term_breaks_the_bound() {
        let a = vec![0.5f32; 300];
        let b = vec![0.25f32; 300];
        let dot = Dot::of(&a, &b);
        let missing_one: f32 = a[1..].iter().zip(&b[1..]).map(|(x, y)| x * y).sum();
        assert!((missing_one as f64 - dot.value).abs() > dot.bound);
    }
}
