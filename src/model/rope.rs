//! 2D rotary position embeddings: the position-encoding component that turns each patch
//! token's queries and keys by angles of its place on the patch grid (DINOv3, Llama 4),
//! instead of (or beside) learned absolute embeddings added to the tokens.

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor, D};

use super::cpu_kernels;
pub use crate::kernels::rope::RotaryPairs;

/// Where a family puts the patches on each axis of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RotaryCoordinates {
    /// Patch centres normalised to `[-1, 1]` per axis, `(i + 0.5) / n * 2 - 1`, so that
    /// every resolution spans the same range; angle `2 pi * coordinate * theta^(-4j/d)` for
    /// `j < d/4` on each axis, rows' angles then columns' (HF DINOv3).
    NormalizedCentres,
    /// Patch indices plus `offset`, scaled by `reference / grid` per axis when a reference
    /// grid is given (EVA's `ref_feat_shape`: every resolution spans the pretraining grid's
    /// range), in f32 as timm computes them; angle `coordinate * theta^(-4j/d)` for `j < d/4`
    /// on each axis, rows' angles then columns', or columns' first. HF Llama 4: offset 1,
    /// columns first; timm's `RotaryEmbeddingCat`: offset 0, rows first (`'ij'`) or columns
    /// first (`'xy'`).
    Indices {
        offset: f32,
        /// `(rows, columns)` of the reference grid.
        reference: Option<(usize, usize)>,
        columns_first: bool,
    },
}

/// 2D rotary embeddings as a config describes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotaryEmbedding {
    /// The base period (`rope_theta`; unused with learned frequencies).
    pub theta: f64,
    pub coordinates: RotaryCoordinates,
    /// Which values of a head turn together.
    pub pairs: RotaryPairs,
    pub frequencies: RotaryFrequencies,
}

/// How a pair's angle follows from its patch's coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryFrequencies {
    /// Axial: a quarter of the head's values turn by the first axis' coordinate, a quarter by
    /// the other's, each pair at its frequency `theta^(-4j/d)`, the same in every layer and
    /// head.
    Axial,
    /// RoPE-Mixed (timm's `RotaryEmbeddingMixed`): every pair `j` turns by `x fx + y fy` with
    /// frequencies learned per layer and head, `vit.rope.freqs`, `(2, layers, heads, d/2)`;
    /// `x` is the first coordinate of [`RotaryCoordinates::Indices`]' order.
    Mixed,
}

impl RotaryEmbedding {
    /// HF DINOv3's (and timm's DINOv3 ViTs'): patch centres in [-1, 1], rotate-half pairs.
    pub fn dinov3(theta: f64) -> Self {
        Self {
            theta,
            coordinates: RotaryCoordinates::NormalizedCentres,
            pairs: RotaryPairs::Halves,
            frequencies: RotaryFrequencies::Axial,
        }
    }

    /// HF Llama 4's vision encoder's: indices from 1, columns first, adjacent pairs.
    pub fn llama4(theta: f64) -> Self {
        Self {
            theta,
            coordinates: RotaryCoordinates::Indices {
                offset: 1.0,
                reference: None,
                columns_first: true,
            },
            pairs: RotaryPairs::Adjacent,
            frequencies: RotaryFrequencies::Axial,
        }
    }

    /// Checks that heads of `head_dim` can be rotated: four values per frequency (two axes,
    /// two halves).
    pub fn check(&self, head_dim: usize) -> anyhow::Result<()> {
        if !head_dim.is_multiple_of(4) {
            anyhow::bail!("rotary embeddings need a head size divisible by 4, not {head_dim}");
        }
        if !(self.theta.is_finite() && self.theta > 0.0) {
            anyhow::bail!("rope_theta {} is not a positive number", self.theta);
        }
        Ok(())
    }

    /// The cosines and sines of the angles of a `rows` x `cols` grid's patches, row-major,
    /// `head_dim / 2` per patch (the rotate-half layout repeats them over both halves).
    pub fn angles(&self, (rows, cols): (usize, usize), head_dim: usize) -> (Vec<f32>, Vec<f32>) {
        let quarter = head_dim / 4;
        // As HF computes them in f32: 1 / theta^(4j/d), then 2 pi * coordinate * frequency.
        let frequencies: Vec<f32> = (0..quarter)
            .map(|j| 1.0 / (self.theta as f32).powf(4.0 * j as f32 / head_dim as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for coordinate in self.coordinates((rows, cols)) {
            // DINOv3's turn a full circle per unit of coordinate and frequency.
            let turns = match self.coordinates {
                RotaryCoordinates::NormalizedCentres => {
                    coordinate.map(|c| 2.0 * std::f32::consts::PI * c)
                }
                RotaryCoordinates::Indices { .. } => coordinate,
            };
            for turn in turns {
                for frequency in &frequencies {
                    let angle = turn * frequency;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        (cos, sin)
    }

    /// The coordinates of a `rows` x `cols` grid's patches, row-major, each as its two axes
    /// in the order the family takes them.
    fn coordinates(&self, (rows, cols): (usize, usize)) -> Vec<[f32; 2]> {
        let centre = |i: usize, n: usize| 2.0 * ((i as f32 + 0.5) / n as f32) - 1.0;
        let mut coordinates = Vec::with_capacity(rows * cols);
        for row in 0..rows {
            for col in 0..cols {
                coordinates.push(match self.coordinates {
                    RotaryCoordinates::NormalizedCentres => [centre(row, rows), centre(col, cols)],
                    RotaryCoordinates::Indices {
                        offset,
                        reference,
                        columns_first,
                    } => {
                        let index = |i: usize, n: usize, reference: Option<usize>| {
                            let at = i as f32 + offset;
                            reference.map_or(at, |r| at / n as f32 * r as f32)
                        };
                        let y = index(row, rows, reference.map(|r| r.0));
                        let x = index(col, cols, reference.map(|r| r.1));
                        match columns_first {
                            true => [x, y],
                            false => [y, x],
                        }
                    }
                });
            }
        }
        coordinates
    }

    /// RoPE-Mixed's tables of a grid, one per layer: `(heads, patches, head_dim / 2)` angles
    /// `x fx + y fy` (in f32, as timm adds them) from `frequencies`, `(2, layers, heads,
    /// head_dim / 2)` row-major.
    pub fn mixed_tables(
        &self,
        grid: (usize, usize),
        frequencies: &[f32],
        (layers, heads, head_dim): (usize, usize, usize),
        device: &Device,
    ) -> Result<Vec<RotaryTables>> {
        let half = head_dim / 2;
        let per_axis = layers * heads * half;
        if frequencies.len() != 2 * per_axis {
            candle_core::bail!(
                "rope.freqs holds {} values, not 2 x {layers} layers x {heads} heads x {half}",
                frequencies.len()
            );
        }
        let coordinates = self.coordinates(grid);
        let patches = coordinates.len();
        (0..layers)
            .map(|layer| {
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                for head in 0..heads {
                    let at = (layer * heads + head) * half;
                    let (fx, fy) = (
                        &frequencies[at..at + half],
                        &frequencies[per_axis + at..][..half],
                    );
                    for [x, y] in &coordinates {
                        for (fx, fy) in fx.iter().zip(fy) {
                            let angle = x * fx + y * fy;
                            cos.push(angle.cos());
                            sin.push(angle.sin());
                        }
                    }
                }
                let shape = (heads, patches, half);
                Ok(RotaryTables {
                    cos: Tensor::from_vec(cos, shape, device)?,
                    sin: Tensor::from_vec(sin, shape, device)?,
                    pairs: self.pairs,
                    per_head: true,
                    full: OnceLock::new(),
                })
            })
            .collect()
    }

    /// The tables of a grid on `device`, `(patches, head_dim / 2)` each.
    pub fn tables(
        &self,
        grid: (usize, usize),
        head_dim: usize,
        device: &Device,
    ) -> Result<RotaryTables> {
        let (cos, sin) = self.angles(grid, head_dim);
        let shape = (grid.0 * grid.1, head_dim / 2);
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, shape, device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
            pairs: self.pairs,
            per_head: false,
            full: OnceLock::new(),
        })
    }
}

/// The angles of one input's patch grid, computed once per forward pass and used by every
/// layer.
#[derive(Debug, Clone)]
pub struct RotaryTables {
    /// `(patches, head_dim / 2)`, or `(heads, patches, head_dim / 2)` with `per_head`, f32.
    pub cos: Tensor,
    pub sin: Tensor,
    pairs: RotaryPairs,
    per_head: bool,
    /// For candle's ops: the tables in the model's dtype broadcast over heads (or one per
    /// head), `(patches, 1, head_dim)` over both halves for [`RotaryPairs::Halves`],
    /// `(patches, 1, head_dim / 2)` for [`RotaryPairs::Adjacent`], built by the first layer
    /// that needs them.
    full: OnceLock<(Tensor, Tensor)>,
}

impl RotaryTables {
    /// Rotates the queries and keys of the patch tokens (the last `patches` of each sequence)
    /// of `qkv`, `(batch, tokens, 3, heads, head_dim)`; prefix tokens and values keep theirs.
    /// In place by the CPU kernel for inference, with candle's ops otherwise (gradients, GPUs,
    /// other dtypes): `qkv` is taken because the kernel reuses its storage.
    pub fn rotate(&self, qkv: Tensor) -> Result<Tensor> {
        if let Some(rotated) = cpu_kernels::rotate_queries_and_keys(
            qkv.clone(),
            self.pairs,
            (&self.cos, &self.sin),
            self.per_head,
        )? {
            return Ok(rotated);
        }
        let (_, tokens, _, _, head_dim) = qkv.dims5()?;
        let patches = self.cos.dim(self.cos.rank() - 2)?;
        let prefix = tokens - patches;
        let (cos, sin) = self.full_tables(qkv.dtype())?;
        let half = head_dim / 2;
        let turn = |part: Tensor| -> Result<Tensor> {
            let patches_part = part.narrow(1, prefix, patches)?;
            let turned = match self.pairs {
                RotaryPairs::Halves => {
                    let low = patches_part.narrow(D::Minus1, 0, half)?;
                    let high = patches_part.narrow(D::Minus1, half, half)?;
                    let rotated_half = Tensor::cat(&[&high.neg()?, &low], D::Minus1)?;
                    (patches_part.broadcast_mul(cos)? + rotated_half.broadcast_mul(sin)?)?
                }
                RotaryPairs::Adjacent => {
                    let (b, n, heads, _) = patches_part.dims4()?;
                    let pairs = patches_part.reshape((b, n, heads, half, 2))?;
                    let real = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                    let imaginary = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                    let turned_real = (real.broadcast_mul(cos)? - imaginary.broadcast_mul(sin)?)?;
                    let turned_imaginary =
                        (real.broadcast_mul(sin)? + imaginary.broadcast_mul(cos)?)?;
                    Tensor::stack(&[turned_real, turned_imaginary], D::Minus1)?
                        .reshape((b, n, heads, head_dim))?
                }
            };
            match prefix {
                0 => Ok(turned),
                _ => Tensor::cat(&[&part.narrow(1, 0, prefix)?, &turned], 1),
            }
        };
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2);
        let (q, k, v) = (turn(part(0)?)?, turn(part(1)?)?, part(2)?);
        Tensor::stack(&[q, k, v], 2)
    }
}

impl RotaryTables {
    /// [`RotaryTables::full`], built once.
    fn full_tables(&self, dtype: DType) -> Result<(&Tensor, &Tensor)> {
        if self.full.get().is_none() {
            let full = |table: &Tensor| -> Result<Tensor> {
                let table = match self.pairs {
                    RotaryPairs::Halves => Tensor::cat(&[table, table], D::Minus1)?,
                    RotaryPairs::Adjacent => table.clone(),
                };
                // (patches, heads or 1, values)
                match self.per_head {
                    true => table.transpose(0, 1)?.contiguous()?.to_dtype(dtype),
                    false => table.to_dtype(dtype)?.unsqueeze(1),
                }
            };
            let _ = self.full.set((full(&self.cos)?, full(&self.sin)?));
        }
        let (cos, sin) = self.full.get().expect("set above");
        Ok((cos, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dinov3(theta: f64) -> RotaryEmbedding {
        RotaryEmbedding::dinov3(theta)
    }

    fn llama4(theta: f64) -> RotaryEmbedding {
        RotaryEmbedding::llama4(theta)
    }

    #[test]
    fn eva_coordinates_scale_to_the_reference_grid() {
        // A 2 x 4 grid against a 4 x 4 reference: rows at 0 and 2, columns at 0..4; rows first.
        let eva = RotaryEmbedding {
            theta: 100.0,
            coordinates: RotaryCoordinates::Indices {
                offset: 0.0,
                reference: Some((4, 4)),
                columns_first: false,
            },
            pairs: RotaryPairs::Adjacent,
            frequencies: RotaryFrequencies::Axial,
        };
        let (_, sin) = eva.angles((2, 4), 8);
        // The patch at row 1, column 3: y 2, x 3.
        let expected = [2f32.sin(), 0.2f32.sin(), 3f32.sin(), 0.3f32.sin()];
        for (got, want) in sin[7 * 4..8 * 4].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{sin:?}");
        }
    }

    #[test]
    fn angles_follow_hf_dinov3() {
        // head_dim 8: frequencies 1 and 100^-0.5; a 1 x 2 grid has centres y 0, x -0.5, 0.5.
        let (cos, _) = dinov3(100.0).angles((1, 2), 8);
        let pi = std::f32::consts::PI;
        let expected = [
            0f32.cos(),
            0f32.cos(),
            (-pi).cos(),
            (-pi * 0.1).cos(),
            0f32.cos(),
            0f32.cos(),
            pi.cos(),
            (pi * 0.1).cos(),
        ];
        for (got, want) in cos.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{cos:?}");
        }
    }

    #[test]
    fn angles_follow_hf_llama4() {
        // head_dim 8: frequencies 1 and 100^-0.5; the patch at row 1, column 0 of a 2 x 2
        // grid has coordinates x 1, y 2, columns' angles first.
        let (_, sin) = llama4(100.0).angles((2, 2), 8);
        let expected = [1f32.sin(), 0.1f32.sin(), 2f32.sin(), 0.2f32.sin()];
        for (got, want) in sin[2 * 4..3 * 4].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{sin:?}");
        }
    }

    #[test]
    fn the_kernel_and_candle_ops_rotate_alike() -> Result<()> {
        let device = Device::Cpu;
        for rotary in [dinov3(37.5), llama4(10.0)] {
            let tables = rotary.tables((3, 4), 8, &device)?;
            let qkv = Tensor::randn(0f32, 1., (2, 14, 3, 2, 8), &device)?;
            let kernel = tables.rotate(qkv.copy()?)?;
            // A variable tracks gradients, which sends it through candle's ops.
            let tracked = candle_core::Var::from_tensor(&qkv)?;
            let ops = tables.rotate(tracked.as_tensor().clone())?;
            let diff = (kernel - ops.detach())?.abs()?.flatten_all()?.max(0)?;
            assert!(diff.to_scalar::<f32>()? < 1e-6, "{rotary:?}");
        }
        // RoPE-Mixed: per-head tables, on both paths.
        let mixed = RotaryEmbedding {
            frequencies: RotaryFrequencies::Mixed,
            ..llama4(10.0)
        };
        let frequencies: Vec<f32> = (0..2 * 2 * 2 * 4).map(|i| i as f32 * 0.07 - 0.5).collect();
        let tables = mixed.mixed_tables((3, 4), &frequencies, (2, 2, 8), &device)?;
        assert_eq!(tables[1].cos.dims(), &[2, 12, 4]);
        let qkv = Tensor::randn(0f32, 1., (2, 13, 3, 2, 8), &device)?;
        let kernel = tables[1].rotate(qkv.copy()?)?;
        let tracked = candle_core::Var::from_tensor(&qkv)?;
        let ops = tables[1].rotate(tracked.as_tensor().clone())?;
        let diff = (kernel - ops.detach())?.abs()?.flatten_all()?.max(0)?;
        assert!(diff.to_scalar::<f32>()? < 1e-6);
        Ok(())
    }
}
