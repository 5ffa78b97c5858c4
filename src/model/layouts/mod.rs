//! Checkpoint layouts: how each library names a ViT-family model's tensors and describes it in
//! `config.json`, mapped onto the one encoder of [`super::encoder`] (its canonical tensor
//! names, [`super::weights::expected_tensors`], and a [`ViTConfig`] with its [`Variant`]).
//! Each layout is one [`CheckpointLayout`] in its own file, registered in [`LAYOUTS`].

pub mod hf_clip;
pub mod hf_deit;
pub mod hf_dinov2;
pub mod hf_dinov3;
pub mod hf_llama4;
pub mod hf_siglip;
pub mod hf_vit;
pub mod timm;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::config::{MlpKind, Variant, ViTConfig};
use super::text::TextConfig;
use super::weights::TensorShapes;
use crate::preprocess::PreprocessConfig;

/// What `vit` knows of one checkpoint layout: how its library names a ViT-family model's
/// tensors and describes it in `config.json`, and, for the HF layouts `convert` writes, how
/// to write it back. A family is one implementation of this trait in one file, registered
/// in [`LAYOUTS`].
pub trait CheckpointLayout: Sync {
    /// The layout's name in messages (`HF vit`, `timm`).
    fn name(&self) -> &'static str;

    /// Whether `config.json` describes a model of this layout (by its `model_type`).
    fn reads_config(&self, json: &Value) -> bool;

    /// Whether the stored tensor names (without config) are this layout's.
    fn reads_names(&self, _names: &[String]) -> bool {
        false
    }

    /// The architecture `config.json` describes, in this layout; `shapes` (by canonical
    /// name) and `num_heads` for the layouts that read it off the tensors.
    fn config(
        &self,
        json: &Value,
        shapes: &dyn TensorShapes,
        num_heads: Option<usize>,
    ) -> Result<ViTConfig>;

    /// The text tower `config.json` describes, for image-text models.
    fn text_config(&self, _json: &Value) -> Result<Option<TextConfig>> {
        Ok(None)
    }

    /// The preprocessing of a folder without `preprocessor_config.json` (`json`: its
    /// `config.json`, if any): HF's `ViTImageProcessor` defaults unless the layout says.
    fn default_preprocess(
        &self,
        _json: Option<&Value>,
        _config: &ViTConfig,
    ) -> Result<PreprocessConfig> {
        Ok(PreprocessConfig::default())
    }

    /// The canonical name of a stored tensor, `None` for names the layout does not know.
    fn canonical_name(&self, stored: &str) -> Option<String>;

    /// The canonical names a fused stored tensor is split into along its rows (timm's `qkv`,
    /// SigLIP's pooling `in_proj`), if it is one.
    fn fused_parts(&self, _stored: &str) -> Option<Vec<String>> {
        None
    }

    /// Leading unit dimensions the canonical tensor `canonical` has over this layout's.
    fn unit_dims(&self, _canonical: &str) -> usize {
        0
    }

    /// Whether the layout stores `canonical` with some of its dimensions merged (the same
    /// values in the same order: Llama 4's patch convolution as an unfold's matrix); it is
    /// read in the shape the config expects.
    fn merged_dims(&self, _canonical: &str) -> bool {
        false
    }

    /// Canonical names that depend on the architecture, as pairs (the name the stored name
    /// gave, the name the network reads for `config`): timm's packed SwiGLU `fc1` is read off
    /// the tensors as a plain MLP's until the config says which it is.
    fn renamed(&self, _config: &ViTConfig) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Whether the checkpoint also keeps `canonical` without using it for what `config`
    /// computes (so that it is not reported as unused).
    fn unused_by_design(&self, _canonical: &str, _config: &ViTConfig) -> bool {
        false
    }

    /// For the HF layouts `convert` writes: whether this is the layout to write `variant` in,
    /// and the variant the layout holds with `variant`'s free choices kept (to compare
    /// against). `None` for layouts that are only read.
    fn writes(&self, _variant: &Variant) -> Option<Variant> {
        None
    }

    /// `model_type`, `architectures` and the layout's own `config.json` keys for `config`
    /// (`base`, the config it was read from); HF ViT's for the layouts that are only read.
    fn hf_config(&self, config: &ViTConfig, _base: Option<&Value>) -> HfConfigKeys {
        hf_vit::hf_config(config)
    }

    /// The name this layout stores a canonical tensor under (what `save_pretrained` writes);
    /// HF ViT's for the layouts that are only read.
    fn stored_name(&self, canonical: &str, config: &ViTConfig) -> String {
        hf_vit::stored_name(canonical, config)
    }
}

/// A layout's `model_type`, architecture and own keys.
pub type HfConfigKeys = (&'static str, &'static str, Vec<(&'static str, Value)>);

/// Every layout `vit` reads, in the order they are tried (timm's configs before HF ViT's,
/// which takes configs without a `model_type`).
pub static LAYOUTS: [&dyn CheckpointLayout; 8] = [
    &timm::Timm,
    &hf_vit::HfVit,
    &hf_deit::HfDeit,
    &hf_dinov2::HfDinov2,
    &hf_dinov3::HfDinov3,
    &hf_clip::HfClip,
    &hf_siglip::HfSiglip,
    &hf_llama4::HfLlama4,
];

/// A checkpoint layout that `vit` reads: one of [`LAYOUTS`].
#[derive(Clone, Copy)]
pub struct Layout(&'static dyn CheckpointLayout);

impl PartialEq for Layout {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for Layout {}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

impl Layout {
    /// HF `vit`: `ViTModel`, `ViTForImageClassification`.
    pub const HF_VIT: Self = Self(&hf_vit::HfVit);
    /// timm's `VisionTransformer` and `VisionTransformerDistilled`, as timm's hub repos hold
    /// them.
    pub const TIMM: Self = Self(&timm::Timm);
    /// HF `clip` and `clip_vision_model`.
    pub const HF_CLIP: Self = Self(&hf_clip::HfClip);
    /// HF `siglip` and `siglip_vision_model`.
    pub const HF_SIGLIP: Self = Self(&hf_siglip::HfSiglip);
    /// HF `llama4_vision_model` and `llama4`'s vision encoder.
    pub const HF_LLAMA4: Self = Self(&hf_llama4::HfLlama4);

    /// The layout a `config.json` describes.
    pub fn of_config(json: &Value) -> Result<Self> {
        if let Some(layout) = LAYOUTS.iter().find(|layout| layout.reads_config(json)) {
            return Ok(Self(*layout));
        }
        match json.get("model_type").and_then(Value::as_str) {
            Some("dinov3_convnext") => bail!(
                "model_type \"dinov3_convnext\" is a ConvNeXt, not a vision transformer: vit \
                 runs the DINOv3 ViTs (dinov3_vit)"
            ),
            other => bail!(
                "model_type {} is not supported (supported: vit, deit, dinov2, \
                 dinov2_with_registers, dinov3_vit, clip, clip_vision_model, siglip, \
                 siglip_vision_model, llama4, llama4_vision_model)",
                other.map_or_else(|| "null".to_string(), |t| format!("{t:?}"))
            ),
        }
    }

    /// The layout of a checkpoint without `config.json`, by its tensor names (HF ViT's unless
    /// another layout claims them).
    pub fn of_names(names: &[String]) -> Self {
        LAYOUTS
            .iter()
            .find(|layout| layout.reads_names(names))
            .map_or(Self::HF_VIT, |layout| Self(*layout))
    }

    /// The architecture `config.json` describes, in this layout.
    pub fn config(
        self,
        json: &Value,
        shapes: &(impl TensorShapes + ?Sized),
        num_heads: Option<usize>,
    ) -> Result<ViTConfig> {
        self.0.config(json, &ShapesOf(shapes), num_heads)
    }

    /// The text tower `config.json` describes, for image-text models.
    pub fn text_config(self, json: &Value) -> Result<Option<TextConfig>> {
        self.0.text_config(json)
    }

    /// See [`CheckpointLayout::default_preprocess`].
    pub fn default_preprocess(
        self,
        json: Option<&Value>,
        config: &ViTConfig,
    ) -> Result<PreprocessConfig> {
        self.0.default_preprocess(json, config)
    }

    /// Leading unit dimensions the canonical tensor `canonical` has over this layout's.
    pub fn unit_dims(self, canonical: &str) -> usize {
        self.0.unit_dims(canonical)
    }

    /// See [`CheckpointLayout::merged_dims`].
    pub fn merged_dims(self, canonical: &str) -> bool {
        self.0.merged_dims(canonical)
    }

    /// See [`CheckpointLayout::renamed`].
    pub fn renamed(self, config: &ViTConfig) -> Vec<(String, String)> {
        self.0.renamed(config)
    }

    /// See [`CheckpointLayout::unused_by_design`].
    pub fn unused_by_design(self, canonical: &str, config: &ViTConfig) -> bool {
        self.0.unused_by_design(canonical, config)
    }

    /// See [`CheckpointLayout::fused_parts`].
    pub fn fused_parts(self, stored: &str) -> Option<Vec<String>> {
        self.0.fused_parts(stored)
    }

    /// The canonical name of a stored tensor (after DataParallel's `module.` is stripped);
    /// names the layout does not know are kept as they are (and reported as unused).
    pub fn canonical_name(self, stored: &str) -> String {
        self.0
            .canonical_name(stored)
            .unwrap_or_else(|| stored.to_string())
    }

    /// The HF layout that holds `variant` (the first of [`LAYOUTS`] that writes it); an error
    /// for variants no HF layout of the family has.
    pub fn of_variant(variant: &Variant) -> Result<Self> {
        for layout in LAYOUTS {
            let Some(expected) = layout.writes(variant) else {
                continue;
            };
            if *variant != expected {
                bail!(
                    "this variant has no HF counterpart in the ViT family (ViT, DeiT, DINOv2, \
                     DINOv3): {}",
                    describe_difference(variant, &expected)
                );
            }
            return Ok(Self(layout));
        }
        bail!("no HF layout writes {variant:?}")
    }

    /// The `config.json` of `config` in this layout, on top of `base`'s other keys.
    pub fn hf_config(self, config: &ViTConfig, base: Option<&Value>) -> Value {
        let mut map = match base {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        for key in ["num_labels", "id2label", "label2id"] {
            map.remove(key);
        }
        let (model_type, architecture, specific) = self.0.hf_config(config, base);
        map.insert("architectures".into(), serde_json::json!([architecture]));
        map.insert("model_type".into(), Value::from(model_type));
        for (key, value) in config.common_hf_entries().into_iter().chain(specific) {
            map.insert(key.to_string(), value);
        }
        Value::Object(map)
    }

    /// The name this layout stores a canonical tensor under (what `save_pretrained` writes).
    pub fn stored_name(self, canonical: &str, config: &ViTConfig) -> String {
        self.0.stored_name(canonical, config)
    }

    /// The layout's name, for messages.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

/// `&impl TensorShapes` as the `&dyn TensorShapes` the trait takes.
struct ShapesOf<'a, T: TensorShapes + ?Sized>(&'a T);

impl<T: TensorShapes + ?Sized> TensorShapes for ShapesOf<'_, T> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }

    fn names(&self) -> Vec<String> {
        self.0.names()
    }
}

/// Whether `config.json`'s `model_type` is one of `types`.
pub(crate) fn model_type_is(json: &Value, types: &[&str]) -> bool {
    json.get("model_type")
        .and_then(Value::as_str)
        .is_some_and(|t| types.contains(&t))
}

/// Which options of `variant` differ from `expected`, for messages.
fn describe_difference(variant: &Variant, expected: &Variant) -> String {
    let mut differences = Vec::new();
    if variant.rotary.is_some() {
        differences.push("rotary position embeddings".to_string());
    }
    if variant.absolute_positions != expected.absolute_positions {
        differences.push("no absolute position embeddings".to_string());
    }
    if variant.mlp == MlpKind::Gated {
        differences.push("a gated MLP".to_string());
    }
    if variant.class_token != expected.class_token {
        differences.push("no class token".to_string());
    }
    if variant.class_positions != expected.class_positions {
        differences.push("no_embed_class".to_string());
    }
    if variant.register_positions != expected.register_positions {
        differences.push("position embeddings on register tokens".to_string());
    }
    if variant.norm_pre != expected.norm_pre {
        differences.push("norm_pre".to_string());
    }
    if variant.final_norm != expected.final_norm || variant.pool_norm != expected.pool_norm {
        differences.push("fc_norm".to_string());
    }
    if variant.pooling != expected.pooling {
        differences.push(format!("{:?} pooling", variant.pooling).to_lowercase());
    }
    if variant.patch_bias != expected.patch_bias {
        differences.push("no patch bias".to_string());
    }
    if variant.projection.is_some() {
        differences.push("an embedding projection".to_string());
    }
    if variant.adapter.is_some() {
        differences.push("a pixel-shuffle adapter".to_string());
    }
    if variant.mlp != expected.mlp && variant.mlp == MlpKind::SwiGlu {
        differences.push("SwiGLU without layer scale".to_string());
    }
    if differences.is_empty() {
        differences.push(format!("{variant:?}"));
    }
    differences.join(", ")
}

/// The first entry of `architectures`, if any.
pub(crate) fn architecture(json: &Value) -> Option<&str> {
    json.get("architectures")?.as_array()?.first()?.as_str()
}

/// Renames a layer's tensor named as in transformers 5's modules (which `state_dict()`
/// returns there: `attention.q_proj`, `.o_proj`, `mlp.fc1`, `mlp.fc2`) to its checkpoint
/// name (`rest` is what follows `layer.N.`); `None` for any other name.
pub(crate) fn transformers5_layer_name(rest: &str) -> Option<String> {
    let (module, param) = rest.rsplit_once('.')?;
    let module = match module {
        "attention.q_proj" => "attention.attention.query",
        "attention.k_proj" => "attention.attention.key",
        "attention.v_proj" => "attention.attention.value",
        "attention.o_proj" => "attention.output.dense",
        "mlp.fc1" => "intermediate.dense",
        "mlp.fc2" => "output.dense",
        _ => return None,
    };
    Some(format!("{module}.{param}"))
}
