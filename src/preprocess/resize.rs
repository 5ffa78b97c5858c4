//! Image resizing as Pillow and as PyTorch do it, bit for bit.
//!
//! - [`resize_rgb8`]: a port of Pillow 13's `Image.resize` for 8-bit RGB images (no `box`,
//!   `reducing_gap=None`): the convolution-based filters follow `libImaging/Resample.c`
//!   (antialiased separable resampling with 22-bit fixed-point weights and 8-bit rounding
//!   between the two passes), and `Nearest` follows the affine nearest-neighbour scaling of
//!   `libImaging/Geometry.c` that `_imaging.c`'s `_resize` uses for that filter.
//! - [`resize_rgb8_torch`]: PyTorch's `interpolate(..., antialias=True)` on a uint8 image,
//!   which torchvision's `resize` runs for bilinear and bicubic (ATen's
//!   `UpSampleKernel.cpp`, `_compute_index_ranges_int16_weights`): the same separable
//!   convolution, with weights in 16 bits at the precision the largest weight allows,
//!   horizontal pass first; and torch's `nearest-exact`.

use image::RgbImage;
use rayon::prelude::*;

/// Bytes per RGB pixel.
const CHANNELS: usize = 3;

/// Fractional bits of the fixed-point weights (`32 - 8 - 2` in Pillow).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling filters, numbered as in `preprocessor_config.json`'s `resample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Resample {
    /// From PIL's integer code (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming); None for others.
    pub fn from_pil_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Nearest),
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    /// The convolution filter, or `None` for `Nearest` (which Pillow does not convolve).
    fn convolution(self) -> Option<Filter> {
        let (kernel, support): (fn(f64) -> f64, f64) = match self {
            Self::Nearest => return None,
            Self::Box => (box_filter, 0.5),
            Self::Bilinear => (bilinear_filter, 1.0),
            Self::Hamming => (hamming_filter, 1.0),
            Self::Bicubic => (bicubic_filter, 2.0),
            Self::Lanczos => (lanczos_filter, 3.0),
        };
        Some(Filter { kernel, support })
    }
}

/// Resizes an 8-bit RGB image as Pillow's `Image.resize((width, height), resample)` does (reducing_gap=None, no box).
///
/// Pillow rejects empty sizes; here an empty source or target yields a black image of the target size.
pub fn resize_rgb8(
    src: &image::RgbImage,
    width: u32,
    height: u32,
    filter: Resample,
) -> image::RgbImage {
    if src.dimensions() == (width, height) {
        return src.clone();
    }
    if width == 0 || height == 0 || src.width() == 0 || src.height() == 0 {
        return RgbImage::new(width, height);
    }
    match filter.convolution() {
        None => resize_nearest(src, width, height),
        Some(filter) => resize_convolve(src, width, height, &filter),
    }
}

/// The antialiased interpolations torchvision's `resize` runs natively on uint8 tensors
/// (Lanczos since torchvision 0.27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFilter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl TorchFilter {
    /// ATen's form of the filter and its interpolation size (the window's width in input
    /// pixels before widening for a downscale).
    fn aten_kernel(self) -> (fn(f64) -> f64, f64) {
        match self {
            Self::Bilinear => (torch_bilinear_filter, 2.0),
            Self::Bicubic => (torch_bicubic_filter, 4.0),
            Self::Lanczos => (lanczos_filter, 6.0),
        }
    }

    /// The antialiased interpolation torchvision runs for PIL's filter `resample`, if any.
    pub fn of(resample: Resample) -> Option<Self> {
        match resample {
            Resample::Bilinear => Some(Self::Bilinear),
            Resample::Bicubic => Some(Self::Bicubic),
            Resample::Lanczos => Some(Self::Lanczos),
            _ => None,
        }
    }
}

/// How PyTorch resizes a uint8 image for torchvision's `resize(antialias=True)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchResize {
    /// `interpolate(mode=..., antialias=True)` in 16-bit fixed point.
    Antialiased(TorchFilter),
    /// `interpolate(mode="nearest-exact")` (HF maps PIL's nearest to it): input
    /// `min(floor((i + 0.5) * (in / out)), in - 1)`, the scale and the floor in f32.
    NearestExact,
}

/// Resizes an 8-bit RGB image as PyTorch's `interpolate` does on a uint8 tensor for
/// torchvision's `resize` (see the module's doc); an empty source or target yields a black
/// image of the target size.
pub fn resize_rgb8_torch(src: &RgbImage, width: u32, height: u32, how: TorchResize) -> RgbImage {
    if src.dimensions() == (width, height) {
        return src.clone();
    }
    if width == 0 || height == 0 || src.width() == 0 || src.height() == 0 {
        return RgbImage::new(width, height);
    }
    let filter = match how {
        TorchResize::NearestExact => return resize_nearest_exact(src, width, height),
        TorchResize::Antialiased(filter) => filter,
    };
    let (in_width, in_height) = src.dimensions();
    let in_row_len = in_width as usize * CHANNELS;
    let raw = src.as_raw();
    let horizontal;
    let (rows, row_len) = match width != in_width {
        true => {
            let coeffs = Coefficients::torch(in_width, width, filter);
            horizontal = resample_horizontal(raw, in_row_len, &coeffs);
            (&horizontal, width as usize * CHANNELS)
        }
        false => (raw, in_row_len),
    };
    let out = match height != in_height {
        true => resample_vertical(
            rows,
            row_len,
            0,
            &Coefficients::torch(in_height, height, filter),
        ),
        false => rows.clone(),
    };
    RgbImage::from_raw(width, height, out).expect("buffer matches the output size")
}

/// Resizes `channels` channel-first f32 planes of `in_height x in_width` as PyTorch's
/// `interpolate(mode=..., antialias=True, align_corners=False)` does on a float tensor
/// (torchvision's `resize` of an image already rescaled, as `DINOv3ViTImageProcessor` runs
/// it): ATen's separable passes, width first, each skipped when its size is unchanged, with
/// the windows, weights and sums in f32. An empty source or target gives zeros of the
/// target size (as the 8-bit resizes give black).
///
/// Panics unless `planes` holds the planes.
pub fn resize_planes_torch(
    planes: &[f32],
    channels: usize,
    (in_height, in_width): (usize, usize),
    (height, width): (usize, usize),
    filter: TorchFilter,
) -> Vec<f32> {
    assert_eq!(
        planes.len(),
        channels * in_height * in_width,
        "planes of {in_height}x{in_width}"
    );
    if height == 0 || width == 0 || in_height == 0 || in_width == 0 {
        return vec![0.0; channels * height * width];
    }
    let horizontal;
    let planes = match width != in_width {
        true => {
            let windows = FloatWindows::torch(in_width, width, filter);
            horizontal = planes
                .chunks_exact(in_width)
                .flat_map(|row| (0..width).map(|x| windows.sample(x, |i| row[i])))
                .collect::<Vec<f32>>();
            &horizontal
        }
        false => planes,
    };
    if height == in_height {
        return planes.to_vec();
    }
    let windows = FloatWindows::torch(in_height, height, filter);
    let plane_len = in_height * width;
    planes
        .chunks_exact(plane_len)
        .flat_map(|plane| {
            let windows = &windows;
            (0..height).flat_map(move |y| {
                (0..width).map(move |x| windows.sample(y, |i| plane[i * width + x]))
            })
        })
        .collect()
}

/// f32 weights resampling one axis, as ATen computes them for float tensors
/// (`_compute_indices_min_size_weights_aa` with `scalar_t = float`).
struct FloatWindows {
    /// Per output sample: first input index and weights.
    windows: Vec<(usize, Vec<f32>)>,
}

impl FloatWindows {
    fn torch(in_size: usize, out_size: usize, filter: TorchFilter) -> Self {
        let scale = in_size as f32 / out_size as f32;
        let (kernel, interp_size) = filter.aten_kernel();
        let interp_size = interp_size as f32;
        let support = match scale >= 1.0 {
            true => interp_size * 0.5 * scale,
            false => interp_size * 0.5,
        };
        let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let windows = (0..out_size)
            .map(|i| {
                let center = scale * (i as f32 + 0.5);
                // `as i64` truncates toward zero like C++'s `static_cast<int64_t>`.
                let first = ((center - support + 0.5) as i64).max(0);
                let end = ((center + support + 0.5) as i64).min(in_size as i64);
                let mut weights: Vec<f32> = (first..end)
                    .map(|j| kernel(f64::from((j as f32 - center + 0.5) * inv_scale)) as f32)
                    .collect();
                let total: f32 = weights.iter().sum();
                if total != 0.0 {
                    weights.iter_mut().for_each(|w| *w /= total);
                }
                (first as usize, weights)
            })
            .collect();
        Self { windows }
    }

    /// Output sample `i`: `input(first + j) * weight[j]` summed in order, in f32.
    fn sample(&self, i: usize, input: impl Fn(usize) -> f32) -> f32 {
        let (first, weights) = &self.windows[i];
        weights
            .iter()
            .enumerate()
            .fold(0.0, |sum, (j, w)| sum + input(first + j) * w)
    }
}

/// ATen's antialiasing triangle (`HelperInterpLinear::aa_filter`).
fn torch_bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// ATen's antialiasing cubic (`HelperInterpCubic::aa_filter`, `a = -0.5` as Pillow's),
/// through `cubic_convolution1` and `cubic_convolution2` (its own order of operations).
fn torch_bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// torch's `nearest-exact` (`nearest_neighbor_exact_compute_source_index`): the scale
/// `in / out` in f32, `(i + 0.5) * scale` in f64, then `floorf` of it as f32.
fn resize_nearest_exact(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let indices = |in_size: u32, out_size: u32| -> Vec<u32> {
        let scale = in_size as f32 / out_size as f32;
        (0..out_size)
            .map(|i| {
                let position = ((i as f64 + 0.5) * scale as f64) as f32;
                (position.floor() as u32).min(in_size - 1)
            })
            .collect()
    };
    let (xs, ys) = (indices(src.width(), width), indices(src.height(), height));
    RgbImage::from_fn(width, height, |x, y| {
        *src.get_pixel(xs[x as usize], ys[y as usize])
    })
}

/// A resampling kernel with its support radius (in input pixels, before downscale widening).
struct Filter {
    kernel: fn(f64) -> f64,
    support: f64,
}

fn box_filter(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_filter(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        1.0
    } else if x >= 1.0 {
        0.0
    } else {
        let x = x * std::f64::consts::PI;
        // Pillow writes these constants as C `float` literals, promoted to double.
        x.sin() / x * (f64::from(0.54_f32) + f64::from(0.46_f32) * x.cos())
    }
}

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos_filter(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Fixed-point weights resampling one axis of length `in_size` to `out_size` samples.
struct Coefficients {
    /// Per output sample: first contributing input index and number of inputs.
    bounds: Vec<(usize, usize)>,
    /// Row-major `out_size x ksize` weights, zero past each window's length.
    weights: Vec<i32>,
    /// Maximum window length (the stride of `weights`).
    ksize: usize,
    /// Fractional bits of the fixed-point weights.
    precision: u32,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
    fn new(in_size: u32, out_size: u32, filter: &Filter) -> Self {
        // Pillow passes the source extent as a C float.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        // Widen the kernel when downscaling (antialiasing).
        let filterscale = scale.max(1.0);
        let support = filter.support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let in_size = in_size as i32;

        let mut bounds = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0; out_size as usize * ksize];
        let mut window = Vec::with_capacity(ksize);
        for (xx, out) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // `as i32` truncates toward zero like C's `(int)` cast.
            let xmin = ((center - support + 0.5) as i32).max(0);
            let xmax = ((center + support + 0.5) as i32).min(in_size);
            let len = (xmax - xmin).max(0) as usize;

            window.clear();
            window.extend(
                (xmin..xmin + len as i32)
                    .map(|x| (filter.kernel)((f64::from(x) - center + 0.5) * inv_filterscale)),
            );
            let total: f64 = window.iter().sum();
            for (o, &w) in out.iter_mut().zip(&window) {
                let w = if total != 0.0 { w / total } else { w };
                *o = to_fixed(w, PRECISION_BITS);
            }
            bounds.push((xmin as usize, len));
        }
        Self {
            bounds,
            weights,
            ksize,
            precision: PRECISION_BITS,
        }
    }

    /// ATen's `_compute_index_ranges_int16_weights` (antialiased, `align_corners=False`):
    /// the window and weights as Pillow's but from a scale of `in / out` in double, with
    /// `filter`'s ATen form; then the precision is the largest (below 22 bits) at which the
    /// axis's largest weight still fits 15 bits, and the weights round to it.
    fn torch(in_size: u32, out_size: u32, filter: TorchFilter) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let (kernel, interp_size) = filter.aten_kernel();
        let support = match scale >= 1.0 {
            true => interp_size * 0.5 * scale,
            false => interp_size * 0.5,
        };
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let in_size = i64::from(in_size);

        let mut bounds = Vec::with_capacity(out_size as usize);
        let mut normalized = vec![0f64; out_size as usize * ksize];
        let mut largest = 0f64;
        for (i, out) in normalized.chunks_exact_mut(ksize).enumerate() {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero like C++'s `static_cast<int64_t>`.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let len = (((center + support + 0.5) as i64).min(in_size) - xmin).clamp(0, ksize as i64)
                as usize;
            let mut total = 0.0;
            for (j, o) in out[..len].iter_mut().enumerate() {
                *o = kernel((j as f64 + xmin as f64 - center + 0.5) * inv_scale);
                total += *o;
            }
            if total != 0.0 {
                for o in &mut out[..len] {
                    *o /= total;
                    largest = largest.max(*o);
                }
            }
            bounds.push((xmin as usize, len));
        }
        let mut precision = 0;
        while precision < 22 && (0.5 + largest * f64::from(1u32 << (precision + 1))) < 32768.0 {
            precision += 1;
        }
        Self {
            bounds,
            weights: normalized.iter().map(|&w| to_fixed(w, precision)).collect(),
            ksize,
            precision,
        }
    }

    /// The first input index and the weights of output sample `i`.
    fn window(&self, i: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[i];
        (start, &self.weights[i * self.ksize..][..len])
    }

    /// The range of input indices used by any output sample.
    fn input_range(&self) -> std::ops::Range<usize> {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1);
        first..last
    }
}

/// Rounds a normalized weight to `precision` fractional bits, half away from zero.
fn to_fixed(w: f64, precision: u32) -> i32 {
    let scaled = w * f64::from(1u32 << precision);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// The rounding bias every accumulator of `precision` fractional bits starts from.
fn rounding(precision: u32) -> i32 {
    1 << precision.saturating_sub(1)
}

/// Converts a fixed-point accumulator to a byte, saturating (Pillow's `clip8`).
fn clip8(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Separable convolution resize, as Pillow 13's `ImagingResampleInner`.
///
/// A pass is skipped when its dimension is unchanged. The horizontal pass
/// normally runs first, on just the rows the vertical pass reads; but when the
/// height shrinks by more than twice as many pixels as the width, the vertical
/// pass runs first (Pillow >= 13; earlier versions always went horizontal
/// first). The order matters because the intermediate image is rounded to 8 bits.
fn resize_convolve(src: &RgbImage, width: u32, height: u32, filter: &Filter) -> RgbImage {
    let (in_width, in_height) = src.dimensions();
    let horizontal = (width != in_width).then(|| Coefficients::new(in_width, width, filter));
    let vertical = (height != in_height).then(|| Coefficients::new(in_height, height, filter));
    let shrink_x = i64::from(in_width) - i64::from(width);
    let shrink_y = i64::from(in_height) - i64::from(height);
    let vertical_first = shrink_y > 0 && shrink_y > 2 * shrink_x;

    let raw = src.as_raw();
    let in_row_len = in_width as usize * CHANNELS;
    let out = match (&horizontal, &vertical) {
        (h, Some(v)) if vertical_first => {
            let tmp = resample_vertical(raw, in_row_len, 0, v);
            match h {
                Some(h) => resample_horizontal(&tmp, in_row_len, h),
                None => tmp,
            }
        }
        (Some(h), v) => {
            let rows = v
                .as_ref()
                .map_or(0..in_height as usize, Coefficients::input_range);
            let tmp = resample_horizontal(
                &raw[rows.start * in_row_len..rows.end * in_row_len],
                in_row_len,
                h,
            );
            match v {
                Some(v) => resample_vertical(&tmp, width as usize * CHANNELS, rows.start, v),
                None => tmp,
            }
        }
        (None, Some(v)) => resample_vertical(raw, in_row_len, 0, v),
        (None, None) => raw.clone(),
    };
    RgbImage::from_raw(width, height, out).expect("buffer matches the output size")
}

/// Resamples each row of `src` (rows of `in_row_len` bytes) to the output
/// columns described by `coeffs`.
fn resample_horizontal(src: &[u8], in_row_len: usize, coeffs: &Coefficients) -> Vec<u8> {
    let out_row_len = coeffs.bounds.len() * CHANNELS;
    let mut out = vec![0; src.len() / in_row_len * out_row_len];
    out.par_chunks_mut(out_row_len)
        .zip(src.par_chunks(in_row_len))
        .for_each(|(out_row, in_row)| {
            for (xx, out_px) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
                let (start, weights) = coeffs.window(xx);
                let mut acc = [rounding(coeffs.precision); CHANNELS];
                let window = &in_row[start * CHANNELS..][..weights.len() * CHANNELS];
                for (px, &k) in window.chunks_exact(CHANNELS).zip(weights) {
                    acc[0] += i32::from(px[0]) * k;
                    acc[1] += i32::from(px[1]) * k;
                    acc[2] += i32::from(px[2]) * k;
                }
                for (o, &a) in out_px.iter_mut().zip(&acc) {
                    *o = clip8(a, coeffs.precision);
                }
            }
        });
    out
}

/// Resamples the columns of `src` (rows of `row_len` bytes whose first row is
/// input row `first_row`) to the output rows described by `coeffs`.
fn resample_vertical(
    src: &[u8],
    row_len: usize,
    first_row: usize,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let mut out = vec![0; coeffs.bounds.len() * row_len];
    out.par_chunks_mut(row_len).enumerate().for_each_init(
        || vec![0i32; row_len],
        |acc, (yy, out_row)| {
            let (start, weights) = coeffs.window(yy);
            acc.fill(rounding(coeffs.precision));
            // Integer sums are exact, so accumulating row by row (cache
            // friendly) gives the same result as Pillow's per-pixel loop.
            for (y, &k) in (start - first_row..).zip(weights) {
                let in_row = &src[y * row_len..][..row_len];
                for (a, &v) in acc.iter_mut().zip(in_row) {
                    *a += i32::from(v) * k;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                *o = clip8(a, coeffs.precision);
            }
        },
    );
    out
}

/// Nearest-neighbour resize as Pillow's affine scaling (`ImagingScaleAffine`):
/// output pixel `i` samples input `floor((i + 0.5) * in / out)`, the position
/// being accumulated step by step in `f64` exactly as Pillow does.
fn resize_nearest(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let xs = nearest_indices(src.width(), width);
    let ys = nearest_indices(src.height(), height);
    let in_row_len = src.width() as usize * CHANNELS;
    let out_row_len = width as usize * CHANNELS;
    let mut out = vec![0; height as usize * out_row_len];
    out.par_chunks_mut(out_row_len)
        .zip(ys.par_iter())
        .for_each(|(out_row, &y)| {
            // Pillow leaves pixels mapped outside the source black.
            let Some(y) = y else { return };
            let in_row = &src.as_raw()[y * in_row_len..][..in_row_len];
            for (out_px, &x) in out_row.chunks_exact_mut(CHANNELS).zip(&xs) {
                if let Some(x) = x {
                    out_px.copy_from_slice(&in_row[x * CHANNELS..][..CHANNELS]);
                }
            }
        });
    RgbImage::from_raw(width, height, out).expect("buffer matches the output size")
}

/// Source index sampled by each of `out_size` outputs, `None` when outside the source.
fn nearest_indices(in_size: u32, out_size: u32) -> Vec<Option<usize>> {
    let step = f64::from(in_size) / f64::from(out_size);
    let mut pos = step * 0.5;
    (0..out_size)
        .map(|_| {
            // Pillow's COORD: negative positions map to -1, others truncate.
            let index = (pos >= 0.0)
                .then_some(pos as usize)
                .filter(|&i| i < in_size as usize);
            pos += step;
            index
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_planes_resize_keeps_constants_and_gives_zeros_for_empty_images() {
        for filter in [
            TorchFilter::Bilinear,
            TorchFilter::Bicubic,
            TorchFilter::Lanczos,
        ] {
            // Weights of every window sum to one: a constant plane stays constant.
            let planes = vec![0.25f32; 3 * 37 * 53];
            let out = resize_planes_torch(&planes, 3, (37, 53), (224, 20), filter);
            assert_eq!(out.len(), 3 * 224 * 20);
            assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6), "{filter:?}");
            // A fuzzer's 2x0 farbfeld: zeros of the target size, three channels.
            let empty = resize_planes_torch(&[], 3, (0, 2), (224, 224), filter);
            assert_eq!(empty, vec![0.0; 3 * 224 * 224]);
        }
    }

    const ALL: [Resample; 6] = [
        Resample::Nearest,
        Resample::Box,
        Resample::Bilinear,
        Resample::Hamming,
        Resample::Bicubic,
        Resample::Lanczos,
    ];

    /// A deterministic pseudo-random image.
    fn noise(width: u32, height: u32) -> RgbImage {
        let mut state = 0x2545_f491_u32;
        RgbImage::from_fn(width, height, |_, _| {
            image::Rgb(std::array::from_fn(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            }))
        })
    }

    #[test]
    fn pil_codes() {
        let codes: Vec<_> = (0..7).map(Resample::from_pil_code).collect();
        assert_eq!(
            codes,
            [
                Some(Resample::Nearest),
                Some(Resample::Lanczos),
                Some(Resample::Bilinear),
                Some(Resample::Bicubic),
                Some(Resample::Box),
                Some(Resample::Hamming),
                None,
            ]
        );
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([12, 200, 255]));
        for filter in ALL {
            for (w, h) in [(10, 7), (37, 50), (64, 5), (3, 23)] {
                let out = resize_rgb8(&src, w, h, filter);
                assert_eq!(out.dimensions(), (w, h));
                assert!(
                    out.pixels().all(|p| p.0 == [12, 200, 255]),
                    "{filter:?} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn identity_size_returns_same_pixels() {
        let src = noise(19, 11);
        for filter in ALL {
            assert_eq!(resize_rgb8(&src, 19, 11, filter), src);
        }
    }

    #[test]
    fn nearest_2x_downscale_picks_odd_pixels() {
        let src = noise(8, 6);
        let out = resize_rgb8(&src, 4, 3, Resample::Nearest);
        for (x, y, p) in out.enumerate_pixels() {
            assert_eq!(p, src.get_pixel(2 * x + 1, 2 * y + 1));
        }
    }

    #[test]
    fn empty_sizes_give_empty_or_black_images() {
        let src = noise(5, 4);
        assert_eq!(
            resize_rgb8(&src, 0, 3, Resample::Bicubic).dimensions(),
            (0, 3)
        );
        let black = resize_rgb8(&RgbImage::new(0, 0), 2, 2, Resample::Bilinear);
        assert!(black.pixels().all(|p| p.0 == [0; 3]));
    }

    /// Expected values produced by Pillow 13.0.0:
    /// `Image.frombytes("RGB", (5, 7), bytes(PILLOW_SRC)).resize(size, f).tobytes()`.
    /// The 4x2 and 7x3 cases take Pillow's vertical-first pass order, the 2x5
    /// ones the horizontal-first order; all but one convolution case depend on it.
    #[test]
    fn matches_pillow_on_tiny_images() {
        let src = RgbImage::from_raw(5, 7, PILLOW_SRC.to_vec()).unwrap();
        for (filter, (w, h), expected) in PILLOW_CASES {
            let out = resize_rgb8(&src, w, h, filter);
            assert_eq!(out.as_raw().as_slice(), expected, "{filter:?} {w}x{h}");
        }
    }

    /// Expected values produced by torchvision 0.29.2 on torch 2.15.0 (AVX2):
    /// `F.resize(uint8 CHW of PILLOW_SRC, [h, w], interpolation, antialias=True)`.
    #[test]
    fn matches_torch_on_tiny_images() {
        let src = RgbImage::from_raw(5, 7, PILLOW_SRC.to_vec()).unwrap();
        for (how, (w, h), expected) in TORCH_CASES {
            let out = resize_rgb8_torch(&src, w, h, how);
            assert_eq!(out.as_raw().as_slice(), expected, "{how:?} {w}x{h}");
        }
    }

    #[test]
    fn torch_and_pillow_differ_where_their_precision_does() {
        // The same filter, 16-bit weights against Pillow's 22-bit ones: a step apart here.
        let src = RgbImage::from_raw(5, 7, PILLOW_SRC.to_vec()).unwrap();
        let torch = resize_rgb8_torch(&src, 4, 2, TorchResize::Antialiased(TorchFilter::Bilinear));
        let pillow = resize_rgb8(&src, 4, 2, Resample::Bilinear);
        let apart: Vec<i32> = torch
            .as_raw()
            .iter()
            .zip(pillow.as_raw())
            .map(|(&a, &b)| a as i32 - b as i32)
            .filter(|d| *d != 0)
            .collect();
        assert!(
            !apart.is_empty() && apart.iter().all(|d| d.abs() == 1),
            "{apart:?}"
        );
    }

    const TORCH_CASES: [(TorchResize, (u32, u32), &[u8]); 16] = [
        (
            TorchResize::Antialiased(TorchFilter::Bilinear),
            (4, 2),
            &[
                146, 97, 155, 111, 130, 112, 100, 75, 144, 151, 126, 133, 114, 109, 119, 195, 79,
                105, 170, 49, 147, 83, 99, 128,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bilinear),
            (2, 5),
            &[
                132, 130, 150, 115, 120, 145, 113, 103, 118, 134, 98, 122, 131, 107, 128, 113, 82,
                148, 165, 80, 111, 135, 66, 161, 179, 88, 106, 151, 69, 95,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bilinear),
            (7, 3),
            &[
                184, 81, 203, 140, 112, 125, 98, 142, 100, 72, 158, 184, 79, 75, 136, 138, 94, 121,
                212, 162, 128, 109, 99, 146, 119, 112, 111, 145, 108, 101, 189, 74, 140, 132, 40,
                157, 100, 78, 153, 86, 148, 140, 85, 118, 135, 158, 105, 93, 214, 78, 89, 216, 31,
                160, 175, 60, 131, 117, 81, 117, 63, 92, 114,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bilinear),
            (11, 13),
            &[
                139, 74, 229, 158, 91, 199, 204, 134, 125, 220, 168, 73, 113, 164, 111, 6, 160,
                149, 51, 105, 161, 97, 49, 173, 136, 99, 175, 173, 175, 175, 188, 205, 175, 167,
                81, 235, 168, 96, 206, 169, 133, 133, 158, 162, 83, 94, 159, 123, 31, 156, 164, 59,
                103, 159, 88, 49, 155, 131, 95, 147, 177, 166, 138, 196, 195, 135, 215, 94, 246,
                184, 105, 218, 108, 131, 147, 48, 151, 99, 61, 150, 145, 74, 149, 190, 73, 99, 157,
                72, 49, 123, 122, 89, 98, 184, 151, 74, 209, 176, 65, 205, 82, 180, 174, 88, 159,
                98, 102, 106, 44, 116, 76, 78, 137, 141, 112, 159, 205, 93, 107, 148, 74, 54, 91,
                127, 76, 91, 198, 117, 105, 227, 133, 110, 172, 60, 83, 154, 61, 71, 110, 62, 43,
                83, 72, 38, 115, 124, 126, 148, 176, 214, 115, 119, 137, 82, 62, 60, 137, 61, 102,
                216, 74, 173, 247, 80, 202, 113, 105, 140, 109, 106, 130, 101, 108, 103, 104, 109,
                86, 147, 111, 105, 190, 113, 124, 141, 75, 123, 92, 36, 123, 102, 73, 142, 127,
                128, 165, 137, 150, 174, 50, 161, 223, 61, 163, 212, 89, 168, 184, 123, 160, 148,
                178, 99, 82, 233, 38, 17, 168, 21, 110, 102, 4, 202, 59, 89, 187, 21, 198, 144, 6,
                242, 127, 100, 78, 135, 112, 87, 127, 141, 111, 105, 168, 121, 93, 182, 79, 117,
                197, 35, 142, 172, 22, 174, 148, 9, 205, 98, 56, 181, 43, 118, 141, 21, 142, 125,
                134, 21, 67, 148, 34, 60, 182, 69, 43, 206, 90, 48, 188, 61, 147, 170, 31, 246,
                176, 26, 225, 183, 22, 204, 130, 36, 171, 63, 56, 136, 36, 63, 121, 73, 125, 115,
                97, 122, 104, 157, 115, 76, 205, 100, 69, 202, 58, 147, 199, 15, 224, 175, 48, 199,
                153, 82, 174, 116, 94, 143, 76, 101, 111, 60, 104, 98, 43, 182, 151, 73, 169, 137,
                147, 137, 101, 208, 102, 82, 216, 58, 133, 223, 12, 184, 181, 61, 159, 140, 110,
                135, 111, 121, 116, 85, 122, 99, 75, 123, 92, 89, 121, 158, 113, 115, 142, 173, 98,
                103, 223, 81, 74, 228, 63, 85, 234, 44, 97, 203, 53, 84, 171, 62, 71, 130, 71, 90,
                85, 82, 116, 67, 86, 126, 115, 87, 162, 136, 84, 145, 188, 76, 104, 231, 69, 69,
                235, 66, 58, 240, 62, 47, 215, 48, 41, 189, 34, 35, 140, 43, 75, 85, 59, 126, 63,
                65, 146,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bicubic),
            (4, 2),
            &[
                149, 94, 158, 107, 140, 108, 93, 69, 149, 158, 131, 134, 105, 112, 117, 206, 77,
                101, 177, 41, 152, 69, 100, 125,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bicubic),
            (2, 5),
            &[
                132, 131, 157, 112, 125, 144, 110, 104, 120, 137, 99, 121, 133, 105, 125, 111, 80,
                150, 166, 80, 112, 131, 64, 168, 180, 90, 107, 152, 68, 89,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bicubic),
            (7, 3),
            &[
                190, 79, 216, 144, 112, 123, 91, 152, 88, 67, 163, 181, 65, 63, 133, 141, 89, 117,
                225, 174, 129, 110, 92, 138, 112, 110, 101, 143, 110, 93, 192, 74, 148, 134, 31,
                164, 94, 73, 156, 83, 149, 141, 73, 121, 141, 159, 112, 90, 231, 77, 81, 219, 26,
                155, 184, 58, 131, 112, 85, 113, 50, 94, 111,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Bicubic),
            (11, 13),
            &[
                119, 63, 243, 151, 84, 205, 233, 137, 116, 250, 175, 61, 115, 180, 97, 0, 161, 145,
                26, 96, 166, 99, 39, 179, 145, 90, 185, 178, 184, 185, 193, 224, 186, 161, 73, 252,
                168, 92, 217, 186, 137, 128, 173, 170, 74, 90, 174, 114, 24, 156, 161, 40, 94, 167,
                87, 39, 161, 136, 87, 152, 182, 177, 140, 203, 215, 135, 239, 92, 255, 197, 105,
                235, 98, 135, 147, 28, 158, 95, 45, 162, 145, 73, 147, 191, 67, 90, 169, 65, 39,
                125, 119, 82, 89, 190, 161, 59, 222, 193, 45, 237, 77, 184, 192, 83, 162, 83, 94,
                93, 15, 112, 66, 61, 149, 151, 112, 164, 217, 88, 111, 160, 63, 50, 77, 125, 66,
                70, 217, 114, 95, 251, 133, 103, 183, 55, 77, 160, 54, 62, 106, 47, 20, 77, 63, 23,
                115, 134, 138, 147, 181, 221, 110, 131, 144, 72, 60, 41, 135, 50, 85, 232, 67, 185,
                255, 73, 225, 106, 110, 141, 102, 109, 129, 91, 107, 100, 100, 107, 83, 159, 118,
                97, 197, 117, 113, 147, 72, 114, 82, 33, 115, 91, 67, 143, 131, 136, 178, 141, 160,
                193, 44, 160, 229, 56, 164, 217, 81, 178, 193, 122, 165, 150, 193, 101, 64, 233,
                38, 17, 182, 0, 103, 101, 0, 212, 49, 85, 202, 15, 211, 142, 0, 255, 118, 96, 64,
                141, 110, 79, 131, 142, 119, 105, 173, 131, 93, 192, 82, 108, 197, 29, 135, 186, 0,
                185, 157, 0, 224, 94, 47, 196, 22, 126, 138, 0, 154, 114, 134, 5, 62, 150, 22, 52,
                190, 68, 20, 213, 92, 35, 190, 64, 154, 166, 31, 255, 182, 19, 252, 193, 17, 208,
                136, 31, 169, 56, 50, 132, 21, 58, 115, 56, 134, 114, 86, 130, 99, 158, 125, 57,
                212, 103, 58, 212, 46, 160, 196, 9, 246, 178, 42, 232, 151, 94, 182, 113, 107, 140,
                73, 103, 102, 56, 103, 85, 18, 203, 163, 56, 187, 143, 142, 152, 95, 213, 105, 78,
                232, 43, 137, 225, 8, 188, 185, 55, 172, 133, 123, 135, 102, 138, 111, 82, 131, 92,
                74, 129, 83, 78, 124, 169, 107, 116, 150, 174, 99, 103, 229, 79, 70, 243, 60, 77,
                237, 46, 86, 212, 49, 71, 174, 59, 59, 126, 70, 83, 80, 81, 120, 59, 86, 135, 112,
                79, 171, 135, 76, 152, 192, 70, 106, 237, 66, 65, 248, 69, 45, 242, 67, 33, 227,
                45, 20, 197, 23, 20, 140, 32, 69, 78, 54, 136, 50, 63, 163,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Lanczos),
            (4, 2),
            &[
                148, 91, 153, 106, 149, 108, 90, 67, 157, 156, 128, 132, 101, 115, 112, 211, 75,
                99, 182, 38, 155, 64, 101, 124,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Lanczos),
            (2, 5),
            &[
                128, 129, 163, 108, 128, 139, 104, 105, 122, 135, 103, 117, 140, 97, 118, 115, 77,
                151, 169, 79, 120, 132, 64, 172, 182, 93, 108, 156, 69, 84,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Lanczos),
            (7, 3),
            &[
                192, 79, 222, 147, 106, 123, 83, 163, 81, 65, 168, 177, 50, 57, 132, 148, 86, 110,
                233, 181, 135, 113, 91, 136, 104, 109, 96, 143, 113, 91, 194, 73, 155, 139, 32,
                173, 88, 75, 153, 85, 148, 138, 67, 120, 147, 157, 117, 88, 248, 72, 78, 219, 21,
                154, 194, 51, 141, 106, 89, 113, 42, 93, 109,
            ],
        ),
        (
            TorchResize::Antialiased(TorchFilter::Lanczos),
            (11, 13),
            &[
                95, 55, 249, 156, 82, 195, 247, 126, 114, 255, 177, 52, 124, 197, 81, 0, 163, 144,
                1, 84, 173, 93, 36, 179, 160, 90, 188, 182, 178, 196, 191, 234, 198, 153, 70, 255,
                173, 95, 222, 193, 136, 137, 170, 178, 73, 86, 191, 100, 22, 153, 158, 22, 77, 179,
                81, 33, 168, 144, 90, 149, 181, 178, 135, 201, 233, 126, 237, 91, 255, 193, 108,
                237, 106, 136, 152, 30, 166, 95, 38, 175, 132, 71, 143, 185, 63, 75, 184, 63, 34,
                136, 121, 84, 87, 184, 163, 57, 221, 212, 41, 255, 74, 176, 197, 73, 144, 77, 78,
                73, 0, 107, 61, 46, 157, 164, 114, 170, 235, 88, 115, 175, 57, 52, 66, 130, 58, 45,
                227, 96, 83, 255, 126, 110, 195, 58, 86, 162, 47, 53, 105, 36, 5, 73, 65, 25, 115,
                142, 154, 147, 182, 227, 104, 139, 147, 70, 63, 39, 138, 42, 74, 232, 60, 176, 255,
                75, 240, 96, 120, 147, 89, 117, 129, 82, 108, 105, 109, 109, 83, 176, 125, 88, 203,
                118, 100, 150, 81, 101, 78, 38, 110, 82, 72, 149, 127, 140, 187, 141, 169, 209, 46,
                154, 226, 53, 168, 221, 71, 181, 206, 127, 165, 143, 203, 108, 45, 233, 38, 17,
                194, 0, 102, 106, 0, 211, 38, 95, 210, 11, 209, 148, 0, 255, 106, 97, 53, 151, 112,
                78, 137, 140, 121, 116, 176, 138, 95, 194, 93, 90, 198, 25, 123, 202, 0, 183, 168,
                0, 237, 84, 48, 202, 9, 127, 139, 0, 163, 98, 129, 5, 70, 153, 23, 40, 190, 66, 5,
                214, 93, 34, 188, 70, 158, 165, 32, 255, 186, 12, 255, 196, 18, 214, 135, 34, 156,
                61, 47, 129, 18, 58, 114, 50, 131, 113, 89, 130, 78, 156, 129, 34, 219, 97, 53,
                219, 36, 174, 189, 7, 255, 175, 38, 255, 154, 98, 198, 112, 116, 128, 78, 101, 97,
                60, 91, 80, 9, 207, 176, 54, 194, 146, 131, 163, 99, 219, 100, 80, 251, 30, 128,
                228, 10, 177, 188, 51, 175, 135, 119, 134, 94, 146, 103, 79, 137, 92, 76, 128, 85,
                67, 133, 179, 103, 125, 154, 165, 107, 110, 233, 78, 71, 255, 55, 72, 239, 46, 82,
                217, 48, 67, 175, 62, 55, 118, 77, 82, 79, 86, 118, 59, 91, 138, 115, 67, 172, 143,
                65, 150, 192, 63, 109, 241, 65, 61, 253, 75, 39, 240, 70, 29, 235, 42, 6, 206, 15,
                13, 137, 23, 75, 76, 46, 138, 42, 62, 174,
            ],
        ),
        (
            TorchResize::NearestExact,
            (4, 2),
            &[
                229, 98, 249, 10, 148, 95, 66, 39, 106, 213, 171, 45, 30, 199, 149, 202, 119, 72,
                122, 136, 147, 77, 133, 82,
            ],
        ),
        (
            TorchResize::NearestExact,
            (2, 5),
            &[
                241, 169, 65, 106, 38, 175, 81, 55, 14, 76, 52, 39, 112, 172, 161, 89, 1, 221, 210,
                94, 25, 189, 12, 204, 230, 70, 71, 184, 31, 34,
            ],
        ),
        (
            TorchResize::NearestExact,
            (7, 3),
            &[
                229, 98, 249, 10, 148, 95, 10, 148, 95, 86, 147, 198, 66, 39, 106, 66, 39, 106,
                213, 171, 45, 50, 161, 223, 112, 172, 161, 112, 172, 161, 233, 38, 17, 89, 1, 221,
                89, 1, 221, 6, 242, 127, 30, 199, 149, 202, 119, 72, 202, 119, 72, 220, 3, 209,
                122, 136, 147, 122, 136, 147, 77, 133, 82,
            ],
        ),
        (
            TorchResize::NearestExact,
            (11, 13),
            &[
                139, 74, 229, 139, 74, 229, 241, 169, 65, 241, 169, 65, 6, 160, 149, 6, 160, 149,
                6, 160, 149, 106, 38, 175, 106, 38, 175, 188, 205, 175, 188, 205, 175, 139, 74,
                229, 139, 74, 229, 241, 169, 65, 241, 169, 65, 6, 160, 149, 6, 160, 149, 6, 160,
                149, 106, 38, 175, 106, 38, 175, 188, 205, 175, 188, 205, 175, 229, 98, 249, 229,
                98, 249, 10, 148, 95, 10, 148, 95, 86, 147, 198, 86, 147, 198, 86, 147, 198, 66,
                39, 106, 66, 39, 106, 213, 171, 45, 213, 171, 45, 229, 98, 249, 229, 98, 249, 10,
                148, 95, 10, 148, 95, 86, 147, 198, 86, 147, 198, 86, 147, 198, 66, 39, 106, 66,
                39, 106, 213, 171, 45, 213, 171, 45, 167, 57, 69, 167, 57, 69, 81, 55, 14, 81, 55,
                14, 153, 178, 215, 153, 178, 215, 153, 178, 215, 76, 52, 39, 76, 52, 39, 250, 72,
                215, 250, 72, 215, 167, 57, 69, 167, 57, 69, 81, 55, 14, 81, 55, 14, 153, 178, 215,
                153, 178, 215, 153, 178, 215, 76, 52, 39, 76, 52, 39, 250, 72, 215, 250, 72, 215,
                50, 161, 223, 50, 161, 223, 112, 172, 161, 112, 172, 161, 233, 38, 17, 233, 38, 17,
                233, 38, 17, 89, 1, 221, 89, 1, 221, 6, 242, 127, 6, 242, 127, 143, 6, 60, 143, 6,
                60, 210, 94, 25, 210, 94, 25, 166, 33, 249, 166, 33, 249, 166, 33, 249, 189, 12,
                204, 189, 12, 204, 33, 57, 124, 33, 57, 124, 143, 6, 60, 143, 6, 60, 210, 94, 25,
                210, 94, 25, 166, 33, 249, 166, 33, 249, 166, 33, 249, 189, 12, 204, 189, 12, 204,
                33, 57, 124, 33, 57, 124, 30, 199, 149, 30, 199, 149, 202, 119, 72, 202, 119, 72,
                220, 3, 209, 220, 3, 209, 220, 3, 209, 122, 136, 147, 122, 136, 147, 77, 133, 82,
                77, 133, 82, 30, 199, 149, 30, 199, 149, 202, 119, 72, 202, 119, 72, 220, 3, 209,
                220, 3, 209, 220, 3, 209, 122, 136, 147, 122, 136, 147, 77, 133, 82, 77, 133, 82,
                115, 87, 162, 115, 87, 162, 230, 70, 71, 230, 70, 71, 240, 62, 47, 240, 62, 47,
                240, 62, 47, 184, 31, 34, 184, 31, 34, 63, 65, 146, 63, 65, 146, 115, 87, 162, 115,
                87, 162, 230, 70, 71, 230, 70, 71, 240, 62, 47, 240, 62, 47, 240, 62, 47, 184, 31,
                34, 184, 31, 34, 63, 65, 146, 63, 65, 146,
            ],
        ),
    ];

    const PILLOW_SRC: [u8; 105] = [
        139, 74, 229, 241, 169, 65, 6, 160, 149, 106, 38, 175, 188, 205, 175, 229, 98, 249, 10,
        148, 95, 86, 147, 198, 66, 39, 106, 213, 171, 45, 167, 57, 69, 81, 55, 14, 153, 178, 215,
        76, 52, 39, 250, 72, 215, 50, 161, 223, 112, 172, 161, 233, 38, 17, 89, 1, 221, 6, 242,
        127, 143, 6, 60, 210, 94, 25, 166, 33, 249, 189, 12, 204, 33, 57, 124, 30, 199, 149, 202,
        119, 72, 220, 3, 209, 122, 136, 147, 77, 133, 82, 115, 87, 162, 230, 70, 71, 240, 62, 47,
        184, 31, 34, 63, 65, 146,
    ];
    const PILLOW_CASES: [(Resample, (u32, u32), &[u8]); 18] = [
        (
            Resample::Nearest,
            (4, 2),
            &[
                229, 98, 249, 10, 148, 95, 66, 39, 106, 213, 171, 45, 30, 199, 149, 202, 119, 72,
                122, 136, 147, 77, 133, 82,
            ],
        ),
        (
            Resample::Nearest,
            (2, 5),
            &[
                241, 169, 65, 106, 38, 175, 81, 55, 14, 76, 52, 39, 112, 172, 161, 89, 1, 221, 210,
                94, 25, 189, 12, 204, 230, 70, 71, 184, 31, 34,
            ],
        ),
        (
            Resample::Nearest,
            (7, 3),
            &[
                229, 98, 249, 10, 148, 95, 10, 148, 95, 86, 147, 198, 66, 39, 106, 66, 39, 106,
                213, 171, 45, 50, 161, 223, 112, 172, 161, 112, 172, 161, 233, 38, 17, 89, 1, 221,
                89, 1, 221, 6, 242, 127, 30, 199, 149, 202, 119, 72, 202, 119, 72, 220, 3, 209,
                122, 136, 147, 122, 136, 147, 77, 133, 82,
            ],
        ),
        (
            Resample::Box,
            (4, 2),
            &[
                146, 98, 193, 116, 134, 115, 84, 33, 135, 164, 173, 141, 96, 97, 124, 212, 64, 112,
                165, 60, 128, 58, 85, 117,
            ],
        ),
        (
            Resample::Box,
            (2, 5),
            &[
                129, 134, 148, 147, 122, 175, 121, 114, 140, 152, 84, 102, 132, 124, 134, 48, 122,
                174, 162, 76, 127, 106, 85, 140, 195, 73, 93, 124, 48, 90,
            ],
        ),
        (
            Resample::Box,
            (7, 3),
            &[
                184, 86, 239, 126, 159, 80, 126, 159, 80, 46, 154, 174, 86, 39, 141, 86, 39, 141,
                201, 188, 110, 120, 75, 117, 134, 107, 67, 134, 107, 67, 184, 83, 160, 118, 22,
                155, 118, 22, 155, 96, 124, 155, 73, 143, 156, 216, 95, 72, 216, 95, 72, 230, 33,
                128, 153, 84, 91, 153, 84, 91, 70, 99, 114,
            ],
        ),
        (
            Resample::Bilinear,
            (4, 2),
            &[
                146, 97, 154, 111, 130, 112, 100, 75, 144, 151, 126, 134, 114, 109, 119, 196, 79,
                105, 171, 49, 147, 83, 98, 128,
            ],
        ),
        (
            Resample::Bilinear,
            (2, 5),
            &[
                132, 130, 150, 115, 120, 145, 113, 103, 118, 134, 97, 122, 131, 107, 128, 113, 82,
                148, 165, 80, 111, 135, 66, 161, 179, 88, 106, 151, 69, 95,
            ],
        ),
        (
            Resample::Bilinear,
            (7, 3),
            &[
                184, 81, 203, 141, 112, 125, 98, 142, 100, 72, 158, 184, 79, 74, 135, 138, 93, 121,
                212, 162, 128, 109, 99, 146, 119, 112, 111, 145, 108, 101, 189, 74, 140, 133, 40,
                156, 100, 78, 153, 86, 148, 140, 85, 118, 135, 159, 105, 93, 215, 77, 90, 216, 31,
                160, 175, 60, 131, 117, 81, 117, 63, 92, 114,
            ],
        ),
        (
            Resample::Hamming,
            (4, 2),
            &[
                161, 91, 174, 100, 133, 104, 91, 73, 134, 180, 145, 133, 96, 111, 127, 201, 82, 99,
                170, 50, 152, 64, 103, 119,
            ],
        ),
        (
            Resample::Hamming,
            (2, 5),
            &[
                151, 133, 143, 118, 114, 156, 114, 98, 106, 138, 89, 119, 117, 132, 145, 93, 87,
                154, 166, 82, 94, 128, 63, 164, 182, 85, 103, 146, 61, 87,
            ],
        ),
        (
            Resample::Hamming,
            (7, 3),
            &[
                187, 84, 219, 134, 124, 122, 102, 145, 85, 64, 156, 181, 81, 53, 130, 125, 85, 121,
                208, 172, 116, 101, 100, 148, 119, 117, 112, 136, 119, 96, 197, 71, 122, 119, 23,
                167, 97, 64, 163, 73, 156, 146, 77, 132, 143, 168, 109, 92, 215, 90, 75, 221, 29,
                152, 161, 74, 115, 124, 86, 111, 66, 97, 112,
            ],
        ),
        (
            Resample::Bicubic,
            (4, 2),
            &[
                149, 94, 158, 106, 140, 109, 93, 70, 149, 158, 131, 134, 105, 113, 117, 206, 77,
                101, 177, 41, 152, 69, 100, 125,
            ],
        ),
        (
            Resample::Bicubic,
            (2, 5),
            &[
                132, 131, 157, 112, 125, 144, 110, 104, 120, 137, 99, 121, 133, 105, 125, 111, 80,
                150, 166, 80, 112, 131, 64, 168, 180, 90, 107, 152, 68, 89,
            ],
        ),
        (
            Resample::Bicubic,
            (7, 3),
            &[
                190, 80, 217, 143, 112, 123, 90, 152, 88, 67, 163, 181, 65, 63, 133, 141, 89, 116,
                226, 174, 129, 109, 92, 138, 112, 110, 101, 142, 111, 94, 192, 74, 148, 134, 26,
                164, 94, 73, 156, 85, 149, 142, 73, 121, 141, 158, 112, 89, 231, 77, 81, 219, 26,
                155, 184, 57, 132, 112, 84, 114, 50, 94, 110,
            ],
        ),
        (
            Resample::Lanczos,
            (4, 2),
            &[
                148, 91, 152, 106, 149, 107, 90, 65, 158, 156, 128, 132, 101, 115, 112, 211, 75,
                99, 182, 36, 155, 64, 101, 123,
            ],
        ),
        (
            Resample::Lanczos,
            (2, 5),
            &[
                128, 129, 163, 108, 128, 139, 104, 105, 122, 135, 103, 117, 140, 97, 118, 115, 77,
                151, 169, 79, 120, 132, 64, 172, 182, 93, 108, 156, 69, 84,
            ],
        ),
        (
            Resample::Lanczos,
            (7, 3),
            &[
                192, 79, 226, 147, 105, 123, 83, 163, 81, 65, 168, 177, 51, 58, 132, 148, 87, 109,
                235, 181, 134, 114, 90, 137, 104, 109, 96, 143, 114, 91, 194, 73, 155, 139, 17,
                173, 87, 75, 153, 87, 150, 138, 67, 119, 146, 157, 117, 88, 249, 72, 78, 219, 21,
                154, 195, 50, 141, 106, 89, 112, 41, 94, 110,
            ],
        ),
    ];
}
