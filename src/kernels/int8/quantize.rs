//! int8 quantization: weights symmetric per output channel, once, when the model loads;
//! activations asymmetric per row, as each product starts (dynamic quantization, as ONNX
//! Runtime's `quantize_dynamic` does per tensor).
//!
//! A weight `w` of a channel becomes `q = round(w / s)` with `s = max(m / 127, p / 128)`,
//! where `m` is the channel's largest magnitude and `p` the largest `|w[2t]| + |w[2t + 1]|`
//! over its pairs of one sign. So `q` lies in `[-127, 127]`, `w ≈ s q`, and a pair of one
//! sign has `|q[2t]| + |q[2t + 1]| <= 128` (two values summing to at most 128 round to at most
//! 128 in exact arithmetic; a pair that f32's rounding pushes to 129 loses one from its
//! larger code): the pair bound ([`fits_pair_bound`]) under which AVX2's `vpmaddubsw` never
//! saturates. Most channels have `p` within a third above `m`, and lose at most that share of
//! their precision, on every CPU alike, so that every kernel gives the same answer; the
//! defining code (127, or a pair summing to 128) comes back, so quantizing the dequantized
//! weights again gives the same codes. An activation `x` of a row
//! spanning `[lo, hi]` (widened to hold 0) becomes `u = round(x / s) + z` in `[0, 255]` with
//! `s = (hi - lo) / 255` and the zero point `z = round(-lo / s)`, so `x ≈ s (u - z)` and 0 is
//! exact: the GELU outputs that feed the MLP's second layer span about `[-0.17, hi]`, where a
//! symmetric range would leave half of the codes unused. A row (or channel) of zeros has `s =
//! 0` and codes that stand for 0.

use crate::kernels::rows::vectorized;

/// The largest quantized magnitude.
pub const QMAX: f32 = 127.0;

/// The most a pair of same-signed weight codes may sum to in magnitude: `255 * 128 = 32640`,
/// the largest sum of a pair of unsigned 8-bit codes times such a pair, fits in an i16.
pub const PAIR_BOUND: i32 = 128;

/// The scale of a channel whose largest magnitude is `max_abs` and whose largest pair of one
/// sign sums to `pair` in magnitude (0 for a channel of zeros).
#[inline(always)]
pub fn scale_for(max_abs: f32, pair: f32) -> f32 {
    (max_abs / QMAX).max(pair / PAIR_BOUND as f32)
}

/// Quantizes one weight channel: its int8 values, within the pair bound, and their scale.
pub fn quantize_channel(values: &[f32]) -> (Vec<i8>, f32) {
    let scale = scale_for(max_abs(values), largest_same_signed_pair(values));
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut quantized = vec![0i8; values.len()];
    vectorized(
        #[inline(always)]
        || {
            for (q, &x) in quantized.iter_mut().zip(values) {
                *q = quantize_value(x, inverse) as i8;
            }
        },
    );
    for pair in quantized.chunks_exact_mut(2) {
        if over_pair_bound(pair[0], pair[1]) {
            let larger = usize::from(pair[1].unsigned_abs() > pair[0].unsigned_abs());
            pair[larger] -= pair[larger].signum();
        }
    }
    (quantized, scale)
}

/// The largest magnitude of `values` (a NaN counts as none).
#[inline(always)]
pub fn max_abs(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, &x| m.max(x.abs()));
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// The largest `|w[2t]| + |w[2t + 1]|` over the pairs of `values` whose members share a sign
/// (0 counting as either; a NaN as none).
fn largest_same_signed_pair(values: &[f32]) -> f32 {
    values
        .chunks_exact(2)
        .map(|pair| match pair[0] * pair[1] >= 0.0 {
            true => pair[0].abs() + pair[1].abs(),
            false => 0.0,
        })
        .fold(0.0, f32::max)
}

/// Whether the codes of a channel keep the pair bound (every pair `(q[2t], q[2t + 1])` of one
/// sign has `|q[2t]| + |q[2t + 1]| <= PAIR_BOUND`) and the range `[-127, 127]`.
pub fn fits_pair_bound(codes: &[i8]) -> bool {
    codes
        .chunks_exact(2)
        .all(|pair| !over_pair_bound(pair[0], pair[1]))
        && codes.iter().all(|&q| q != i8::MIN)
}

/// Whether two neighbouring codes share a sign and sum past [`PAIR_BOUND`] in magnitude.
fn over_pair_bound(a: i8, b: i8) -> bool {
    (a >= 0) == (b >= 0) && a.unsigned_abs() as i32 + b.unsigned_abs() as i32 > PAIR_BOUND
}

/// The smallest and largest of `values`, widened to hold 0 (a NaN counts as none).
#[inline(always)]
pub fn min_max(values: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk) {
            *l = l.min(x);
            *h = h.max(x);
        }
    }
    let tail = chunks.remainder();
    let lo = lo.iter().chain(tail).fold(0f32, |m, &x| m.min(x));
    let hi = hi.iter().chain(tail).fold(0f32, |m, &x| m.max(x));
    (lo, hi)
}

/// The scale and zero point of a row spanning `[lo, hi]` (`lo <= 0 <= hi`).
#[inline(always)]
pub fn activation_params(lo: f32, hi: f32) -> (f32, i32) {
    let scale = (hi - lo) / 255.0;
    // A NaN span counts as none, as zero does.
    if scale.is_nan() || scale <= 0.0 {
        return (0.0, 0);
    }
    (
        scale,
        (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32,
    )
}

/// `round(x * inverse) + zero_point` (ties to even) clamped to `[0, 255]`.
#[inline(always)]
pub fn quantize_unsigned(x: f32, inverse: f32, zero_point: f32) -> i16 {
    ((x * inverse).round_ties_even() + zero_point).clamp(0.0, 255.0) as i16
}

/// `round(x * inverse)` (ties to even) clamped to `[-127, 127]`.
#[inline(always)]
pub fn quantize_value(x: f32, inverse: f32) -> i16 {
    (x * inverse).round_ties_even().clamp(-QMAX, QMAX) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_span_the_int8_range_and_round_trip_within_half_a_step() {
        // Pairs of opposite signs: the largest magnitude sets the scale.
        let values: Vec<f32> = (0..37)
            .map(|i| (i as f32 - 20.0) * 0.37 * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let (quantized, scale) = quantize_channel(&values);
        assert_eq!(scale, 20.0 * 0.37 / 127.0);
        assert_eq!(quantized[0], -127);
        assert!(quantized.iter().all(|&q| q >= -127));
        for (&q, &x) in quantized.iter().zip(&values) {
            assert!(
                (q as f32 * scale - x).abs() <= scale / 2.0 + 1e-6,
                "{q} {x}"
            );
        }
    }

    /// Channels of every shape keep the pair bound and the int8 range, come within half a
    /// step of their values, and quantize again from their dequantized values to the same codes.
    #[test]
    fn channels_keep_the_pair_bound_and_quantize_again_to_the_same_codes() {
        let channels: Vec<Vec<f32>> = vec![
            vec![0.5; 64],
            vec![-0.5; 63],
            (0..96)
                .map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0)
                .collect(),
            (0..96)
                .map(|i| if i % 2 == 0 { 1.0 } else { 0.9999 })
                .collect(),
            (0..50)
                .map(|i| (i as f32 * 0.731).sin() * (1.0 + i as f32))
                .collect(),
            vec![1.0, -1.0, 0.3, 0.0, -0.2, -0.9],
        ];
        for values in &channels {
            let (codes, scale) = quantize_channel(values);
            assert!(fits_pair_bound(&codes), "{codes:?}");
            for (&q, &x) in codes.iter().zip(values) {
                assert!(
                    (q as f32 * scale - x).abs() <= scale * 1.5 + 1e-6,
                    "{q} {x}"
                );
            }
            let dequantized: Vec<f32> = codes.iter().map(|&q| q as f32 * scale).collect();
            let (again, _) = quantize_channel(&dequantized);
            assert_eq!(again, codes);
        }
        let (codes, scale) = quantize_channel(&[0.5; 4]);
        assert_eq!((codes, scale), (vec![64; 4], 1.0 / 128.0));
        assert!(!fits_pair_bound(&[100, 29]));
        assert!(fits_pair_bound(&[100, 28, -127, 127]));
        assert!(!fits_pair_bound(&[i8::MIN, 1]));
    }

    #[test]
    fn zeros_have_scale_zero_and_nan_does_not_poison_the_scale() {
        assert_eq!(quantize_channel(&[0.0; 5]), (vec![0; 5], 0.0));
        assert_eq!(max_abs(&[1.0, f32::NAN, -3.0]), 3.0);
        let long: Vec<f32> = (0..40).map(|i| if i == 33 { -9.0 } else { 1.0 }).collect();
        assert_eq!(max_abs(&long), 9.0);
        assert_eq!(quantize_value(1e9, 1.0), 127);
        assert_eq!(quantize_value(-1e9, 1.0), -127);
        assert_eq!(quantize_value(2.5, 1.0), 2);
    }

    #[test]
    fn rows_use_all_256_codes_and_zero_is_exact() {
        let row: Vec<f32> = (0..40).map(|i| i as f32 * 0.25 - 1.0).collect();
        let (lo, hi) = min_max(&row);
        assert_eq!((lo, hi), (-1.0, 8.75));
        let (scale, zero) = activation_params(lo, hi);
        assert_eq!(scale, 9.75 / 255.0);
        let codes: Vec<i16> = row
            .iter()
            .map(|&x| quantize_unsigned(x, 1.0 / scale, zero as f32))
            .collect();
        assert_eq!((codes[0], codes[39]), (0, 255));
        assert_eq!(codes[4] as i32, zero, "0.0 maps to the zero point");
        for (&u, &x) in codes.iter().zip(&row) {
            assert!(((u as i32 - zero) as f32 * scale - x).abs() <= scale / 2.0 + 1e-6);
        }
        assert_eq!(min_max(&[2.0, 3.0]), (0.0, 3.0), "0 is always in range");
        assert_eq!(activation_params(0.0, 0.0), (0.0, 0));
        assert_eq!(min_max(&[f32::NAN, -1.0]), (-1.0, 0.0));
    }
}
