//! Image decoding and preprocessing as HF's image processors (`ViTImageProcessor`,
//! `DeiTImageProcessor`, `BitImageProcessor`, `CLIPImageProcessor`,
//! `SiglipImageProcessor`) and timm's eval transform do: load as RGB, resize, centre-crop,
//! rescale, normalize, bit for bit with either of HF's backends ([`ImageBackend`]).

mod decode;
mod ico;
mod pfm;
mod resize;
mod tiff;
pub mod tiles;

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};

pub use decode::{decode_rgb, load_rgb, set_max_image_pixels, MAX_STDIN_BYTES};
pub use resize::{
    resize_planes_torch, resize_rgb8, resize_rgb8_torch, Resample, TorchFilter, TorchResize,
};
pub use tiles::Tiling;

/// One preprocessed image: `(3, height, width)` values, channel-first, for each of its
/// tiles (one but for Llama 4's processor, which cuts images into several).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub height: usize,
    pub width: usize,
    /// How many `(3, height, width)` tiles `data` holds, one after the other.
    pub tiles: usize,
    pub data: Vec<f32>,
}

/// Output size of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Exactly `height` x `width`.
    Exact { height: u32, width: u32 },
    /// Aspect ratio kept, the shorter side set to this length.
    ShortestEdge(u32),
}

/// Whose preprocessing a pipeline reproduces. transformers 5 runs an image processor on
/// its torchvision backend wherever torchvision is installed (`pip install
/// transformers[vision]` installs it) and on its PIL backend otherwise (or with
/// `backend="pil"`); the two differ by up to a few 8-bit steps per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageBackend {
    /// HF's PIL backend: Pillow's resize, the crop's offset `(size - crop) // 2` with zero
    /// padding, rescale in f64 then normalize in f32.
    HfPil,
    /// HF's torchvision backend: the image as a uint8 tensor, PyTorch's antialiased resize
    /// (16-bit fixed point, [`resize_rgb8_torch`]; PIL's nearest becomes torch's
    /// `nearest-exact`), HF's own centre crop on it (offset `(size - crop) // 2`, padding
    /// split floor-first), rescale and normalize fused in f32 (`(x - 255 mean) / (255
    /// std)`).
    HfTorchvision,
    /// timm's eval transform, torchvision's transforms on a PIL image: Pillow's resize,
    /// torchvision's centre crop, `ToTensor` (`x / 255` in f32) and `Normalize` in f32.
    Timm,
}

/// A user's choice of backend (`--image-backend`), resolved against a model's pipeline by
/// [`PreprocessConfig::on_backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendRequest {
    Torchvision,
    Pil,
}

impl ImageBackend {
    /// What the log line says of it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::HfPil => "HF's PIL backend",
            Self::HfTorchvision => "HF's torchvision backend",
            Self::Timm => "timm's transform (PIL)",
        }
    }

    /// How this backend centres a crop.
    fn crop(self) -> Crop {
        match self {
            Self::HfPil => Crop {
                offset_rounds: false,
                padding_floor_first: false,
            },
            Self::HfTorchvision => Crop {
                offset_rounds: false,
                padding_floor_first: true,
            },
            Self::Timm => Crop {
                offset_rounds: true,
                padding_floor_first: true,
            },
        }
    }
}

/// Where a centre crop starts along one axis.
#[derive(Debug, Clone, Copy)]
struct Crop {
    /// The offset of a crop inside the image is `round((size - crop) / 2)`, halves to even
    /// as Python rounds (torchvision's `center_crop`), not `(size - crop) // 2` (HF's).
    offset_rounds: bool,
    /// A crop larger than the image pads `(crop - size) // 2` before it (torchvision's
    /// padding, also in HF's torchvision backend), not the ceiling of the half (HF's PIL
    /// backend, which slices from `(size - crop) // 2`).
    padding_floor_first: bool,
}

impl Crop {
    /// The first row (or column) of the crop, negative inside the padding.
    fn start(self, size: u32, crop: u32) -> i64 {
        let (size, crop) = (size as i64, crop as i64);
        if crop > size && self.padding_floor_first {
            return -((crop - size) / 2);
        }
        let margin = size - crop;
        let floor = margin.div_euclid(2);
        // An odd margin halves to `floor + 0.5`: to the even neighbour.
        match self.offset_rounds && margin > 0 && margin % 2 == 1 && floor % 2 == 1 {
            true => floor + 1,
            false => floor,
        }
    }
}

/// A parsed `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// `None` when `do_resize` is false.
    pub resize: Option<ResizeTarget>,
    pub resample: Resample,
    /// `(height, width)`; `None` when `do_center_crop` is false.
    pub center_crop: Option<(u32, u32)>,
    /// Whose arithmetic each step follows.
    pub backend: ImageBackend,
    /// `None` when `do_rescale` is false.
    pub rescale_factor: Option<f64>,
    /// `(mean, std)` per channel; `None` when `do_normalize` is false.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Rescale first and resize the float image, then crop and normalize it
    /// (`DINOv3ViTImageProcessor`, on HF's torchvision backend only), instead of resizing
    /// the 8-bit image.
    pub rescale_before_resize: bool,
    /// Cut each image into tiles of `resize`'s size (`Llama4ImageProcessor`, on HF's
    /// torchvision backend only), instead of resizing it to that size.
    pub tiling: Option<Tiling>,
}

impl Default for PreprocessConfig {
    /// HF's `ViTImageProcessor` defaults: 224x224 bilinear, no crop, mean and std 0.5, on
    /// HF's default (torchvision) backend.
    fn default() -> Self {
        Self {
            resize: Some(ResizeTarget::Exact {
                height: 224,
                width: 224,
            }),
            resample: Resample::Bilinear,
            center_crop: None,
            backend: ImageBackend::HfTorchvision,
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some(([0.5; 3], [0.5; 3])),
            rescale_before_resize: false,
            tiling: None,
        }
    }
}

/// The image processor HF names in `image_processor_type` whose steps run in another order.
const RESCALE_FIRST_PROCESSOR: &str = "DINOv3ViTImageProcessor";

/// The image processors that cut images into tiles (`Fast` as older hub configs name it).
const TILING_PROCESSORS: [&str; 2] = ["Llama4ImageProcessor", "Llama4ImageProcessorFast"];

/// ImageNet's mean and std (`IMAGENET_DEFAULT_MEAN`, `IMAGENET_DEFAULT_STD`).
const IMAGENET_MEAN_STD: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

#[derive(Deserialize)]
struct RawPreprocessConfig {
    image_processor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    max_patches: Option<Value>,
    resize_to_max_canvas: Option<Value>,
}

/// The most pixels an image may have, decoded or as the model's input: Pillow's
/// `Image.MAX_IMAGE_PIXELS` (1024^3 / 4 / 3, about 89.5 million), past which Pillow refuses a
/// decompression bomb.
pub const MAX_IMAGE_PIXELS: u64 = 1024 * 1024 * 1024 / 4 / 3;

/// Refuses a resize or crop target that is empty or larger than [`MAX_IMAGE_PIXELS`] (a
/// shortest edge as the square it makes at least).
fn check_target(target: Option<ResizeTarget>, key: &str) -> Result<()> {
    let (height, width) = match target {
        None => return Ok(()),
        Some(ResizeTarget::Exact { height, width }) => (height, width),
        Some(ResizeTarget::ShortestEdge(edge)) => (edge, edge),
    };
    if height == 0 || width == 0 {
        bail!("{key} {height}x{width} is empty");
    }
    if height as u64 * width as u64 > MAX_IMAGE_PIXELS {
        bail!("{key} {height}x{width} is more than {MAX_IMAGE_PIXELS} pixels");
    }
    Ok(())
}

/// Parses HF's `size`/`crop_size`: an int (square), `{height, width}` or `{shortest_edge}`.
fn parse_size(value: &Value, key: &str) -> Result<ResizeTarget> {
    // Past u32, a size saturates, and the pixel limit refuses it.
    let saturated = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let field = |name: &str| value.get(name).and_then(Value::as_u64).map(saturated);
    if let Some(n) = value.as_u64() {
        let n = saturated(n);
        return Ok(ResizeTarget::Exact {
            height: n,
            width: n,
        });
    }
    match (field("height"), field("width"), field("shortest_edge")) {
        (Some(height), Some(width), _) => Ok(ResizeTarget::Exact { height, width }),
        (None, None, Some(edge)) => Ok(ResizeTarget::ShortestEdge(edge)),
        _ => bail!(
            "unsupported {key} {value} (expected an int, {{height, width}} or {{shortest_edge}})"
        ),
    }
}

/// `max_patches` and `resize_to_max_canvas` of a tiling processor, with HF's defaults.
fn parse_tiling(raw: &RawPreprocessConfig) -> Result<Tiling> {
    let defaults = Tiling::default();
    let max_tiles = match &raw.max_patches {
        None => defaults.max_tiles,
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=1024).contains(n))
            .with_context(|| format!("max_patches {value} is not an integer from 1 to 1024"))?
            as usize,
    };
    let resize_to_max_canvas = match &raw.resize_to_max_canvas {
        None => defaults.resize_to_max_canvas,
        Some(value) => value
            .as_bool()
            .with_context(|| format!("resize_to_max_canvas is {value}, not true or false"))?,
    };
    Ok(Tiling {
        max_tiles,
        resize_to_max_canvas,
    })
}

fn three(values: Vec<f32>, key: &str) -> Result<[f32; 3]> {
    match values[..] {
        [v] => Ok([v; 3]),
        [a, b, c] => Ok([a, b, c]),
        _ => bail!("{key} must have 1 or 3 values, found {}", values.len()),
    }
}

impl PreprocessConfig {
    /// `DINOv3ViTImageProcessor`'s defaults: 224x224 bilinear after rescaling, ImageNet's
    /// mean and std, no crop (what a DINOv3 folder without `preprocessor_config.json` gets).
    pub fn dinov3() -> Self {
        Self {
            normalize: Some(IMAGENET_MEAN_STD),
            rescale_before_resize: true,
            ..Self::default()
        }
    }

    /// `Llama4ImageProcessor`'s steps for one tile of `size` x `size`: bilinear, mean and std
    /// 0.5, no crop.
    pub fn llama4(size: usize) -> Self {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        Self {
            resize: Some(ResizeTarget::Exact {
                height: size,
                width: size,
            }),
            tiling: Some(Tiling::default()),
            ..Self::default()
        }
    }

    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses `preprocessor_config.json` text; missing keys take `ViTImageProcessor` defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawPreprocessConfig =
            serde_json::from_str(text).context("invalid preprocessor config")?;
        let processor = raw.image_processor_type.as_deref();
        let rescale_before_resize = processor == Some(RESCALE_FIRST_PROCESSOR);
        let tiled = processor.is_some_and(|p| TILING_PROCESSORS.contains(&p));
        let defaults = match (rescale_before_resize, tiled) {
            (true, _) => Self::dinov3(),
            (_, true) => Self::llama4(336),
            _ => Self::default(),
        };
        let tiling = match tiled {
            true => Some(parse_tiling(&raw)?),
            false => None,
        };
        let resize = match (raw.do_resize.unwrap_or(true), &raw.size) {
            (false, _) => None,
            (true, Some(size)) => Some(parse_size(size, "size")?),
            (true, None) => defaults.resize,
        };
        let resample = match raw.resample {
            Some(code) => Resample::from_pil_code(code)
                .with_context(|| format!("unknown resample {code} (PIL codes are 0 to 5)"))?,
            None => defaults.resample,
        };
        let center_crop = match (raw.do_center_crop.unwrap_or(false), &raw.crop_size) {
            (false, _) => None,
            (true, None) => Some((224, 224)),
            (true, Some(size)) => match parse_size(size, "crop_size")? {
                ResizeTarget::Exact { height, width } => Some((height, width)),
                ResizeTarget::ShortestEdge(_) => bail!("crop_size must be {{height, width}}"),
            },
        };
        let rescale_factor = match raw.do_rescale.unwrap_or(true) {
            true => Some(raw.rescale_factor.unwrap_or(1.0 / 255.0)),
            false => None,
        };
        if let Some(tiling) = tiling {
            if let Some(ResizeTarget::Exact { height, width }) = resize {
                // Every tile and the global one, at most: Pillow's limit holds for them together.
                let pixels = (tiling.max_tiles as u64 + 1) * height as u64 * width as u64;
                if pixels > MAX_IMAGE_PIXELS {
                    bail!(
                        "max_patches {} tiles of {height}x{width} are more than {MAX_IMAGE_PIXELS} pixels",
                        tiling.max_tiles
                    );
                }
            }
            let square =
                matches!(resize, Some(ResizeTarget::Exact { height, width }) if height == width);
            if !square || resample != Resample::Bilinear || center_crop.is_some() {
                bail!(
                    "Llama4ImageProcessor is supported with its own steps only: a square size \
                     {{height, width}}, resample 2 (bilinear), no crop"
                );
            }
            if rescale_factor.is_none() || raw.do_normalize == Some(false) {
                bail!("Llama4ImageProcessor without do_rescale or do_normalize is not supported");
            }
        }
        if rescale_before_resize && TorchFilter::of(resample).is_none() {
            bail!("{RESCALE_FIRST_PROCESSOR} with resample {resample:?} is not supported (bilinear, bicubic or Lanczos)");
        }
        let normalize = match raw.do_normalize.unwrap_or(true) {
            true => {
                let (default_mean, default_std) =
                    defaults.normalize.expect("HF's defaults normalize");
                let mean = raw.image_mean.map(|m| three(m, "image_mean")).transpose()?;
                let std = raw.image_std.map(|s| three(s, "image_std")).transpose()?;
                let (mean, std) = (mean.unwrap_or(default_mean), std.unwrap_or(default_std));
                if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
                    bail!("image_mean {m} is not a number");
                }
                // A zero (or non-finite) std divides every pixel into inf or NaN.
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s != 0.0)) {
                    bail!("image_std {s} is not a non-zero number");
                }
                Some((mean, std))
            }
            false => None,
        };
        if let Some(factor) = rescale_factor.filter(|f| !(f.is_finite() && *f > 0.0)) {
            bail!("rescale_factor {factor} is not a positive number");
        }
        for (target, key) in [
            (resize, "size"),
            (
                center_crop.map(|(h, w)| ResizeTarget::Exact {
                    height: h,
                    width: w,
                }),
                "crop_size",
            ),
        ] {
            check_target(target, key)?;
        }
        Ok(Self {
            resize,
            resample,
            center_crop,
            backend: ImageBackend::HfTorchvision,
            rescale_factor,
            normalize,
            rescale_before_resize,
            tiling,
        }
        .with_backend(ImageBackend::HfTorchvision))
    }

    /// The pipeline on the requested backend (`None`: the model's own): HF's pipelines move
    /// to that backend ([`PreprocessConfig::with_backend`]); timm's transform runs on PIL
    /// images, so it takes `Pil` as itself and refuses `Torchvision`.
    pub fn on_backend(&self, request: Option<BackendRequest>) -> Result<Self> {
        if self.rescale_before_resize && request == Some(BackendRequest::Pil) {
            bail!(
                "--image-backend pil: {RESCALE_FIRST_PROCESSOR} has only HF's torchvision \
                 backend (--image-backend torchvision, the default)"
            );
        }
        if self.tiling.is_some() && request == Some(BackendRequest::Pil) {
            bail!(
                "--image-backend pil: Llama4ImageProcessor has only HF's torchvision backend \
                 (--image-backend torchvision, the default)"
            );
        }
        Ok(match (request, self.backend) {
            (None, _) | (Some(BackendRequest::Pil), ImageBackend::Timm) => self.clone(),
            (Some(BackendRequest::Torchvision), ImageBackend::Timm) => bail!(
                "--image-backend torchvision: this timm checkpoint is preprocessed as timm's \
                 transform does, on PIL images (--image-backend pil, the default)"
            ),
            (Some(BackendRequest::Pil), _) => self.with_backend(ImageBackend::HfPil),
            (Some(BackendRequest::Torchvision), _) => {
                self.with_backend(ImageBackend::HfTorchvision)
            }
        })
    }

    /// The same pipeline on `backend`. A box or Hamming resize stays on HF's PIL backend:
    /// torchvision has neither (HF's torchvision backend fails on them), so PIL is the one
    /// backend HF runs them on.
    pub fn with_backend(&self, backend: ImageBackend) -> Self {
        let backend = match (backend, self.resample) {
            (ImageBackend::HfTorchvision, Resample::Box | Resample::Hamming) => ImageBackend::HfPil,
            (backend, _) => backend,
        };
        Self {
            backend,
            ..self.clone()
        }
    }

    /// The same pipeline producing `size` x `size` inputs: the crop becomes `size` and the
    /// resize keeps its ratio to the crop; without a crop the resize becomes `size`.
    pub fn with_input_size(&self, size: u32) -> Self {
        let mut config = self.clone();
        match self.center_crop {
            Some((crop_h, crop_w)) => {
                let scale =
                    |n: u32, crop: u32| (n as f64 * size as f64 / crop as f64).round() as u32;
                config.resize = self.resize.map(|target| match target {
                    ResizeTarget::Exact { height, width } => ResizeTarget::Exact {
                        height: scale(height, crop_h),
                        width: scale(width, crop_w),
                    },
                    ResizeTarget::ShortestEdge(edge) => {
                        ResizeTarget::ShortestEdge(scale(edge, crop_h))
                    }
                });
                config.center_crop = Some((size, size));
            }
            None => {
                config.resize = Some(ResizeTarget::Exact {
                    height: size,
                    width: size,
                })
            }
        }
        config
    }

    /// The `preprocessor_config.json` of this pipeline, as HF's `ViTImageProcessor` writes it.
    pub fn to_hf_json(&self) -> Value {
        let size = match self.resize {
            Some(ResizeTarget::Exact { height, width }) => {
                json!({"height": height, "width": width})
            }
            Some(ResizeTarget::ShortestEdge(edge)) => json!({"shortest_edge": edge}),
            None => json!({"height": 224, "width": 224}),
        };
        let (mean, std) = self.normalize.unwrap_or(([0.5; 3], [0.5; 3]));
        let processor = match self.rescale_before_resize {
            true => RESCALE_FIRST_PROCESSOR,
            false => "ViTImageProcessor",
        };
        let mut value = json!({
            "image_processor_type": processor,
            "do_resize": self.resize.is_some(),
            "size": size,
            "resample": pil_code(self.resample),
            "do_center_crop": self.center_crop.is_some(),
            "do_rescale": self.rescale_factor.is_some(),
            "rescale_factor": self.rescale_factor.unwrap_or(1.0 / 255.0),
            "do_normalize": self.normalize.is_some(),
            "image_mean": mean,
            "image_std": std,
        });
        if let Some((height, width)) = self.center_crop {
            value["crop_size"] = json!({"height": height, "width": width});
        }
        value
    }

    /// The image the model saw: `pixels` (one tile) with the normalization and rescaling
    /// undone, rounded to 8 bits.
    pub fn model_view(&self, pixels: &PixelValues) -> Result<RgbImage> {
        if pixels.tiles != 1 || pixels.data.len() != 3 * pixels.height * pixels.width {
            bail!(
                "an image cut into {} tiles has no single view",
                pixels.tiles
            );
        }
        let (mean, std) = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let factor = self.rescale_factor.unwrap_or(1.0) as f32;
        let plane = pixels.height * pixels.width;
        let (width, height) = (pixels.width as u32, pixels.height as u32);
        Ok(RgbImage::from_fn(width, height, |x, y| {
            let at = y as usize * pixels.width + x as usize;
            image::Rgb(std::array::from_fn(|c| {
                let value = (pixels.data[c * plane + at] * std[c] + mean[c]) / factor;
                // Rounded halves up by truncation (f32::round is a library call here).
                (value.clamp(0.0, 255.0) + 0.5) as u8
            }))
        }))
    }

    /// `(height, width)` of the pixel values for an image of `width` x `height`.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        if let Some(crop) = self.center_crop {
            return crop;
        }
        match self.resize {
            Some(target) => {
                let (w, h) = resized_dimensions(target, width, height);
                (h, w)
            }
            None => (height, width),
        }
    }

    /// Preprocesses one RGB image into `(3, height, width)` pixel values, channel-first (per
    /// tile, for a processor that cuts images into tiles).
    pub fn pixel_values(&self, image: &RgbImage) -> PixelValues {
        if let (Some(tiling), Some(ResizeTarget::Exact { height, .. })) = (self.tiling, self.resize)
        {
            let factor = self.rescale_factor.unwrap_or(1.0) as f32;
            let normalize = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
            return tiles::tiles(image, height as usize, tiling, factor, normalize);
        }
        match self.rescale_before_resize {
            true => self.rescaled_then_resized(image),
            false => self.normalized(&self.resized_and_cropped(image)),
        }
    }

    /// `DINOv3ViTImageProcessor`'s order on HF's torchvision backend: the uint8 image times
    /// the factor in f32, PyTorch's antialiased resize of the floats, the centre crop
    /// (zero padding), then `(x - mean) / std` in f32.
    fn rescaled_then_resized(&self, image: &RgbImage) -> PixelValues {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let plane = width * height;
        let factor = self.rescale_factor.map_or(1.0, |f| f as f32);
        let mut values = vec![0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for (c, &v) in pixel.0.iter().enumerate() {
                values[c * plane + i] = v as f32 * factor;
            }
        }
        let (mut height, mut width) = (height, width);
        if let Some(target) = self.resize {
            let (w, h) = resized_dimensions(target, width as u32, height as u32);
            let filter = TorchFilter::of(self.resample).expect("checked when parsed");
            values = resize_planes_torch(
                &values,
                3,
                (height, width),
                (h as usize, w as usize),
                filter,
            );
            (height, width) = (h as usize, w as usize);
        }
        if let Some((crop_h, crop_w)) = self.center_crop {
            let crop = self.backend.crop();
            let top = crop.start(height as u32, crop_h);
            let left = crop.start(width as u32, crop_w);
            let (crop_h, crop_w) = (crop_h as usize, crop_w as usize);
            let source = |c: usize, y: usize, x: usize| {
                let (y, x) = (y as i64 + top, x as i64 + left);
                let inside = (0..height as i64).contains(&y) && (0..width as i64).contains(&x);
                match inside {
                    true => values[(c * height + y as usize) * width + x as usize],
                    false => 0.0,
                }
            };
            values = (0..3)
                .flat_map(|c| (0..crop_h).flat_map(move |y| (0..crop_w).map(move |x| (c, y, x))))
                .map(|(c, y, x)| source(c, y, x))
                .collect();
            (height, width) = (crop_h, crop_w);
        }
        if let Some((mean, std)) = self.normalize {
            for (c, plane) in values.chunks_exact_mut(height * width).enumerate() {
                plane.iter_mut().for_each(|v| *v = (*v - mean[c]) / std[c]);
            }
        }
        PixelValues {
            height,
            width,
            tiles: 1,
            data: values,
        }
    }

    /// The image as the model sees it, before rescaling: resized and centre-cropped.
    pub fn resized_and_cropped(&self, image: &RgbImage) -> RgbImage {
        let resized;
        let image = match self.resize {
            Some(target) => {
                let (w, h) = resized_dimensions(target, image.width(), image.height());
                resized = self.resize_to(image, w, h);
                &resized
            }
            None => image,
        };
        match self.center_crop {
            Some((h, w)) => center_crop_as(image, h, w, self.backend),
            None => image.clone(),
        }
    }

    /// Rescales and normalizes an 8-bit image into channel-first pixel values.
    fn normalized(&self, image: &RgbImage) -> PixelValues {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let normalize: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|v| self.normalize_value(v as u8, c)));
        let mut values = vec![0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for (c, &v) in pixel.0.iter().enumerate() {
                values[c * plane + i] = normalize[c][v as usize];
            }
        }
        PixelValues {
            height: h as usize,
            width: w as usize,
            tiles: 1,
            data: values,
        }
    }

    /// The resize step on this pipeline's backend.
    fn resize_to(&self, image: &RgbImage, width: u32, height: u32) -> RgbImage {
        let torch = match (self.backend, self.resample) {
            (ImageBackend::HfTorchvision, Resample::Bilinear) => {
                TorchResize::Antialiased(TorchFilter::Bilinear)
            }
            (ImageBackend::HfTorchvision, Resample::Bicubic) => {
                TorchResize::Antialiased(TorchFilter::Bicubic)
            }
            (ImageBackend::HfTorchvision, Resample::Lanczos) => {
                TorchResize::Antialiased(TorchFilter::Lanczos)
            }
            (ImageBackend::HfTorchvision, Resample::Nearest) => TorchResize::NearestExact,
            _ => return resize_rgb8(image, width, height, self.resample),
        };
        resize_rgb8_torch(image, width, height, torch)
    }

    /// Rescales and normalizes one 8-bit value of channel `c` with the backend's arithmetic.
    fn normalize_value(&self, v: u8, c: usize) -> f32 {
        match (self.backend, self.rescale_factor, self.normalize) {
            // HF's PIL backend: rescale in f64 (numpy), then normalize in f32.
            (ImageBackend::HfPil, factor, normalize) => {
                let x = factor.map_or(v as f32, |f| (v as f64 * f) as f32);
                normalize.map_or(x, |(mean, std)| (x - mean[c]) / std[c])
            }
            // torchvision: the rescale fused into the mean and std (each times 1 / factor,
            // in f32), then `(x - mean) / std` in f32.
            (ImageBackend::HfTorchvision, Some(factor), Some((mean, std))) => {
                let inverse = (1.0 / factor) as f32;
                (v as f32 - mean[c] * inverse) / (std[c] * inverse)
            }
            (ImageBackend::HfTorchvision, Some(factor), None) => v as f32 * factor as f32,
            // timm: ToTensor's `x / 255` in f32 (any factor is 1 / 255), then Normalize.
            (ImageBackend::Timm, Some(factor), normalize) => {
                let x = v as f32 / (1.0 / factor) as f32;
                normalize.map_or(x, |(mean, std)| (x - mean[c]) / std[c])
            }
            (ImageBackend::HfTorchvision | ImageBackend::Timm, None, normalize) => {
                normalize.map_or(v as f32, |(mean, std)| (v as f32 - mean[c]) / std[c])
            }
        }
    }
}

/// PIL's integer code of a filter, as `preprocessor_config.json` stores it.
fn pil_code(filter: Resample) -> u32 {
    (0..6)
        .find(|&code| Resample::from_pil_code(code) == Some(filter))
        .expect("every filter has a PIL code")
}

/// `(width, height)` after resizing to `target`, as HF computes it.
fn resized_dimensions(target: ResizeTarget, width: u32, height: u32) -> (u32, u32) {
    match target {
        ResizeTarget::Exact { height, width } => (width, height),
        ResizeTarget::ShortestEdge(edge) => {
            let (short, long) = (width.min(height), width.max(height));
            let new_long = (edge as u64 * long as u64 / short.max(1) as u64) as u32;
            if width <= height {
                (edge, new_long)
            } else {
                (new_long, edge)
            }
        }
    }
}

/// HF's `center_crop` (its PIL backend): the top-left corner at `(size - crop) // 2`, zero
/// padding where the crop is larger than the image.
pub fn center_crop(image: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    center_crop_as(image, crop_h, crop_w, ImageBackend::HfPil)
}

/// A centre crop as `backend` places it, zero padding where the crop is larger than the
/// image.
pub fn center_crop_as(
    image: &RgbImage,
    crop_h: u32,
    crop_w: u32,
    backend: ImageBackend,
) -> RgbImage {
    let crop = backend.crop();
    let top = crop.start(image.height(), crop_h);
    let left = crop.start(image.width(), crop_w);
    crop_at(image, (crop_h, crop_w), top, left)
}

/// The `crop_h x crop_w` window from `(top, left)`, zeros outside the image.
fn crop_at(image: &RgbImage, (crop_h, crop_w): (u32, u32), top: i64, left: i64) -> RgbImage {
    let (w, h) = (image.width() as i64, image.height() as i64);
    RgbImage::from_fn(crop_w, crop_h, |x, y| {
        let (sx, sy) = (left + x as i64, top + y as i64);
        if (0..w).contains(&sx) && (0..h).contains(&sy) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEIT: &str = r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
        "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 256, "width": 256}}"#;

    #[test]
    fn parses_a_deit_processor() {
        let config = PreprocessConfig::from_json(DEIT).unwrap();
        assert_eq!(
            config.resize,
            Some(ResizeTarget::Exact {
                height: 256,
                width: 256
            })
        );
        assert_eq!(config.resample, Resample::Bicubic);
        assert_eq!(config.center_crop, Some((224, 224)));
        assert_eq!(config.normalize.unwrap().0, [0.485, 0.456, 0.406]);
        assert_eq!(config.output_size(640, 480), (224, 224));
    }

    #[test]
    fn the_model_view_undoes_rescaling_and_normalization() {
        let mut config = PreprocessConfig::from_json(DEIT).unwrap();
        config.resize = None;
        config.center_crop = None;
        let image = RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb([(x * 36) as u8, (y * 60) as u8, (255 - x * y * 10) as u8])
        });
        let pixels = config.pixel_values(&image);
        assert_eq!(config.model_view(&pixels).unwrap(), image);
        let tiled = PixelValues { tiles: 2, ..pixels };
        assert!(config.model_view(&tiled).is_err());
    }

    #[test]
    fn empty_config_is_vit_defaults() {
        assert_eq!(
            PreprocessConfig::from_json("{}").unwrap(),
            PreprocessConfig::default()
        );
        let config = PreprocessConfig::from_json(r#"{"size": 384}"#).unwrap();
        assert_eq!(config.output_size(10, 20), (384, 384));
    }

    #[test]
    fn shortest_edge_keeps_the_aspect_ratio() {
        let config = PreprocessConfig::from_json(r#"{"size": {"shortest_edge": 224}}"#).unwrap();
        assert_eq!(config.output_size(640, 480), (224, 298));
        assert_eq!(config.output_size(480, 640), (298, 224));
    }

    #[test]
    fn input_size_override_keeps_the_crop_ratio() {
        let config = PreprocessConfig::from_json(DEIT)
            .unwrap()
            .with_input_size(384);
        assert_eq!(config.center_crop, Some((384, 384)));
        assert_eq!(
            config.resize,
            Some(ResizeTarget::Exact {
                height: 439,
                width: 439
            })
        );
        let config = PreprocessConfig::default().with_input_size(96);
        assert_eq!(config.output_size(500, 300), (96, 96));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(PreprocessConfig::from_json(r#"{"resample": 9}"#).is_err());
        assert!(PreprocessConfig::from_json(r#"{"image_mean": [0.1, 0.2]}"#).is_err());
        assert!(PreprocessConfig::from_json(r#"{"size": {"longest_edge": 3}}"#).is_err());
    }

    #[test]
    fn center_crop_matches_hf_offsets_and_pads_with_zeros() {
        let image = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let cropped = center_crop(&image, 2, 2);
        // top = (4 - 2) // 2 = 1, left = (5 - 2) // 2 = 1
        assert_eq!(cropped.get_pixel(0, 0).0, [1, 1, 9]);
        let padded = center_crop(&image, 6, 5);
        // top = (4 - 6) // 2 = -1: the first row is padding.
        assert_eq!(padded.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(padded.get_pixel(0, 1).0, [0, 0, 9]);
    }

    #[test]
    fn pixel_values_are_rescaled_and_normalized_channel_first() {
        let config = PreprocessConfig {
            resize: None,
            ..PreprocessConfig::default()
        };
        let image = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([if x == 0 { 0 } else { 255 }, 51, 102])
        });
        let values = config.pixel_values(&image).data;
        let expected = [-1.0, 1.0, -0.6, -0.6, -0.2, -0.2];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-6, "{values:?}");
        }
    }

    #[test]
    fn crops_are_placed_as_each_backend_places_them() {
        // torchvision: int(round((size - crop) / 2)); Python rounds 0.5 to 0 and 1.5 to 2.
        // HF's backends both floor.
        let image = RgbImage::from_fn(229, 9, |x, y| image::Rgb([x as u8, y as u8, 1]));
        for (width, floor, round) in [(225, 0, 0), (227, 1, 2), (229, 2, 2), (228, 2, 2)] {
            let image = image::imageops::crop_imm(&image, 0, 0, width, 9).to_image();
            let left = |backend| center_crop_as(&image, 9, 224, backend).get_pixel(0, 0).0[0];
            assert_eq!(left(ImageBackend::HfPil) as u32, floor, "{width}");
            assert_eq!(left(ImageBackend::HfTorchvision) as u32, floor, "{width}");
            assert_eq!(left(ImageBackend::Timm) as u32, round, "{width}");
        }
        // A crop 3 rows taller than the image: torchvision pads one row above and two below,
        // HF's PIL backend two above.
        let small = RgbImage::from_pixel(4, 4, image::Rgb([7, 7, 7]));
        let column = |backend| -> Vec<u8> {
            let padded = center_crop_as(&small, 7, 4, backend);
            (0..7).map(|y| padded.get_pixel(0, y).0[0]).collect()
        };
        assert_eq!(column(ImageBackend::HfTorchvision), [0, 7, 7, 7, 7, 0, 0]);
        assert_eq!(column(ImageBackend::Timm), [0, 7, 7, 7, 7, 0, 0]);
        assert_eq!(column(ImageBackend::HfPil), [0, 0, 7, 7, 7, 7, 0]);
    }

    #[test]
    fn filters_torchvision_lacks_stay_on_pil() {
        let lanczos = PreprocessConfig::from_json(r#"{"resample": 1}"#).unwrap();
        assert_eq!(lanczos.backend, ImageBackend::HfTorchvision);
        let hamming = PreprocessConfig::from_json(r#"{"resample": 5}"#).unwrap();
        assert_eq!(hamming.backend, ImageBackend::HfPil);
        let bicubic = PreprocessConfig::from_json(r#"{"resample": 3}"#).unwrap();
        assert_eq!(bicubic.backend, ImageBackend::HfTorchvision);
        assert_eq!(
            bicubic.with_backend(ImageBackend::HfPil).backend,
            ImageBackend::HfPil
        );
        let boxed = PreprocessConfig::from_json(r#"{"resample": 4}"#).unwrap();
        assert_eq!(
            boxed.with_backend(ImageBackend::HfTorchvision).backend,
            ImageBackend::HfPil
        );
    }
}
