//! The optimizer and its helpers: AdamW with decoupled weight decay, the learning-rate
//! schedule, gradient clipping and the label-smoothed cross-entropy loss.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var, D};

/// Whether a parameter gets weight decay: not biases, norms, position embeddings or the
/// class token (as timm and HF fine-tuning recipes do).
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias")
        || name.contains("layernorm")
        || name.ends_with("position_embeddings")
        || name.ends_with("cls_token"))
}

/// AdamW hyperparameters (PyTorch's `torch.optim.AdamW` semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// PyTorch's defaults for betas and eps, with the given decay.
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// One trained parameter with its AdamW moments.
pub struct Param {
    /// The HF tensor name.
    pub name: String,
    pub var: Var,
    /// First moment (`exp_avg`), f32.
    pub m: Tensor,
    /// Second moment (`exp_avg_sq`), f32.
    pub v: Tensor,
    pub decay: bool,
}

/// AdamW over named parameters, with the update of `torch.optim.AdamW`: decay
/// `p -= lr * wd * p` first, then `p -= lr * m_hat / (sqrt(v_hat) + eps)`.
pub struct AdamW {
    pub config: AdamWConfig,
    pub params: Vec<Param>,
    /// Updates done so far (the bias correction uses `steps + 1` for the next one).
    pub steps: u64,
}

impl AdamW {
    /// An optimizer over `vars` with zero moments.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
                Ok(Param {
                    decay: decays(&name),
                    name,
                    var,
                    m: zeros.clone(),
                    v: zeros,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            params,
            steps: 0,
        })
    }

    /// One update with learning rate `lr`; `grads` by parameter name, already scaled (for
    /// clipping) and averaged. A parameter without a gradient is an error: it would silently
    /// not train.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        let c = self.config;
        self.steps += 1;
        let t = self.steps as i32;
        let correction1 = 1.0 - c.beta1.powi(t);
        let correction2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let grad = grads.get(&p.name).ok_or_else(|| {
                candle_core::Error::Msg(format!("no gradient reached parameter {}", p.name))
            })?;
            let grad = grad.to_dtype(DType::F32)?;
            p.m = ((&p.m * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&p.m / correction1)?;
            let v_hat = (&p.v / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let value = p.var.as_tensor();
            let decayed = match p.decay && c.weight_decay != 0.0 {
                true => (value * (1.0 - lr * c.weight_decay))?,
                false => value.clone(),
            };
            let next = (decayed - (update * lr)?)?.to_dtype(value.dtype())?;
            p.var.set(&next)?;
        }
        Ok(())
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`: linear warmup from 0 over
/// `warmup` steps, then cosine decay to 0 (transformers' `get_cosine_schedule_with_warmup`).
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// The global L2 norm of `grads`, and the factor that brings it down to `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`: `max_norm / (norm + 1e-6)`, at most 1). A `max_norm`
/// of 0 disables clipping.
pub fn clip_factor(grads: &HashMap<String, Tensor>, max_norm: f64) -> Result<(f64, f64)> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort(); // a fixed summation order keeps runs bit-identical
    let mut total = 0f64;
    for name in names {
        let g = grads[name].to_dtype(DType::F32)?;
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    let factor = match max_norm > 0.0 {
        true => (max_norm / (norm + 1e-6)).min(1.0),
        false => 1.0,
    };
    Ok((norm, factor))
}

/// Cross-entropy with label smoothing `smoothing` (PyTorch's: the target puts
/// `1 - smoothing` on the true class and `smoothing / classes` on every class), summed over
/// the batch and divided by `normalizer` (the images of the whole optimizer step, so that
/// gradient accumulation averages over all of them). `logits` is `(batch, classes)`.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    smoothing: f64,
    normalizer: usize,
) -> Result<Tensor> {
    let (batch, classes) = logits.dims2()?;
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_sum)?;
    let off = smoothing / classes as f64;
    let mut target = vec![off as f32; batch * classes];
    for (row, &t) in targets.iter().enumerate() {
        target[row * classes + t as usize] += (1.0 - smoothing) as f32;
    }
    let target = Tensor::from_vec(target, (batch, classes), logits.device())?;
    let total = (log_probs * target)?.sum_all()?.neg()?;
    total / normalizer as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_skips_biases_norms_and_embeddings() {
        assert!(decays(
            "vit.encoder.layer.0.attention.attention.query.weight"
        ));
        assert!(decays("classifier.weight"));
        assert!(decays("vit.embeddings.patch_embeddings.projection.weight"));
        for name in [
            "classifier.bias",
            "vit.encoder.layer.3.layernorm_before.weight",
            "vit.layernorm.weight",
            "vit.embeddings.position_embeddings",
            "vit.embeddings.cls_token",
        ] {
            assert!(!decays(name), "{name}");
        }
    }

    #[test]
    fn the_schedule_warms_up_linearly_then_decays_as_a_cosine() {
        let lr = |s| learning_rate(1.0, s, 10, 110);
        assert_eq!(lr(0), 0.0);
        assert!((lr(5) - 0.5).abs() < 1e-12);
        assert_eq!(lr(10), 1.0);
        assert!((lr(60) - 0.5).abs() < 1e-12);
        assert!(lr(109) > 0.0 && lr(109) < 1e-3);
        assert_eq!(learning_rate(2.0, 0, 0, 5), 2.0);
    }

    #[test]
    fn adamw_matches_a_hand_computed_pytorch_step() -> Result<()> {
        // torch.optim.AdamW(lr=0.1, weight_decay=0.5) on p = [1, -2] with grad [0.5, 0.25],
        // two steps: p = [0.7075, -2.0] (decay first, then the Adam update).
        let dev = Device::Cpu;
        let var = Var::new(&[1f32, -2.0], &dev)?;
        let mut opt = AdamW::new(
            vec![("w.weight".into(), var.clone())],
            AdamWConfig::with_weight_decay(0.5),
        )?;
        let grads = HashMap::from([("w.weight".to_string(), Tensor::new(&[0.5f32, 0.25], &dev)?)]);
        opt.step(&grads, 0.1)?;
        opt.step(&grads, 0.1)?;
        let p = var.as_tensor().to_vec1::<f32>()?;
        assert!(
            (p[0] - 0.7075).abs() < 1e-6 && (p[1] + 2.0).abs() < 1e-6,
            "{p:?}"
        );
        let missing = HashMap::new();
        let err = opt.step(&missing, 0.1).unwrap_err().to_string();
        assert!(err.contains("w.weight"), "{err}");
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let grads = HashMap::from([
            ("a".to_string(), Tensor::new(&[3f32], &dev)?),
            ("b".to_string(), Tensor::new(&[4f32], &dev)?),
        ]);
        let (norm, factor) = clip_factor(&grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((factor - 0.2).abs() < 1e-6);
        assert_eq!(clip_factor(&grads, 10.0)?.1, 1.0);
        assert_eq!(clip_factor(&grads, 0.0)?.1, 1.0);
        Ok(())
    }

    #[test]
    fn cross_entropy_matches_pytorch() -> Result<()> {
        // torch.nn.functional.cross_entropy(torch.tensor([[2., 0., -1.], [0.5, 0.5, 3.]]),
        //     torch.tensor([0, 1]), label_smoothing=0.1) = 1.45259...
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2f32, 0., -1.], [0.5, 0.5, 3.]], &dev)?;
        let loss = cross_entropy(&logits, &[0, 1], 0.1, 2)?.to_scalar::<f32>()?;
        let expected = {
            let row = |l: [f64; 3], t: usize| {
                let lse = l.iter().map(|x| x.exp()).sum::<f64>().ln();
                let logp: Vec<f64> = l.iter().map(|x| x - lse).collect();
                -(0.9 * logp[t] + 0.1 / 3.0 * logp.iter().sum::<f64>())
            };
            (row([2., 0., -1.], 0) + row([0.5, 0.5, 3.], 1)) / 2.0
        };
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "{loss} vs {expected}"
        );
        assert!((expected - 1.45259).abs() < 1e-5, "{expected}");
        Ok(())
    }
}
