//! Llama 4's image processor (`Llama4ImageProcessor`, on HF's torchvision backend, its only
//! one): the image resized without distortion to fit the best canvas of whole tiles, padded
//! to it with black, rescaled and normalized in bfloat16 and cut into tiles row by row; when
//! there is more than one tile, the whole image squeezed into one more tile, last.

use image::RgbImage;

use super::resize::{resize_rgb8_torch, TorchFilter, TorchResize};
use super::PixelValues;

/// How many tiles an image may take, as `preprocessor_config.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// `max_patches`: the most tiles of the canvas (the global tile aside).
    pub max_tiles: usize,
    /// `resize_to_max_canvas`: upscale to the largest canvas instead of the smallest.
    pub resize_to_max_canvas: bool,
}

impl Default for Tiling {
    fn default() -> Self {
        Self {
            max_tiles: 16,
            resize_to_max_canvas: false,
        }
    }
}

/// The canvases of at most `max_tiles` tiles, `(rows, columns)`, in HF's order
/// (`find_supported_resolutions`): grouped by aspect ratio, groups in the order their first
/// member appears going from `max_tiles` tiles down to one, each tile count's factor pairs
/// by ascending rows.
pub fn canvases(max_tiles: usize) -> Vec<(usize, usize)> {
    /// Tiles down and across.
    type Canvas = (usize, usize);
    // Each aspect ratio (reduced) with its canvases.
    let mut groups: Vec<(Canvas, Vec<Canvas>)> = Vec::new();
    for count in (1..=max_tiles).rev() {
        for rows in (1..=count).filter(|rows| count.is_multiple_of(*rows)) {
            let columns = count / rows;
            let divisor = gcd(rows, columns);
            let ratio = (rows / divisor, columns / divisor);
            match groups.iter_mut().find(|(key, _)| *key == ratio) {
                Some((_, members)) => members.push((rows, columns)),
                None => groups.push((ratio, vec![(rows, columns)])),
            }
        }
    }
    groups
        .into_iter()
        .flat_map(|(_, members)| members)
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    match b {
        0 => a,
        _ => gcd(b, a % b),
    }
}

/// HF's `get_best_fit` for an image of `(height, width)`: the canvas (in pixels) needing the
/// smallest upscale (the largest with `resize_to_max_canvas`), else the least downscale;
/// among equals the smallest area, the first in [`canvases`]' order. Scales in f32, as
/// torch divides the int64 canvases.
pub fn best_canvas((height, width): (usize, usize), tile: usize, tiling: Tiling) -> (usize, usize) {
    let options: Vec<(usize, usize)> = canvases(tiling.max_tiles.max(1))
        .into_iter()
        .map(|(rows, columns)| (rows * tile, columns * tile))
        .collect();
    let scale = |(h, w): (usize, usize)| {
        let (scale_h, scale_w) = (h as f32 / height as f32, w as f32 / width as f32);
        match scale_h > scale_w {
            true => scale_w,
            false => scale_h,
        }
    };
    let scales: Vec<f32> = options.iter().map(|&canvas| scale(canvas)).collect();
    // (An empty image's scales are all infinite: one of them is chosen all the same.)
    let upscales = scales.iter().copied().filter(|s| *s >= 1.0);
    let chosen = match upscales.clone().next() {
        Some(_) if tiling.resize_to_max_canvas => upscales.reduce(f32::max),
        Some(_) => upscales.reduce(f32::min),
        None => scales.iter().copied().reduce(f32::max),
    };
    let chosen = chosen.expect("at least one canvas");
    let mut best: Option<(usize, usize)> = None;
    for (canvas, s) in options.iter().zip(&scales) {
        let smaller = |b: &(usize, usize)| canvas.0 * canvas.1 < b.0 * b.1;
        if *s == chosen && best.as_ref().is_none_or(smaller) {
            best = Some(*canvas);
        }
    }
    best.expect("one canvas has the chosen scale")
}

/// One side of the size to resize to before padding: HF keeps it a Python int where the
/// image's side (or the tile, if larger) is the smaller, a torch int64 scalar where the
/// canvas is, which puts the arithmetic after it in f32 instead of f64.
#[derive(Debug, Clone, Copy)]
struct Side {
    value: usize,
    tensor: bool,
}

/// HF's `get_max_res_without_distortion` of `(height, width)` into `target`, with each
/// side's arithmetic in the precision HF's types give it.
fn fit_without_distortion((height, width): (usize, usize), target: (Side, Side)) -> (usize, usize) {
    let (target_h, target_w) = target;
    // A side's scale: f32 when its target is a tensor, else f64 (kept as f64 either way).
    let scale = |side: Side, original: usize| match side.tensor {
        true => (side.value as f32 / original as f32) as f64,
        false => side.value as f64 / original as f64,
    };
    let (scale_h, scale_w) = (scale(target_h, height), scale(target_w, width));
    // A comparison with a tensor on either side is made in f32.
    let w_smaller = match target_h.tensor || target_w.tensor {
        true => (scale_w as f32) < (scale_h as f32),
        false => scale_w < scale_h,
    };
    // `floor(original * scale)`, in f32 when the scale is a tensor.
    let scaled = |original: usize, scale: f64, tensor: bool| match tensor {
        true => (original as f32 * scale as f32).floor() as usize,
        false => (original as f64 * scale).floor() as usize,
    };
    match w_smaller {
        true => (
            scaled(height, scale_w, target_w.tensor).min(target_h.value),
            target_w.value,
        ),
        false => (
            target_h.value,
            scaled(width, scale_h, target_h.tensor).min(target_w.value),
        ),
    }
}

/// The canvas an image of `(height, width)` is padded to and the size it is resized to
/// first, `((canvas_h, canvas_w), (resized_h, resized_w))`, as `Llama4ImageProcessor`
/// computes them.
pub fn plan(
    (height, width): (usize, usize),
    tile: usize,
    tiling: Tiling,
) -> ((usize, usize), (usize, usize)) {
    let canvas = best_canvas((height, width), tile, tiling);
    let side = |image: usize, canvas: usize| match tiling.resize_to_max_canvas {
        true => Side {
            value: canvas,
            tensor: true,
        },
        // Python's `min(max(image, tile), canvas)` returns the canvas only when smaller.
        false => {
            let bounded = image.max(tile);
            match canvas < bounded {
                true => Side {
                    value: canvas,
                    tensor: true,
                },
                false => Side {
                    value: bounded,
                    tensor: false,
                },
            }
        }
    };
    let target = (side(height, canvas.0), side(width, canvas.1));
    let (h, w) = fit_without_distortion((height, width), target);
    (canvas, (h.max(1), w.max(1)))
}

/// bfloat16's rounding of `x` (to nearest, ties to even), as an f32.
fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// The tiles of `image`, `tile` x `tile` each, bilinear, normalized by `mean` and `std`
/// after rescaling by `factor`, in bfloat16 steps as HF's `rescale_and_normalize` takes them.
pub fn tiles(
    image: &RgbImage,
    tile: usize,
    tiling: Tiling,
    factor: f32,
    (mean, std): ([f32; 3], [f32; 3]),
) -> PixelValues {
    let (height, width) = (image.height() as usize, image.width() as usize);
    let ((canvas_h, canvas_w), (resized_h, resized_w)) = plan((height, width), tile, tiling);
    let bilinear = TorchResize::Antialiased(TorchFilter::Bilinear);
    let resized = resize_rgb8_torch(image, resized_w as u32, resized_h as u32, bilinear);
    let (rows, columns) = (canvas_h / tile, canvas_w / tile);
    let normalize: [[f32; 256]; 3] = std::array::from_fn(|c| {
        let (mean, std) = (bf16(mean[c]), bf16(std[c]));
        std::array::from_fn(|v| bf16(bf16(bf16(v as f32 * factor) - mean) / std))
    });
    let global = rows * columns > 1;
    let count = rows * columns + usize::from(global);
    let plane = tile * tile;
    // Padding is black: the value of 0.
    let mut data: Vec<f32> = (0..count * 3)
        .flat_map(|i| std::iter::repeat_n(normalize[i % 3][0], plane))
        .collect();
    for (x, y, pixel) in resized.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        let index = (y / tile) * columns + x / tile;
        for (c, &v) in pixel.0.iter().enumerate() {
            data[(index * 3 + c) * plane + (y % tile) * tile + x % tile] = normalize[c][v as usize];
        }
    }
    if global {
        let squeezed = resize_rgb8_torch(image, tile as u32, tile as u32, bilinear);
        let start = rows * columns * 3 * plane;
        for (i, pixel) in squeezed.pixels().enumerate() {
            for (c, &v) in pixel.0.iter().enumerate() {
                data[start + c * plane + i] = normalize[c][v as usize];
            }
        }
    }
    PixelValues {
        height: tile,
        width: tile,
        tiles: count,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvases_follow_hfs_order() {
        // HF's find_supported_resolutions(max_num_chunks=4): ratios 1/4, 1, 4, 1/3, 3, 1/2, 2.
        assert_eq!(
            canvases(4),
            vec![
                (1, 4),
                (2, 2),
                (1, 1),
                (4, 1),
                (1, 3),
                (3, 1),
                (1, 2),
                (2, 1)
            ]
        );
        assert_eq!(canvases(16).len(), 50);
    }

    #[test]
    fn plans_match_hfs_examples() {
        let tiling = Tiling::default();
        // Printed by transformers 5.23's get_best_fit and get_max_res_without_distortion.
        assert_eq!(plan((157, 301), 336, tiling), ((336, 336), (175, 336)));
        assert_eq!(plan((1000, 200), 336, tiling), ((1008, 336), (1000, 200)));
        assert_eq!(
            plan((2000, 3000), 336, tiling),
            ((1008, 1680), (1008, 1512))
        );
        assert_eq!(plan((50, 5000), 336, tiling), ((336, 5040), (50, 5000)));
    }

    #[test]
    fn one_tile_has_no_global_tile_and_padding_is_black() {
        let image = RgbImage::from_pixel(16, 8, image::Rgb([255, 255, 255]));
        let pixels = tiles(
            &image,
            16,
            Tiling::default(),
            1.0 / 255.0,
            ([0.5; 3], [0.5; 3]),
        );
        assert_eq!((pixels.tiles, pixels.height), (1, 16));
        // Kept at 16 x 8, then padded: the last row is black (-1), the first white (1).
        assert_eq!(pixels.data[0], 1.0);
        assert_eq!(pixels.data[16 * 15], -1.0);
        let wide = RgbImage::from_pixel(40, 10, image::Rgb([0, 0, 0]));
        let pixels = tiles(
            &wide,
            16,
            Tiling::default(),
            1.0 / 255.0,
            ([0.5; 3], [0.5; 3]),
        );
        assert_eq!(pixels.tiles, 3 + 1, "three tiles and the global one");
    }

    #[test]
    fn empty_and_extreme_images_give_whole_tiles() {
        let normalize = ([0.5; 3], [0.5; 3]);
        for (width, height) in [(0, 0), (2, 0), (0, 3), (1, 1), (1, 4000), (4000, 1)] {
            let image = RgbImage::new(width, height);
            let pixels = tiles(&image, 14, Tiling::default(), 1.0 / 255.0, normalize);
            assert_eq!(
                pixels.data.len(),
                pixels.tiles * 3 * 14 * 14,
                "{width}x{height}"
            );
            assert!(pixels.tiles >= 1 && pixels.tiles <= 17, "{width}x{height}");
        }
    }
}
