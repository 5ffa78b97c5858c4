//! The candle adapters of the CPU engine's fused f32 kernels for inference ([`crate::kernels`]:
//! layer norm, exact GELU, attention straight from the fused q/k/v projection, rotary
//! embeddings turned in place), where candle's generic ops leave speed on the table.
//!
//! Each kernel runs only on CPU f32 tensors that track no gradient; everything else (GPUs,
//! half precision, training) goes through the equivalent candle ops, so these kernels never
//! stop a gradient and GPU builds need no kernel of their own.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, InplaceOp3, Layout, Result, Shape, Tensor,
};

use crate::kernels::rope::{QkvShape, RotaryPairs};
use crate::kernels::{self, Isa};

/// Whether the fused CPU kernels apply to these inputs.
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Layer norm over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`, with
/// the mean and variance of each row in two passes (as PyTorch computes them).
struct FusedLayerNorm {
    eps: f32,
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "vit-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(xs, xs_layout, "layer norm input")?;
        let weight = contiguous_f32(weight, weight_layout, "layer norm weight")?;
        let bias = contiguous_f32(bias, bias_layout, "layer norm bias")?;
        let cols = weight.len();
        if cols == 0 || bias.len() != cols || xs_layout.shape().dims().last() != Some(&cols) {
            candle_core::bail!(
                "layer norm: input {:?} for {cols} weights",
                xs_layout.shape()
            );
        }
        let out = kernels::rows::layer_norm_rows(xs, weight, bias, self.eps);
        Ok((CpuStorage::F32(out), xs_layout.shape().clone()))
    }
}

/// Layer norm over the last dimension of `xs`: the fused kernel when it applies, `None`
/// otherwise.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    if !applies(&[xs, weight, bias]) {
        return Ok(None);
    }
    let xs = xs.contiguous()?;
    Ok(Some(xs.apply_op3_no_bwd(
        weight,
        bias,
        &FusedLayerNorm { eps },
    )?))
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "vit-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "gelu input")?;
        let dst = kernels::rows::gelu_erf_values(src);
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Exact (erf) GELU: the parallel kernel when it applies, candle's `gelu_erf` otherwise.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if applies(&[xs]) {
        xs.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        xs.gelu_erf()
    }
}

/// Softmax attention over `qkv` of shape `(batch, seq, 3, heads, head_dim)`, giving
/// `(batch, seq, heads, head_dim)` ([`kernels::attention::attention_rows`]); with
/// `keep_probs`, one flat buffer of the context followed by the probabilities
/// `(batch, heads, seq, seq)`.
struct FusedAttention {
    isa: Isa,
    keep_probs: bool,
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "vit-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, seq, three, heads, head_dim) = layout.shape().dims5()?;
        if three != 3 {
            candle_core::bail!(
                "attention: expected (batch, seq, 3, heads, head_dim), got {:?}",
                layout.shape()
            );
        }
        let qkv = contiguous_f32(storage, layout, "attention input")?;
        let dims = (batch, seq, heads, head_dim);
        if self.keep_probs {
            let both = kernels::attention::attention_rows_and_probs(qkv, dims, self.isa);
            let len = both.len();
            return Ok((CpuStorage::F32(both), Shape::from(len)));
        }
        let (context, _) = kernels::attention::attention_rows(qkv, dims, false, self.isa);
        Ok((CpuStorage::F32(context), Shape::from(dims)))
    }
}

/// Turns the queries and keys of the patch tokens of a fused q/k/v buffer by their rotary
/// angles, in place ([`kernels::rope`]).
struct RotateQueriesAndKeys {
    pairs: RotaryPairs,
    /// The tables hold each head's angles (`(heads, patches, head_dim / 2)`).
    per_head: bool,
}

impl InplaceOp3 for RotateQueriesAndKeys {
    fn name(&self) -> &'static str {
        "vit-rotate-queries-and-keys"
    }

    fn cpu_fwd(
        &self,
        qkv: &mut CpuStorage,
        qkv_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> Result<()> {
        let cos = contiguous_f32(cos, cos_layout, "rotary cosines")?;
        let sin = contiguous_f32(sin, sin_layout, "rotary sines")?;
        let &[batch, tokens, 3, heads, head_dim] = qkv_layout.shape().dims() else {
            candle_core::bail!("rotary embeddings: q/k/v of shape {:?}", qkv_layout.shape());
        };
        let (start, end) = qkv_layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("rotary embeddings: strided q/k/v".into()))?;
        let tables = if self.per_head { heads } else { 1 };
        if cos.len() != sin.len() || cos.len() > tables * tokens * head_dim / 2 {
            candle_core::bail!("rotary tables of {} angles for {tokens} tokens", cos.len());
        }
        let CpuStorage::F32(values) = qkv else {
            candle_core::bail!("rotary embeddings: q/k/v is not f32");
        };
        let shape = QkvShape {
            batch,
            tokens,
            heads,
            head_dim,
        };
        kernels::rope::rotate_queries_and_keys(
            &mut values[start..end],
            shape,
            self.pairs,
            (cos, sin),
            self.per_head,
        );
        Ok(())
    }
}

/// The rotary kernel when it applies (`None` otherwise): turns `qkv`, `(batch, tokens, 3,
/// heads, head_dim)`, in its own storage, so `qkv` must be a buffer nobody else reads (a
/// projection's fresh output), and returns it.
pub fn rotate_queries_and_keys(
    qkv: Tensor,
    pairs: RotaryPairs,
    (cos, sin): (&Tensor, &Tensor),
    per_head: bool,
) -> Result<Option<Tensor>> {
    if !applies(&[&qkv, cos, sin]) {
        return Ok(None);
    }
    let qkv = qkv.contiguous()?;
    qkv.inplace_op3(cos, sin, &RotateQueriesAndKeys { pairs, per_head })?;
    Ok(Some(qkv))
}

/// The fused attention kernel (its products on `isa`) when it applies, `None` otherwise.
pub fn attention(qkv: &Tensor, isa: Isa) -> Result<Option<Tensor>> {
    if !applies(&[qkv]) {
        return Ok(None);
    }
    let op = FusedAttention {
        isa,
        keep_probs: false,
    };
    Ok(Some(qkv.contiguous()?.apply_op1_no_bwd(&op)?))
}

/// The fused attention kernel keeping the probabilities when it applies: the context
/// `(batch, seq, heads, head_dim)` and the probabilities `(batch, heads, seq, seq)`; `None`
/// otherwise.
pub fn attention_with_probabilities(qkv: &Tensor, isa: Isa) -> Result<Option<(Tensor, Tensor)>> {
    if !applies(&[qkv]) {
        return Ok(None);
    }
    let (batch, seq, _, heads, head_dim) = qkv.dims5()?;
    let op = FusedAttention {
        isa,
        keep_probs: true,
    };
    let both = qkv.contiguous()?.apply_op1_no_bwd(&op)?;
    let context_len = batch * seq * heads * head_dim;
    let context = both
        .narrow(0, 0, context_len)?
        .reshape((batch, seq, heads, head_dim))?;
    let probs = both
        .narrow(0, context_len, batch * heads * seq * seq)?
        .reshape((batch, heads, seq, seq))?;
    Ok(Some((context, probs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;
    use crate::kernels::dense::linear_rows;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn kernels_match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2., (37, 24), &dev)?;
        let weight = Tensor::randn(0f32, 1., (40, 24), &dev)?;
        let bias = Tensor::randn(0f32, 1., 40, &dev)?;
        let reference = xs.matmul(&weight.t()?)?.broadcast_add(&bias)?;
        let rows = linear_rows(
            &xs.flatten_all()?.to_vec1()?,
            &weight.flatten_all()?.to_vec1()?,
            Some(&bias.to_vec1()?),
            None,
            40,
        );
        assert!(max_diff(&Tensor::from_vec(rows, (37, 40), &dev)?, &reference) < 1e-4);

        let reference = xs.gelu_erf()?;
        assert!(max_diff(&gelu_erf(&xs)?, &reference) < 1e-6);

        let (gamma, beta) = (
            Tensor::randn(1f32, 0.5, 24, &dev)?,
            Tensor::randn(0f32, 0.5, 24, &dev)?,
        );
        // Rows centred near 100, where the mean's rounding shows.
        let shifted = (&xs + 100.0)?;
        let fused = layer_norm(&shifted, &gamma, &beta, 1e-6)?.expect("applies to CPU f32");
        let (expected, bound) = layer_norm_reference(
            &shifted.flatten_all()?.to_vec1()?,
            &gamma.to_vec1()?,
            &beta.to_vec1()?,
            1e-6,
        );
        bounds::assert_within(
            &fused.flatten_all()?.to_vec1()?,
            &expected,
            &bound,
            "layer norm",
        );

        let qkv = Tensor::randn(0f32, 1., (2, 13, 3, 4, 8), &dev)?;
        let fused = attention(&qkv, Isa::current())?.expect("applies to CPU f32");
        let (expected, bound) = bounds::attention(&qkv.flatten_all()?.to_vec1()?, (2, 13, 4, 8));
        bounds::assert_within(
            &fused.flatten_all()?.to_vec1()?,
            &expected,
            &bound,
            "attention",
        );
        Ok(())
    }

    /// Layer norm of rows of `weight.len()` values in f64, beside the bound of the f32
    /// kernel's error: the mean off by `e_m <= γ(n+1) mean|x|`, each deviation by `e_m` and
    /// a rounding, the variance (of deviations from the rounded mean, which adds `e_m^2`)
    /// by `γ(n+4)` of itself, the inverse standard deviation by half the variance's relative
    /// error and three roundings, the scale and shift by three more.
    fn layer_norm_reference(
        xs: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
    ) -> (Vec<f64>, Vec<f64>) {
        let n = weight.len();
        let (mut out, mut bound) = (Vec::new(), Vec::new());
        for row in xs.chunks(n) {
            let row: Vec<f64> = row.iter().map(|&x| x as f64).collect();
            let mean = row.iter().sum::<f64>() / n as f64;
            let variance = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let mean_error =
                bounds::gamma(n + 1) * row.iter().map(|x| x.abs()).sum::<f64>() / n as f64;
            let variance_error =
                mean_error.powi(2) + bounds::gamma(n + 4) * (variance + mean_error.powi(2));
            let inverse_std = 1.0 / (variance + eps as f64).sqrt();
            let std_relative = 0.5 * variance_error / (variance + eps as f64) + bounds::gamma(3);
            for ((x, &w), &b) in row.iter().zip(weight).zip(bias) {
                let (w, b) = (w as f64, b as f64);
                let deviation = x - mean;
                let y = deviation * inverse_std * w + b;
                let deviation_error = mean_error + bounds::UNIT_ROUNDOFF * deviation.abs();
                out.push(y);
                bound.push(
                    w.abs() * inverse_std * (deviation_error + deviation.abs() * std_relative)
                        + bounds::gamma(3)
                            * ((deviation * inverse_std * w).abs() + b.abs() + y.abs()),
                );
            }
        }
        (out, bound)
    }

    #[test]
    fn kernels_step_aside_for_gradients_and_other_dtypes() -> Result<()> {
        let dev = Device::Cpu;
        let var = candle_core::Var::randn(0f32, 1., (4, 4), &dev)?;
        assert!(!applies(&[var.as_tensor()]));
        let half = Tensor::zeros((2, 2), DType::F16, &dev)?;
        assert!(!applies(&[&half]));
        let out = gelu_erf(var.as_tensor())?;
        let grads = out.sum_all()?.backward()?;
        assert!(grads.get(var.as_tensor()).is_some(), "gradient must flow");
        Ok(())
    }
}
