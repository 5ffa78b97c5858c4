//! Portable float maps (PFM), which the `image` crate does not read: `Pf` (gray, the one
//! Pillow reads) and `PF` (colour). Samples become bytes as Pillow's `F` to `L` makes them:
//! clipped to 0..=255 and truncated, NaN 0.

use anyhow::{bail, Context, Result};
use image::RgbImage;

/// Whether `bytes` start as a PFM file does.
pub(super) fn is_pfm(bytes: &[u8]) -> bool {
    matches!(bytes, [b'P', b'f' | b'F', next, ..] if next.is_ascii_whitespace())
}

/// Decodes a PFM file; `check_size` may refuse its width and height before the pixels are
/// allocated.
pub(super) fn decode(
    bytes: &[u8],
    check_size: impl FnOnce(u32, u32) -> Result<()>,
) -> Result<RgbImage> {
    let channels = match bytes.get(1) {
        Some(b'f') => 1,
        _ => 3,
    };
    let mut at = 2;
    let mut token = || next_token(bytes, &mut at);
    let width: u32 = parse(token()?, "width")?;
    let height: u32 = parse(token()?, "height")?;
    let scale: f32 = parse(token()?, "scale")?;
    if scale == 0.0 || !scale.is_finite() {
        bail!("PFM scale must be finite and non-zero, not {scale}");
    }
    check_size(width, height)?;
    at += 1; // the one whitespace byte after the scale
    let row_bytes = width as usize * channels * 4;
    let size = row_bytes * height as usize;
    let data = bytes
        .get(at..)
        .and_then(|data| data.get(..size))
        .with_context(|| {
            format!("truncated PFM: {width}x{height} needs {size} bytes of samples")
        })?;
    let little_endian = scale < 0.0;
    let sample = |offset: usize| {
        let raw: [u8; 4] = data[offset..offset + 4].try_into().expect("four bytes");
        let value = match little_endian {
            true => f32::from_le_bytes(raw),
            false => f32::from_be_bytes(raw),
        };
        match value {
            v if v >= 255.0 => 255,
            v if v > 0.0 => v as u8,
            _ => 0, // also NaN
        }
    };
    // Rows are stored bottom to top.
    Ok(RgbImage::from_fn(width, height, |x, y| {
        let row = (height - 1 - y) as usize * row_bytes;
        let first = row + x as usize * channels * 4;
        image::Rgb(match channels {
            1 => [sample(first); 3],
            _ => [0, 1, 2].map(|c| sample(first + 4 * c)),
        })
    }))
}

/// The next whitespace-separated header token at or after `*at` (a `#` starts a comment that
/// runs to the end of its line), leaving `*at` just after it.
fn next_token<'a>(bytes: &'a [u8], at: &mut usize) -> Result<&'a str> {
    loop {
        match bytes.get(*at) {
            None => bail!("truncated PFM header"),
            Some(b'#') => {
                while bytes.get(*at).is_some_and(|&b| b != b'\n' && b != b'\r') {
                    *at += 1;
                }
            }
            Some(b) if b.is_ascii_whitespace() => *at += 1,
            Some(_) => break,
        }
    }
    let start = *at;
    while bytes
        .get(*at)
        .is_some_and(|b| !b.is_ascii_whitespace() && *at - start < 32)
    {
        *at += 1;
    }
    std::str::from_utf8(&bytes[start..*at]).context("PFM header is not text")
}

fn parse<T: std::str::FromStr>(token: &str, what: &str) -> Result<T> {
    token
        .parse()
        .ok()
        .with_context(|| format!("PFM {what} {token:?} is not a number of its kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pfm(magic: &str, width: u32, height: u32, scale: &str, samples: &[f32]) -> Vec<u8> {
        let mut bytes =
            format!("{magic}\n# made by a test\n{width} {height}\n{scale}\n").into_bytes();
        for v in samples {
            match scale.starts_with('-') {
                true => bytes.extend(v.to_le_bytes()),
                false => bytes.extend(v.to_be_bytes()),
            }
        }
        bytes
    }

    #[test]
    fn gray_and_colour_maps_decode_bottom_row_first_as_pillow_converts_them() {
        let ok = |_, _| Ok(());
        // Two rows of two: the file's first row is the picture's bottom one.
        let gray = pfm("Pf", 2, 2, "-1.0", &[1.5, 300.0, -2.0, f32::NAN]);
        assert!(is_pfm(&gray));
        let image = decode(&gray, ok).unwrap();
        assert_eq!(image.get_pixel(0, 1).0, [1, 1, 1]);
        assert_eq!(image.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(1, 0).0, [0, 0, 0]);
        let colour = pfm("PF", 1, 1, "1.0", &[10.9, 20.0, 254.99]);
        assert_eq!(
            decode(&colour, ok).unwrap().get_pixel(0, 0).0,
            [10, 20, 254]
        );
    }

    #[test]
    fn bad_headers_and_short_data_are_refused() {
        let ok = |_, _| Ok(());
        let short = pfm("Pf", 3, 3, "-1.0", &[0.0; 8]);
        let err = decode(&short, ok).unwrap_err().to_string();
        assert!(err.contains("truncated PFM"), "{err}");
        for scale in ["0", "nan", "inf", "x"] {
            assert!(
                decode(&pfm("Pf", 1, 1, scale, &[0.0]), ok).is_err(),
                "{scale}"
            );
        }
        assert!(decode(b"Pf\n-1 1\n1\n", ok).is_err());
        let refused = decode(&pfm("Pf", 1, 1, "-1", &[0.0]), |_, _| bail!("too big"));
        assert_eq!(refused.unwrap_err().to_string(), "too big");
    }
}
