//! The weights being trained: preparing them from a base model or from scratch, and building
//! the network over them for a training step or an evaluation.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use super::rng::{Rng, Stream};
use crate::model::config::{Head as ModelHead, Pooling, PosInterpolation};
use crate::model::posembed::{interpolate_patch_positions, Resampling};
use crate::model::weights::{expected_tensors, StateDict};
use crate::model::{AttentionKernel, ModelOptions, ViTConfig, VisionTransformer};

/// What happened to the base's classifier head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The base's labels are the classes, in the same order.
    Kept,
    /// The base has the same labels in another order: its rows were reordered.
    Reordered,
    /// A new head sized to the classes, randomly initialized.
    Replaced { from_labels: usize },
}

/// Adapts a base model to `classes` and a square input of `image_size`: the head is kept,
/// reordered or replaced (see [`Head`]), position embeddings are resized bicubically when the
/// input size changes. Returns the new config and weights (f32, CPU).
pub fn adapt_base(
    mut weights: StateDict,
    config: &ViTConfig,
    classes: &[String],
    image_size: usize,
    seed: u64,
) -> Result<(ViTConfig, StateDict, Head)> {
    if config.num_channels != 3 {
        bail!(
            "the model takes {} channels; training needs a 3-channel (RGB) model",
            config.num_channels
        );
    }
    let mut weights: StateDict = weights
        .drain()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let mut adapted = config.clone();
    adapted.id2label = classes.to_vec();
    adapted.image_size = image_size;
    // A backbone gets the head its HF classifier has (DINOv2: on the class token and the
    // mean of the patches); DeiT's teacher head, which HF only runs for inference, becomes a
    // head on the class token.
    let variant = &mut adapted.variant;
    if variant.head == ModelHead::None && variant.layer_scale {
        variant.pooling = Pooling::ClassAndMean;
    }
    variant.head = ModelHead::Linear;
    if variant.pooling == Pooling::ClassDistillationAverage {
        variant.pooling = Pooling::Class;
    }
    if config.variant.head == ModelHead::Distilled {
        weights.remove("distillation_classifier.weight");
        weights.remove("distillation_classifier.bias");
    }
    let head = if config.has_head() && config.id2label == classes {
        Head::Kept
    } else if config.has_head() && same_set(&config.id2label, classes) {
        let rows: Vec<u32> = classes
            .iter()
            .map(|c| config.id2label.iter().position(|l| l == c).unwrap() as u32)
            .collect();
        let rows = Tensor::new(rows, &Device::Cpu)?;
        for name in ["classifier.weight", "classifier.bias"] {
            let reordered = weights[name].index_select(&rows, 0)?;
            weights.insert(name.into(), reordered);
        }
        Head::Reordered
    } else {
        let mut rng = Rng::derive(seed, Stream::Init, &[0]);
        let width = adapted.variant.pooled_width(config.hidden_size);
        weights.insert(
            "classifier.weight".into(),
            normal_tensor(&mut rng, &[classes.len(), width], 0.02)?,
        );
        weights.insert(
            "classifier.bias".into(),
            Tensor::zeros(classes.len(), DType::F32, &Device::Cpu)?,
        );
        Head::Replaced {
            from_labels: config.num_labels(),
        }
    };
    // Learned positions are resized to the new grid; rotary ones are computed for any grid.
    if image_size != config.image_size && config.variant.absolute_positions {
        let name = "vit.embeddings.position_embeddings";
        let positions = &weights[name];
        let grid = config.grid_size();
        let new_grid = image_size / config.patch_size;
        let prefix = config.variant.positioned_prefix_tokens();
        let prefix_positions = positions.narrow(1, 0, prefix)?;
        let patches = positions.narrow(1, prefix, grid * grid)?;
        let resampling = match config.variant.pos_interpolation {
            PosInterpolation::Bicubic => Resampling::Bicubic,
            PosInterpolation::BicubicAntialias => Resampling::BicubicAntialias,
            PosInterpolation::Fixed => bail!(
                "the model runs at {0}x{0} only (its position embeddings are not resized): \
                 train it at that size",
                config.image_size
            ),
        };
        let resized = interpolate_patch_positions(&patches, grid, (new_grid, new_grid), resampling)
            .with_context(|| format!("cannot resize {name}"))?;
        weights.insert(name.into(), Tensor::cat(&[&prefix_positions, &resized], 1)?);
    }
    adapted.validate()?;
    Ok((adapted, weights, head))
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b && a.windows(2).all(|w| w[0] != w[1])
}

fn normal_tensor(rng: &mut Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    let count = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| rng.truncated_normal(std) as f32)
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Fresh weights for `config` as HF's `ViTPreTrainedModel._init_weights` sets them: linear
/// and patch-projection weights, position embeddings and the class token from a normal with
/// standard deviation 0.02 (truncated at 2 standard deviations), biases 0, layer norms 1 and 0.
/// Seeded: the same seed gives the same weights.
pub fn init_weights(config: &ViTConfig, seed: u64) -> Result<StateDict> {
    expected_tensors(config)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let tensor = if name.contains("layernorm") && name.ends_with(".weight") {
                Tensor::ones(shape, DType::F32, &Device::Cpu)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape, DType::F32, &Device::Cpu)?
            } else {
                let mut rng = Rng::derive(seed, Stream::Init, &[1, i as u64]);
                normal_tensor(&mut rng, &shape, 0.02)?
            };
            Ok((name, tensor))
        })
        .collect()
}

/// Small architectures for training from scratch on small images, beside `vit bench`'s
/// ImageNet-sized presets: (name, hidden size, layers, heads, MLP size, patch, image size).
const SMALL_PRESETS: [(&str, usize, usize, usize, usize, usize, usize); 2] = [
    ("vit-micro-patch7-28", 64, 4, 2, 128, 7, 28),
    ("vit-mini-patch4-32", 128, 6, 4, 256, 4, 32),
];

/// The architecture of a preset to train from scratch: one of [`SMALL_PRESETS`] or of
/// `vit bench`'s presets ([`crate::bench::preset_config`]).
pub fn preset_config(name: &str) -> Result<ViTConfig> {
    let Some(&(_, hidden, layers, heads, mlp, patch, image)) =
        SMALL_PRESETS.iter().find(|p| p.0 == name)
    else {
        return crate::bench::preset_config(name).map_err(|_| {
            let small: Vec<&str> = SMALL_PRESETS.iter().map(|p| p.0).collect();
            anyhow::anyhow!(
                "unknown preset {name:?} (one of: {}, {})",
                small.join(", "),
                crate::bench::preset_names().join(", ")
            )
        });
    };
    let mut config = crate::bench::preset_config("deit-tiny-patch16-224")?;
    config.hidden_size = hidden;
    config.num_hidden_layers = layers;
    config.num_attention_heads = heads;
    config.intermediate_size = mlp;
    config.patch_size = patch;
    config.image_size = image;
    config.validate()?;
    Ok(config)
}

/// The weights being trained (as variables) and the frozen ones, on the training device.
pub struct Weights {
    pub config: ViTConfig,
    /// Trained parameters by HF name, f32, in [`expected_tensors`] order.
    pub trainable: Vec<(String, Var)>,
    /// Parameters left as they are (the backbone with `--freeze-backbone`).
    pub frozen: HashMap<String, Tensor>,
    /// The dtype the network computes in (the variables stay f32).
    pub compute_dtype: DType,
    pub device: Device,
}

impl Weights {
    /// Moves `state` to `device`; with `freeze_backbone` only the classifier is trained.
    pub fn new(
        config: ViTConfig,
        mut state: StateDict,
        freeze_backbone: bool,
        compute_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut trainable = Vec::new();
        let mut frozen = HashMap::new();
        for (name, _) in expected_tensors(&config) {
            let tensor = state
                .remove(&name)
                .with_context(|| format!("missing tensor {name}"))?
                .to_dtype(DType::F32)?
                .to_device(device)?;
            let head =
                name.starts_with("classifier.") || name.starts_with("distillation_classifier.");
            if freeze_backbone && !head {
                frozen.insert(name, tensor.to_dtype(compute_dtype)?);
            } else {
                trainable.push((name, Var::from_tensor(&tensor)?));
            }
        }
        Ok(Self {
            config,
            trainable,
            frozen,
            compute_dtype,
            device: device.clone(),
        })
    }

    /// The network over the current values. With `track`, the trained parameters record the
    /// operations for a backward pass, and the ops they reach take candle's ops, which have
    /// one (a frozen backbone keeps the engine's kernels: nothing in it is recorded).
    pub fn network(&self, track: bool) -> Result<VisionTransformer> {
        let mut tensors: HashMap<String, Tensor> = self.frozen.clone();
        for (name, var) in &self.trainable {
            let value = match track {
                true => var.as_tensor().clone(),
                false => var.as_detached_tensor(),
            };
            tensors.insert(name.clone(), value);
        }
        let vb = VarBuilder::from_tensors(tensors, self.compute_dtype, &self.device);
        let options = ModelOptions {
            attention: AttentionKernel::Standard,
            ..Default::default()
        };
        Ok(VisionTransformer::new(vb, &self.config, options)?)
    }

    /// Every parameter, f32 on the CPU, by HF name: what a checkpoint saves.
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, var) in &self.trainable {
            out.insert(
                name.clone(),
                var.as_detached_tensor().to_device(&Device::Cpu)?,
            );
        }
        for (name, tensor) in &self.frozen {
            let tensor = tensor.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            out.insert(name.clone(), tensor);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::weights::check_state_dict;

    pub(crate) fn tiny_config(labels: usize) -> ViTConfig {
        ViTConfig::from_json(&format!(
            r#"{{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_labels": {labels},
                "layer_norm_eps": 1e-6}}"#
        ))
        .unwrap()
    }

    fn names(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fresh_weights_are_complete_seeded_and_hf_initialized() {
        let config = tiny_config(3);
        let a = init_weights(&config, 1).unwrap();
        assert!(check_state_dict(&a, &config).unwrap().is_empty());
        let b = init_weights(&config, 1).unwrap();
        let c = init_weights(&config, 2).unwrap();
        let values = |s: &StateDict, n: &str| s[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = "vit.encoder.layer.1.attention.attention.query.weight";
        assert_eq!(values(&a, q), values(&b, q));
        assert_ne!(values(&a, q), values(&c, q));
        let k = "vit.encoder.layer.1.attention.attention.key.weight";
        assert_ne!(values(&a, q), values(&a, k), "tensors share a stream");
        let std = {
            let v = values(&a, "vit.encoder.layer.0.intermediate.dense.weight");
            (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
        };
        assert!((0.015..0.02).contains(&std), "{std}");
        assert!(values(&a, "vit.layernorm.weight").iter().all(|&x| x == 1.0));
        assert!(values(&a, "classifier.bias").iter().all(|&x| x == 0.0));
    }

    #[test]
    fn presets_include_small_ones_and_unknown_names_list_all() {
        let micro = preset_config("vit-micro-patch7-28").unwrap();
        assert_eq!(
            (micro.hidden_size, micro.patch_size, micro.grid_size()),
            (64, 7, 4)
        );
        let tiny = preset_config("vit-tiny-patch16-224").unwrap();
        assert_eq!(tiny.hidden_size, 192);
        let err = preset_config("vit-nano").unwrap_err().to_string();
        assert!(err.contains("vit-mini-patch4-32") && err.contains("vit-base-patch16-224"));
    }

    #[test]
    fn heads_are_kept_reordered_or_replaced() {
        let mut config = tiny_config(3);
        config.id2label = names(&["cat", "dog", "fox"]);
        let weights = init_weights(&config, 0).unwrap();
        let bias = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let mut weights = weights;
        weights.insert("classifier.bias".into(), bias);

        let (_, kept, head) =
            adapt_base(weights.clone(), &config, &config.id2label, 32, 0).unwrap();
        assert_eq!(head, Head::Kept);
        let bias = |s: &StateDict| s["classifier.bias"].to_vec1::<f32>().unwrap();
        assert_eq!(bias(&kept), [1., 2., 3.]);

        let classes = names(&["fox", "cat", "dog"]);
        let (cfg, reordered, head) = adapt_base(weights.clone(), &config, &classes, 32, 0).unwrap();
        assert_eq!(head, Head::Reordered);
        assert_eq!(bias(&reordered), [3., 1., 2.]);
        assert_eq!(cfg.id2label, classes);

        let classes = names(&["ant", "bee"]);
        let (cfg, replaced, head) = adapt_base(weights, &config, &classes, 48, 0).unwrap();
        assert_eq!(head, Head::Replaced { from_labels: 3 });
        assert_eq!(cfg.num_labels(), 2);
        assert_eq!(cfg.image_size, 48);
        assert!(check_state_dict(&replaced, &cfg).unwrap().is_empty());
    }

    #[test]
    fn frozen_backbones_train_only_the_head() {
        let config = tiny_config(2);
        let state = init_weights(&config, 0).unwrap();
        let weights = Weights::new(config, state, true, DType::F32, &Device::Cpu).unwrap();
        let trained: Vec<&str> = weights.trainable.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(trained, ["classifier.weight", "classifier.bias"]);
        assert_eq!(
            weights.state_dict().unwrap().len(),
            2 + weights.frozen.len()
        );
    }
}
