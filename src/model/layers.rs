//! Linear and layer-norm layers: the CPU engine's fused kernels for inference, candle's ops
//! with a backward pass wherever a tensor tracks gradients (decided as each op runs).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape};
use candle_core::{Storage, Tensor, D};
use candle_nn::VarBuilder;

use super::config::Activation;
use super::cpu_kernels::contiguous_f32;
use crate::kernels::int8::{Int8Kernel, PackedI8};
use crate::kernels::{self, Epilogue, Isa, PackedB};

/// A dense layer `x W^T + b` over the last dimension of inputs of any rank.
///
/// On the CPU in f32 for inference, the weight is packed once, here, into the layout of the
/// CPU engine's microkernels (and the tensor dropped); the bias, an activation and a residual
/// are then applied as the product stores its tiles. Elsewhere (GPUs, half precision,
/// training) it is candle's matmul.
#[derive(Debug, Clone)]
pub struct Linear {
    kind: LinearKind,
    out_dim: usize,
}

#[derive(Debug, Clone)]
enum LinearKind {
    Packed(Arc<PackedLinear>),
    Tensors {
        weight: Tensor,
        bias: Option<Tensor>,
    },
}

/// A weight packed for the CPU engine, and its bias.
#[derive(Debug)]
struct PackedLinear {
    weight: EngineWeight,
    bias: Option<Vec<f32>>,
}

/// A packed weight in f32 or int8.
#[derive(Debug)]
enum EngineWeight {
    F32(PackedB),
    Int8(PackedI8),
}

impl EngineWeight {
    /// `(in, out)`.
    fn dims(&self) -> (usize, usize) {
        match self {
            EngineWeight::F32(weight) => weight.dims(),
            EngineWeight::Int8(weight) => weight.dims(),
        }
    }
}

impl Linear {
    /// From a weight `(out, in)` and an optional bias `(out,)`; `isa` is the CPU engine's
    /// instruction set. Weights that track gradients (trained) stay candle tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>, isa: Isa) -> Result<Self> {
        Self::stacked(vec![weight], bias, isa)
    }

    /// The weights `parts`, each `(out_i, in)`, stacked along the output (query, key and
    /// value into one projection), without a concatenated copy when they are packed.
    pub fn stacked(parts: Vec<Tensor>, bias: Option<Tensor>, isa: Isa) -> Result<Self> {
        Self::build(parts, bias, isa, false)
    }

    /// As [`Linear::stacked`], with the weight quantized to int8 per output channel, for
    /// inference on the CPU in f32 (an error elsewhere).
    pub fn stacked_int8(parts: Vec<Tensor>, bias: Option<Tensor>, isa: Isa) -> Result<Self> {
        Self::build(parts, bias, isa, true)
    }

    fn build(parts: Vec<Tensor>, bias: Option<Tensor>, isa: Isa, int8: bool) -> Result<Self> {
        let packable = parts
            .iter()
            .chain(&bias)
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op());
        let mut out_dim = 0;
        let mut in_dim = None;
        for part in &parts {
            let (out, inner) = part.dims2()?;
            if in_dim.is_some_and(|d| d != inner) {
                candle_core::bail!("stacked weights of {inner} and {:?} inputs", in_dim);
            }
            in_dim = Some(inner);
            out_dim += out;
        }
        let in_dim = in_dim.unwrap_or(0);
        if let Some(bias) = &bias {
            if bias.dims1()? != out_dim {
                candle_core::bail!("bias of {:?} for {out_dim} outputs", bias.dims());
            }
        }
        if int8 && !packable {
            let first = parts.first().or(bias.as_ref());
            candle_core::bail!(
                "int8 dense layers run on the CPU in f32 inference only (weight on {:?} in {:?})",
                first.map(|t| t.device().location()),
                first.map(|t| t.dtype())
            );
        }
        if !packable {
            let weight = match parts.len() {
                1 => parts.into_iter().next().expect("one part"),
                _ => Tensor::cat(&parts, 0)?,
            };
            return Ok(Self {
                kind: LinearKind::Tensors { weight, bias },
                out_dim,
            });
        }
        let parts = parts
            .iter()
            .map(|p| p.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let storages: Vec<_> = parts.iter().map(|p| p.storage_and_layout()).collect();
        let mut rows: Vec<&[f32]> = Vec::with_capacity(out_dim);
        for (storage, layout) in &storages {
            let Storage::Cpu(cpu) = &**storage else {
                unreachable!("checked to be on the CPU")
            };
            let values = &cpu.as_slice::<f32>()?[layout.start_offset()..];
            let count = layout.shape().dims()[0];
            rows.extend((0..count).map(|r| &values[r * in_dim..(r + 1) * in_dim]));
        }
        let weight = match int8 {
            false => EngineWeight::F32(PackedB::from_weight_rows(isa, (out_dim, in_dim), |j| {
                rows[j]
            })),
            true => EngineWeight::Int8(PackedI8::quantize(
                Int8Kernel::for_isa(isa),
                (out_dim, in_dim),
                |j| rows[j],
            )),
        };
        let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
        Ok(Self {
            kind: LinearKind::Packed(Arc::new(PackedLinear { weight, bias })),
            out_dim,
        })
    }

    /// Loads `weight` and `bias` from `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, isa: Isa) -> Result<Self> {
        Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            Some(vb.get(out_dim, "bias")?),
            isa,
        )
    }

    /// `activation(x W^T + b) + residual`; on the packed path in one pass. A packed layer
    /// (frozen weights) refuses inputs that track gradients rather than silently stopping
    /// them: its product has no backward pass.
    pub fn forward_fused(
        &self,
        xs: &Tensor,
        activation: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let in_dim = xs.dim(D::Minus1)?;
        let mut out_shape = xs.dims().to_vec();
        *out_shape.last_mut().expect("rank checked by dim above") = self.out_dim;
        let rows = xs.elem_count() / in_dim.max(1);
        let flat = xs.reshape((rows, in_dim))?;
        match &self.kind {
            LinearKind::Packed(_) if xs.track_op() || residual.is_some_and(Tensor::track_op) => {
                candle_core::bail!(
                    "a dense layer packed for inference got an input that tracks gradients"
                )
            }
            LinearKind::Packed(packed) => {
                let op = PackedLinearOp {
                    packed: packed.clone(),
                    activation: activation.map_or(kernels::Activation::None, Activation::engine),
                };
                let flat = flat.contiguous()?;
                let ys = match residual {
                    Some(residual) => {
                        let residual = residual.reshape((rows, self.out_dim))?.contiguous()?;
                        flat.apply_op2_no_bwd(&residual, &op)?
                    }
                    None => flat.apply_op1_no_bwd(&op)?,
                };
                ys.reshape(out_shape)
            }
            LinearKind::Tensors { weight, bias } => {
                let ys = flat.matmul(&weight.t()?)?;
                let ys = match bias {
                    Some(bias) => ys.broadcast_add(bias)?,
                    None => ys,
                };
                let ys = match activation {
                    Some(activation) => super::encoder::activate(&ys, activation)?,
                    None => ys,
                };
                let ys = ys.reshape(out_shape)?;
                match residual {
                    Some(residual) => residual + ys,
                    None => Ok(ys),
                }
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_fused(xs, None, None)
    }
}

/// A packed dense layer over `(rows, in)` inputs, with an optional `(rows, out)` residual.
struct PackedLinearOp {
    packed: Arc<PackedLinear>,
    activation: kernels::Activation,
}

impl PackedLinearOp {
    fn run(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inner) = xs_layout.shape().dims2()?;
        let (k, n) = self.packed.weight.dims();
        if inner != k {
            candle_core::bail!("linear: input of {inner} features for a weight of {k}");
        }
        let xs = contiguous_f32(xs, xs_layout, "linear input")?;
        let epilogue = Epilogue {
            residual,
            ..Epilogue::dense(self.packed.bias.as_deref(), self.activation)
        };
        let ys = match &self.packed.weight {
            EngineWeight::F32(weight) => kernels::linear(xs, weight, &epilogue),
            EngineWeight::Int8(weight) => kernels::int8::linear_int8(xs, weight, &epilogue),
        };
        Ok((CpuStorage::F32(ys), Shape::from((rows, n))))
    }
}

impl CustomOp1 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "vit-packed-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(xs, layout, None)
    }
}

impl CustomOp2 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "vit-packed-linear-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, _) = xs_layout.shape().dims2()?;
        if residual_layout.shape().dims2()? != (rows, self.packed.weight.dims().1) {
            candle_core::bail!("linear: residual of shape {:?}", residual_layout.shape());
        }
        let residual = contiguous_f32(residual, residual_layout, "linear residual")?;
        self.run(xs, xs_layout, Some(residual))
    }
}

/// Layer normalization over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim`.
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    /// The fused kernels when nothing tracks gradients; else composed ops, which have a
    /// backward pass (candle's fused layer norm has none).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let tracked = [xs, &self.weight, &self.bias].iter().any(|t| t.track_op());
        if !tracked {
            if let Some(ys) =
                super::cpu_kernels::layer_norm(xs, &self.weight, &self.bias, self.eps as f32)?
            {
                return Ok(ys);
            }
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
    fn linear_matches_a_hand_computed_product_on_every_path() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev)?;
        let bias = Tensor::new(&[0.5f32, -1., 0.], &dev)?;
        let xs = Tensor::new(&[[[1f32, 1.]], [[2., -1.]]], &dev)?;
        // Plain weights are packed for the engine; weights that track gradients (trained
        // ones) stay candle tensors, with candle's ops.
        let trained = candle_core::Var::from_tensor(&weight)?;
        for isa in Isa::supported() {
            for (weight, tracked) in [(&weight, false), (trained.as_tensor(), true)] {
                let linear = Linear::new(weight.clone(), Some(bias.clone()), isa)?;
                let ys = linear.forward(&xs)?;
                assert_eq!(ys.dims(), &[2, 1, 3]);
                assert_eq!(
                    ys.to_vec3::<f32>()?,
                    vec![vec![vec![3.5, 6., 11.]], vec![vec![0.5, 1., 4.]]]
                );
                assert_eq!(ys.track_op(), tracked);
                let fused = linear.forward_fused(&xs, Some(Activation::Relu), Some(&ys))?;
                assert_eq!(
                    fused.to_vec3::<f32>()?,
                    vec![vec![vec![7., 12., 22.]], vec![vec![1., 2., 8.]]],
                    "{} tracked {tracked}",
                    isa.name()
                );
            }
        }
        Ok(())
    }

    #[test]
    fn stacked_weights_equal_their_concatenation() -> Result<()> {
        let dev = Device::Cpu;
        let parts: Vec<Tensor> = (0..3)
            .map(|i| Tensor::randn(0f32, 1., (5 + i, 9), &dev))
            .collect::<Result<_>>()?;
        let bias = Tensor::randn(0f32, 1., 18, &dev)?;
        let xs = Tensor::randn(0f32, 1., (4, 9), &dev)?;
        let reference = xs
            .matmul(&Tensor::cat(&parts, 0)?.t()?)?
            .broadcast_add(&bias)?;
        for isa in Isa::supported() {
            let stacked = Linear::stacked(parts.clone(), Some(bias.clone()), isa)?;
            let diff = (stacked.forward(&xs)? - &reference)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{}: {diff}", isa.name());
        }
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
