//! Bicubic resizing of the patch position embeddings, as HF's `interpolate_pos_encoding`
//! (`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`, with
//! `antialias=True` for DINOv2 and timm) does.

use candle_core::{Result, Tensor};

/// PyTorch's cubic convolution constant for bicubic upsampling.
const CUBIC_A: f64 = -0.75;

fn cubic_near(x: f64) -> f64 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}

fn cubic_far(x: f64) -> f64 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// The `(output, input)` matrix that resizes one axis as PyTorch's bicubic interpolation
/// (half-pixel centres, borders clamped) does.
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let mut matrix = vec![0f64; output * input];
    for out in 0..output {
        let source = (out as f64 + 0.5) * scale - 0.5;
        let floor = source.floor();
        let t = source - floor;
        let weights = [
            cubic_far(t + 1.0),
            cubic_near(t),
            cubic_near(1.0 - t),
            cubic_far(2.0 - t),
        ];
        for (k, weight) in weights.into_iter().enumerate() {
            let index = (floor as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            matrix[out * input + index] += weight;
        }
    }
    matrix.into_iter().map(|w| w as f32).collect()
}

/// PyTorch's cubic convolution constant for antialiased bicubic resampling (PIL's).
const CUBIC_A_ANTIALIAS: f64 = -0.5;

/// The cubic convolution kernel with constant `a` at distance `x`.
fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// The `(output, input)` matrix of PyTorch's antialiased bicubic resize
/// (`_upsample_bicubic2d_aa`): the kernel is widened by the downscaling factor, its taps
/// are cut at the borders and renormalised.
pub fn bicubic_antialias_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let (support, inverse) = match scale >= 1.0 {
        true => (2.0 * scale, 1.0 / scale),
        false => (2.0, 1.0),
    };
    let mut matrix = vec![0f32; output * input];
    for out in 0..output {
        let center = scale * (out as f64 + 0.5);
        let first = ((center - support + 0.5).floor() as i64).max(0) as usize;
        let end = ((center + support + 0.5).floor() as i64).min(input as i64) as usize;
        let weights: Vec<f64> = (first..end)
            .map(|j| cubic_kernel((j as f64 - center + 0.5) * inverse, CUBIC_A_ANTIALIAS))
            .collect();
        let total: f64 = weights.iter().sum();
        for (j, weight) in (first..end).zip(weights) {
            matrix[out * input + j] = (weight / total) as f32;
        }
    }
    matrix
}

/// Which bicubic resize position embeddings go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resampling {
    /// `interpolate(mode="bicubic", align_corners=False)`.
    Bicubic,
    /// The same with `antialias=True`.
    BicubicAntialias,
}

impl Resampling {
    /// The `(output, input)` matrix of one axis.
    pub fn matrix(self, input: usize, output: usize) -> Vec<f32> {
        match self {
            Self::Bicubic => bicubic_matrix(input, output),
            Self::BicubicAntialias => bicubic_antialias_matrix(input, output),
        }
    }
}

/// Resizes patch position embeddings `(1, grid*grid, dim)` to `(1, rows*cols, dim)`.
pub fn interpolate_patch_positions(
    positions: &Tensor,
    grid: usize,
    (rows, cols): (usize, usize),
    resampling: Resampling,
) -> Result<Tensor> {
    let dim = positions.dim(2)?;
    let (dtype, device) = (positions.dtype(), positions.device());
    let resize = |input: usize, output: usize| {
        Tensor::from_vec(resampling.matrix(input, output), (output, input), device)?.to_dtype(dtype)
    };
    let by_rows = resize(grid, rows)?.matmul(&positions.reshape((grid, grid * dim))?)?;
    let by_cols = by_rows
        .reshape((rows, grid, dim))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((grid, rows * dim))?;
    resize(grid, cols)?
        .matmul(&by_cols)?
        .reshape((cols, rows, dim))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((1, rows * cols, dim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_row_of_the_matrix_sums_to_one() {
        for (input, output) in [(4, 6), (14, 24), (24, 14), (3, 3)] {
            let matrix = bicubic_matrix(input, output);
            for row in matrix.chunks(input) {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn same_size_is_the_identity() {
        let matrix = bicubic_matrix(5, 5);
        for (i, row) in matrix.chunks(5).enumerate() {
            for (j, w) in row.iter().enumerate() {
                assert!((w - if i == j { 1.0 } else { 0.0 }).abs() < 1e-7);
            }
        }
    }

    #[test]
    fn weights_match_pytorch_bicubic() {
        // torch.nn.functional.interpolate(torch.eye(3).reshape(3, 1, 1, 3), size=(1, 5),
        // mode="bicubic", align_corners=False), in float64, transposed to (output, input).
        let expected = [
            [1.096, -0.096, 0.0],
            [0.612, 0.46, -0.072],
            [0.0, 1.0, 0.0],
            [-0.072, 0.46, 0.612],
            [0.0, -0.096, 1.096],
        ];
        let matrix = bicubic_matrix(3, 5);
        for (row, expected_row) in matrix.chunks(3).zip(expected) {
            for (w, e) in row.iter().zip(expected_row) {
                assert!((w - e).abs() < 1e-6, "{w} vs {e}");
            }
        }
        // Upsampling [0, 1] to 4 values: torch gives [-0.10546875, 0.2265625, 0.7734375, 1.10546875].
        let matrix = bicubic_matrix(2, 4);
        let ramp: Vec<f32> = matrix.chunks(2).map(|row| row[1]).collect();
        assert_eq!(ramp, [-0.10546875, 0.2265625, 0.7734375, 1.105_468_8]);
    }

    #[test]
    fn constant_positions_stay_constant() -> Result<()> {
        let positions = Tensor::ones((1, 9, 4), candle_core::DType::F32, &Device::Cpu)?;
        let resized = interpolate_patch_positions(&positions, 3, (5, 2), Resampling::Bicubic)?;
        assert_eq!(resized.dims(), &[1, 10, 4]);
        let values = resized.flatten_all()?.to_vec1::<f32>()?;
        assert!(values.iter().all(|v| (v - 1.0).abs() < 1e-6));
        Ok(())
    }
}
