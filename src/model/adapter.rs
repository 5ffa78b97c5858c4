//! Llama 4's vision adapter (HF `Llama4VisionPixelShuffleMLP`): the patch tokens after the
//! final norm, pixel-shuffled into fewer, wider tokens, then two dense layers without bias,
//! each followed by an exact GELU. Its output is what the language model receives (before
//! `multi_modal_projector`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, PixelShuffleAdapter, ViTConfig};
use super::encoder::activate;
use super::layers::Linear;
use crate::kernels::Isa;

/// The adapter's weights and its shuffle.
#[derive(Debug, Clone)]
pub struct Adapter {
    fc1: Linear,
    fc2: Linear,
    spec: PixelShuffleAdapter,
}

impl Adapter {
    /// `fc1` and `fc2` of `vb` for a model of `cfg`.
    pub fn new(
        vb: VarBuilder,
        spec: PixelShuffleAdapter,
        cfg: &ViTConfig,
        isa: Isa,
    ) -> Result<Self> {
        let shuffled = spec.shuffled_width(cfg.hidden_size);
        let dense = |name: &str, (in_dim, out_dim): (usize, usize)| -> Result<Linear> {
            Linear::new(vb.pp(name).get((out_dim, in_dim), "weight")?, None, isa)
        };
        Ok(Self {
            fc1: dense("fc1", (shuffled, spec.hidden))?,
            fc2: dense("fc2", (spec.hidden, spec.output))?,
            spec,
        })
    }

    /// `(batch, rows * cols, width)` patch tokens of a `rows` x `cols` grid to the adapter's
    /// `(batch, rows * cols * ratio^2, output)` tokens.
    pub fn forward(&self, patches: &Tensor, (rows, cols): (usize, usize)) -> Result<Tensor> {
        let shuffled = pixel_shuffle(patches, (rows, cols), self.spec.block())?;
        let hidden = activate(&self.fc1.forward(&shuffled)?, Activation::Gelu)?;
        activate(&self.fc2.forward(&hidden)?, Activation::Gelu)
    }
}

/// HF's `pixel_shuffle` with `ratio = 1 / block`, step by step: the columns folded into the
/// channels `block` at a time, the grid transposed, the rows folded the same way, transposed
/// back. A token of the result holds a `block` x `block` square of patches.
pub fn pixel_shuffle(
    patches: &Tensor,
    (rows, cols): (usize, usize),
    block: usize,
) -> Result<Tensor> {
    let (batch, count, width) = patches.dims3()?;
    if count != rows * cols || !rows.is_multiple_of(block) || !cols.is_multiple_of(block) {
        candle_core::bail!(
            "pixel shuffle by {block}: {count} tokens are not a {rows}x{cols} grid it divides"
        );
    }
    let (rows_out, cols_out) = (rows / block, cols / block);
    patches
        .reshape((batch, rows, cols_out, width * block))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((batch, cols_out, rows_out, width * block * block))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((batch, rows_out * cols_out, width * block * block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_shuffled_token_holds_a_square_of_patches_in_hfs_order() -> Result<()> {
        // A 4 x 4 grid of 1-wide tokens numbered row-major, shuffled by 2 (HF's
        // `pixel_shuffle(x, 0.5)` gives these values): each token is a square read row by row.
        let patches = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 16, 1))?;
        let shuffled = pixel_shuffle(&patches, (4, 4), 2)?;
        assert_eq!(shuffled.dims(), &[1, 4, 4]);
        let values = shuffled.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(&values[..4], &[0., 1., 4., 5.]);
        assert_eq!(&values[4..8], &[2., 3., 6., 7.]);
        assert_eq!(&values[8..12], &[8., 9., 12., 13.]);
        assert!(pixel_shuffle(&patches, (2, 8), 4).is_err());
        Ok(())
    }
}
