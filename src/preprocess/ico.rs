//! Windows icons (ICO) and cursors (CUR): the picture Pillow picks from the directory,
//! handed on alone. The `image` crate reads neither cursors nor icons whose PNG pictures
//! are not RGBA (Pillow writes RGB and gray ones), and picks another picture than Pillow
//! from a directory (the deepest colour first, where Pillow takes the largest).

use anyhow::{bail, Context, Result};

const ICON: u16 = 1;
const CURSOR: u16 = 2;
const HEADER_BYTES: usize = 6;
const ENTRY_BYTES: usize = 16;

/// Whether `bytes` start as an icon or a cursor does: the type, and at least one picture.
pub(super) fn is_icon(bytes: &[u8]) -> bool {
    matches!(bytes, [0, 0, 1 | 2, 0, count_low, count_high, ..] if *count_low > 0 || *count_high > 0)
}

/// The picture of an icon or cursor that Pillow opens.
pub(super) enum Picked<'a> {
    /// A PNG file, stored whole in the icon.
    Png(&'a [u8]),
    /// A bitmap, as an icon file with this one picture (for the `image` crate's reader).
    SingleIcon(Vec<u8>),
}

/// One directory entry: its raw fields and where its picture lies.
struct Entry {
    width: u8,
    height: u8,
    colors: u8,
    bits_per_pixel: u16,
    data: std::ops::Range<usize>,
    raw: [u8; ENTRY_BYTES],
}

/// Picks the picture Pillow opens: of an icon, the largest (width x height), of equal ones
/// the smallest colour depth first in the file; of a cursor, the first unless a later one is
/// larger in both dimensions.
pub(super) fn pick(bytes: &[u8]) -> Result<Picked<'_>> {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let kind = u16_at(2);
    let count = u16_at(4) as usize;
    let entries = (0..count)
        .map(|i| {
            let at = HEADER_BYTES + i * ENTRY_BYTES;
            let raw: [u8; ENTRY_BYTES] = bytes
                .get(at..at + ENTRY_BYTES)
                .context("truncated icon directory")?
                .try_into()
                .expect("an entry's bytes");
            let size = u32::from_le_bytes(raw[8..12].try_into().expect("four bytes")) as usize;
            let offset = u32::from_le_bytes(raw[12..16].try_into().expect("four bytes")) as usize;
            let data = offset
                ..offset
                    .checked_add(size)
                    .context("icon entry past the file")?;
            if data.end > bytes.len() {
                bail!("icon entry {i} lies past the end of the file");
            }
            Ok(Entry {
                width: raw[0],
                height: raw[1],
                colors: raw[2],
                bits_per_pixel: u16::from_le_bytes([raw[6], raw[7]]),
                data,
                raw,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let chosen = match kind {
        CURSOR => entries.iter().reduce(|best, entry| {
            match entry.width > best.width && entry.height > best.height {
                true => entry,
                false => best,
            }
        }),
        _ => entries.iter().reduce(|best, entry| {
            // Larger wins; of equal size, a smaller colour depth (earlier on ties).
            let key = |e: &Entry| (e.area(), std::cmp::Reverse(e.color_depth()));
            if key(entry) > key(best) {
                entry
            } else {
                best
            }
        }),
    }
    .context("icon without pictures")?;
    let data = &bytes[chosen.data.clone()];
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Picked::Png(data));
    }
    // A one-picture icon; a cursor's hotspot fields become an icon's planes and depth.
    let mut entry = chosen.raw;
    if kind == CURSOR {
        entry[4..6].copy_from_slice(&1u16.to_le_bytes());
        entry[6..8].copy_from_slice(&0u16.to_le_bytes());
    }
    entry[12..16].copy_from_slice(&((HEADER_BYTES + ENTRY_BYTES) as u32).to_le_bytes());
    let mut single = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES + data.len());
    single.extend([0, 0]);
    single.extend(ICON.to_le_bytes());
    single.extend(1u16.to_le_bytes());
    single.extend(entry);
    single.extend(data);
    Ok(Picked::SingleIcon(single))
}

impl Entry {
    /// Width times height, 0 standing for 256 (as Pillow reads them).
    fn area(&self) -> u32 {
        let side = |v: u8| if v == 0 { 256 } else { v as u32 };
        side(self.width) * side(self.height)
    }

    /// Pillow's colour depth: the bits per pixel, else what the colour count needs, else 256.
    fn color_depth(&self) -> u32 {
        match (self.bits_per_pixel, self.colors) {
            (0, 0) => 256,
            // ceil(log2(colors)); 0 (one colour) counts as 256, as in Pillow.
            (0, 1) => 256,
            (0, colors) => (colors as u32).next_power_of_two().trailing_zeros(),
            (bits, _) => bits as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An icon (or cursor) file of `pictures`: (width, height, bits per pixel, data).
    fn icon(kind: u16, pictures: &[(u8, u8, u16, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0, 0];
        bytes.extend(kind.to_le_bytes());
        bytes.extend((pictures.len() as u16).to_le_bytes());
        let mut offset = HEADER_BYTES + ENTRY_BYTES * pictures.len();
        for (w, h, bits, data) in pictures {
            bytes.extend([*w, *h, 0, 0, 1, 0]);
            bytes.extend(bits.to_le_bytes());
            bytes.extend((data.len() as u32).to_le_bytes());
            bytes.extend((offset as u32).to_le_bytes());
            offset += data.len();
        }
        for (.., data) in pictures {
            bytes.extend(*data);
        }
        bytes
    }

    #[test]
    fn the_largest_icon_picture_with_the_smallest_depth_is_picked_as_pillow_does() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        let file = icon(
            ICON,
            &[
                (16, 16, 32, b"small"),
                (32, 32, 32, png),
                (32, 32, 8, b"bmp8"),
            ],
        );
        assert!(is_icon(&file));
        match pick(&file).unwrap() {
            Picked::SingleIcon(single) => {
                assert_eq!(&single[2..6], [1, 0, 1, 0]);
                assert_eq!(&single[HEADER_BYTES..HEADER_BYTES + 2], [32, 32]);
                assert_eq!(&single[HEADER_BYTES + ENTRY_BYTES..], b"bmp8");
            }
            Picked::Png(_) => panic!("the 8-bit picture comes first"),
        }
        let file = icon(ICON, &[(16, 16, 32, b"small"), (0, 0, 32, png)]);
        assert!(matches!(pick(&file).unwrap(), Picked::Png(data) if data == png));
    }

    #[test]
    fn a_cursor_keeps_its_first_picture_unless_a_later_one_is_larger_both_ways() {
        let file = icon(CURSOR, &[(32, 16, 0, b"first"), (48, 16, 0, b"wider")]);
        match pick(&file).unwrap() {
            Picked::SingleIcon(single) => {
                assert_eq!(&single[2..4], [1, 0], "read as an icon");
                assert_eq!(&single[HEADER_BYTES + ENTRY_BYTES..], b"first");
            }
            Picked::Png(_) => panic!("a bitmap"),
        }
    }

    #[test]
    fn entries_past_the_end_are_refused() {
        let mut file = icon(ICON, &[(16, 16, 32, b"data")]);
        file.truncate(file.len() - 1);
        assert!(pick(&file).is_err());
        assert!(pick(&[0, 0, 1, 0, 5, 0]).is_err());
    }
}
