//! Pictures for `vit explain`: a colour map, heat maps laid over photos, captions, grids of
//! titled panels, and PNG encoding.
//!
//! Everything here is infallible for any input except [`png_bytes`]: an empty or mismatched
//! map leaves the photo unchanged, zero-size images and empty lists give empty results, and
//! characters the font lacks are drawn as `?`.
//!
//! Text is drawn with the public-domain 8x8 bitmap font of the `font8x8` crate (Basic Latin,
//! Latin-1 and Greek), at scale 2 (16x16 pixels a character) where a line has room for 24
//! characters at that scale, and at scale 1 otherwise.

use anyhow::{Context, Result};
use font8x8::{UnicodeFonts, BASIC_FONTS, GREEK_FONTS, LATIN_FONTS};
use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder, Rgb, RgbImage};

/// Matplotlib's "inferno", a perceptually uniform colour map from black through purple and
/// orange to pale yellow: the 256 entries of `_inferno_data` in matplotlib's
/// `lib/matplotlib/_cm_listed.py` (matplotlib 3.11.2), each channel rounded from `value * 255`.
/// The colour maps are by Nathaniel Smith and Stefan van der Walt, who released them under
/// CC0 1.0 (<https://github.com/BIDS/colormap>, LICENSE.txt).
#[rustfmt::skip]
const INFERNO: [[u8; 3]; 256] = [
    [0, 0, 4], [1, 0, 5], [1, 1, 6], [1, 1, 8],
    [2, 1, 10], [2, 2, 12], [2, 2, 14], [3, 2, 16],
    [4, 3, 18], [4, 3, 20], [5, 4, 23], [6, 4, 25],
    [7, 5, 27], [8, 5, 29], [9, 6, 31], [10, 7, 34],
    [11, 7, 36], [12, 8, 38], [13, 8, 41], [14, 9, 43],
    [16, 9, 45], [17, 10, 48], [18, 10, 50], [20, 11, 52],
    [21, 11, 55], [22, 11, 57], [24, 12, 60], [25, 12, 62],
    [27, 12, 65], [28, 12, 67], [30, 12, 69], [31, 12, 72],
    [33, 12, 74], [35, 12, 76], [36, 12, 79], [38, 12, 81],
    [40, 11, 83], [41, 11, 85], [43, 11, 87], [45, 11, 89],
    [47, 10, 91], [49, 10, 92], [50, 10, 94], [52, 10, 95],
    [54, 9, 97], [56, 9, 98], [57, 9, 99], [59, 9, 100],
    [61, 9, 101], [62, 9, 102], [64, 10, 103], [66, 10, 104],
    [68, 10, 104], [69, 10, 105], [71, 11, 106], [73, 11, 106],
    [74, 12, 107], [76, 12, 107], [77, 13, 108], [79, 13, 108],
    [81, 14, 108], [82, 14, 109], [84, 15, 109], [85, 15, 109],
    [87, 16, 110], [89, 16, 110], [90, 17, 110], [92, 18, 110],
    [93, 18, 110], [95, 19, 110], [97, 19, 110], [98, 20, 110],
    [100, 21, 110], [101, 21, 110], [103, 22, 110], [105, 22, 110],
    [106, 23, 110], [108, 24, 110], [109, 24, 110], [111, 25, 110],
    [113, 25, 110], [114, 26, 110], [116, 26, 110], [117, 27, 110],
    [119, 28, 109], [120, 28, 109], [122, 29, 109], [124, 29, 109],
    [125, 30, 109], [127, 30, 108], [128, 31, 108], [130, 32, 108],
    [132, 32, 107], [133, 33, 107], [135, 33, 107], [136, 34, 106],
    [138, 34, 106], [140, 35, 105], [141, 35, 105], [143, 36, 105],
    [144, 37, 104], [146, 37, 104], [147, 38, 103], [149, 38, 103],
    [151, 39, 102], [152, 39, 102], [154, 40, 101], [155, 41, 100],
    [157, 41, 100], [159, 42, 99], [160, 42, 99], [162, 43, 98],
    [163, 44, 97], [165, 44, 96], [166, 45, 96], [168, 46, 95],
    [169, 46, 94], [171, 47, 94], [173, 48, 93], [174, 48, 92],
    [176, 49, 91], [177, 50, 90], [179, 50, 90], [180, 51, 89],
    [182, 52, 88], [183, 53, 87], [185, 53, 86], [186, 54, 85],
    [188, 55, 84], [189, 56, 83], [191, 57, 82], [192, 58, 81],
    [193, 58, 80], [195, 59, 79], [196, 60, 78], [198, 61, 77],
    [199, 62, 76], [200, 63, 75], [202, 64, 74], [203, 65, 73],
    [204, 66, 72], [206, 67, 71], [207, 68, 70], [208, 69, 69],
    [210, 70, 68], [211, 71, 67], [212, 72, 66], [213, 74, 65],
    [215, 75, 63], [216, 76, 62], [217, 77, 61], [218, 78, 60],
    [219, 80, 59], [221, 81, 58], [222, 82, 56], [223, 83, 55],
    [224, 85, 54], [225, 86, 53], [226, 87, 52], [227, 89, 51],
    [228, 90, 49], [229, 92, 48], [230, 93, 47], [231, 94, 46],
    [232, 96, 45], [233, 97, 43], [234, 99, 42], [235, 100, 41],
    [235, 102, 40], [236, 103, 38], [237, 105, 37], [238, 106, 36],
    [239, 108, 35], [239, 110, 33], [240, 111, 32], [241, 113, 31],
    [241, 115, 29], [242, 116, 28], [243, 118, 27], [243, 120, 25],
    [244, 121, 24], [245, 123, 23], [245, 125, 21], [246, 126, 20],
    [246, 128, 19], [247, 130, 18], [247, 132, 16], [248, 133, 15],
    [248, 135, 14], [248, 137, 12], [249, 139, 11], [249, 140, 10],
    [249, 142, 9], [250, 144, 8], [250, 146, 7], [250, 148, 7],
    [251, 150, 6], [251, 151, 6], [251, 153, 6], [251, 155, 6],
    [251, 157, 7], [252, 159, 7], [252, 161, 8], [252, 163, 9],
    [252, 165, 10], [252, 166, 12], [252, 168, 13], [252, 170, 15],
    [252, 172, 17], [252, 174, 18], [252, 176, 20], [252, 178, 22],
    [252, 180, 24], [251, 182, 26], [251, 184, 29], [251, 186, 31],
    [251, 188, 33], [251, 190, 35], [250, 192, 38], [250, 194, 40],
    [250, 196, 42], [250, 198, 45], [249, 199, 47], [249, 201, 50],
    [249, 203, 53], [248, 205, 55], [248, 207, 58], [247, 209, 61],
    [247, 211, 64], [246, 213, 67], [246, 215, 70], [245, 217, 73],
    [245, 219, 76], [244, 221, 79], [244, 223, 83], [244, 225, 86],
    [243, 227, 90], [243, 229, 93], [242, 230, 97], [242, 232, 101],
    [242, 234, 105], [241, 236, 109], [241, 237, 113], [241, 239, 117],
    [241, 241, 121], [242, 242, 125], [242, 244, 130], [243, 245, 134],
    [243, 246, 138], [244, 248, 142], [245, 249, 146], [246, 250, 150],
    [248, 251, 154], [249, 252, 157], [250, 253, 161], [252, 255, 164],
];

/// White, the background of captions and panel grids.
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Black, the colour of text.
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// Pixels of white between panels, and around them, in [`panel_grid`].
const GAP: u32 = 4;
/// Width and height of a glyph at scale 1.
const GLYPH: u32 = 8;
/// Text is drawn at scale 2 when a line has room for this many characters at that scale.
const WIDE_TEXT_CHARS: u32 = 24;
/// The ellipsis that ends a cut line (three 2x2 dots on the baseline); the font has none.
const ELLIPSIS: [u8; 8] = [0x00, 0x00, 0x00, 0x00, 0x00, 0xDB, 0xDB, 0x00];

/// Inferno's colour of `value` in [0, 1] (clamped; NaN as 0), interpolated linearly between
/// the 256 entries of matplotlib's table: 0 is near black, 1 pale yellow, and lightness rises
/// steadily in between.
pub fn colormap(value: f32) -> [u8; 3] {
    let value = if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    };
    let position = value * 255.0;
    // The position is not negative: truncation is its floor.
    let index = (position as usize).min(254);
    let t = position - index as f32;
    let (a, b) = (INFERNO[index], INFERNO[index + 1]);
    std::array::from_fn(|c| {
        let (a, b) = (f32::from(a[c]), f32::from(b[c]));
        round_to_u8(a + t * (b - a))
    })
}

/// `value` (in [0, 255]) rounded to the nearest byte, halves up: an addition and a
/// truncation, where `f32::round` is a library call on baseline x86-64 (a fifth of an
/// overlay's time).
fn round_to_u8(value: f32) -> u8 {
    (value + 0.5) as u8
}

/// `photo` with `map` (row-major values on a `grid` = (rows, cols) patch grid, any
/// non-negative scale) laid over it: the map scaled to [0, 1] by its maximum (all-zero maps,
/// and maps whose maximum is infinite, give 0 everywhere; NaN and negative values count as
/// 0), upsampled to the photo's size bilinearly with cell centres aligned (the sample
/// position of pixel row `y` is `(y + 0.5) * rows / height - 0.5`, clamped at the edges, and
/// likewise for columns), coloured by [`colormap`], and alpha-blended:
/// `out = (1 - alpha) * photo + alpha * colour`, rounded. `alpha` is clamped to [0, 1] (NaN
/// as 0).
///
/// A map that does not fit its grid (an empty grid, or `map.len() != rows * cols`) leaves the
/// photo unchanged: a copy of `photo` is returned.
pub fn overlay(photo: &RgbImage, map: &[f32], grid: (usize, usize), alpha: f32) -> RgbImage {
    let (rows, cols) = grid;
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(map.len()) {
        return photo.clone();
    }
    let alpha = if alpha.is_nan() {
        0.0
    } else {
        alpha.clamp(0.0, 1.0)
    };
    // f32::max skips NaN: an all-NaN map has no maximum and counts as all-zero.
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scaled: Vec<f32> = if max.is_finite() && max > 0.0 {
        map.iter()
            .map(|&v| {
                let v = v / max;
                if v.is_nan() {
                    0.0
                } else {
                    v.clamp(0.0, 1.0)
                }
            })
            .collect()
    } else {
        vec![0.0; map.len()]
    };
    let ys = samples(photo.height(), rows);
    let xs = samples(photo.width(), cols);
    let mut out = photo.clone();
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (top, bottom) = (&scaled[y0 * cols..][..cols], &scaled[y1 * cols..][..cols]);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            let upper = top[x0] + fx * (top[x1] - top[x0]);
            let lower = bottom[x0] + fx * (bottom[x1] - bottom[x0]);
            let colour = colormap(upper + fy * (lower - upper));
            let pixel = out.get_pixel_mut(x as u32, y as u32);
            for (p, c) in pixel.0.iter_mut().zip(colour) {
                *p = round_to_u8((1.0 - alpha) * f32::from(*p) + alpha * f32::from(c));
            }
        }
    }
    out
}

/// For each of `len` pixels along an axis of `cells` cells (at least one), the two cells to
/// interpolate between and the weight of the second, cell centres aligned with the pixels'.
fn samples(len: u32, cells: usize) -> Vec<(usize, usize, f32)> {
    let last = cells - 1;
    (0..len)
        .map(|i| {
            let position = ((f64::from(i) + 0.5) * cells as f64 / f64::from(len) - 0.5)
                .clamp(0.0, last as f64);
            let first = (position.floor() as usize).min(last);
            let weight = (position - first as f64) as f32;
            (first, (first + 1).min(last), weight)
        })
        .collect()
}

/// `image` with a white band below it holding `lines` of black text, one line each, every
/// line cut with an ellipsis to fit the image's width. No lines: a copy of `image`.
pub fn with_caption(image: &RgbImage, lines: &[String]) -> RgbImage {
    if lines.is_empty() {
        return image.clone();
    }
    let width = image.width();
    let scale = text_scale(width);
    let margin = 2 * scale;
    let band = count_u32(lines.len())
        .saturating_mul(line_height(scale))
        .saturating_add(2 * margin);
    let mut out = RgbImage::from_pixel(width, image.height().saturating_add(band), WHITE);
    image::imageops::replace(&mut out, image, 0, 0);
    let max_chars = width.saturating_sub(2 * margin) / (GLYPH * scale);
    let mut y = image.height().saturating_add(margin);
    for line in lines {
        draw_text(&mut out, margin, y, &fit(line, max_chars), scale);
        y = y.saturating_add(line_height(scale));
    }
    out
}

/// `panels` laid out left to right, top to bottom, in a grid of `columns` columns (0 counts
/// as 1; never more columns than panels) and as many rows as needed, on white. Each cell is
/// as wide as the widest panel and as tall as the tallest, plus a line above for the panel's
/// title (cut with an ellipsis to the cell's width); panel and title are centred
/// horizontally in their cell. Cells are 4 white pixels apart and from the edges. No
/// panels: an empty (0x0) image.
pub fn panel_grid(panels: &[(String, RgbImage)], columns: usize) -> RgbImage {
    if panels.is_empty() {
        return RgbImage::new(0, 0);
    }
    let columns = columns.clamp(1, panels.len());
    let rows = panels.len().div_ceil(columns);
    let cell_width = panels.iter().map(|(_, p)| p.width()).max().unwrap_or(0);
    let image_height = panels.iter().map(|(_, p)| p.height()).max().unwrap_or(0);
    let scale = text_scale(cell_width);
    let title_height = line_height(scale);
    let cell_height = image_height.saturating_add(title_height);
    let mut out = RgbImage::from_pixel(span(columns, cell_width), span(rows, cell_height), WHITE);
    let max_chars = cell_width / (GLYPH * scale);
    for (i, (title, panel)) in panels.iter().enumerate() {
        let x = span(i % columns, cell_width);
        let y = span(i / columns, cell_height);
        let title = fit(title, max_chars);
        let title_width = count_u32(title.len()) * GLYPH * scale;
        let title_x = x.saturating_add((cell_width - title_width) / 2);
        draw_text(&mut out, title_x, y, &title, scale);
        let panel_x = x.saturating_add((cell_width - panel.width()) / 2);
        let panel_y = y.saturating_add(title_height);
        image::imageops::replace(&mut out, panel, i64::from(panel_x), i64::from(panel_y));
    }
    out
}

/// PNG bytes of `image` (8-bit RGB). Fails for an empty (zero-width or zero-height) image,
/// which PNG cannot hold.
pub fn png_bytes(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .with_context(|| {
            format!(
                "cannot encode a {}x{} image as PNG",
                image.width(),
                image.height()
            )
        })?;
    Ok(bytes)
}

/// The pixels from the start of one `count`-th cell of `cell` pixels to the next along an
/// axis of cells [`GAP`] apart: `GAP + count * (cell + GAP)`, saturating.
fn span(count: usize, cell: u32) -> u32 {
    let total = u64::from(GAP) + count as u64 * (u64::from(cell) + u64::from(GAP));
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// `count` as a u32, saturating.
fn count_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The scale of text on lines `width` pixels wide: 2 when [`WIDE_TEXT_CHARS`] characters fit
/// at scale 2, 1 otherwise.
fn text_scale(width: u32) -> u32 {
    if width >= WIDE_TEXT_CHARS * GLYPH * 2 {
        2
    } else {
        1
    }
}

/// The height of a line of text at `scale`: the glyph and a gap of a quarter of it.
fn line_height(scale: u32) -> u32 {
    (GLYPH + GLYPH / 4) * scale
}

/// The glyphs of `text`, cut to at most `max_chars` with an ellipsis in the last place when
/// longer (spaces before the ellipsis dropped).
fn fit(text: &str, max_chars: u32) -> Vec<[u8; 8]> {
    let max_chars = max_chars as usize;
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max_chars {
        return chars.into_iter().map(glyph).collect();
    }
    if max_chars == 0 {
        return Vec::new();
    }
    let kept: String = chars[..max_chars - 1].iter().collect();
    kept.trim_end()
        .chars()
        .map(glyph)
        .chain(std::iter::once(ELLIPSIS))
        .collect()
}

/// The 8x8 bitmap of `c` (row by row from the top, bit 0 leftmost): `font8x8`'s Basic Latin,
/// Latin-1 and Greek glyphs, a tab as a space, and `?` for control and other characters.
fn glyph(c: char) -> [u8; 8] {
    let question = BASIC_FONTS.get('?').unwrap_or_default();
    match c {
        '\u{2026}' => ELLIPSIS,
        '\t' => [0; 8],
        c if c.is_control() => question,
        c => BASIC_FONTS
            .get(c)
            .or_else(|| LATIN_FONTS.get(c))
            .or_else(|| GREEK_FONTS.get(c))
            .unwrap_or(question),
    }
}

/// Draws `glyphs` in black on `image` with the top-left corner at (`x`, `y`), each font pixel
/// a `scale` x `scale` square; what falls outside the image is left out.
fn draw_text(image: &mut RgbImage, x: u32, y: u32, glyphs: &[[u8; 8]], scale: u32) {
    let (width, height) = image.dimensions();
    for (i, rows) in glyphs.iter().enumerate() {
        let left = u64::from(x) + i as u64 * u64::from(GLYPH * scale);
        for (row, bits) in (0u64..).zip(rows) {
            for column in 0..u64::from(GLYPH) {
                if bits & (1 << column) == 0 {
                    continue;
                }
                for dy in 0..u64::from(scale) {
                    for dx in 0..u64::from(scale) {
                        let px = left + column * u64::from(scale) + dx;
                        let py = u64::from(y) + row * u64::from(scale) + dy;
                        if px < u64::from(width) && py < u64::from(height) {
                            image.put_pixel(px as u32, py as u32, BLACK);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rec. 601 luma of a colour.
    fn luma(c: [u8; 3]) -> f32 {
        0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
    }

    /// A `width` x `height` photo whose pixels all differ.
    fn photo(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 40) as u8, (y * 50) as u8, 123])
        })
    }

    fn is_dark(p: &Rgb<u8>) -> bool {
        p.0.iter().all(|&c| c < 128)
    }

    #[test]
    fn colormap_endpoints_are_the_table_ends() {
        assert_eq!(colormap(0.0), [0, 0, 4]);
        assert_eq!(colormap(1.0), [252, 255, 164]);
        assert_eq!(colormap(0.0), INFERNO[0]);
        assert_eq!(colormap(1.0), INFERNO[255]);
        // Clamped, NaN as 0.
        assert_eq!(colormap(-3.0), INFERNO[0]);
        assert_eq!(colormap(f32::NAN), INFERNO[0]);
        assert_eq!(colormap(f32::NEG_INFINITY), INFERNO[0]);
        assert_eq!(colormap(7.0), INFERNO[255]);
        assert_eq!(colormap(f32::INFINITY), INFERNO[255]);
    }

    #[test]
    fn colormap_hits_every_entry_and_interpolates_between() {
        for (k, entry) in INFERNO.iter().enumerate() {
            assert_eq!(colormap(k as f32 / 255.0), *entry, "entry {k}");
        }
        // Entries of matplotlib's _inferno_data, times 255 and rounded.
        assert_eq!(INFERNO[64], [87, 16, 110]);
        assert_eq!(INFERNO[128], [188, 55, 84]);
        assert_eq!(INFERNO[192], [249, 142, 9]);
        assert_eq!(INFERNO[129], [189, 56, 83]);
        // Half-way between two entries: each channel within rounding of the mean.
        for k in [0, 64, 128, 200, 254] {
            let half = colormap((k as f32 + 0.5) / 255.0);
            for c in 0..3 {
                let mean = (f32::from(INFERNO[k][c]) + f32::from(INFERNO[k + 1][c])) / 2.0;
                assert!((f32::from(half[c]) - mean).abs() <= 0.5, "{k}.5: {half:?}");
            }
        }
    }

    #[test]
    fn colormap_is_monotone_in_luma() {
        for k in 1..INFERNO.len() {
            assert!(
                luma(INFERNO[k]) >= luma(INFERNO[k - 1]),
                "luma falls from entry {} to {k}",
                k - 1
            );
        }
        let steps = 1000;
        let mut previous = luma(colormap(0.0));
        for i in 1..=steps {
            let current = luma(colormap(i as f32 / steps as f32));
            // Rounding each channel moves luma by at most half a unit either way.
            assert!(current >= previous - 1.0, "luma falls at {i}/{steps}");
            previous = current;
        }
        assert!(luma(colormap(1.0)) - luma(colormap(0.0)) > 200.0);
    }

    #[test]
    fn overlay_with_alpha_zero_returns_the_photo() {
        let photo = photo(5, 3);
        let out = overlay(&photo, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], (2, 3), 0.0);
        assert_eq!(out, photo);
    }

    #[test]
    fn overlay_with_alpha_one_returns_the_colour_of_the_scaled_map() {
        // Two columns over a photo two pixels wide: each pixel sits on a cell's centre.
        let out = overlay(&photo(2, 3), &[0.0, 2.5], (1, 2), 1.0);
        for y in 0..3 {
            assert_eq!(out.get_pixel(0, y).0, colormap(0.0));
            assert_eq!(out.get_pixel(1, y).0, colormap(1.0));
        }
        // One cell covers the photo: the map's maximum is 1 whatever its scale.
        let out = overlay(&photo(3, 2), &[0.001], (1, 1), 1.0);
        assert!(out.pixels().all(|p| p.0 == INFERNO[255]));
        // Values interpolated between 0.25 and 0.75 of the maximum.
        let out = overlay(&photo(2, 1), &[1.0, 3.0, 4.0], (1, 3), 1.0);
        // x = 0: position 0.25 between cells 0 and 1: 0.25 + 0.25 * 0.5 = 0.375.
        assert_eq!(out.get_pixel(0, 0).0, colormap(0.375));
        // x = 1: position 1.75 between cells 1 and 2: 0.75 + 0.75 * 0.25 = 0.9375.
        assert_eq!(out.get_pixel(1, 0).0, colormap(0.9375));
    }

    #[test]
    fn overlay_of_a_single_hot_cell_is_bilinear() {
        // The hot cell (0, 0) of a 2x2 grid over 4x4 pixels: sample positions along each
        // axis are -0.25 (clamped to 0), 0.25, 0.75 and 1.25 (clamped to 1), so the cell's
        // weight along an axis is 1, 0.75, 0.25, 0, and the value is their product.
        let weights = [1.0, 0.75, 0.25, 0.0];
        let out = overlay(&photo(4, 4), &[3.0, 0.0, 0.0, 0.0], (2, 2), 1.0);
        for (y, wy) in weights.iter().enumerate() {
            for (x, wx) in weights.iter().enumerate() {
                let expected = colormap(wy * wx);
                assert_eq!(out.get_pixel(x as u32, y as u32).0, expected, "({x}, {y})");
            }
        }
        assert_eq!(out.get_pixel(1, 1).0, colormap(0.5625));
        assert_eq!(out.get_pixel(3, 3).0, INFERNO[0]);
    }

    #[test]
    fn overlay_blends_and_rounds() {
        let photo = RgbImage::from_pixel(2, 2, Rgb([100, 201, 0]));
        let out = overlay(&photo, &[1.0], (1, 1), 0.5);
        let c = INFERNO[255];
        let expected = [
            ((100.0 + f32::from(c[0])) / 2.0).round() as u8,
            ((201.0 + f32::from(c[1])) / 2.0).round() as u8,
            (f32::from(c[2]) / 2.0).round() as u8,
        ];
        assert_eq!(expected, [176, 228, 82]);
        assert!(out.pixels().all(|p| p.0 == expected));
        // Alpha out of range is clamped: 7 as 1, NaN and -1 as 0.
        assert!(overlay(&photo, &[1.0], (1, 1), 7.0)
            .pixels()
            .all(|p| p.0 == INFERNO[255]));
        assert_eq!(overlay(&photo, &[1.0], (1, 1), f32::NAN), photo);
        assert_eq!(overlay(&photo, &[1.0], (1, 1), -1.0), photo);
    }

    #[test]
    fn overlay_of_degenerate_maps_is_zero() {
        let photo = photo(3, 3);
        let cold = |map: &[f32]| {
            overlay(&photo, map, (2, 2), 1.0)
                .pixels()
                .all(|p| p.0 == INFERNO[0])
        };
        assert!(cold(&[0.0; 4]));
        assert!(cold(&[f32::NAN; 4]));
        assert!(cold(&[f32::INFINITY, 1.0, 0.0, 0.0]));
        assert!(cold(&[-1.0, -2.0, -3.0, -4.0]));
        // NaN and negative cells count as 0 beside a finite maximum.
        let out = overlay(&photo, &[f32::NAN, -1.0, 0.0, 2.0], (2, 2), 1.0);
        assert_eq!(out.get_pixel(0, 0).0, INFERNO[0]);
        assert_eq!(out.get_pixel(2, 2).0, INFERNO[255]);
    }

    #[test]
    fn overlay_with_a_mismatched_grid_returns_the_photo() {
        let photo = photo(4, 4);
        assert_eq!(overlay(&photo, &[1.0, 2.0, 3.0], (2, 2), 1.0), photo);
        assert_eq!(overlay(&photo, &[], (0, 0), 1.0), photo);
        assert_eq!(overlay(&photo, &[], (2, 2), 1.0), photo);
        assert_eq!(overlay(&photo, &[1.0], (0, 1), 1.0), photo);
        assert_eq!(overlay(&photo, &[1.0], (usize::MAX, 2), 1.0), photo);
        // Zero-size photos come back as they are.
        for (w, h) in [(0, 0), (0, 3), (3, 0)] {
            let empty = RgbImage::new(w, h);
            assert_eq!(overlay(&empty, &[1.0; 4], (2, 2), 0.5), empty);
        }
        // More cells than pixels is fine.
        let out = overlay(&RgbImage::new(1, 1), &[1.0; 12], (3, 4), 1.0);
        assert_eq!(out.get_pixel(0, 0).0, INFERNO[255]);
    }

    #[test]
    fn caption_adds_a_band_with_dark_text_inside_only() {
        let image = RgbImage::from_pixel(100, 50, Rgb([200, 200, 200]));
        let lines = vec!["Egyptian cat 0.41".to_string(), "tabby 0.22".to_string()];
        let out = with_caption(&image, &lines);
        assert_eq!(out.width(), 100);
        assert!(out.height() >= 50 + 2 * GLYPH, "height {}", out.height());
        // The image is untouched above the band.
        for (x, y, p) in image.enumerate_pixels() {
            assert_eq!(out.get_pixel(x, y), p);
        }
        let band = || out.enumerate_pixels().filter(|&(_, y, _)| y >= 50);
        assert!(band().any(|(_, _, p)| is_dark(p)));
        assert!(band().all(|(_, _, p)| p.0 == [255; 3] || p.0 == [0; 3]));
        // Both lines are drawn: dark pixels in the top and bottom halves of the band.
        let middle = 50 + (out.height() - 50) / 2;
        assert!(band().any(|(_, y, p)| y < middle && is_dark(p)));
        assert!(band().any(|(_, y, p)| y >= middle && is_dark(p)));
        // More lines, more height.
        let three = [lines.clone(), vec!["x".to_string()]].concat();
        assert!(with_caption(&image, &three).height() > out.height());
    }

    #[test]
    fn caption_cuts_long_lines_with_an_ellipsis() {
        let long = "a".repeat(500);
        let out = with_caption(&RgbImage::new(60, 10), &[long]);
        assert_eq!(out.width(), 60);
        // At scale 1, 2-pixel margins: 56 / 8 = 7 glyphs, the last an ellipsis.
        let ab = fit("abcdefghij", 7);
        assert_eq!(ab.len(), 7);
        assert_eq!(ab[6], ELLIPSIS);
        assert_eq!(ab[..6], fit("abcdef", 6)[..]);
        assert_eq!(fit("abcdefghij", 10), fit("abcdefghij", 99));
        assert_eq!(fit("abc  defgh", 6), fit("abc\u{2026}", 6));
        assert!(fit("abc", 0).is_empty());
        // Nothing is drawn in the right margin.
        assert!((58..60).all(|x| (10..out.height()).all(|y| !is_dark(out.get_pixel(x, y)))));
    }

    #[test]
    fn caption_takes_any_input() {
        let image = photo(40, 10);
        assert_eq!(with_caption(&image, &[]), image);
        let empty = with_caption(&image, &[String::new()]);
        assert!(empty.height() > 10);
        assert!(empty
            .enumerate_pixels()
            .all(|(_, y, p)| y < 10 || p.0 == [255; 3]));
        let odd = ["café Ω ☃ 猫\t\n\u{0}".to_string()];
        assert!(with_caption(&image, &odd).height() > 10);
        assert_eq!(with_caption(&RgbImage::new(0, 0), &odd).width(), 0);
        assert_eq!(with_caption(&RgbImage::new(3, 0), &odd).width(), 3);
        // Glyphs the font lacks, and control characters, are drawn as '?'.
        let question = glyph('?');
        assert_ne!(question, [0; 8]);
        assert_eq!(glyph('猫'), question);
        assert_eq!(glyph('\u{0}'), question);
        assert_ne!(glyph('é'), question);
        assert_ne!(glyph('Ω'), question);
        assert_eq!(glyph(' '), [0; 8]);
    }

    #[test]
    fn panel_grid_sizes() {
        let red = RgbImage::from_pixel(30, 20, Rgb([255, 0, 0]));
        let green = RgbImage::from_pixel(10, 40, Rgb([0, 255, 0]));
        let blue = RgbImage::from_pixel(20, 10, Rgb([0, 0, 255]));
        let panels = vec![
            ("red".to_string(), red),
            ("green".to_string(), green),
            ("blue".to_string(), blue),
        ];
        // Cells 30 wide, 40 + 10 (title at scale 1) tall, 4 pixels apart and from the edges.
        let out = panel_grid(&panels, 2);
        assert_eq!(out.dimensions(), (4 + 2 * (30 + 4), 4 + 2 * (50 + 4)));
        assert_eq!(panel_grid(&panels, 3).dimensions(), (4 + 3 * 34, 4 + 54));
        assert_eq!(panel_grid(&panels, 9).dimensions(), (4 + 3 * 34, 4 + 54));
        assert_eq!(panel_grid(&panels, 1).dimensions(), (4 + 34, 4 + 3 * 54));
        assert_eq!(panel_grid(&panels, 0).dimensions(), (4 + 34, 4 + 3 * 54));
        // Panels centred in their cells, below their titles.
        assert_eq!(out.get_pixel(4, 14).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(33, 33).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(4, 34).0, [255; 3]);
        assert_eq!(out.get_pixel(38 + 10, 14).0, [0, 255, 0]);
        assert_eq!(out.get_pixel(38 + 9, 14).0, [255; 3]);
        assert_eq!(out.get_pixel(4 + 5, 58 + 10).0, [0, 0, 255]);
        // Titles are drawn above the panels.
        assert!((4..14).any(|y| (4..34).any(|x| is_dark(out.get_pixel(x, y)))));
        assert!(panel_grid(&[], 3).dimensions() == (0, 0));
        // Empty panels and titles take no harm.
        let blank = vec![(String::new(), RgbImage::new(0, 0)); 2];
        assert_eq!(panel_grid(&blank, 2).dimensions(), (4 + 2 * 4, 4 + 10 + 4));
    }

    #[test]
    fn png_bytes_round_trip() {
        let image = photo(7, 5);
        let bytes = png_bytes(&image).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded, image);
        assert!(png_bytes(&RgbImage::new(0, 0)).is_err());
    }
}
