//! Symmetric int8 quantization: weights per output channel, once, when the model loads;
//! activations per row, as each product starts (dynamic quantization).
//!
//! A value `x` of a row (or channel) whose largest magnitude is `m` becomes `q = round(x / s)`
//! with `s = m / 127`, so `q` lies in `[-127, 127]` and `x ≈ s q`. A row of zeros has `s =
//! 0` and `q = 0`.

/// The largest quantized magnitude.
pub const QMAX: f32 = 127.0;

/// The scale of values whose largest magnitude is `max_abs` (0 for a row of zeros).
#[inline(always)]
pub fn scale_for(max_abs: f32) -> f32 {
    max_abs / QMAX
}

/// Quantizes one weight channel: its int8 values and their scale.
pub fn quantize_channel(values: &[f32]) -> (Vec<i8>, f32) {
    let scale = scale_for(max_abs(values));
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let quantized = values
        .iter()
        .map(|&x| quantize_value(x, inverse) as i8)
        .collect();
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
        let values: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0) * 0.37).collect();
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
}
