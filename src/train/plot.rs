//! Line charts drawn directly into an image (no plotting crate): panels side by side, each
//! with a frame, a grid, labelled ticks, a title and a legend above, and its curves.

use image::{Rgb, RgbImage};

/// One curve: `(x, y)` points joined by lines, each marked with a dot.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    /// Tick labels as percentages (for values in 0..1).
    pub percent: bool,
    pub series: Vec<Series>,
    /// An x position to mark with a dotted vertical line (e.g. the best epoch).
    pub marker: Option<f64>,
}

/// Blue and orange, the usual first two chart colours.
pub const BLUE: [u8; 3] = [31, 119, 180];
/// The second series colour.
pub const ORANGE: [u8; 3] = [255, 127, 14];

const PANEL_W: u32 = 520;
const HEIGHT: u32 = 400;
const SCALE: u32 = 2; // font pixels per glyph pixel
const MARGIN_LEFT: i64 = 80;
const MARGIN_RIGHT: i64 = 24;
const MARGIN_TOP: i64 = 44;
const MARGIN_BOTTOM: i64 = 56;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// Draws the panels side by side.
pub fn render(panels: &[Panel]) -> RgbImage {
    let mut image = RgbImage::from_pixel(PANEL_W * panels.len().max(1) as u32, HEIGHT, WHITE);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut image, (i as u32 * PANEL_W) as i64, panel);
    }
    image
}

/// `(low, high, step)` of round ticks covering `low..high`.
fn nice_range(low: f64, high: f64) -> (f64, f64, f64) {
    let (low, high) = if high - low < 1e-9 {
        (
            low - 0.5_f64.max(low.abs() * 0.1),
            high + 0.5_f64.max(high.abs() * 0.1),
        )
    } else {
        (low, high)
    };
    let raw = (high - low) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    (
        (low / step).floor() * step,
        (high / step).ceil() * step,
        step,
    )
}

fn draw_panel(image: &mut RgbImage, left: i64, panel: &Panel) {
    let (x0, x1) = (left + MARGIN_LEFT, left + PANEL_W as i64 - MARGIN_RIGHT);
    let (y0, y1) = (MARGIN_TOP, HEIGHT as i64 - MARGIN_BOTTOM);
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut xmax, mut ylow, mut yhigh) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        xmax = xmax.max(x);
        ylow = ylow.min(y);
        yhigh = yhigh.max(y);
    }
    if !ylow.is_finite() {
        (ylow, yhigh) = (0.0, 1.0);
    }
    let (ylow, yhigh, ystep) = nice_range(ylow, yhigh);
    let (_, xhigh, xstep) = nice_range(0.0, xmax);
    let xstep = xstep.max(1.0);
    let to_px = |x: f64, y: f64| {
        let px = x0 as f64 + (x / xhigh) * (x1 - x0) as f64;
        let py = y1 as f64 - (y - ylow) / (yhigh - ylow) * (y1 - y0) as f64;
        (px.round() as i64, py.round() as i64)
    };

    // Grid and tick labels.
    let mut y = ylow;
    while y <= yhigh + ystep * 1e-6 {
        let (_, py) = to_px(0.0, y);
        hline(image, x0, x1, py, GRID);
        let label = match panel.percent {
            true => format!("{}%", trim_number(y * 100.0)),
            false => trim_number(y),
        };
        let width = text_width(&label);
        draw_text(image, x0 - 8 - width, py - 7, &label, BLACK);
        y += ystep;
    }
    let mut x = 0.0;
    while x <= xhigh + xstep * 1e-6 {
        let (px, _) = to_px(x, ylow);
        vline(image, px, y0, y1, GRID);
        let label = trim_number(x);
        draw_text(image, px - text_width(&label) / 2, y1 + 8, &label, BLACK);
        x += xstep;
    }
    if let Some(mark) = panel.marker {
        let (px, _) = to_px(mark, ylow);
        for py in (y0..y1).step_by(6) {
            vline(image, px, py, py + 2, Rgb([150, 150, 150]));
        }
    }
    // Frame, title, axis label.
    hline(image, x0, x1, y0, BLACK);
    hline(image, x0, x1, y1, BLACK);
    vline(image, x0, y0, y1, BLACK);
    vline(image, x1, y0, y1, BLACK);
    draw_text(image, x0, 12, &panel.title, BLACK);
    let label_x = (x0 + x1) / 2 - text_width(&panel.x_label) / 2;
    draw_text(image, label_x, y1 + 30, &panel.x_label, BLACK);

    // The curves, with a dot at each point.
    for series in &panel.series {
        let color = Rgb(series.color);
        let pixels: Vec<(i64, i64)> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| to_px(x, y))
            .collect();
        for pair in pixels.windows(2) {
            line(image, pair[0], pair[1], color);
        }
        for &(px, py) in &pixels {
            fill(image, px - 3, py - 3, 7, 7, color);
        }
    }
    // The legend, right-aligned on the title row: a swatch and a name per series.
    let mut lx = x1;
    for series in panel.series.iter().rev() {
        lx -= text_width(&series.name);
        draw_text(image, lx, 12, &series.name, BLACK);
        lx -= 28;
        fill(image, lx, 18, 22, 3, Rgb(series.color));
        lx -= 16;
    }
}

/// A tick value without trailing zeros: `0.25`, `3`, `1.5`.
fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" | "" => "0".into(),
        other => other.into(),
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, color);
    }
}

fn fill(image: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
    for dy in 0..h {
        for dx in 0..w {
            put(image, x + dx, y + dy, color);
        }
    }
}

fn hline(image: &mut RgbImage, x0: i64, x1: i64, y: i64, color: Rgb<u8>) {
    fill(image, x0, y, x1 - x0 + 1, 1, color);
}

fn vline(image: &mut RgbImage, x: i64, y0: i64, y1: i64, color: Rgb<u8>) {
    fill(image, x, y0, 1, y1 - y0 + 1, color);
}

/// A 2-pixel-wide line (Bresenham).
fn line(image: &mut RgbImage, (mut x, mut y): (i64, i64), (x1, y1): (i64, i64), color: Rgb<u8>) {
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = ((x1 - x).signum(), (y1 - y).signum());
    let mut err = dx + dy;
    loop {
        fill(image, x, y, 2, 2, color);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// 5x7 glyphs, one byte per row, bit 4 the leftmost pixel.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 14, 0, 0, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        _ => [0; 7],
    }
}

const ADVANCE: i64 = 6 * SCALE as i64;

fn text_width(text: &str) -> i64 {
    text.chars().count() as i64 * ADVANCE - SCALE as i64
}

fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, color: Rgb<u8>) {
    let s = SCALE as i64;
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5 {
                if bits & (16 >> col) != 0 {
                    let gx = x + i as i64 * ADVANCE + col * s;
                    fill(image, gx, y + row as i64 * s, s, s, color);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(points: Vec<(f64, f64)>) -> Panel {
        Panel {
            title: "loss".into(),
            x_label: "epoch".into(),
            percent: false,
            series: vec![Series {
                name: "train".into(),
                color: BLUE,
                points,
            }],
            marker: Some(2.0),
        }
    }

    fn count(image: &RgbImage, color: [u8; 3]) -> usize {
        image.pixels().filter(|p| p.0 == color).count()
    }

    #[test]
    fn curves_are_drawn_inside_their_panel() {
        let image = render(&[
            panel(vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)]),
            panel(vec![]),
        ]);
        assert_eq!(image.dimensions(), (2 * PANEL_W, HEIGHT));
        let blue_left = (0..PANEL_W)
            .flat_map(|x| (0..HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| image.get_pixel(x, y).0 == BLUE)
            .count();
        // The legend swatch is 66 pixels; the curve and its dots add many more.
        assert!(blue_left > 400, "{blue_left}");
        assert!(
            count(&image, BLUE) < blue_left + 100,
            "the empty panel has only its legend"
        );
        // The curve descends: its first dot is above (smaller y) its last.
        let first = to_dot(&image, 0);
        let last = to_dot(&image, 1);
        assert!(first < last, "{first} {last}");
    }

    /// Row of the topmost blue pixel in the first or last third of the first panel's plot area.
    fn to_dot(image: &RgbImage, which: usize) -> u32 {
        let span = (MARGIN_LEFT as u32 + 120, PANEL_W - MARGIN_RIGHT as u32 - 60);
        let columns = match which {
            0 => span.0..span.0 + 80,
            _ => span.1 - 80..span.1,
        };
        columns
            .flat_map(|x| (MARGIN_TOP as u32 + 60..HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| image.get_pixel(x, y).0 == BLUE)
            .map(|(_, y)| y)
            .min()
            .unwrap()
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(nice_range(0.03, 0.97), (0.0, 1.0, 0.2));
        assert_eq!(nice_range(0.0, 7.0), (0.0, 8.0, 2.0));
        let (low, high, _) = nice_range(0.5, 0.5);
        assert!(low < 0.5 && high > 0.5);
        assert_eq!(trim_number(0.25), "0.25");
        assert_eq!(trim_number(3.0), "3");
        assert_eq!(trim_number(-0.0001), "0");
    }

    #[test]
    fn every_label_character_has_a_glyph() {
        for c in "0123456789.-% loss accuracy epoch train val best".chars() {
            assert!(c == ' ' || glyph(c) != [0; 7], "{c:?}");
        }
    }
}
