//! Fused f32 CPU kernels for inference, where candle's generic ops leave speed on the table:
//! exact GELU computed in parallel, and attention computed head by head straight from the
//! fused q/k/v projection without transposed copies. Their matrix products, and those of the
//! training step, are the CPU engine's ([`crate::kernels`]).
//!
//! Each kernel runs only on CPU f32 tensors that track no gradient; everything else (GPUs,
//! half precision, training) goes through the equivalent candle ops, so these kernels never
//! stop a gradient and GPU builds need no kernel of their own.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, InplaceOp3, Layout, Result, Shape, Tensor,
};

pub(crate) use crate::kernels::math::{erf, erf_given_exp, exp};
use crate::kernels::rope::QkvShape;
use crate::kernels::{self, pool, Epilogue, Isa};
pub(crate) use crate::kernels::{SendPtr, View};

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

/// Runs `kernel` compiled for the CPU engine's instruction set ([`Isa::current`]: AVX-512 or
/// AVX2 and FMA; the crate is built for the baseline x86-64, whose 4-wide SSE2 is all the
/// compiler may assume), plainly elsewhere. The kernel's loops are vectorized when they use
/// branch-free maths such as [`exp`]; mark the closure `#[inline(always)]`, or it is compiled
/// on its own, for the baseline.
#[inline(always)]
pub(crate) fn vectorized<R>(kernel: impl FnOnce() -> R) -> R {
    match Isa::current() {
        // SAFETY: the CPU has the features the functions are compiled for (Isa::current
        // only names supported sets).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(kernel) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(kernel) },
        _ => kernel(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn run_avx512<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

/// Rows of a layer norm handled by one parallel task.
const NORM_ROWS_PER_TASK: usize = 16;

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
        let eps = self.eps;
        let chunk = NORM_ROWS_PER_TASK * cols;
        let out = pool::fill(xs.len(), chunk, |i, out| {
            let xs = &xs[i * chunk..];
            vectorized(
                #[inline(always)]
                || {
                    for (o, x) in out.chunks_mut(cols).zip(xs.chunks(cols)) {
                        let mean = sum(x) / cols as f32;
                        let variance = squared_deviations(x, mean) / cols as f32;
                        let inverse_std = 1.0 / (variance + eps).sqrt();
                        for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                            o.write((x - mean) * inverse_std * w + b);
                        }
                    }
                },
            )
        });
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
        let dst = pool::fill(src.len(), 4096, |i, dst| {
            let src = &src[i * 4096..];
            vectorized(
                #[inline(always)]
                || {
                    for (d, &x) in dst.iter_mut().zip(src) {
                        d.write(0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)));
                    }
                },
            )
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
/// `(batch, seq, heads, head_dim)` ([`attention_rows`], without keeping the probabilities).
struct FusedAttention {
    isa: Isa,
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
        let (out, _) = attention_rows(qkv, (batch, seq, heads, head_dim), false, self.isa);
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seq, heads, head_dim)),
        ))
    }
}

/// Lanes of the reductions below: independent partial results the compiler keeps in one
/// vector register (a single running total is a chain it may not reorder).
const LANES: usize = 8;

/// `fold` over `values` with `LANES` independent accumulators started at `init`, combined
/// at the end (the order is fixed, so results do not depend on the machine).
#[inline(always)]
fn reduce(values: &[f32], init: f32, fold: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = fold(*lane, v);
        }
    }
    let mut result = rest.iter().fold(init, |acc, &v| fold(acc, v));
    for lane in lanes {
        result = fold(result, lane);
    }
    result
}

/// The sum of `values`, vectorizable.
#[inline(always)]
pub(crate) fn sum(values: &[f32]) -> f32 {
    reduce(values, 0.0, |a, b| a + b)
}

/// The largest of `values` (negative infinity for none), vectorizable.
#[inline(always)]
pub(crate) fn max(values: &[f32]) -> f32 {
    reduce(values, f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// The dot product of `a` and `b`, vectorizable.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().fold(rest, |acc, lane| acc + lane)
}

/// `sum((x - mean)^2)` over `values`, vectorizable (the same sums, in the same order, as
/// [`dot`] of the deviations with themselves).
#[inline(always)]
pub(crate) fn squared_deviations(values: &[f32], mean: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += (x - mean) * (x - mean);
        }
    }
    lanes.iter().fold(rest, |acc, lane| acc + lane)
}

/// Softmax of each row of `cols` values of `data`, rows `ld` apart, in place. The `ld -
/// cols` values after each row are padding, left as zeros (their exponentials): with `ld` a
/// multiple of the vector width every pass is whole vectors, where 197 scores (ViT at 224)
/// left a scalar tail in each, half of the softmax's time.
pub(crate) fn softmax_rows(data: &mut [f32], cols: usize, ld: usize) {
    vectorized(
        #[inline(always)]
        || {
            for row in data.chunks_mut(ld) {
                let padding = cols.min(row.len());
                row[padding..].fill(f32::NEG_INFINITY);
                let max = max(row);
                row.iter_mut().for_each(|x| *x = exp(*x - max));
                // exp's clamp leaves about 1e-38 there, subnormal once scaled (slow).
                row[padding..].fill(0.0);
                let inverse = 1.0 / sum(row);
                row.iter_mut().for_each(|x| *x *= inverse);
            }
        },
    )
}

/// `dst (m x n, row stride dst_stride) = [dst +] scale * a (m x k) * b (k x n)` by the CPU
/// engine, on all threads when `parallel`.
///
/// # Safety
/// `dst`, `a` and `b` must address matrices of those sizes with their strides, and `dst`
/// must not overlap `a` or `b` nor be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_stride: usize,
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let epilogue = Epilogue {
        scale,
        accumulate,
        ..Epilogue::none()
    };
    kernels::gemm(
        Isa::current(),
        (m, n, k),
        a,
        b,
        dst,
        dst_stride,
        &epilogue,
        parallel,
    );
}

/// `dst (m x n) = [dst +] a * b` on all threads, for views checked by [`View::of`].
pub(crate) fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    accumulate: bool,
) {
    assert_eq!(dst.len(), m * n);
    // SAFETY: dst is an exclusive m x n buffer; a and b were built over slices that hold
    // their matrices (View::of), which the borrow checker keeps apart from dst.
    unsafe { gemm_raw(dst.as_mut_ptr(), n, (m, n, k), a, b, accumulate, 1.0, true) }
}

/// `x W^T + b (+ residual)` for `x` of `(rows, in)` and `W` of `(out, in)`, row-major, with
/// the bias and residual added as the product stores (the training step's dense layers,
/// whose weights change every step, so `W` is packed per call).
pub(crate) fn linear_rows(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    let inner = weight.len() / out;
    let rows = x.len() / inner;
    let mut y = vec![0f32; rows * out];
    let epilogue = Epilogue {
        residual,
        ..Epilogue::dense(bias, kernels::Activation::None)
    };
    // SAFETY: the views are checked over x and weight; y is this call's own buffer.
    unsafe {
        kernels::gemm(
            Isa::current(),
            (rows, out, inner),
            View::of(x, rows, inner),
            View::of(weight, out, inner).transposed(),
            y.as_mut_ptr(),
            out,
            &epilogue,
            true,
        )
    };
    y
}

/// Softmax attention over `qkv` of `(batch, seq, 3, heads, head_dim)`: the context
/// `(batch, seq, heads, head_dim)` and, with `keep_probs`, the probabilities
/// `(batch, heads, seq, seq)` (empty otherwise). Each (batch, head) pair is one task: scores
/// by one matrix product read straight from the strided q and k, a softmax in place, then the
/// product with v written into the context's strided slot, by the CPU engine on `isa`.
pub(crate) fn attention_rows(
    qkv: &[f32],
    (batch, seq, heads, head_dim): (usize, usize, usize, usize),
    keep_probs: bool,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    // Rows of scores `ld` apart (a whole number of vectors: see softmax_rows), unless the
    // caller keeps them as probabilities, `seq` apart.
    let ld = match keep_probs {
        true => seq,
        false => seq.next_multiple_of(16),
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Every (image, head, query row) slot of the context is written by one task below.
    let mut context = Vec::with_capacity(batch * seq * hidden);
    let out = SendPtr(context.spare_capacity_mut().as_mut_ptr().cast());
    // Few (image, head) pairs (one DeiT-Tiny image has 3 heads for 2 threads) are split by
    // query rows, so that every thread gets an even share.
    let pairs = batch * heads;
    let threads = rayon::current_num_threads();
    let row_blocks = (4 * threads)
        .div_ceil(pairs)
        .clamp(1, seq.div_ceil(32).max(1));
    let block_rows = seq.div_ceil(row_blocks).max(1);
    let row_blocks = seq.div_ceil(block_rows).max(1);
    // A task: the query rows `first..first + rows` of one (image, head), scores into `scores`
    // (`rows x seq`).
    let task = |task: usize, scores: &mut [f32]| {
        let (pair, block) = (task / row_blocks, task % row_blocks);
        let (b, h) = (pair / heads, pair % heads);
        let first = block * block_rows;
        let rows = block_rows.min(seq - first);
        let scores = &mut scores[..rows * ld];
        let base = b * seq * stride + h * head_dim;
        let view = |offset: usize, from: usize, count: usize| {
            View::strided(qkv, base + offset + from * stride, count, head_dim, stride)
        };
        let (q, k, v) = (
            view(0, first, rows),
            view(hidden, 0, seq),
            view(2 * hidden, 0, seq),
        );
        let scaled = Epilogue {
            scale,
            ..Epilogue::none()
        };
        // SAFETY: q, k and v are checked views inside qkv; scores is this task's own
        // rows x seq block; the context rows of (b, h) from `first` are written by this task
        // only.
        unsafe {
            kernels::gemm(
                isa,
                (rows, seq, head_dim),
                q,
                k.transposed(),
                scores.as_mut_ptr(),
                ld,
                &scaled,
                false,
            );
        }
        softmax_rows(scores, seq, ld);
        unsafe {
            kernels::gemm(
                isa,
                (rows, head_dim, seq),
                View::strided(scores, 0, rows, seq, ld),
                v,
                out.at((b * seq + first) * hidden + h * head_dim),
                hidden,
                &Epilogue::none(),
                false,
            );
        }
    };
    let tasks = pairs * row_blocks;
    let probs = match keep_probs {
        true => {
            let mut probs = vec![0f32; pairs * seq * seq];
            let all = SendPtr(probs.as_mut_ptr());
            pool::for_each(tasks, |t| {
                let (pair, block) = (t / row_blocks, t % row_blocks);
                let first = block * block_rows;
                let rows = block_rows.min(seq - first);
                // SAFETY: the rows first..first + rows of pair's seq x seq block, inside probs
                // and written by this task only.
                let scores = unsafe {
                    std::slice::from_raw_parts_mut(all.at((pair * seq + first) * seq), rows * seq)
                };
                task(t, scores)
            });
            probs
        }
        false => {
            pool::for_each(tasks, |t| {
                SCORES.with_borrow_mut(|scores| {
                    scores.resize(block_rows * ld, 0.0);
                    task(t, scores)
                })
            });
            Vec::new()
        }
    };
    // SAFETY: the tasks covered every (image, query row, head) of the context (a panic in
    // one is raised by for_each before this line).
    unsafe { context.set_len(batch * seq * hidden) };
    (context, probs)
}

thread_local! {
    /// Each thread's attention scores of one task.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Turns the queries and keys of the patch tokens of a fused q/k/v buffer by their rotary
/// angles, in place ([`kernels::rope`]).
struct RotateQueriesAndKeys;

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
        if cos.len() != sin.len() || cos.len() > tokens * head_dim / 2 {
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
        kernels::rope::rotate_half_queries_and_keys(&mut values[start..end], shape, cos, sin);
        Ok(())
    }
}

/// The rotary kernel when it applies (`None` otherwise): turns `qkv`, `(batch, tokens, 3,
/// heads, head_dim)`, in its own storage, so `qkv` must be a buffer nobody else reads (a
/// projection's fresh output), and returns it.
pub fn rotate_queries_and_keys(qkv: Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !applies(&[&qkv, cos, sin]) {
        return Ok(None);
    }
    let qkv = qkv.contiguous()?;
    qkv.inplace_op3(cos, sin, &RotateQueriesAndKeys)?;
    Ok(Some(qkv))
}

/// The fused attention kernel (its products on `isa`) when it applies, `None` otherwise.
pub fn attention(qkv: &Tensor, isa: Isa) -> Result<Option<Tensor>> {
    if !applies(&[qkv]) {
        return Ok(None);
    }
    Ok(Some(
        qkv.contiguous()?
            .apply_op1_no_bwd(&FusedAttention { isa })?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;
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
    fn lane_reductions_match_plain_ones() {
        for len in [0, 1, 7, 8, 9, 31, 197] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            assert_eq!(sum(&values), values.iter().sum::<f32>(), "{len}");
            let plain = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&values), plain, "{len}");
            let squares: f32 = values.iter().map(|v| v * v).sum();
            assert_eq!(dot(&values, &values), squares, "{len}");
            let deviations: Vec<f32> = values.iter().map(|v| v - 0.5).collect();
            assert_eq!(
                squared_deviations(&values, 0.5),
                dot(&deviations, &deviations),
                "{len}"
            );
        }
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
