//! Row kernels of the CPU engine that are not matrix products: layer norm, exact GELU and
//! softmax, each row's reductions in vector lanes, compiled for the engine's instruction set
//! ([`vectorized`]) and run on its threads ([`super::pool`]).

use std::mem::MaybeUninit;

use super::math::{erf, exp};
use super::{pool, Isa};

/// Runs `kernel` compiled for the CPU engine's instruction set ([`Isa::current`]: AVX-512 or
/// AVX2 and FMA; the crate is built for the baseline x86-64, whose 4-wide SSE2 is all the
/// compiler may assume), plainly elsewhere. The kernel's loops are vectorized when they use
/// branch-free maths such as [`exp`]; mark the closure `#[inline(always)]`, or it is compiled
/// on its own, for the baseline.
#[inline(always)]
pub(crate) fn vectorized<R>(kernel: impl FnOnce() -> R) -> R {
    match Isa::current() {
        // SAFETY: the CPU has the features the functions are compiled for (Isa::current
        // only names supported sets).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(kernel) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(kernel) },
        _ => kernel(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn run_avx512<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

/// Rows of a layer norm handled by one parallel task.
const NORM_ROWS_PER_TASK: usize = 16;

/// Layer norm of each row of `weight.len()` values of `xs`, `(x - mean) / sqrt(var + eps) *
/// weight + bias`, with the mean and variance of each row in two passes (as PyTorch
/// computes them), in parallel.
///
/// Panics unless `bias` is as long as `weight` and `xs` is whole rows.
pub fn layer_norm_rows(xs: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let cols = weight.len();
    assert!(
        cols > 0 && bias.len() == cols && xs.len().is_multiple_of(cols),
        "layer norm: {} values for {cols} weights",
        xs.len()
    );
    let chunk = NORM_ROWS_PER_TASK * cols;
    pool::fill(xs.len(), chunk, |i, out| {
        let xs = &xs[i * chunk..];
        vectorized(
            #[inline(always)]
            || {
                for (o, x) in out.chunks_mut(cols).zip(xs.chunks(cols)) {
                    let mean = sum(x) / cols as f32;
                    let variance = squared_deviations(x, mean) / cols as f32;
                    let inverse_std = 1.0 / (variance + eps).sqrt();
                    for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                        o.write((x - mean) * inverse_std * w + b);
                    }
                }
            },
        )
    })
}

/// Values of exact GELU handled by one parallel task.
const GELU_VALUES_PER_TASK: usize = 4096;

/// Exact GELU of each value, `0.5 x (1 + erf(x / sqrt 2))`, in parallel.
pub fn gelu_erf_values(src: &[f32]) -> Vec<f32> {
    pool::fill(
        src.len(),
        GELU_VALUES_PER_TASK,
        |i, dst: &mut [MaybeUninit<f32>]| {
            let src = &src[i * GELU_VALUES_PER_TASK..];
            vectorized(
                #[inline(always)]
                || {
                    for (d, &x) in dst.iter_mut().zip(src) {
                        d.write(0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)));
                    }
                },
            )
        },
    )
}

/// Lanes of the reductions below: independent partial results the compiler keeps in one
/// vector register (a single running total is a chain it may not reorder).
const LANES: usize = 8;

/// `fold` over `values` with `LANES` independent accumulators started at `init`, combined
/// at the end (the order is fixed, so results do not depend on the machine).
#[inline(always)]
fn reduce(values: &[f32], init: f32, fold: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = fold(*lane, v);
        }
    }
    let mut result = rest.iter().fold(init, |acc, &v| fold(acc, v));
    for lane in lanes {
        result = fold(result, lane);
    }
    result
}

/// The sum of `values`, vectorizable.
#[inline(always)]
pub(crate) fn sum(values: &[f32]) -> f32 {
    reduce(values, 0.0, |a, b| a + b)
}

/// The largest of `values` (negative infinity for none), vectorizable.
#[inline(always)]
pub(crate) fn max(values: &[f32]) -> f32 {
    reduce(values, f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// The dot product of `a` and `b`, vectorizable.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().fold(rest, |acc, lane| acc + lane)
}

/// `sum((x - mean)^2)` over `values`, vectorizable (the same sums, in the same order, as
/// [`dot`] of the deviations with themselves).
#[inline(always)]
pub(crate) fn squared_deviations(values: &[f32], mean: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += (x - mean) * (x - mean);
        }
    }
    lanes.iter().fold(rest, |acc, lane| acc + lane)
}

/// Softmax of each row of `cols` values of `data`, rows `ld` apart, in place. The `ld -
/// cols` values after each row are padding, left as zeros (their exponentials): with `ld` a
/// multiple of the vector width every pass is whole vectors, where 197 scores (ViT at 224)
/// left a scalar tail in each, half of the softmax's time.
pub(crate) fn softmax_rows(data: &mut [f32], cols: usize, ld: usize) {
    vectorized(
        #[inline(always)]
        || {
            for row in data.chunks_mut(ld) {
                let padding = cols.min(row.len());
                row[padding..].fill(f32::NEG_INFINITY);
                let max = max(row);
                row.iter_mut().for_each(|x| *x = exp(*x - max));
                // exp's clamp leaves about 1e-38 there, subnormal once scaled (slow).
                row[padding..].fill(0.0);
                let inverse = 1.0 / sum(row);
                row.iter_mut().for_each(|x| *x *= inverse);
            }
        },
    )
}

/// The exponentials of softmax, left unnormalized: each row of `cols` values of `data`
/// (rows `ld` apart, the padding after each as in [`softmax_rows`]) becomes `e^(x - max)` in
/// place, in the same pass as its sum, which goes into `sums`. Dividing a product with these
/// rows by the sums gives the product with the probabilities, at a pass over the product's
/// row instead of one over the scores. The padding's exponentials (about 1e-38 each, exp's
/// clamp) vanish in a sum of at least 1, the row's maximum's term.
pub(crate) fn exp_rows(data: &mut [f32], cols: usize, ld: usize, sums: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || {
            for (row, total) in data.chunks_mut(ld).zip(sums.iter_mut()) {
                let padding = cols.min(row.len());
                row[padding..].fill(f32::NEG_INFINITY);
                let max = max(row);
                let mut lanes = [0f32; LANES];
                let mut chunks = row.chunks_exact_mut(LANES);
                for chunk in &mut chunks {
                    for (x, lane) in chunk.iter_mut().zip(&mut lanes) {
                        *x = exp(*x - max);
                        *lane += *x;
                    }
                }
                let mut tail = 0.0;
                for x in chunks.into_remainder() {
                    *x = exp(*x - max);
                    tail += *x;
                }
                *total = lanes.iter().sum::<f32>() + tail;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;

    /// Unnormalized exponentials divided by their sums are softmax's probabilities, for rows
    /// with and without padding and with a scalar tail; every sum holds the maximum's term, 1.
    /// The same exponentials on both sides: the two sums differ only in their order (each
    /// within `γ(cols)` of the exact sum), then a division against a reciprocal and a product
    /// add three roundings.
    #[test]
    fn exponentials_over_their_sums_are_the_softmax() {
        for (cols, ld) in [(5, 5), (197, 208), (19, 19), (64, 64)] {
            let rows = 3;
            let data: Vec<f32> = (0..rows * ld)
                .map(|i| ((i * 7919) % 211) as f32 / 13.0 - 8.0)
                .collect();
            let (mut exps, mut probs) = (data.clone(), data);
            let mut sums = vec![0f32; rows];
            exp_rows(&mut exps, cols, ld, &mut sums);
            softmax_rows(&mut probs, cols, ld);
            for r in 0..rows {
                assert!(sums[r] >= 1.0, "{cols}/{ld}: sum {}", sums[r]);
                for c in 0..cols {
                    let (got, want) = (exps[r * ld + c] / sums[r], probs[r * ld + c]);
                    let bound =
                        (2.0 * bounds::gamma(cols) + 3.0 * bounds::UNIT_ROUNDOFF) * want as f64;
                    assert!(
                        ((got - want).abs() as f64) <= bound + f32::MIN_POSITIVE as f64,
                        "{cols}/{ld} at ({r}, {c}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn lane_reductions_match_plain_ones() {
        for len in [0, 1, 7, 8, 9, 31, 197] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            assert_eq!(sum(&values), values.iter().sum::<f32>(), "{len}");
            let plain = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&values), plain, "{len}");
            let squares: f32 = values.iter().map(|v| v * v).sum();
            assert_eq!(dot(&values, &values), squares, "{len}");
            let deviations: Vec<f32> = values.iter().map(|v| v - 0.5).collect();
            assert_eq!(
                squared_deviations(&values, 0.5),
                dot(&deviations, &deviations),
                "{len}"
            );
        }
    }
}
