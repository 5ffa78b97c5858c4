//! Pillow-compatible image resizing.
//!
//! A bit-exact port of Pillow 13's `Image.resize` for 8-bit RGB images (no
//! `box`, `reducing_gap=None`): the convolution-based filters follow
//! `libImaging/Resample.c` (antialiased separable resampling with 22-bit
//! fixed-point weights and 8-bit rounding between the two passes), and
//! `Nearest` follows the affine nearest-neighbour scaling of
//! `libImaging/Geometry.c` that `_imaging.c`'s `_resize` uses for that filter.

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
                *o = to_fixed(w);
            }
            bounds.push((xmin as usize, len));
        }
        Self {
            bounds,
            weights,
            ksize,
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

/// Rounds a normalized weight to fixed point, half away from zero.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// The rounding bias every fixed-point accumulator starts from.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Converts a fixed-point accumulator to a byte, saturating (Pillow's `clip8`).
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
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
                let mut acc = [ROUNDING; CHANNELS];
                let window = &in_row[start * CHANNELS..][..weights.len() * CHANNELS];
                for (px, &k) in window.chunks_exact(CHANNELS).zip(weights) {
                    acc[0] += i32::from(px[0]) * k;
                    acc[1] += i32::from(px[1]) * k;
                    acc[2] += i32::from(px[2]) * k;
                }
                for (o, &a) in out_px.iter_mut().zip(&acc) {
                    *o = clip8(a);
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
            acc.fill(ROUNDING);
            // Integer sums are exact, so accumulating row by row (cache
            // friendly) gives the same result as Pillow's per-pixel loop.
            for (y, &k) in (start - first_row..).zip(weights) {
                let in_row = &src[y * row_len..][..row_len];
                for (a, &v) in acc.iter_mut().zip(in_row) {
                    *a += i32::from(v) * k;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                *o = clip8(a);
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
