//! Training augmentation: torchvision's `RandomResizedCrop` and `RandomHorizontalFlip`.

use image::RgbImage;

use super::rng::Rng;
use crate::preprocess::{PixelValues, PreprocessConfig, Resample, ResizeTarget};

/// A crop rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Random resized crop to a square, then a horizontal flip with probability 1/2, then the
/// model's rescaling and normalization.
#[derive(Debug, Clone)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image (torchvision: 0.08 to 1).
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio, width over height (torchvision: 3/4 to 4/3).
    pub ratio: (f64, f64),
    /// Resizes the crop to the input size (bilinear, as torchvision) and normalizes.
    finish: PreprocessConfig,
}

impl Augment {
    /// torchvision's defaults, producing `size` x `size` inputs normalized as `model` does.
    pub fn new(size: u32, model: &PreprocessConfig) -> Self {
        Self {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            finish: PreprocessConfig {
                resize: Some(ResizeTarget::Exact {
                    height: size,
                    width: size,
                }),
                resample: Resample::Bilinear,
                center_crop: None,
                backend: crate::preprocess::ImageBackend::HfPil,
                rescale_factor: model.rescale_factor,
                normalize: model.normalize,
                rescale_before_resize: false,
                tiling: None,
            },
        }
    }

    /// The augmented pixel values of `image`, drawing from `rng`.
    pub fn apply(&self, image: &RgbImage, rng: &mut Rng) -> PixelValues {
        let crop = self.crop_box(image.width(), image.height(), rng);
        let cropped = image::imageops::crop_imm(image, crop.x, crop.y, crop.width, crop.height);
        let mut pixels = self.finish.pixel_values(&cropped.to_image());
        if rng.uniform() < 0.5 {
            flip_horizontal(&mut pixels);
        }
        pixels
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and aspect
    /// ratio, else the largest central crop within the ratio range.
    pub fn crop_box(&self, width: u32, height: u32, rng: &mut Rng) -> CropBox {
        let area = width as f64 * height as f64;
        let (log_low, log_high) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform_in(self.scale.0, self.scale.1);
            let aspect = rng.uniform_in(log_low, log_high).exp();
            let w = (target_area * aspect).sqrt().round_ties_even() as u32;
            let h = (target_area / aspect).sqrt().round_ties_even() as u32;
            if 0 < w && w <= width && 0 < h && h <= height {
                let y = rng.below((height - h + 1) as u64) as u32;
                let x = rng.below((width - w + 1) as u64) as u32;
                return CropBox {
                    x,
                    y,
                    width: w,
                    height: h,
                };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio.0 {
            (
                width,
                (width as f64 / self.ratio.0).round_ties_even() as u32,
            )
        } else if in_ratio > self.ratio.1 {
            (
                (height as f64 * self.ratio.1).round_ties_even() as u32,
                height,
            )
        } else {
            (width, height)
        };
        let (w, h) = (w.clamp(1, width), h.clamp(1, height));
        CropBox {
            x: (width - w) / 2,
            y: (height - h) / 2,
            width: w,
            height: h,
        }
    }
}

/// Mirrors channel-first pixel values left to right.
fn flip_horizontal(pixels: &mut PixelValues) {
    for row in pixels.data.chunks_mut(pixels.width) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn augment() -> Augment {
        Augment::new(16, &PreprocessConfig::default())
    }

    #[test]
    fn crops_stay_inside_the_image_within_the_ranges() {
        let augment = augment();
        let mut rng = Rng::new(1);
        for (w, h) in [(100, 80), (30, 400), (7, 7), (1, 1), (640, 20)] {
            for _ in 0..200 {
                let crop = augment.crop_box(w, h, &mut rng);
                assert!(crop.width >= 1 && crop.height >= 1, "{crop:?}");
                assert!(
                    crop.x + crop.width <= w && crop.y + crop.height <= h,
                    "{crop:?}"
                );
            }
        }
        // On a large image the first try nearly always fits: area and ratio in range.
        for _ in 0..200 {
            let crop = augment.crop_box(1000, 1000, &mut rng);
            let area = (crop.width * crop.height) as f64 / 1e6;
            let ratio = crop.width as f64 / crop.height as f64;
            assert!((0.075..=1.0).contains(&area), "{area}");
            assert!((0.74..=1.35).contains(&ratio), "{ratio}");
        }
    }

    #[test]
    fn a_very_wide_image_falls_back_to_a_central_crop_at_the_largest_ratio() {
        let augment = Augment {
            scale: (1.0, 1.0),
            ..augment()
        };
        let crop = augment.crop_box(400, 100, &mut Rng::new(0));
        assert_eq!(
            crop,
            CropBox {
                x: 133,
                y: 0,
                width: 133,
                height: 100
            }
        );
    }

    #[test]
    fn the_same_draws_give_the_same_pixels_and_flips_mirror() {
        let image = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 7]));
        let augment = augment();
        let a = augment.apply(&image, &mut Rng::new(5));
        assert_eq!(a, augment.apply(&image, &mut Rng::new(5)));
        assert_eq!((a.width, a.height, a.data.len()), (16, 16, 3 * 256));
        let mut flipped = a.clone();
        flip_horizontal(&mut flipped);
        assert_eq!(flipped.data[0], a.data[15]);
        assert_eq!(flipped.data[256 + 16], a.data[256 + 31]);
        // Both flip outcomes occur across seeds: the red ramp runs one way or the other.
        let directions: std::collections::HashSet<bool> = (0..20)
            .map(|seed| {
                let p = augment.apply(&image, &mut Rng::new(seed));
                p.data[15] > p.data[0]
            })
            .collect();
        assert_eq!(directions.len(), 2);
    }
}
