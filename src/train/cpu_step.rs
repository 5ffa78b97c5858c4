//! A training step on the CPU in f32 with a hand-written backward pass.
//!
//! candle's autograd records one graph node per elementary op, allocates a zero tensor and an
//! add for every gradient contribution, sums broadcast gradients on one thread and evaluates
//! exact GELU with a scalar `erf`: on DeiT-Tiny (batch 32, 2 threads) a step spent three
//! quarters of its time outside matrix products. This module runs the same network and loss
//! (`ViTForImageClassification` in training mode, label-smoothed cross-entropy) as one forward
//! pass that keeps what the backward pass needs, then one backward pass made of matrix
//! products (the `gemm` crate, as candle uses) and fused, parallel row kernels.
//!
//! It applies when the whole network trains on the CPU in f32; other devices, dtypes and
//! `--freeze-backbone` go through candle's autograd. The tests compare its loss and every
//! gradient with candle's autograd on the same weights.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::model::Weights;
use crate::kernels::attention::attention_rows;
use crate::kernels::dense::{gemm_into, gemm_raw, linear_rows as linear};
use crate::kernels::math::{erf_given_exp, exp};
use crate::kernels::rows::{dot, sum, vectorized};
use crate::kernels::{SendPtr, View};
use crate::model::weights::expected_tensors;
use crate::model::{Activation, ViTConfig};

/// Rows of a matrix handled by one parallel task in the row kernels.
const ROWS_PER_TASK: usize = 32;
/// Values handled by one parallel task in the elementwise kernels.
const VALUES_PER_TASK: usize = 16 * 1024;

/// Whether [`forward_backward`] can take this step: a plain ViT with HF ViT's biases (other
/// members of the family train through candle's autograd), every parameter trained, on the
/// CPU, in f32.
pub fn applies(weights: &Weights) -> bool {
    weights.config.variant.is_plain()
        && weights.config.biases.qkv().is_some()
        && weights.device.is_cpu()
        && weights.compute_dtype == DType::F32
        && weights.frozen.is_empty()
        && weights.config.num_channels == 3
}

/// What one forward and backward pass gives.
pub struct Step {
    /// The loss summed over the batch (before division by the normalizer).
    pub loss_sum: f64,
    /// `(batch, classes)` logits.
    pub logits: Tensor,
    /// The gradient of `loss_sum / normalizer` for every trained parameter, by HF name.
    pub grads: HashMap<String, Tensor>,
}

/// Forward and backward over a batch of `(images, 3, size, size)` pixels with the label
/// smoothing of PyTorch's `cross_entropy`; gradients are of the summed loss divided by
/// `normalizer`.
pub fn forward_backward(
    weights: &Weights,
    pixels: &[f32],
    labels: &[u32],
    smoothing: f64,
    normalizer: usize,
) -> Result<Step> {
    crate::kernels::keep_freed_memory();
    let params = Params::read(weights)?;
    let dims = Dims::new(&weights.config, labels.len());
    if pixels.len() != dims.batch * 3 * dims.image * dims.image {
        bail!(
            "training step: {} pixel values for {} images of {}x{}",
            pixels.len(),
            dims.batch,
            dims.image,
            dims.image
        );
    }
    if let Some(&label) = labels.iter().find(|&&l| l as usize >= dims.classes) {
        bail!("training step: label {label} of {} classes", dims.classes);
    }
    let net = Network {
        params: &params,
        dims,
        eps: weights.config.layer_norm_eps as f32,
        act: weights.config.hidden_act,
    };
    let forward = net.forward(pixels);
    let (loss_sum, dlogits) = cross_entropy(&forward.logits, labels, dims.classes, smoothing);
    let dlogits: Vec<f32> = dlogits.iter().map(|g| g / normalizer as f32).collect();
    let grads = net.backward(forward.saved, &forward.patches, &dlogits);

    let shapes: HashMap<String, Vec<usize>> =
        expected_tensors(&weights.config).into_iter().collect();
    let grads = grads
        .into_iter()
        .map(|(name, values)| {
            let shape = shapes[&name].clone();
            let tensor = Tensor::from_vec(values, shape, &Device::Cpu)
                .with_context(|| format!("gradient of {name}"))?;
            Ok((name, tensor))
        })
        .collect::<Result<_>>()?;
    let logits = Tensor::from_vec(forward.logits, (dims.batch, dims.classes), &Device::Cpu)?;
    Ok(Step {
        loss_sum,
        logits,
        grads,
    })
}

/// The sizes of a step.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    image: usize,
    patch: usize,
    /// Patches per image.
    patches: usize,
    /// Tokens per image: the class token and the patches.
    tokens: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    mlp: usize,
    classes: usize,
    layers: usize,
}

impl Dims {
    fn new(config: &ViTConfig, batch: usize) -> Self {
        let patches = config.grid_size() * config.grid_size();
        Self {
            batch,
            image: config.image_size,
            patch: config.patch_size,
            patches,
            tokens: patches + 1,
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            head_dim: config.hidden_size / config.num_attention_heads,
            mlp: config.intermediate_size,
            classes: config.num_labels(),
            layers: config.num_hidden_layers,
        }
    }

    /// Rows of the token matrices: every token of every image.
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }

    /// Values in one flattened patch (3 channels).
    fn patch_values(&self) -> usize {
        3 * self.patch * self.patch
    }
}

/// The parameters' current values, with each layer's q/k/v projections fused.
struct Params {
    values: HashMap<String, Vec<f32>>,
    /// Per layer: the `(3 hidden, hidden)` q/k/v weight and, with `qkv_bias`, its bias.
    qkv: Vec<(Vec<f32>, Option<Vec<f32>>)>,
}

impl Params {
    fn read(weights: &Weights) -> Result<Self> {
        let mut values = HashMap::new();
        for (name, var) in &weights.trainable {
            let flat = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .with_context(|| format!("cannot read {name}"))?;
            values.insert(name.clone(), flat);
        }
        let mut qkv = Vec::new();
        for layer in 0..weights.config.num_hidden_layers {
            let part = |kind: &str, what: &str| {
                let name = format!("vit.encoder.layer.{layer}.attention.attention.{kind}.{what}");
                values
                    .get(&name)
                    .map(Vec::as_slice)
                    .with_context(|| format!("missing tensor {name}"))
            };
            let weight = [
                part("query", "weight")?,
                part("key", "weight")?,
                part("value", "weight")?,
            ]
            .concat();
            let bias = match weights.config.biases.any_qkv() {
                true => Some(
                    [
                        part("query", "bias")?,
                        part("key", "bias")?,
                        part("value", "bias")?,
                    ]
                    .concat(),
                ),
                false => None,
            };
            qkv.push((weight, bias));
        }
        for (name, _) in expected_tensors(&weights.config) {
            if !values.contains_key(&name) {
                bail!("missing tensor {name}");
            }
        }
        Ok(Self { values, qkv })
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.values[name]
    }
}

/// What a layer's backward pass needs from its forward pass.
struct LayerSaved {
    norm_before: NormSaved,
    /// `(rows, 3 hidden)`: q, k and v of every token, heads side by side.
    qkv: Vec<f32>,
    /// `(batch, heads, tokens, tokens)` attention probabilities.
    probs: Vec<f32>,
    /// `(rows, hidden)` attention output before its projection.
    context: Vec<f32>,
    norm_after: NormSaved,
    /// `(rows, mlp)` MLP activations.
    activated: Vec<f32>,
    /// `(rows, mlp)` the activation's slope at each pre-activation.
    slope: Vec<f32>,
}

/// A layer norm's normalized input and reciprocal standard deviation per row.
struct NormSaved {
    normalized: Vec<f32>,
    inverse_std: Vec<f32>,
}

struct Forward {
    logits: Vec<f32>,
    /// `(batch * patches, 3 patch^2)` image patches, flattened as the projection's weight.
    patches: Vec<f32>,
    saved: Saved,
}

struct Saved {
    layers: Vec<LayerSaved>,
    /// The final layer norm over the class tokens.
    final_norm: NormSaved,
}

struct Network<'a> {
    params: &'a Params,
    dims: Dims,
    eps: f32,
    act: Activation,
}

impl Network<'_> {
    fn forward(&self, pixels: &[f32]) -> Forward {
        let d = self.dims;
        let p = self.params;
        let (rows, hidden) = (d.rows(), d.hidden);

        let patches = im2col(pixels, d);
        let projected = self.dense(
            "vit.embeddings.patch_embeddings.projection",
            &patches,
            None,
            hidden,
        );
        let cls = p.get("vit.embeddings.cls_token");
        let positions = p.get("vit.embeddings.position_embeddings");
        let mut x = vec![0f32; rows * hidden];
        x.par_chunks_mut(d.tokens * hidden)
            .enumerate()
            .for_each(|(b, image)| {
                for (t, row) in image.chunks_mut(hidden).enumerate() {
                    let position = &positions[t * hidden..(t + 1) * hidden];
                    let source = match t {
                        0 => cls,
                        _ => {
                            let patch = b * d.patches + t - 1;
                            &projected[patch * hidden..(patch + 1) * hidden]
                        }
                    };
                    for ((o, s), q) in row.iter_mut().zip(source).zip(position) {
                        *o = s + q;
                    }
                }
            });

        let mut layers = Vec::with_capacity(d.layers);
        for l in 0..d.layers {
            let name = |n: &str| format!("vit.encoder.layer.{l}.{n}");
            let (normed, norm_before) = self.norm(&name("layernorm_before"), &x);
            let (qkv_weight, qkv_bias) = &p.qkv[l];
            let qkv = linear(&normed, qkv_weight, qkv_bias.as_deref(), None, 3 * hidden);
            drop(normed);
            let (context, probs) = attention_rows(
                &qkv,
                (d.batch, d.tokens, d.heads, d.head_dim),
                true,
                crate::kernels::Isa::current(),
            );
            let h = self.dense(&name("attention.output.dense"), &context, Some(&x), hidden);
            let (normed, norm_after) = self.norm(&name("layernorm_after"), &h);
            let pre_activation = self.dense(&name("intermediate.dense"), &normed, None, d.mlp);
            drop(normed);
            let (activated, slope) = activate(&pre_activation, self.act);
            drop(pre_activation);
            x = self.dense(&name("output.dense"), &activated, Some(&h), hidden);
            layers.push(LayerSaved {
                norm_before,
                qkv,
                probs,
                context,
                norm_after,
                activated,
                slope,
            });
        }

        let class_tokens: Vec<f32> = x
            .chunks(d.tokens * hidden)
            .flat_map(|image| image[..hidden].iter().copied())
            .collect();
        let (features, final_norm) = self.norm("vit.layernorm", &class_tokens);
        let logits = self.dense("classifier", &features, None, d.classes);
        Forward {
            logits,
            patches,
            saved: Saved { layers, final_norm },
        }
    }

    /// Gradients of every parameter given the gradient of the logits.
    fn backward(
        &self,
        saved: Saved,
        patches: &[f32],
        dlogits: &[f32],
    ) -> HashMap<String, Vec<f32>> {
        let d = self.dims;
        let p = self.params;
        let hidden = d.hidden;
        let mut grads = HashMap::new();

        let features = self.norm_output("vit.layernorm", &saved.final_norm);
        let dfeatures =
            self.dense_backward(&mut grads, "classifier", dlogits, &features, d.classes);
        let mut dclass = vec![0f32; d.batch * hidden];
        self.norm_backward(
            &mut grads,
            "vit.layernorm",
            &dfeatures,
            &saved.final_norm,
            &mut dclass,
        );
        let mut dx = vec![0f32; d.rows() * hidden];
        for (image, row) in dx.chunks_mut(d.tokens * hidden).zip(dclass.chunks(hidden)) {
            image[..hidden].copy_from_slice(row);
        }

        for (l, s) in saved.layers.into_iter().enumerate().rev() {
            let name = |n: &str| format!("vit.encoder.layer.{l}.{n}");
            // MLP: dx is the gradient of the layer's output, and of h through the residual.
            let mut dpre =
                self.dense_backward(&mut grads, &name("output.dense"), &dx, &s.activated, hidden);
            multiply_into(&mut dpre, &s.slope);
            let normed = self.norm_output(&name("layernorm_after"), &s.norm_after);
            let dnormed = self.dense_backward(
                &mut grads,
                &name("intermediate.dense"),
                &dpre,
                &normed,
                d.mlp,
            );
            drop((dpre, normed));
            self.norm_backward(
                &mut grads,
                &name("layernorm_after"),
                &dnormed,
                &s.norm_after,
                &mut dx,
            );

            // Attention: dx is now the gradient of h, and of the layer's input through the
            // residual.
            let dcontext = self.dense_backward(
                &mut grads,
                &name("attention.output.dense"),
                &dx,
                &s.context,
                hidden,
            );
            let dqkv = attention_backward(&dcontext, &s.qkv, &s.probs, d);
            drop(dcontext);
            let normed = self.norm_output(&name("layernorm_before"), &s.norm_before);
            let (qkv_weight, qkv_bias) = &p.qkv[l];
            let (dnormed, dw, db) =
                linear_backward(&dqkv, &normed, qkv_weight, 3 * hidden, qkv_bias.is_some());
            drop((dqkv, normed));
            for (i, kind) in ["query", "key", "value"].iter().enumerate() {
                let rows = i * hidden * hidden..(i + 1) * hidden * hidden;
                grads.insert(
                    name(&format!("attention.attention.{kind}.weight")),
                    dw[rows].to_vec(),
                );
                if qkv_bias.is_some() {
                    let part = db[i * hidden..(i + 1) * hidden].to_vec();
                    grads.insert(name(&format!("attention.attention.{kind}.bias")), part);
                }
            }
            self.norm_backward(
                &mut grads,
                &name("layernorm_before"),
                &dnormed,
                &s.norm_before,
                &mut dx,
            );
        }

        // Embeddings: class token and positions take the token gradients, the patch
        // projection those of the patch tokens.
        let mut dcls = vec![0f32; hidden];
        let mut dpositions = vec![0f32; d.tokens * hidden];
        let mut dprojected = vec![0f32; d.batch * d.patches * hidden];
        for (b, image) in dx.chunks(d.tokens * hidden).enumerate() {
            add_into(&mut dcls, &image[..hidden]);
            add_into(&mut dpositions, image);
            let patches = b * d.patches * hidden..(b + 1) * d.patches * hidden;
            dprojected[patches].copy_from_slice(&image[hidden..]);
        }
        grads.insert("vit.embeddings.cls_token".into(), dcls);
        grads.insert("vit.embeddings.position_embeddings".into(), dpositions);
        let dw = matmul_tn(
            &dprojected,
            patches,
            d.batch * d.patches,
            hidden,
            d.patch_values(),
        );
        // The patch projection's input is the image: no input gradient to compute.
        grads.insert(
            "vit.embeddings.patch_embeddings.projection.weight".into(),
            dw,
        );
        grads.insert(
            "vit.embeddings.patch_embeddings.projection.bias".into(),
            column_sums(&dprojected, hidden),
        );
        grads
    }

    /// Dense layer `module` (`{module}.weight`, `.bias`) over `x`, plus `residual`.
    fn dense(&self, module: &str, x: &[f32], residual: Option<&[f32]>, out: usize) -> Vec<f32> {
        let weight = self.params.get(&format!("{module}.weight"));
        let bias = self.params.get(&format!("{module}.bias"));
        linear(x, weight, Some(bias), residual, out)
    }

    /// Layer norm `module` over rows of `x`: its output and what its backward pass needs.
    fn norm(&self, module: &str, x: &[f32]) -> (Vec<f32>, NormSaved) {
        let gamma = self.params.get(&format!("{module}.weight"));
        let beta = self.params.get(&format!("{module}.bias"));
        layer_norm(x, gamma, beta, self.dims.hidden, self.eps)
    }

    /// The gradient of the input of dense layer `module` (`{module}.weight` and `.bias`)
    /// given that of its output; its own gradients go into `grads`.
    fn dense_backward(
        &self,
        grads: &mut HashMap<String, Vec<f32>>,
        module: &str,
        dy: &[f32],
        x: &[f32],
        out: usize,
    ) -> Vec<f32> {
        let weight = self.params.get(&format!("{module}.weight"));
        let (dx, dweight, dbias) = linear_backward(dy, x, weight, out, true);
        grads.insert(format!("{module}.weight"), dweight);
        grads.insert(format!("{module}.bias"), dbias);
        dx
    }

    /// The output of layer norm `module` again, from its saved normalized input.
    fn norm_output(&self, module: &str, saved: &NormSaved) -> Vec<f32> {
        let gamma = self.params.get(&format!("{module}.weight"));
        affine_rows(
            &saved.normalized,
            gamma,
            self.params.get(&format!("{module}.bias")),
        )
    }

    /// Adds the input gradient of layer norm `module` to `dx`; its own gradients go into
    /// `grads`.
    fn norm_backward(
        &self,
        grads: &mut HashMap<String, Vec<f32>>,
        module: &str,
        dy: &[f32],
        saved: &NormSaved,
        dx: &mut [f32],
    ) {
        let gamma = self.params.get(&format!("{module}.weight"));
        let (dgamma, dbeta) = layer_norm_backward(dy, saved, gamma, dx, self.dims.hidden);
        grads.insert(format!("{module}.weight"), dgamma);
        grads.insert(format!("{module}.bias"), dbeta);
    }
}

/// `(batch, 3, image, image)` pixels to `(batch * patches, 3 patch^2)` rows, each flattened
/// channel, row, column as the patch projection's `(hidden, 3, patch, patch)` weight.
fn im2col(pixels: &[f32], d: Dims) -> Vec<f32> {
    let (patch, grid, image) = (d.patch, d.image / d.patch, d.image);
    let width = d.patch_values();
    let mut out = vec![0f32; d.batch * d.patches * width];
    out.par_chunks_mut(width)
        .enumerate()
        .for_each(|(row, values)| {
            let (b, index) = (row / d.patches, row % d.patches);
            let (py, px) = (index / grid, index % grid);
            for c in 0..3 {
                for ky in 0..patch {
                    let y = py * patch + ky;
                    let start = ((b * 3 + c) * image + y) * image + px * patch;
                    let dst = (c * patch + ky) * patch;
                    values[dst..dst + patch].copy_from_slice(&pixels[start..start + patch]);
                }
            }
        });
    out
}

/// `a^T b` for `a` of `(rows, m)` and `b` of `(rows, n)`: the weight gradient of a dense layer.
fn matmul_tn(a: &[f32], b: &[f32], rows: usize, m: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let a = View::of(a, rows, m).transposed();
    gemm_into(&mut out, (m, n, rows), a, View::of(b, rows, n), false);
    out
}

/// The gradients of a dense layer `y = x W^T + b` given `dy` of `(rows, out)`: `(dx, dW, db)`
/// (`db` empty without `bias`).
fn linear_backward(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    out: usize,
    bias: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let inner = weight.len() / out;
    let rows = dy.len() / out;
    let dweight = matmul_tn(dy, x, rows, out, inner);
    let dbias = match bias {
        true => column_sums(dy, out),
        false => Vec::new(),
    };
    let mut dx = vec![0f32; rows * inner];
    let w = View::of(weight, out, inner);
    gemm_into(
        &mut dx,
        (rows, inner, out),
        View::of(dy, rows, out),
        w,
        false,
    );
    (dx, dweight, dbias)
}

/// Sums of each column of a `(rows, cols)` matrix, in a fixed order (the same on any number
/// of threads).
fn column_sums(data: &[f32], cols: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = data
        .par_chunks(ROWS_PER_TASK * cols)
        .map(|chunk| {
            let mut sums = vec![0f32; cols];
            chunk.chunks(cols).for_each(|row| add_into(&mut sums, row));
            sums
        })
        .collect();
    let mut sums = vec![0f32; cols];
    partials.iter().for_each(|p| add_into(&mut sums, p));
    sums
}

fn add_into(acc: &mut [f32], values: &[f32]) {
    acc.iter_mut().zip(values).for_each(|(a, v)| *a += v);
}

/// `normalized * gamma + beta`, row by row.
fn affine_rows(normalized: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
    let cols = gamma.len();
    let mut out = vec![0f32; normalized.len()];
    out.par_chunks_mut(ROWS_PER_TASK * cols)
        .zip(normalized.par_chunks(ROWS_PER_TASK * cols))
        .for_each(|(out, normalized)| {
            for (o, n) in out.chunks_mut(cols).zip(normalized.chunks(cols)) {
                for (((o, n), g), b) in o.iter_mut().zip(n).zip(gamma).zip(beta) {
                    *o = n * g + b;
                }
            }
        });
    out
}

/// Layer norm over rows of `cols` values: the output and what the backward pass needs.
fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    cols: usize,
    eps: f32,
) -> (Vec<f32>, NormSaved) {
    let rows = x.len() / cols;
    let mut normalized = vec![0f32; x.len()];
    let mut inverse_std = vec![0f32; rows];
    normalized
        .par_chunks_mut(ROWS_PER_TASK * cols)
        .zip(inverse_std.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * cols))
        .for_each(|((normalized, inverse_std), x)| {
            vectorized(
                #[inline(always)]
                || {
                    for ((n, r), x) in normalized
                        .chunks_mut(cols)
                        .zip(inverse_std.iter_mut())
                        .zip(x.chunks(cols))
                    {
                        let mean = sum(x) / cols as f32;
                        n.iter_mut().zip(x).for_each(|(n, v)| *n = v - mean);
                        let variance = dot(n, n) / cols as f32;
                        *r = 1.0 / (variance + eps).sqrt();
                        n.iter_mut().for_each(|n| *n *= *r);
                    }
                },
            )
        });
    let out = affine_rows(&normalized, gamma, beta);
    (
        out,
        NormSaved {
            normalized,
            inverse_std,
        },
    )
}

/// Adds the input gradient of a layer norm to `dx` and returns `(dgamma, dbeta)`.
fn layer_norm_backward(
    dy: &[f32],
    saved: &NormSaved,
    gamma: &[f32],
    dx: &mut [f32],
    cols: usize,
) -> (Vec<f32>, Vec<f32>) {
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(ROWS_PER_TASK * cols)
        .zip(dy.par_chunks(ROWS_PER_TASK * cols))
        .zip(saved.normalized.par_chunks(ROWS_PER_TASK * cols))
        .zip(saved.inverse_std.par_chunks(ROWS_PER_TASK))
        .map(|(((dx, dy), normalized), inverse_std)| {
            let mut dgamma = vec![0f32; cols];
            let mut dbeta = vec![0f32; cols];
            let mut scaled = vec![0f32; cols];
            vectorized(
                #[inline(always)]
                || {
                    for (((dx, dy), n), r) in dx
                        .chunks_mut(cols)
                        .zip(dy.chunks(cols))
                        .zip(normalized.chunks(cols))
                        .zip(inverse_std)
                    {
                        for ((((dg, db), s), &dy), (&n, &g)) in dgamma
                            .iter_mut()
                            .zip(dbeta.iter_mut())
                            .zip(scaled.iter_mut())
                            .zip(dy)
                            .zip(n.iter().zip(gamma))
                        {
                            *dg += dy * n;
                            *db += dy;
                            *s = dy * g;
                        }
                        let mean_dy = sum(&scaled) / cols as f32;
                        let mean_dy_n = dot(&scaled, n) / cols as f32;
                        for ((dx, s), n) in dx.iter_mut().zip(&scaled).zip(n) {
                            *dx += r * (s - mean_dy - n * mean_dy_n);
                        }
                    }
                },
            );
            (dgamma, dbeta)
        })
        .collect();
    let mut dgamma = vec![0f32; cols];
    let mut dbeta = vec![0f32; cols];
    for (g, b) in &partials {
        add_into(&mut dgamma, g);
        add_into(&mut dbeta, b);
    }
    (dgamma, dbeta)
}

/// `sigmoid(x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_CUBIC: f32 = 0.044_715;

#[inline(always)]
fn gelu(x: f32) -> (f32, f32) {
    // e^(-x^2 / 2) serves both erf(x / sqrt 2) and the normal density.
    let gaussian = exp(-0.5 * x * x);
    let cdf = 0.5 * (1.0 + erf_given_exp(x * std::f32::consts::FRAC_1_SQRT_2, gaussian));
    let pdf = gaussian * (SQRT_2_OVER_PI * 0.5);
    (x * cdf, cdf + x * pdf)
}

#[inline(always)]
fn gelu_tanh(x: f32) -> (f32, f32) {
    let inner = SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x);
    let t = 1.0 - 2.0 / (exp(2.0 * inner) + 1.0);
    let slope_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_CUBIC * x * x);
    (
        0.5 * x * (1.0 + t),
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * slope_inner,
    )
}

#[inline(always)]
fn quick_gelu(x: f32) -> (f32, f32) {
    let s = sigmoid(1.702 * x);
    (x * s, s + 1.702 * x * s * (1.0 - s))
}

#[inline(always)]
fn relu(x: f32) -> (f32, f32) {
    let positive = x > 0.0;
    (
        if positive { x } else { 0.0 },
        if positive { 1.0 } else { 0.0 },
    )
}

#[inline(always)]
fn silu(x: f32) -> (f32, f32) {
    let s = sigmoid(x);
    (x * s, s * (1.0 + x * (1.0 - s)))
}

/// The activation of `x` and its slope at each value (kept for the backward pass).
fn activate(x: &[f32], act: Activation) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; x.len()];
    let mut slope = vec![0f32; x.len()];
    out.par_chunks_mut(VALUES_PER_TASK)
        .zip(slope.par_chunks_mut(VALUES_PER_TASK))
        .zip(x.par_chunks(VALUES_PER_TASK))
        .for_each(|((out, slope), x)| match act {
            // One loop per activation, each over a function known at compile time (a `match`
            // inside the loop would keep it from being vectorized).
            Activation::Gelu => activation_chunk(out, slope, x, gelu),
            Activation::GeluTanh => activation_chunk(out, slope, x, gelu_tanh),
            Activation::QuickGelu => activation_chunk(out, slope, x, quick_gelu),
            Activation::Relu => activation_chunk(out, slope, x, relu),
            Activation::Silu => activation_chunk(out, slope, x, silu),
        });
    (out, slope)
}

/// Applies `f` (value and slope) to a chunk, vectorized.
#[inline(always)]
fn activation_chunk(out: &mut [f32], slope: &mut [f32], x: &[f32], f: impl Fn(f32) -> (f32, f32)) {
    vectorized(
        #[inline(always)]
        || {
            for ((o, s), &x) in out.iter_mut().zip(slope.iter_mut()).zip(x) {
                (*o, *s) = f(x);
            }
        },
    )
}

/// Multiplies `grad` by `slope`, value by value.
fn multiply_into(grad: &mut [f32], slope: &[f32]) {
    grad.par_chunks_mut(VALUES_PER_TASK)
        .zip(slope.par_chunks(VALUES_PER_TASK))
        .for_each(|(grad, slope)| {
            grad.iter_mut().zip(slope).for_each(|(g, s)| *g *= s);
        });
}

/// The gradient of `qkv` `(rows, 3 hidden)` given that of the context.
fn attention_backward(dcontext: &[f32], qkv: &[f32], probs: &[f32], d: Dims) -> Vec<f32> {
    let (t, hd, heads) = (d.tokens, d.head_dim, d.heads);
    let stride = 3 * d.hidden;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dqkv = vec![0f32; d.rows() * stride];
    let out = SendPtr(dqkv.as_mut_ptr());
    probs.par_chunks(t * t).enumerate().for_each_init(
        || vec![0f32; t * t],
        |dscores, (task, p)| {
            let (b, h) = (task / heads, task % heads);
            let base = b * t * stride + h * hd;
            let q = View::strided(qkv, base, t, hd, stride);
            let k = View::strided(qkv, base + d.hidden, t, hd, stride);
            let v = View::strided(qkv, base + 2 * d.hidden, t, hd, stride);
            let dout = View::strided(dcontext, b * t * d.hidden + h * hd, t, hd, d.hidden);
            let probs = View::of(p, t, t);
            // SAFETY: the views are checked to lie inside qkv and dcontext;
            // dscores is this task's scratch; the dq, dk, dv slots of (b, h) in dqkv are
            // written by this task only.
            unsafe {
                let dst = |offset: usize| out.at(base + offset);
                gemm_raw(
                    dst(2 * d.hidden),
                    stride,
                    (t, hd, t),
                    probs.transposed(),
                    dout,
                    false,
                    1.0,
                    false,
                );
                gemm_raw(
                    dscores.as_mut_ptr(),
                    t,
                    (t, t, hd),
                    dout,
                    v.transposed(),
                    false,
                    1.0,
                    false,
                );
            }
            // Softmax backward: p * (g - sum(g * p)), row by row.
            vectorized(
                #[inline(always)]
                || {
                    for (ds, p) in dscores.chunks_mut(t).zip(p.chunks(t)) {
                        ds.iter_mut().zip(p).for_each(|(g, p)| *g *= p);
                        let dot = sum(ds);
                        ds.iter_mut().zip(p).for_each(|(g, p)| *g -= p * dot);
                    }
                },
            );
            let dscores = View::of(dscores, t, t);
            unsafe {
                let dst = |offset: usize| out.at(base + offset);
                gemm_raw(dst(0), stride, (t, hd, t), dscores, k, false, scale, false);
                gemm_raw(
                    dst(d.hidden),
                    stride,
                    (t, hd, t),
                    dscores.transposed(),
                    q,
                    false,
                    scale,
                    false,
                );
            }
        },
    );
    dqkv
}

/// Label-smoothed cross-entropy (PyTorch's) summed over the batch, and its gradient with
/// respect to the logits.
fn cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    smoothing: f64,
) -> (f64, Vec<f32>) {
    let mut total = 0f64;
    let mut grad = vec![0f32; logits.len()];
    let off = smoothing / classes as f64;
    for ((row, g), &label) in logits
        .chunks(classes)
        .zip(grad.chunks_mut(classes))
        .zip(labels)
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        let log_sum = sum.ln();
        for (c, (&x, g)) in row.iter().zip(g.iter_mut()).enumerate() {
            let log_prob = x as f64 - max - log_sum;
            let target = off
                + if c == label as usize {
                    1.0 - smoothing
                } else {
                    0.0
                };
            total -= target * log_prob;
            *g = (log_prob.exp() - target) as f32;
        }
    }
    (total, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::tests::tiny_config;
    use crate::train::model::{init_weights, Weights};
    use crate::train::optim::cross_entropy as autograd_cross_entropy;

    /// Random weights with non-trivial norms and biases, so every term of every gradient
    /// matters.
    fn random_weights(act: Activation, qkv_bias: bool) -> Weights {
        let mut config = tiny_config(3);
        config.hidden_act = act;
        config.biases = crate::model::config::Biases::with_qkv(qkv_bias);
        let state = init_weights(&config, 7).unwrap();
        let state = state
            .into_iter()
            .map(|(name, t)| {
                let noise = Tensor::randn(0f32, 0.3, t.shape(), &Device::Cpu).unwrap();
                (name, (t + noise).unwrap())
            })
            .collect();
        Weights::new(config, state, false, DType::F32, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The loss and every gradient agree with candle's autograd through the differentiable
    /// network.
    fn agrees_with_autograd(act: Activation, qkv_bias: bool) {
        let weights = random_weights(act, qkv_bias);
        let (batch, size) = (3, weights.config.image_size);
        let pixels: Vec<f32> =
            values(&Tensor::randn(0f32, 1., (batch, 3, size, size), &Device::Cpu).unwrap());
        let labels = [2u32, 0, 1];
        let (smoothing, normalizer) = (0.1, 5);

        let step = forward_backward(&weights, &pixels, &labels, smoothing, normalizer).unwrap();

        let input = Tensor::from_vec(pixels, (batch, 3, size, size), &Device::Cpu).unwrap();
        let logits = weights.network(true).unwrap().forward(&input).unwrap();
        let loss = autograd_cross_entropy(&logits, &labels, smoothing, normalizer).unwrap();
        let store = loss.backward().unwrap();
        let loss_sum = loss.to_scalar::<f32>().unwrap() as f64 * normalizer as f64;

        assert!(
            (step.loss_sum - loss_sum).abs() < 1e-5 * loss_sum.abs(),
            "{} vs {loss_sum}",
            step.loss_sum
        );
        let logit_diff = values(&step.logits)
            .iter()
            .zip(values(&logits))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(logit_diff < 1e-5, "logits differ by {logit_diff}");
        assert_eq!(step.grads.len(), weights.trainable.len());
        let largest = |g: &[f32]| g.iter().fold(0f32, |m, g| m.max(g.abs()));
        let mut overall = 0f32;
        for (name, var) in &weights.trainable {
            let expected = values(store.get(var.as_tensor()).unwrap());
            let got = values(&step.grads[name]);
            assert_eq!(got.len(), expected.len(), "{name}");
            overall = overall.max(largest(&expected));
            if name.ends_with("key.bias") {
                // The key bias adds the same score to every key of a query, which softmax
                // ignores: its true gradient is zero and both sides hold rounding noise,
                // checked below against the largest gradient of the model.
                continue;
            }
            let scale = largest(&expected);
            assert!(scale > 1e-4, "{name}: gradient vanishes ({scale})");
            let diff = got
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * scale.max(1e-3),
                "{name}: gradients differ by {diff} (largest {scale})"
            );
        }
        for (name, var) in weights
            .trainable
            .iter()
            .filter(|(n, _)| n.ends_with("key.bias"))
        {
            let noise = largest(&values(&step.grads[name]))
                .max(largest(&values(store.get(var.as_tensor()).unwrap())));
            assert!(
                noise <= 1e-5 * overall,
                "{name}: {noise} is no rounding noise beside {overall}"
            );
        }
    }

    #[test]
    fn gradients_match_autograd_with_exact_gelu() {
        agrees_with_autograd(Activation::Gelu, true);
    }

    #[test]
    fn gradients_match_autograd_with_other_activations_and_no_qkv_bias() {
        agrees_with_autograd(Activation::GeluTanh, false);
        agrees_with_autograd(Activation::QuickGelu, true);
        agrees_with_autograd(Activation::Silu, true);
    }

    /// The activation and its derivative at `x`.
    fn activation_and_slope(act: Activation, x: f32) -> (f32, f32) {
        match act {
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::QuickGelu => quick_gelu(x),
            Activation::Relu => relu(x),
            Activation::Silu => silu(x),
        }
    }

    #[test]
    fn activation_slopes_match_finite_differences() {
        let h = 1e-3f32;
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Relu,
            Activation::Silu,
        ] {
            for x in [-3.1f32, -1.2, -0.3, 0.4, 0.9, 2.7] {
                let slope = activation_and_slope(act, x).1;
                let numeric = (activation_and_slope(act, x + h).0
                    - activation_and_slope(act, x - h).0)
                    / (2.0 * h);
                assert!(
                    (slope - numeric).abs() < 2e-3,
                    "{act:?} at {x}: {slope} vs {numeric}"
                );
            }
        }
    }

    #[test]
    fn column_sums_do_not_depend_on_chunking() {
        let data: Vec<f32> = (0..(ROWS_PER_TASK * 3 + 5) * 4)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let sums = column_sums(&data, 4);
        for (c, sum) in sums.iter().enumerate() {
            let expected: f32 = data.iter().skip(c).step_by(4).sum();
            assert_eq!(*sum, expected);
        }
    }

    #[test]
    fn frozen_backbones_and_other_dtypes_use_autograd() {
        let config = tiny_config(2);
        let state = init_weights(&config, 0).unwrap();
        let weights = Weights::new(
            config.clone(),
            state.clone(),
            false,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert!(applies(&weights));
        let frozen = Weights::new(
            config.clone(),
            state.clone(),
            true,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert!(!applies(&frozen));
        let half = Weights::new(config, state, false, DType::BF16, &Device::Cpu).unwrap();
        assert!(!applies(&half));
    }
}
