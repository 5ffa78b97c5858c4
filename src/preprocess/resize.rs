//! TEMPORARY placeholder until the Pillow-exact resize lands (helper overwrites this file).
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
    pub fn from_pil_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }
}
pub fn resize_rgb8(
    src: &image::RgbImage,
    width: u32,
    height: u32,
    _filter: Resample,
) -> image::RgbImage {
    image::imageops::resize(src, width, height, image::imageops::FilterType::CatmullRom)
}
