//! Attention kernels: the standard matmul-softmax-matmul, and flash attention on CUDA.

use candle_core::{Result, Tensor};

use crate::kernels::Isa;

/// Which implementation computes `softmax(q k^T / sqrt(d)) v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Explicit scores matrix, on every device and dtype.
    Standard,
    /// `candle-flash-attn` (CUDA, sm80+, f16/bf16; built with the `flash-attn` feature).
    Flash,
}

impl AttentionKernel {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Flash => "flash",
        }
    }

    /// Attends over `qkv` of shape `(batch, seq, 3, heads, head_dim)` and returns the context
    /// `(batch, seq, heads, head_dim)`, contiguous.
    /// `isa` is the CPU engine's instruction set for the fused CPU kernel (which runs where
    /// nothing tracks gradients; candle's ops, with a backward pass, elsewhere).
    pub fn attend(self, qkv: &Tensor, isa: Isa) -> Result<Tensor> {
        match self {
            Self::Standard => standard_attention(qkv, isa),
            Self::Flash => flash_attention(qkv),
        }
    }
}

fn standard_attention(qkv: &Tensor, isa: Isa) -> Result<Tensor> {
    if let Some(context) = super::cpu_kernels::attention(qkv, isa)? {
        return Ok(context);
    }
    masked_attention(qkv, None)
}

/// Attention over `qkv` (as [`AttentionKernel::attend`]) with `mask`, `(seq, seq)` of 0 and
/// `-inf` added to the scores (a causal mask), on candle's ops.
pub fn masked_attention(qkv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(candle_attention(qkv, mask)?.0)
}

/// Standard attention over `qkv` (as [`AttentionKernel::attend`], with an optional `mask` as
/// [`masked_attention`]) that also gives the probabilities `(batch, heads, seq, seq)`, as HF's
/// eager attention returns them with `output_attentions=True`: the fused CPU kernel keeping
/// them where it applies, candle's ops elsewhere.
pub fn attention_with_probabilities(
    qkv: &Tensor,
    mask: Option<&Tensor>,
    isa: Isa,
) -> Result<(Tensor, Tensor)> {
    if mask.is_none() {
        if let Some(both) = super::cpu_kernels::attention_with_probabilities(qkv, isa)? {
            return Ok(both);
        }
    }
    candle_attention(qkv, mask)
}

/// The context `(batch, seq, heads, head_dim)` and the probabilities on candle's ops.
fn candle_attention(qkv: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let head_dim = qkv.dim(4)?;
    let part = |i: usize| {
        qkv.narrow(2, i, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let probs = super::encoder::softmax_last_dim(&scores)?;
    let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?;
    Ok((context, probs))
}

#[cfg(feature = "flash-attn")]
fn flash_attention(qkv: &Tensor) -> Result<Tensor> {
    use candle_core::DType;
    if !qkv.device().is_cuda() {
        candle_core::bail!("flash attention runs on CUDA GPUs only");
    }
    // The kernels are built for sm_80 and newer; say so rather than fail in a kernel launch.
    if let Some((major, minor)) = crate::device::cuda_compute_capability(qkv.device()) {
        if major < 8 {
            candle_core::bail!(
                "flash attention needs an sm_80 or newer GPU; this one is sm_{major}{minor}"
            );
        }
    }
    let dtype = qkv.dtype();
    let kernel_dtype = match dtype {
        DType::F16 | DType::BF16 => dtype,
        _ => DType::BF16,
    };
    let head_dim = qkv.dim(4)?;
    let part = |i: usize| {
        qkv.narrow(2, i, 1)?
            .squeeze(2)?
            .to_dtype(kernel_dtype)?
            .contiguous()
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let context = candle_flash_attn::flash_attn(&part(0)?, &part(1)?, &part(2)?, scale, false)?;
    context.to_dtype(dtype)
}

#[cfg(not(feature = "flash-attn"))]
fn flash_attention(_qkv: &Tensor) -> Result<Tensor> {
    candle_core::bail!("flash attention needs a vit built with `--features flash-attn`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;
    use candle_core::Device;

    #[test]
    fn standard_attention_matches_a_loop_reference() -> Result<()> {
        let qkv = Tensor::randn(0f32, 1., (2, 5, 3, 2, 4), &Device::Cpu)?;
        let (expected, bound) = bounds::attention(&qkv.flatten_all()?.to_vec1()?, (2, 5, 2, 4));
        // A q/k/v that tracks gradients goes through candle's ops, the others through the
        // fused kernel on each instruction set.
        let tracked = candle_core::Var::from_tensor(&qkv)?;
        for (qkv, isa) in [(tracked.as_tensor(), Isa::current())]
            .into_iter()
            .chain(Isa::supported().into_iter().map(|isa| (&qkv, isa)))
        {
            let got = AttentionKernel::Standard.attend(qkv, isa)?;
            assert_eq!(got.dims(), &[2, 5, 2, 4]);
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            bounds::assert_within(&got, &expected, &bound, isa.name());
        }
        Ok(())
    }

    #[cfg(not(feature = "flash-attn"))]
    #[test]
    fn flash_without_the_feature_is_a_clear_error() {
        let qkv = Tensor::zeros((1, 2, 3, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = AttentionKernel::Flash
            .attend(&qkv, Isa::current())
            .unwrap_err();
        assert!(err.to_string().contains("--features flash-attn"));
    }
}
