//! TIFF pictures read chunk by chunk (strip or tile) through the `tiff` crate, for the
//! layouts the `image` crate refuses or mishandles: planar images (one plane per channel,
//! in strips or tiles; the `tiff` crate's whole-image reader panics on tiled ones), palette
//! images, signed and floating-point samples, and 1, 2 and 4-bit gray. Each becomes RGB as
//! Pillow's `convert("RGB")` makes it, except that unsigned samples wider than 8 bits are
//! scaled to 8 bits as elsewhere in `vit` (Pillow clips them).

use std::io::Cursor;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::{PhotometricInterpretation, PlanarConfiguration, Tag};
use tiff::ColorType;

/// How a pixel's stored samples become RGB.
#[derive(Debug)]
enum Color {
    /// One gray sample (black is zero); further samples are ignored, as Pillow does.
    Gray,
    /// Red, green and blue; with `premultiplied` alpha (TIFF's associated alpha) the colours
    /// are divided by the fourth sample, as Pillow's `RGBa` unpackers do.
    Rgb { premultiplied: bool },
    /// An index into the colour map, held as Pillow holds it (each 16-bit entry's high byte).
    Palette(Vec<[u8; 3]>),
}

impl Color {
    /// The samples per pixel this colour reads.
    fn samples_used(&self) -> usize {
        match self {
            Color::Gray | Color::Palette(_) => 1,
            Color::Rgb { premultiplied } => 3 + *premultiplied as usize,
        }
    }
}

/// A TIFF's first picture, opened, its size and layout known and its pixels not yet read.
pub(super) struct TiffPicture<'a> {
    decoder: Decoder<Cursor<&'a [u8]>>,
    width: u32,
    height: u32,
    color: Color,
    /// Samples stored per pixel.
    samples: usize,
    bits: u8,
    planar: bool,
}

impl<'a> TiffPicture<'a> {
    /// Opens a TIFF whose layout this reader takes (see the module's doc); `None` for those
    /// it leaves to the `image` crate (CMYK, YCbCr, Lab, white-is-zero gray, ...).
    ///
    /// A palette TIFF is given as `as_gray`, the same bytes read as gray (see
    /// [`palette_as_gray`]): the `tiff` crate reads the indices of that, not of the original.
    pub(super) fn open(bytes: &'a [u8], as_gray: Option<&'a [u8]>) -> Result<Option<Self>> {
        let mut decoder = Decoder::new(Cursor::new(bytes)).context("cannot read TIFF")?;
        let photometric = decoder
            .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)?
            .and_then(PhotometricInterpretation::from_u16);
        if photometric == Some(PhotometricInterpretation::RGBPalette) {
            let bits = decoder
                .find_tag_unsigned::<u8>(Tag::BitsPerSample)?
                .unwrap_or(1);
            if bits > 8 {
                bail!("palette TIFF with {bits}-bit indices is not supported");
            }
            let map = color_map(&mut decoder, bits)?;
            let Some(as_gray) = as_gray else {
                bail!("palette TIFF without its gray reading");
            };
            let picture = Self::open(as_gray, None)?.context("palette TIFF read as gray")?;
            return Ok(Some(TiffPicture {
                color: Color::Palette(map),
                ..picture
            }));
        }
        let planar = decoder
            .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)?
            .and_then(PlanarConfiguration::from_u16)
            == Some(PlanarConfiguration::Planar);
        let samples = decoder
            .find_tag_unsigned::<u16>(Tag::SamplesPerPixel)?
            .unwrap_or(1) as usize;
        let (bits, color) = match (photometric, decoder.colortype()?) {
            // The `tiff` crate inverts white-is-zero samples itself.
            (
                Some(
                    PhotometricInterpretation::BlackIsZero | PhotometricInterpretation::WhiteIsZero,
                ),
                ColorType::Gray(bits)
                | ColorType::Multiband {
                    bit_depth: bits, ..
                },
            ) => (bits, Color::Gray),
            (Some(PhotometricInterpretation::RGB), ColorType::RGB(bits)) => (
                bits,
                Color::Rgb {
                    premultiplied: false,
                },
            ),
            (Some(PhotometricInterpretation::RGB), ColorType::RGBA(bits)) => {
                // ExtraSamples 1: associated (premultiplied) alpha.
                let extra = decoder.find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)?;
                let premultiplied = extra.is_some_and(|extra| extra.first() == Some(&1));
                (bits, Color::Rgb { premultiplied })
            }
            _ => return Ok(None),
        };
        if !matches!(bits, 1 | 2 | 4 | 8 | 16 | 32 | 64) {
            bail!("TIFF with {bits}-bit samples is not supported");
        }
        // FillOrder 2 (least significant bit first) is not applied by the `tiff` crate.
        if decoder.find_tag_unsigned::<u16>(Tag::FillOrder)? == Some(2) {
            bail!("TIFF with FillOrder 2 (least significant bit first) is not supported");
        }
        if samples < color.samples_used() {
            bail!("TIFF has {samples} samples per pixel, fewer than its colour needs");
        }
        let (width, height) = decoder.dimensions()?;
        Ok(Some(TiffPicture {
            decoder,
            width,
            height,
            color,
            samples,
            bits,
            planar,
        }))
    }

    /// The picture's width and height.
    pub(super) fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The TIFF orientation tag (EXIF's values), 1 when absent.
    pub(super) fn orientation(&mut self) -> Result<u8> {
        let value = self.decoder.find_tag_unsigned::<u16>(Tag::Orientation)?;
        Ok(value.unwrap_or(1).min(255) as u8)
    }

    /// Reads every chunk and makes the RGB picture.
    pub(super) fn into_rgb(mut self) -> Result<RgbImage> {
        let (width, height) = (self.width as usize, self.height as usize);
        let used = self.color.samples_used();
        // A buffer for the whole picture is allowed; the caller has checked its size.
        let mut limits = Limits::default();
        limits.decoding_buffer_size = limits
            .decoding_buffer_size
            .max(width * height * self.samples * (self.bits as usize).div_ceil(8));
        self.decoder = self.decoder.with_limits(limits);
        // The samples used, one 8-bit plane each.
        let mut planes = vec![vec![0u8; width * height]; used];
        let (chunk_w, chunk_h) = self.decoder.chunk_dimensions();
        let (chunk_w, chunk_h) = (chunk_w as usize, chunk_h as usize);
        let chunks = match self.decoder.get_chunk_type() {
            ChunkType::Strip => self.decoder.strip_count()?,
            ChunkType::Tile => self.decoder.tile_count()?,
        } as usize;
        let planes_stored = if self.planar { self.samples } else { 1 };
        let per_plane = chunks / planes_stored;
        let across = width.div_ceil(chunk_w.max(1));
        if chunk_w == 0 || chunk_h == 0 || per_plane == 0 || per_plane < across {
            bail!("TIFF has an empty chunk layout");
        }
        let samples_in_chunk = if self.planar { 1 } else { self.samples };
        for chunk in 0..chunks {
            let (plane, index) = (chunk / per_plane, chunk % per_plane);
            let first_sample = if self.planar { plane } else { 0 };
            if first_sample >= used {
                continue; // an unused plane (alpha, extra samples)
            }
            let (x0, y0) = ((index % across) * chunk_w, (index / across) * chunk_h);
            if y0 >= height {
                bail!("TIFF chunk {chunk} lies below the picture");
            }
            let (rows, cols) = (chunk_h.min(height - y0), chunk_w.min(width - x0));
            // The row length the `tiff` crate gives this chunk (it may count padding rows
            // of planar tiles past the first plane; those rows are skipped).
            let row_len = self.decoder.chunk_data_dimensions(chunk as u32).0 as usize;
            let decoded = self
                .decoder
                .read_chunk(chunk as u32)
                .with_context(|| format!("cannot read TIFF chunk {chunk}"))?;
            let values = self
                .color
                .samples_as_u8(decoded, self.bits, row_len * samples_in_chunk);
            let row_values = row_len * samples_in_chunk;
            if values.len() < rows * row_values {
                bail!("TIFF chunk {chunk} holds fewer samples than its size needs");
            }
            let in_chunk = used.min(first_sample + samples_in_chunk) - first_sample;
            let chunk_planes = planes.iter_mut().skip(first_sample).take(in_chunk);
            for (offset, plane) in chunk_planes.enumerate() {
                for row in 0..rows {
                    let source = &values[row * row_values..][..cols * samples_in_chunk];
                    let target = &mut plane[(y0 + row) * width + x0..][..cols];
                    for (t, v) in target
                        .iter_mut()
                        .zip(source.iter().skip(offset).step_by(samples_in_chunk))
                    {
                        *t = *v;
                    }
                }
            }
        }
        Ok(self.color.to_rgb(self.width, self.height, &planes))
    }
}

impl Color {
    /// RGB pixels from the 8-bit planes of the samples used.
    fn to_rgb(&self, width: u32, height: u32, planes: &[Vec<u8>]) -> RgbImage {
        let pixel = |i: usize| -> [u8; 3] {
            match self {
                Color::Gray => [planes[0][i]; 3],
                Color::Palette(map) => map.get(planes[0][i] as usize).copied().unwrap_or([0; 3]),
                Color::Rgb {
                    premultiplied: false,
                } => [planes[0][i], planes[1][i], planes[2][i]],
                Color::Rgb {
                    premultiplied: true,
                } => {
                    // Pillow: 255 c / alpha, clipped; black where alpha is 0.
                    let alpha = planes[3][i] as u32;
                    [0, 1, 2].map(|c| match alpha {
                        0 => 0,
                        255 => planes[c][i],
                        _ => (255 * planes[c][i] as u32 / alpha).min(255) as u8,
                    })
                }
            }
        };
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb(pixel(y as usize * width as usize + x as usize))
        })
    }
}

/// A copy of a palette TIFF's bytes whose first picture says it is gray (black is zero), so
/// that the `tiff` crate, which refuses palette pictures, reads their indices; `None` when
/// the first picture is not a palette one. Classic and BigTIFF headers are walked.
pub(super) fn palette_as_gray(bytes: &[u8]) -> Option<Vec<u8>> {
    const PHOTOMETRIC: u16 = 262;
    const PALETTE: u16 = 3;
    let little = match bytes.get(..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let at = |offset: usize, len: usize| -> Option<u64> {
        let field = bytes.get(offset..offset.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = field[if little { len - 1 - i } else { i }];
            value = value << 8 | byte as u64;
        }
        Some(value)
    };
    // (entry count's size, entry size, value field's offset in an entry)
    let (ifd, count_len, entry_len, value_at) = match at(2, 2)? {
        42 => (at(4, 4)?, 2, 12, 8),
        43 => (at(8, 8)?, 8, 20, 12),
        _ => return None,
    };
    let ifd = usize::try_from(ifd).ok()?;
    let entries = usize::try_from(at(ifd, count_len)?).ok()?;
    let first = ifd.checked_add(count_len)?;
    for i in 0..entries.min(bytes.len() / entry_len) {
        let entry = first.checked_add(i * entry_len)?;
        if at(entry, 2)? == PHOTOMETRIC as u64 {
            // A SHORT held in the entry, first in its value field.
            let value = entry + value_at;
            if at(value, 2)? != PALETTE as u64 {
                return None;
            }
            let mut gray = bytes.to_vec();
            let black_is_zero: [u8; 2] = if little { [1, 0] } else { [0, 1] };
            gray[value..value + 2].copy_from_slice(&black_is_zero);
            return Some(gray);
        }
    }
    None
}

/// The colour map of a palette TIFF, as Pillow reads it (each 16-bit entry's high byte).
fn color_map(decoder: &mut Decoder<Cursor<&[u8]>>, bits: u8) -> Result<Vec<[u8; 3]>> {
    let map = decoder
        .find_tag_unsigned_vec::<u16>(Tag::ColorMap)?
        .context("palette TIFF without a colour map")?;
    let colors = 1usize << bits.min(16);
    if map.len() != 3 * colors {
        bail!(
            "TIFF colour map has {} entries, not 3 x {colors}",
            map.len()
        );
    }
    Ok((0..colors)
        .map(|i| [0, 1, 2].map(|c| (map[c * colors + i] >> 8) as u8))
        .collect())
}

impl Color {
    /// A chunk's samples as 8-bit values, as Pillow makes them: unsigned 1, 2 and 4-bit ones
    /// unpacked from their rows of `row_values` samples and scaled to 0..=255 (palette indices
    /// kept); unsigned wider ones reduced to their high byte for colour (Pillow's `RGB;16B`)
    /// and scaled for gray, where Pillow clips to 255 and whitens the picture; signed 8-bit
    /// ones taken as bytes (Pillow's `L`) and wider ones clipped to 0..=255 (its `I` to `RGB`);
    /// floating-point ones clipped and truncated (its `F` to `L`; NaN is 0).
    fn samples_as_u8(&self, decoded: DecodingResult, bits: u8, row_values: usize) -> Vec<u8> {
        let clip = |v: i64| v.clamp(0, 255) as u8;
        let float = |v: f64| match v {
            v if v >= 255.0 => 255,
            v if v > 0.0 => v as u8,
            _ => 0, // also NaN
        };
        let scaled = |v: u64, max: u64| ((v as u128 * 255 + max as u128 / 2) / max as u128) as u8;
        let high_byte = matches!(self, Color::Rgb { .. });
        match decoded {
            DecodingResult::U8(v) if bits < 8 => {
                let scale = !matches!(self, Color::Palette(_));
                unpack_bits(&v, bits, row_values, scale)
            }
            DecodingResult::U8(v) => v,
            DecodingResult::U16(v) if high_byte => v.iter().map(|&v| (v >> 8) as u8).collect(),
            DecodingResult::U32(v) if high_byte => v.iter().map(|&v| (v >> 24) as u8).collect(),
            DecodingResult::U64(v) if high_byte => v.iter().map(|&v| (v >> 56) as u8).collect(),
            // round(v / 257), as the `image` crate scales 16-bit gray.
            DecodingResult::U16(v) => v.iter().map(|&v| ((v as u32 + 128) / 257) as u8).collect(),
            DecodingResult::U32(v) => v
                .iter()
                .map(|&v| scaled(v as u64, u32::MAX as u64))
                .collect(),
            DecodingResult::U64(v) => v.iter().map(|&v| scaled(v, u64::MAX)).collect(),
            DecodingResult::I8(v) => v.iter().map(|&v| v as u8).collect(),
            DecodingResult::I16(v) => v.iter().map(|&v| clip(v as i64)).collect(),
            DecodingResult::I32(v) => v.iter().map(|&v| clip(v as i64)).collect(),
            DecodingResult::I64(v) => v.iter().map(|&v| clip(v)).collect(),
            DecodingResult::F16(v) => v.iter().map(|&v| float(v.to_f64())).collect(),
            DecodingResult::F32(v) => v.iter().map(|&v| float(v as f64)).collect(),
            DecodingResult::F64(v) => v.iter().map(|&v| float(v)).collect(),
        }
    }
}

/// Unpacks `bits`-bit samples (most significant first, each row padded to a byte) into
/// bytes, scaled to 0..=255 when `scale` (as Pillow's `L;1`, `L;2`, `L;4` unpackers do).
fn unpack_bits(packed: &[u8], bits: u8, row_values: usize, scale: bool) -> Vec<u8> {
    let row_bytes = (row_values * bits as usize).div_ceil(8);
    let max = (1u16 << bits) - 1;
    let per_byte = 8 / bits as usize;
    let mut values = Vec::with_capacity(packed.len() * per_byte);
    for row in packed.chunks(row_bytes.max(1)) {
        for i in 0..row_values {
            let Some(byte) = row.get(i / per_byte) else {
                break;
            };
            let shift = 8 - bits as usize * (i % per_byte + 1);
            let v = (byte >> shift) as u16 & max;
            values.push(if scale {
                (v * 255 / max) as u8
            } else {
                v as u8
            });
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout the generator wrote (tifffile) decodes to the pixels Pillow gives.
    #[test]
    fn generated_layouts_decode_as_pillow_decodes_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiff");
        let expected = candle_core::safetensors::load(
            dir.join("pixels.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert!(expected.len() >= 10, "{:?}", expected.keys());
        for (name, pixels) in expected {
            let path = dir.join(format!("{name}.tif"));
            let image =
                crate::preprocess::load_rgb(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let (height, width, _) = pixels.dims3().unwrap();
            assert_eq!(
                (image.height() as usize, image.width() as usize),
                (height, width),
                "{name}"
            );
            let pixels = pixels.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            assert!(
                image.as_raw() == &pixels,
                "{name}: pixels differ from Pillow's"
            );
        }
    }

    #[test]
    fn small_samples_unpack_and_scale_as_pillow_does() {
        // Two rows of three 4-bit samples, each row padded to 2 bytes.
        let packed = [0x0F, 0x80, 0x12, 0x30];
        assert_eq!(unpack_bits(&packed, 4, 3, true), [0, 255, 136, 17, 34, 51]);
        assert_eq!(unpack_bits(&packed, 4, 3, false), [0, 15, 8, 1, 2, 3]);
        assert_eq!(unpack_bits(&[0b1010_0000], 1, 3, true), [255, 0, 255]);
        assert_eq!(unpack_bits(&[0b1110_0100], 2, 4, true), [255, 170, 85, 0]);
    }

    #[test]
    fn wide_signed_and_float_samples_become_bytes_as_pillow_makes_them() {
        let rgb = Color::Rgb {
            premultiplied: false,
        };
        let u16s = || DecodingResult::U16(vec![0, 128, 129, 65535, 0x12ff]);
        assert_eq!(rgb.samples_as_u8(u16s(), 16, 5), [0, 0, 0, 255, 0x12]);
        assert_eq!(Color::Gray.samples_as_u8(u16s(), 16, 5), [0, 0, 1, 255, 19]);
        let i8s = DecodingResult::I8(vec![-1, -128, 5]);
        assert_eq!(Color::Gray.samples_as_u8(i8s, 8, 3), [255, 128, 5]);
        let i16s = DecodingResult::I16(vec![-5, 7, 300]);
        assert_eq!(Color::Gray.samples_as_u8(i16s, 16, 3), [0, 7, 255]);
        let f32s = DecodingResult::F32(vec![-1.0, 3.9, 254.99, 1e9, f32::NAN]);
        assert_eq!(Color::Gray.samples_as_u8(f32s, 32, 5), [0, 3, 254, 255, 0]);
    }

    #[test]
    fn premultiplied_alpha_is_divided_out_as_pillow_does() {
        let planes = [vec![100, 7], vec![50, 7], vec![255, 7], vec![128, 0]];
        let rgb = Color::Rgb {
            premultiplied: true,
        }
        .to_rgb(2, 1, &planes);
        assert_eq!(rgb.get_pixel(0, 0).0, [199, 99, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
    }
}
