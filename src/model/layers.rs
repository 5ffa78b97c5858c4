//! Linear and layer-norm layers with inference and differentiable paths.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::cpu_kernels;

/// A dense layer `x W^T + b` over the last dimension of inputs of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    differentiable: bool,
}

impl Linear {
    /// From a weight `(out, in)` and an optional bias `(out,)`; `differentiable` keeps to ops
    /// with a backward pass (no fused CPU kernel).
    pub fn new(weight: Tensor, bias: Option<Tensor>, differentiable: bool) -> Self {
        Self {
            weight,
            bias,
            differentiable,
        }
    }

    /// Loads `weight` and `bias` from `vb`.
    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        differentiable: bool,
    ) -> Result<Self> {
        Ok(Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            Some(vb.get(out_dim, "bias")?),
            differentiable,
        ))
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let in_dim = xs.dim(D::Minus1)?;
        let mut out_shape = xs.dims().to_vec();
        let out_dim = self.weight.dim(0)?;
        *out_shape.last_mut().expect("rank checked by dim above") = out_dim;
        let rows = xs.elem_count() / in_dim.max(1);
        let flat = xs.reshape((rows, in_dim))?;
        let flat = match (&self.bias, self.differentiable) {
            (Some(bias), true) => flat.matmul(&self.weight.t()?)?.broadcast_add(bias)?,
            (bias, _) => cpu_kernels::linear(&flat, &self.weight, bias.as_ref())?,
        };
        flat.reshape(out_shape)
    }
}

/// Layer normalization over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    differentiable: bool,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim`; `differentiable` picks the composed ops that
    /// have a backward pass over candle's fused kernel, which has none.
    pub fn load(vb: VarBuilder, dim: usize, eps: f64, differentiable: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
            differentiable,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !self.differentiable {
            return candle_nn::ops::layer_norm(
                &xs.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            );
        }
        layer_norm_differentiable(xs, &self.weight, &self.bias, self.eps)
    }
}

/// Layer norm from elementary ops (each with a backward pass), computed in f32.
pub fn layer_norm_differentiable(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?;
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normalized = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normalized
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn linear_matches_a_hand_computed_product() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev)?;
        let bias = Tensor::new(&[0.5f32, -1., 0.], &dev)?;
        let linear = Linear::new(weight, Some(bias), false);
        let xs = Tensor::new(&[[[1f32, 1.]], [[2., -1.]]], &dev)?;
        let ys = linear.forward(&xs)?;
        assert_eq!(ys.dims(), &[2, 1, 3]);
        assert_eq!(
            ys.to_vec3::<f32>()?,
            vec![vec![vec![3.5, 6., 11.]], vec![vec![0.5, 1., 4.]]]
        );
        Ok(())
    }

    #[test]
    fn fused_and_differentiable_layer_norm_agree() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 3., (4, 7, 16), &dev)?;
        let weight = Tensor::randn(1f32, 0.5, 16, &dev)?;
        let bias = Tensor::randn(0f32, 0.5, 16, &dev)?;
        let fused = candle_nn::ops::layer_norm(&xs, &weight, &bias, 1e-6)?;
        let composed = layer_norm_differentiable(&xs, &weight, &bias, 1e-6)?;
        let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }
}
