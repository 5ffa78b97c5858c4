//! Image files to RGB pixels, as HF's `load_image` gives them through Pillow: the formats
//! users meet, EXIF orientation, a decompression-bomb limit, stdin, and a panic in a
//! third-party decoder kept as that image's error.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use super::tiff::TiffPicture;
use super::MAX_IMAGE_PIXELS;
use super::{ico, pfm};

/// Decodes an image file as HF's `load_image` does: EXIF orientation applied, then RGB
/// (alpha dropped, grayscale and palette expanded), as Pillow's `convert("RGB")` makes it,
/// except that 16-bit gray is scaled to 8 bits (Pillow clips it, which whitens most of the
/// picture). JPEGs are decoded by
/// libjpeg-turbo's code (through mozjpeg), as Pillow does, so pixels match Pillow's exactly.
///
/// A panic in a decoder (the `tiff` crate panics on some valid tiled, planar TIFFs) is this
/// image's error, not the process's end.
///
/// The path `-` reads the image from stdin (at most [`MAX_STDIN_BYTES`]), so that `curl -s
/// URL | vit classify -` works; stdin holds one image.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = match crate::inputs::is_stdin(path) {
        true => read_stdin_image()?,
        false => std::fs::read(path).context("cannot read")?,
    };
    // A format with no signature (TGA) is known by its extension alone.
    decode(&bytes, ImageFormat::from_path(path).ok())
}

/// The most bytes an image on stdin may have.
pub const MAX_STDIN_BYTES: u64 = 1 << 30;

fn read_stdin_image() -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .context("cannot read stdin")?;
    if bytes.is_empty() {
        bail!("stdin is empty (it holds one image, read once)");
    }
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        bail!("stdin holds more than {MAX_STDIN_BYTES} bytes");
    }
    Ok(bytes)
}

/// Decodes an image held in memory, as [`load_rgb`] does a file.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    decode(bytes, None)
}

/// Decodes `bytes` (see [`decode_unguarded`]), a panic in a decoder being this image's error.
fn decode(bytes: &[u8], by_extension: Option<ImageFormat>) -> Result<RgbImage> {
    crate::panics::catch("cannot decode image", || {
        decode_unguarded(bytes, by_extension)
    })
}

/// The most pixels [`decode_rgb`] decodes (0: no limit); [`MAX_IMAGE_PIXELS`] unless
/// [`set_max_image_pixels`] says otherwise.
static MAX_DECODED_PIXELS: AtomicU64 = AtomicU64::new(MAX_IMAGE_PIXELS);

/// Sets the most pixels an image may have to be decoded, for the whole process (0: no
/// limit), as Pillow's `Image.MAX_IMAGE_PIXELS` does: a file whose header claims more (a
/// decompression bomb, or a typo) is refused before its pixels are allocated.
pub fn set_max_image_pixels(limit: u64) {
    MAX_DECODED_PIXELS.store(limit, Ordering::Relaxed);
}

/// Refuses an image of `width x height` above the decoding limit.
fn check_pixels(width: u32, height: u32) -> Result<()> {
    let limit = MAX_DECODED_PIXELS.load(Ordering::Relaxed);
    let pixels = width as u64 * height as u64;
    if limit > 0 && pixels > limit {
        bail!(
            "{width}x{height} is {pixels} pixels, more than the limit of {limit} (a \
             decompression bomb?); raise it with --max-image-pixels (0: no limit)"
        );
    }
    Ok(())
}

/// Decodes `bytes`, in the format their signature shows, else `by_extension`'s: those the
/// `image` crate lacks or mishandles here (PFM, icons and cursors, many TIFF layouts), the
/// others through it.
fn decode_unguarded(bytes: &[u8], by_extension: Option<ImageFormat>) -> Result<RgbImage> {
    if pfm::is_pfm(bytes) {
        return pfm::decode(bytes, check_pixels).context("cannot decode PFM");
    }
    // TGA has no signature, and some TGA headers start as a cursor's: the extension decides.
    if by_extension != Some(ImageFormat::Tga) && ico::is_icon(bytes) {
        return match ico::pick(bytes).context("cannot decode icon")? {
            ico::Picked::Png(png) => decode_with_image_crate(png, ImageFormat::Png),
            ico::Picked::SingleIcon(icon) => decode_with_image_crate(&icon, ImageFormat::Ico),
        };
    }
    let format = image::guess_format(bytes).ok().or(by_extension);
    let format = format.context("not a recognized image format")?;
    if format == ImageFormat::Tiff {
        let as_gray = super::tiff::palette_as_gray(bytes);
        if let Some(picture) =
            TiffPicture::open(bytes, as_gray.as_deref()).context("cannot decode TIFF")?
        {
            return decode_tiff(picture);
        }
    }
    decode_with_image_crate(bytes, format)
}

/// Decodes `bytes` of `format` with the `image` crate (JPEGs with libjpeg's code).
fn decode_with_image_crate(bytes: &[u8], format: ImageFormat) -> Result<RgbImage> {
    match format {
        ImageFormat::Avif => bail!(
            "AVIF is not supported (vit has no AVIF decoder); convert it to PNG or JPEG first"
        ),
        ImageFormat::Jpeg if !jpeg_is_complete(bytes) => {
            bail!("truncated JPEG (no end-of-image marker)")
        }
        _ => {}
    }
    let reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut decoder = reader.into_decoder().context("cannot decode image")?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height)?;
    let orientation = orientation_of(&mut decoder).context("cannot decode image")?;
    let mut image = match format {
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(decode_jpeg_like_pillow(bytes)?),
        _ => DynamicImage::from_decoder(decoder).context("cannot decode image")?,
    };
    image.apply_orientation(orientation);
    Ok(into_rgb8_as_pillow(image))
}

/// The EXIF orientation of a picture, also where its EXIF chunk keeps JPEG's `Exif\0\0`
/// prefix (as some writers do in WebP and PNG files, and as Pillow reads them).
fn orientation_of(decoder: &mut impl ImageDecoder) -> image::ImageResult<Orientation> {
    let orientation = decoder.orientation()?;
    if orientation != Orientation::NoTransforms {
        return Ok(orientation);
    }
    let prefixed = decoder.exif_metadata()?.and_then(|chunk| {
        let tiff = chunk.strip_prefix(b"Exif\0\0")?;
        Orientation::from_exif_chunk(tiff)
    });
    Ok(prefixed.unwrap_or(Orientation::NoTransforms))
}

/// RGB bytes as Pillow's `convert("RGB")` gives them, but for 16-bit gray: 16-bit colour is
/// reduced to its high byte (Pillow's `RGB;16B` unpacker); 16-bit gray is scaled (Pillow
/// clips it to 255, which whitens most of the picture).
fn into_rgb8_as_pillow(image: DynamicImage) -> RgbImage {
    let high_bytes = |samples: &[u16], channels: usize| -> Vec<u8> {
        samples
            .chunks_exact(channels)
            .flat_map(|pixel| [0, 1, 2].map(|c| (pixel[c] >> 8) as u8))
            .collect()
    };
    let (width, height) = (image.width(), image.height());
    let rgb = match &image {
        DynamicImage::ImageRgb16(pixels) => high_bytes(pixels.as_raw(), 3),
        DynamicImage::ImageRgba16(pixels) => high_bytes(pixels.as_raw(), 4),
        _ => return image.into_rgb8(),
    };
    RgbImage::from_raw(width, height, rgb).expect("three bytes per pixel")
}

/// Decodes a TIFF the `image` crate would refuse or mishandle (see [`TiffPicture`]).
fn decode_tiff(mut picture: TiffPicture) -> Result<RgbImage> {
    let (width, height) = picture.dimensions();
    check_pixels(width, height)?;
    let orientation = Orientation::from_exif(picture.orientation()?);
    let mut image = DynamicImage::ImageRgb8(picture.into_rgb().context("cannot decode TIFF")?);
    image.apply_orientation(orientation.unwrap_or(Orientation::NoTransforms));
    Ok(image.into_rgb8())
}

/// Decodes a JPEG to RGB with libjpeg's defaults (integer IDCT, fancy upsampling). CMYK
/// (and YCCK) JPEGs become RGB as Pillow's `convert("RGB")` makes them.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Result<RgbImage> {
    let decode = || -> std::io::Result<RgbImage> {
        let decompress = mozjpeg::Decompress::new_mem(bytes)?;
        let cmyk = matches!(
            decompress.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        );
        let mut started = match cmyk {
            true => decompress.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?,
            false => decompress.rgb()?,
        };
        let (width, height) = (started.width() as u32, started.height() as u32);
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        let pixels = match cmyk {
            true => pixels.chunks_exact(4).flat_map(adobe_cmyk_to_rgb).collect(),
            false => pixels,
        };
        RgbImage::from_raw(width, height, pixels)
            .ok_or_else(|| std::io::Error::other("decoded size does not match the header"))
    };
    // mozjpeg reports some libjpeg errors by unwinding; keep them as errors.
    crate::panics::catch("cannot decode JPEG", || {
        decode().context("cannot decode JPEG")
    })
}

/// One pixel of a CMYK JPEG as Pillow reads it (Adobe's inverted polarity, `CMYK;I`) and
/// converts it to RGB: `255 - k - c (255 - k) / 255`, rounded as Pillow's `MULDIV255`.
fn adobe_cmyk_to_rgb(stored: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let not_black = stored[3] as u32;
    [0, 1, 2].map(|i| {
        let ink = 255 - stored[i] as u32;
        (not_black - muldiv255(ink, not_black)) as u8
    })
}

/// Whether a JPEG stream reaches its end-of-image marker. Walks the marker segments and the
/// entropy-coded scans (where 0xFF is always followed by 0x00 or a restart marker), as
/// libjpeg does before reporting a premature end of data; the `image` crate's decoder pads
/// truncated scans silently instead.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    let mut i = 2; // after SOI
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            EOI => return true,
            0xFF => i += 1, // fill byte
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let Some(length) = bytes.get(i + 2..i + 4) else {
                    return false;
                };
                i += 2 + u16::from_be_bytes([length[0], length[1]]) as usize;
                if marker == SOS {
                    // Skip entropy-coded data up to the next real marker.
                    while i + 1 < bytes.len()
                        && (bytes[i] != 0xFF || matches!(bytes[i + 1], 0x00 | 0xD0..=0xD7))
                    {
                        i += 1;
                    }
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the generator wrote with Pillow into `formats/` decodes to Pillow's pixels.
    #[test]
    fn generated_formats_decode_as_pillow_decodes_them() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
        let cpu = &candle_core::Device::Cpu;
        let expected = candle_core::safetensors::load(dir.join("pixels.safetensors"), cpu);
        let expected = expected.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "pixels.safetensors")
            .collect();
        names.sort();
        assert_eq!(names.len(), expected.len(), "{names:?}");
        for name in names {
            let pixels = &expected[&name.replace('.', "_")];
            let image = load_rgb(&dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let (height, width, _) = pixels.dims3().unwrap();
            let size = (image.height() as usize, image.width() as usize);
            assert_eq!(size, (height, width), "{name}");
            let pixels = pixels.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            assert!(
                image.as_raw() == &pixels,
                "{name}: pixels differ from Pillow's"
            );
        }
    }

    #[test]
    fn avif_is_refused_naming_the_format() {
        // An AVIF file's start: its `ftyp` box.
        let mut bytes = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf".to_vec();
        bytes.resize(64, 0);
        let err = decode_rgb(&bytes).unwrap_err().to_string();
        assert!(err.starts_with("AVIF is not supported"), "{err}");
    }

    #[test]
    fn truncated_jpegs_are_detected() {
        let mut bytes = Vec::new();
        let image = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 77]));
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg)
            .unwrap();
        assert!(jpeg_is_complete(&bytes));
        for cut in [bytes.len() - 2, bytes.len() / 2, 10, 3] {
            assert!(!jpeg_is_complete(&bytes[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn formats_without_a_signature_are_read_by_their_extension() {
        let dir = tempfile::tempdir().unwrap();
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let path = dir.path().join("picture.tga");
        image.save(&path).unwrap();
        assert_eq!(load_rgb(&path).unwrap(), image);
        let renamed = dir.path().join("picture.bin");
        std::fs::rename(&path, &renamed).unwrap();
        let err = load_rgb(&renamed).unwrap_err().to_string();
        assert!(err.contains("not a recognized image format"), "{err}");
    }

    #[test]
    fn sixteen_bit_colour_keeps_its_high_byte_as_pillow_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rgb16.png");
        let image = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(2, 1, |x, _| {
            image::Rgb(if x == 0 {
                [0x12ff, 0x0080, 0xffff]
            } else {
                [1, 0x7f7f, 0x8000]
            })
        });
        image.save(&path).unwrap();
        let rgb = load_rgb(&path).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0x12, 0x00, 0xff]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0x00, 0x7f, 0x80]);
    }

    #[test]
    fn sixteen_bit_gray_is_scaled_not_clipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gray16.png");
        let image = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(2, 1, |x, _| {
            image::Luma([if x == 0 { 257 * 10 } else { 65535 }])
        });
        image.save(&path).unwrap();
        let rgb = load_rgb(&path).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [10, 10, 10]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
    }
}
