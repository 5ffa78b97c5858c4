//! Fused f32 CPU kernels for inference, where candle's generic ops leave speed on the table:
//! a dense layer with its bias folded into the matrix product, exact GELU computed in
//! parallel, and attention computed head by head straight from the fused q/k/v projection
//! without transposed copies.
//!
//! Each kernel runs only on CPU f32 tensors that track no gradient; everything else (GPUs,
//! half precision, training) goes through the equivalent candle ops, so these kernels never
//! stop a gradient and GPU builds need no kernel of their own.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether the fused CPU kernels apply to these inputs.
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn gemm_parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `x W^T + b` for `x` of shape `(rows, in)`, `W` of shape `(out, in)`, `b` of shape `(out,)`.
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "vit-linear-bias"
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
        let (rows, inner) = xs_layout.shape().dims2()?;
        let (out, weight_inner) = weight_layout.shape().dims2()?;
        if inner != weight_inner || bias_layout.shape().dims1()? != out {
            candle_core::bail!(
                "linear: shapes {:?} x {:?}^T do not match",
                xs_layout.shape(),
                weight_layout.shape()
            );
        }
        let xs = contiguous_f32(xs, xs_layout, "linear input")?;
        let weight = contiguous_f32(weight, weight_layout, "linear weight")?;
        let bias = contiguous_f32(bias, bias_layout, "linear bias")?;
        let mut dst: Vec<f32> = Vec::with_capacity(rows * out);
        for _ in 0..rows {
            dst.extend_from_slice(bias);
        }
        // SAFETY: the pointers cover `rows x out`, `rows x inner` and `out x inner` f32 values
        // with the strides given (row-major dst and xs, weight read transposed).
        unsafe {
            gemm::gemm(
                rows,
                out,
                inner,
                dst.as_mut_ptr(),
                1,
                out as isize,
                true,
                xs.as_ptr(),
                1,
                inner as isize,
                weight.as_ptr(),
                inner as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm_parallelism(),
            );
        }
        Ok((CpuStorage::F32(dst), Shape::from((rows, out))))
    }
}

/// A dense layer over 2-D `xs`: the fused kernel when it applies, candle ops otherwise.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(bias) if applies(&[xs, weight, bias]) => {
            xs.contiguous()?
                .apply_op3_no_bwd(&weight.contiguous()?, bias, &LinearBias)
        }
        Some(bias) => xs.matmul(&weight.t()?)?.broadcast_add(bias),
        None => xs.matmul(&weight.t()?),
    }
}

/// `erf` by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, 6e-7 in f32),
/// branch-free so the compiler can vectorize it.
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let sign = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + P * x);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    sign * (1.0 - poly * (-x * x).exp())
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "vit-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "gelu input")?;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(4096)
            .zip(src.par_chunks(4096))
            .for_each(|(dst, src)| {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
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
/// `(batch, seq, heads, head_dim)`. Each (batch, head) pair is one task: scores by one matrix
/// product read straight from the strided q and k, a softmax in place, then the product
/// with v written into the output's strided slot.
struct FusedAttention;

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
        let token_stride = 3 * heads * head_dim;
        let out_token_stride = heads * head_dim;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0f32; batch * seq * heads * head_dim];
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..batch * heads).into_par_iter().for_each_init(
            || vec![0f32; seq * seq],
            |scores, task| {
                let (b, h) = (task / heads, task % heads);
                let base = b * seq * token_stride + h * head_dim;
                let q = qkv[base..].as_ptr();
                let k = qkv[base + heads * head_dim..].as_ptr();
                let v = qkv[base + 2 * heads * head_dim..].as_ptr();
                // SAFETY: q, k, v address `seq` rows of `head_dim` values at `token_stride`
                // apart inside `qkv`; `scores` is seq x seq; each task writes only its own
                // (b, h) slot of `out`, rows `out_token_stride` apart.
                unsafe {
                    gemm::gemm(
                        seq,
                        seq,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        seq as isize,
                        false,
                        q,
                        1,
                        token_stride as isize,
                        k,
                        token_stride as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for row in scores.chunks_mut(seq) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0.0;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        total += *x;
                    }
                    let inverse = 1.0 / total;
                    row.iter_mut().for_each(|x| *x *= inverse);
                }
                let dst = out_ptr.at(b * seq * out_token_stride + h * head_dim);
                unsafe {
                    gemm::gemm(
                        seq,
                        head_dim,
                        seq,
                        dst,
                        1,
                        out_token_stride as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        seq as isize,
                        v,
                        1,
                        token_stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seq, heads, head_dim)),
        ))
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: every task writes a disjoint (batch, head) slot, so sharing the pointer is sound.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// The fused attention kernel when it applies, `None` otherwise.
pub fn attention(qkv: &Tensor) -> Result<Option<Tensor>> {
    if !applies(&[qkv]) {
        return Ok(None);
    }
    Ok(Some(qkv.contiguous()?.apply_op1_no_bwd(&FusedAttention)?))
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn erf_is_within_1e6_of_the_exact_function() {
        for i in -4000..=4000 {
            let x = i as f32 / 1000.0;
            let exact = libm_erf(x as f64);
            // The formula's bound, 1.5e-7, plus f32 rounding near zero (5.4e-7 at -0.046).
            assert!((erf(x) as f64 - exact).abs() < 1e-6, "erf({x})");
        }
    }

    /// erf by its Taylor series (|x| <= 4 converges well in f64).
    fn libm_erf(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn kernels_match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2., (37, 24), &dev)?;
        let weight = Tensor::randn(0f32, 1., (40, 24), &dev)?;
        let bias = Tensor::randn(0f32, 1., 40, &dev)?;
        let reference = xs.matmul(&weight.t()?)?.broadcast_add(&bias)?;
        assert!(max_diff(&linear(&xs, &weight, Some(&bias))?, &reference) < 1e-4);

        let reference = xs.gelu_erf()?;
        assert!(max_diff(&gelu_erf(&xs)?, &reference) < 1e-6);

        let qkv = Tensor::randn(0f32, 1., (2, 13, 3, 4, 8), &dev)?;
        let fused = attention(&qkv)?.expect("applies to CPU f32");
        let part = |i: usize| {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? / 8f64.sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let reference = probs.matmul(&v)?.transpose(1, 2)?;
        assert!(max_diff(&fused, &reference) < 1e-5);
        Ok(())
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
