//! int8 dense layers: weights int8 with one scale per output channel, packed once when the
//! model loads; activations quantized per row as each product starts (dynamic quantization,
//! as ONNX Runtime's `quantize_dynamic` models run); int32 sums; f32 out through the layer's
//! epilogue (bias, activation, residual) as each tile is stored.
//!
//! - [`quantize`]: the symmetric quantization of weights and activations.
//! - `microkernel`: AVX-512 VNNI, AVX2 and portable kernels, chosen at run time.
//! - Here: the packed weight ([`PackedI8`]), quantized A, and the loop over tiles and
//!   threads (the f32 engine's split, [`super::gemm::Split`]).

mod microkernel;
pub mod quantize;

use super::cache::CacheSizes;
use super::epilogue::Epilogue;
use super::gemm::Split;
use super::microkernel::MR;
use super::{pool, Isa, SendPtr};
use microkernel::{kernel_for, TileStore};
use quantize::{activation_params, min_max, quantize_unsigned};

/// An int8 microkernel. All of them read the same operands: A as unsigned 8-bit codes and
/// the weight packed in panels of `nr` columns where a step holds the 4 int8 weights of 4
/// successive depths of each column in turn (so that `vpdpbusd` and `vpmaddubsw` take a
/// column's step as one 32-bit lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 with VNNI (`vpdpbusd`): 6 x 64.
    Avx512Vnni,
    /// AVX2 (`vpmaddubsw`, then `vpmaddwd` by ones): 6 x 16; also AVX-512 CPUs without
    /// VNNI.
    Avx2,
    /// Plain Rust, 6 x 16: any other CPU.
    Portable,
}

impl Int8Kernel {
    /// The int8 kernel of the f32 engine's instruction set `isa` on this CPU.
    pub fn for_isa(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let vnni = std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            match isa {
                Isa::Avx512 if vnni => return Self::Avx512Vnni,
                Isa::Avx512 | Isa::Avx2 => return Self::Avx2,
                Isa::Portable => {}
            }
        }
        let _ = isa;
        Self::Portable
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// The columns of a panel.
    pub(crate) const fn nr(self) -> usize {
        match self {
            Self::Avx512Vnni => 64,
            Self::Avx2 | Self::Portable => 16,
        }
    }
}

/// Depths per step of a panel (a 32-bit lane of 4 bytes).
const DEPTHS_PER_STEP: usize = 4;

/// A dense layer's int8 weight `W` (`n` output channels of `k`), packed for one kernel, with
/// its per-channel scales.
pub struct PackedI8 {
    kernel: Int8Kernel,
    k: usize,
    n: usize,
    /// Steps of the padded depth.
    steps: usize,
    /// Panels of `nr` columns, each `steps * 4 * nr` bytes.
    panels: Vec<u8>,
    /// Per column, padded to whole panels with zeros.
    scales: Vec<f32>,
    /// Per column, the sum of its weights (what A's zero point adds to each product).
    column_sums: Vec<i32>,
}

impl std::fmt::Debug for PackedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedI8")
            .field("kernel", &self.kernel)
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl PackedI8 {
    /// From `n` int8 channels of `k` values, `row(j)` being channel `j`, and their scales. A
    /// channel outside the pair bound ([`quantize::fits_pair_bound`], which
    /// [`quantize::quantize_channel`] keeps) is quantized again from its values.
    pub fn new<'w>(
        kernel: Int8Kernel,
        (n, k): (usize, usize),
        row: impl Fn(usize) -> &'w [i8] + Sync,
        scales: &[f32],
    ) -> Self {
        assert_eq!(scales.len(), n, "{} scales for {n} channels", scales.len());
        let requantized: Vec<Option<(Vec<i8>, f32)>> = (0..n)
            .map(|j| {
                let codes = row(j);
                (!quantize::fits_pair_bound(codes)).then(|| {
                    let values: Vec<f32> = codes.iter().map(|&q| q as f32 * scales[j]).collect();
                    quantize::quantize_channel(&values)
                })
            })
            .collect();
        let row = |j: usize| requantized[j].as_ref().map_or(row(j), |(codes, _)| codes);
        let scales: Vec<f32> = (0..n)
            .map(|j| {
                requantized[j]
                    .as_ref()
                    .map_or(scales[j], |&(_, scale)| scale)
            })
            .collect();
        Self::pack(kernel, (n, k), row, &scales)
    }

    /// [`PackedI8::new`] of channels already within the pair bound.
    fn pack<'w>(
        kernel: Int8Kernel,
        (n, k): (usize, usize),
        row: impl Fn(usize) -> &'w [i8] + Sync,
        scales: &[f32],
    ) -> Self {
        let nr = kernel.nr();
        let steps = k.div_ceil(DEPTHS_PER_STEP);
        let panel_count = n.div_ceil(nr);
        let panel_bytes = steps * 4 * nr;
        let mut panels = vec![0u8; panel_count * panel_bytes];
        let fill_panel = |p: usize, panel: &mut [u8]| {
            for c in 0..nr.min(n - p * nr) {
                let channel = row(p * nr + c);
                assert_eq!(
                    channel.len(),
                    k,
                    "channel of {} values for {k}",
                    channel.len()
                );
                for (d, &w) in channel.iter().enumerate() {
                    let (g, t) = (d / DEPTHS_PER_STEP, d % DEPTHS_PER_STEP);
                    panel[g * 4 * nr + c * 4 + t] = w as u8;
                }
            }
        };
        let base = SendPtr(panels.as_mut_ptr());
        pool::for_each(panel_count, |p| {
            // SAFETY: panel p is its own `panel_bytes` of the buffer.
            let panel =
                unsafe { std::slice::from_raw_parts_mut(base.at(p * panel_bytes), panel_bytes) };
            fill_panel(p, panel);
        });
        let padded = panel_count * nr;
        let mut padded_scales = vec![0f32; padded];
        padded_scales[..n].copy_from_slice(scales);
        let column_sums = (0..padded)
            .map(|j| match j < n {
                true => row(j).iter().map(|&w| w as i32).sum::<i32>(),
                false => 0,
            })
            .collect();
        Self {
            kernel,
            k,
            n,
            steps,
            panels,
            scales: padded_scales,
            column_sums,
        }
    }

    /// Quantizes an f32 weight of `n` rows (output channels) by `k`, `row(j)` being row `j`,
    /// per channel ([`quantize::quantize_channel`]).
    pub fn quantize<'w>(
        kernel: Int8Kernel,
        (n, k): (usize, usize),
        row: impl Fn(usize) -> &'w [f32] + Sync,
    ) -> Self {
        let mut channels: Vec<(Vec<i8>, f32)> = vec![(Vec::new(), 0.0); n];
        let slots = SendPtr(channels.as_mut_ptr());
        pool::for_each(n, |j| {
            // SAFETY: slot j is inside `channels` and written by this task only.
            unsafe { *slots.at(j) = quantize::quantize_channel(row(j)) };
        });
        let scales: Vec<f32> = channels.iter().map(|(_, s)| *s).collect();
        // quantize_channel keeps the pair bound: no channel to check again.
        Self::pack(kernel, (n, k), |j| &channels[j].0, &scales)
    }

    /// `(k, n)`: inputs and outputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The kernel it is packed for.
    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }
}

/// Rows of A quantized: whole tiles of `MR` rows (the padding zero), each row
/// `lda` bytes, and one scale and zero point per row.
struct QuantizedRows {
    data: Vec<u8>,
    lda: usize,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
}

impl QuantizedRows {
    /// `rows` rows of `k` values of `x`, each scaled by `scale` in its row scale too.
    fn new(x: &[f32], rows: usize, k: usize, steps: usize, scale: f32) -> Self {
        let lda = steps * 4;
        let padded_rows = rows.div_ceil(MR) * MR;
        let mut data = vec![0u8; padded_rows * lda];
        let mut scales = vec![0f32; padded_rows];
        let mut zero_points = vec![0i32; padded_rows];
        const ROWS_PER_TASK: usize = 8;
        let base = SendPtr(data.as_mut_ptr());
        let scale_base = SendPtr(scales.as_mut_ptr());
        let zero_base = SendPtr(zero_points.as_mut_ptr());
        pool::for_each(rows.div_ceil(ROWS_PER_TASK), |t| {
            for r in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(rows) {
                // SAFETY: row r's bytes, scale and zero point are this task's alone.
                let (out, row_scale, row_zero) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(base.at(r * lda), lda),
                        &mut *scale_base.at(r),
                        &mut *zero_base.at(r),
                    )
                };
                let (s, z) = quantize_row(&x[r * k..(r + 1) * k], out);
                *row_scale = s * scale;
                *row_zero = z;
            }
        });
        Self {
            data,
            lda,
            scales,
            zero_points,
        }
    }
}

/// Quantizes one row into `out`, one byte a value; returns its scale and zero point.
fn quantize_row(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { quantize_row_avx2(row, out) };
    }
    quantize_row_generic(row, out)
}

/// [`quantize_row_generic`] on AVX2, 32 values a step (the same operations in the same
/// order, so the same codes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    const STEP: usize = 32;
    let body = row.len() / STEP * STEP;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..body).step_by(8) {
        let v = _mm256_loadu_ps(row.as_ptr().add(i));
        // With a NaN in `v`, min and max return their second operand: NaN counts as none.
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
    }
    let (mut lows, mut highs) = ([0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(lows.as_mut_ptr(), lo);
    _mm256_storeu_ps(highs.as_mut_ptr(), hi);
    let (tail_lo, tail_hi) = min_max(&row[body..]);
    let lo = lows.iter().fold(tail_lo, |m, &x| m.min(x));
    let hi = highs.iter().fold(tail_hi, |m, &x| m.max(x));
    let (scale, zero_point) = activation_params(lo, hi);
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let zero = zero_point as f32;
    let (inv, z, floor, ceiling) = (
        _mm256_set1_ps(inverse),
        _mm256_set1_ps(zero),
        _mm256_setzero_ps(),
        _mm256_set1_ps(255.0),
    );
    let codes = |at: usize| {
        let v = _mm256_loadu_ps(row.as_ptr().add(at));
        let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v, inv),
        );
        let q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, z), floor), ceiling);
        _mm256_cvtps_epi32(q)
    };
    for i in (0..body).step_by(STEP) {
        let [c0, c1, c2, c3] = [codes(i), codes(i + 8), codes(i + 16), codes(i + 24)];
        // packus works within 128-bit lanes: the bytes come out as 4-value groups
        // (c0 lo, c1 lo, c2 lo, c3 lo, c0 hi, ...), put back in order by a permute.
        let bytes = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), ordered);
    }
    for (o, &x) in out.iter_mut().zip(row).skip(body) {
        *o = quantize_unsigned(x, inverse, zero) as u8;
    }
    (scale, zero_point)
}

#[inline(always)]
fn quantize_row_generic(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = min_max(row);
    let (scale, zero_point) = activation_params(lo, hi);
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let zero = zero_point as f32;
    for (o, &x) in out.iter_mut().zip(row) {
        *o = quantize_unsigned(x, inverse, zero) as u8;
    }
    (scale, zero_point)
}

/// `y = epilogue(x W^T)` for `x` of `rows x k` row-major, with `x` quantized per row, on all
/// threads.
pub fn linear_int8(x: &[f32], weight: &PackedI8, epilogue: &Epilogue) -> Vec<f32> {
    let (k, n) = weight.dims();
    let rows = x.len().checked_div(k).unwrap_or(0);
    assert_eq!(rows * k, x.len(), "{} inputs are not rows of {k}", x.len());
    assert!(
        !epilogue.accumulate,
        "linear_int8: nothing to accumulate into"
    );
    if let Some(bias) = epilogue.bias {
        assert!(bias.len() >= n, "bias of {} for {n} columns", bias.len());
    }
    if let Some(residual) = epilogue.residual {
        assert!(residual.len() >= rows * n, "residual of {}", residual.len());
    }
    let nr = weight.kernel.nr();
    let a = QuantizedRows::new(x, rows, k, weight.steps, epilogue.scale);
    let kernel = kernel_for(weight.kernel);
    let panels = n.div_ceil(nr);
    let max_mc = ((CacheSizes::current().l2 / 2) / a.lda.max(1) / MR * MR).max(MR);
    let split = Split::for_tiles(MR, max_mc, rows, panels, rayon::current_num_threads());
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    let out = SendPtr(y.spare_capacity_mut().as_mut_ptr().cast());
    let panel_bytes = weight.steps * 4 * nr;
    pool::for_each(split.row_blocks * split.chunks, |task| {
        let (block, chunk) = (task / split.chunks, task % split.chunks);
        let first_row = block * split.mc;
        let last_row = (first_row + split.mc).min(rows);
        for p in chunk * split.chunk..((chunk + 1) * split.chunk).min(panels) {
            let col = p * nr;
            let cols = nr.min(n - col);
            for r in (first_row..last_row).step_by(MR) {
                // SAFETY: r < rows and col < n, inside y's rows x n capacity.
                let c = unsafe { out.at(r * n + col) };
                let store = TileStore {
                    c,
                    ldc: n,
                    rows: MR.min(rows - r),
                    cols,
                    row_scales: a.scales[r..].as_ptr(),
                    row_zero_points: a.zero_points[r..].as_ptr(),
                    col_scales: weight.scales[col..].as_ptr(),
                    column_sums: weight.column_sums[col..].as_ptr(),
                    bias: epilogue
                        .bias
                        .map_or(std::ptr::null(), |b| b[col..].as_ptr()),
                    activation: epilogue.activation,
                    residual: epilogue
                        .residual
                        .map_or(std::ptr::null(), |res| res[r * n + col..].as_ptr()),
                    ld_residual: n,
                };
                // SAFETY: A's block holds whole tiles of `steps` steps; the panel is
                // `panel_bytes` of the packed weight; the store's pointers address the
                // valid corner of this task's own tile of y, the scales, column sums,
                // bias and residual checked above. The kernel is this CPU's.
                unsafe {
                    kernel(
                        weight.steps,
                        a.data[r * a.lda..].as_ptr(),
                        a.lda,
                        weight.panels[p * panel_bytes..].as_ptr(),
                        &store,
                    )
                };
            }
        }
    });
    // SAFETY: the tasks' tiles cover every row and column of y.
    unsafe { y.set_len(rows * n) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;
    use crate::kernels::epilogue::Activation;

    /// The kernels this CPU runs.
    fn kernels() -> Vec<Int8Kernel> {
        let mut all: Vec<Int8Kernel> = Isa::supported()
            .into_iter()
            .map(Int8Kernel::for_isa)
            .collect();
        all.dedup();
        all
    }

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 1.5)
            .collect()
    }

    /// The product as the kernels define it, from the quantized values, in scalar code.
    fn reference(
        x: &[f32],
        w: &[f32],
        (rows, k, n): (usize, usize, usize),
        e: &Epilogue,
    ) -> Vec<f32> {
        let channels: Vec<(Vec<i8>, f32)> = (0..n)
            .map(|j| quantize::quantize_channel(&w[j * k..(j + 1) * k]))
            .collect();
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            let row = &x[r * k..(r + 1) * k];
            let (lo, hi) = quantize::min_max(row);
            let (scale, zero) = quantize::activation_params(lo, hi);
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let q: Vec<i32> = row
                .iter()
                .map(|&v| quantize::quantize_unsigned(v, inverse, zero as f32) as i32 - zero)
                .collect();
            for j in 0..n {
                let (wq, ws) = &channels[j];
                let sum: i32 = q.iter().zip(wq).map(|(&a, &b)| a * b as i32).sum();
                let mut v = sum as f32 * (scale * e.scale * ws);
                if let Some(bias) = e.bias {
                    v += bias[j];
                }
                v = e.activation.apply(v);
                if let Some(residual) = e.residual {
                    v += residual[r * n + j];
                }
                y[r * n + j] = v;
            }
        }
        y
    }

    #[test]
    fn every_kernel_gives_the_reference_bit_for_bit_on_ragged_shapes() {
        for &(rows, k, n) in &[
            (1, 1, 1),
            (7, 5, 17),
            (197, 70, 96),
            (13, 192, 130),
            (64, 33, 65),
        ] {
            let x = values(rows * k, 1);
            let w = values(n * k, 2);
            let bias = values(n, 3);
            let residual = values(rows * n, 4);
            for epilogue in [
                Epilogue::none(),
                Epilogue::dense(Some(&bias), Activation::Gelu),
                Epilogue {
                    residual: Some(&residual),
                    scale: 0.5,
                    ..Epilogue::dense(Some(&bias), Activation::None)
                },
            ] {
                let expected = reference(&x, &w, (rows, k, n), &epilogue);
                for kernel in kernels() {
                    let packed = PackedI8::quantize(kernel, (n, k), |j| &w[j * k..(j + 1) * k]);
                    let got = linear_int8(&x, &packed, &epilogue);
                    assert_eq!(got.len(), expected.len());
                    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{kernel:?} {rows}x{k}x{n} at {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// The quantized product is within the bound its rounding allows of the exact one: a
    /// weight `w` moves by its own rounding `d_w = |w - s_w q|` (at most half its channel's
    /// step `s_w`, one and a half where the pair bound took one from a code), an activation of
    /// a row whose step is `s_x` (its span / 255) by at most `s_x` (half a step, and half
    /// another where the zero point's rounding pushes a code past 255), so each output moves
    /// by at most `Σ (|x| d_w + |w| s_x + s_x d_w)`; the f32 scaling of the exact integer sum
    /// adds three roundings.
    #[test]
    fn the_quantized_product_is_close_to_the_f32_one() {
        let (rows, k, n) = (50, 384, 70);
        let x = values(rows * k, 5);
        let w = values(n * k, 6);
        for kernel in kernels() {
            let packed = PackedI8::quantize(kernel, (n, k), |j| &w[j * k..(j + 1) * k]);
            let got = linear_int8(&x, &packed, &Epilogue::none());
            let (mut expected, mut bound) = (Vec::new(), Vec::new());
            for r in 0..rows {
                let row = &x[r * k..(r + 1) * k];
                let (lo, hi) = quantize::min_max(row);
                let step_x = ((hi - lo) / 255.0) as f64;
                for j in 0..n {
                    let channel = &w[j * k..(j + 1) * k];
                    let (codes, step_w) = quantize::quantize_channel(channel);
                    let exact = bounds::Dot::of(row, channel);
                    let rounding: f64 = row
                        .iter()
                        .zip(channel)
                        .zip(&codes)
                        .map(|((&a, &b), &q)| {
                            let moved = (b as f64 - step_w as f64 * q as f64).abs();
                            (a as f64).abs() * moved + (b as f64).abs() * step_x + step_x * moved
                        })
                        .sum();
                    expected.push(exact.value);
                    bound.push(
                        exact.bound
                            + rounding * (1.0 + bounds::gamma(3))
                            + bounds::gamma(3) * exact.value.abs(),
                    );
                }
            }
            bounds::assert_within(&got, &expected, &bound, &format!("{kernel:?}"));
            // Not vacuous: the bound stays a small share of the values.
            let largest = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(
                bound.iter().all(|&b| b < 0.25 * largest),
                "bounds {bound:?}"
            );
        }
    }

    /// The largest sums a pair can reach: A's codes all 255 (a row of one value) times
    /// weights whose every pair of one sign sums to the bound (a channel of one value gives
    /// codes of 64, pairs of 128) or past it (raw codes of 127 given to `new`, quantized
    /// again). Every kernel gives the exact sums, where a saturating `vpmaddubsw` would cap each
    /// pair at 32767.
    #[test]
    fn the_largest_pairs_do_not_saturate() {
        let (rows, k, n) = (7, 64, 20);
        let x = vec![3.0f32; rows * k];
        let w = vec![0.5f32; n * k];
        let raw = vec![127i8; k];
        for kernel in kernels() {
            let packed = PackedI8::quantize(kernel, (n, k), |j| &w[j * k..(j + 1) * k]);
            let got = linear_int8(&x, &packed, &Epilogue::none());
            let expected = reference(&x, &w, (rows, k, n), &Epilogue::none());
            assert_eq!(got, expected, "{kernel:?}");
            let exact = 3.0 * 0.5 * k as f32;
            assert!(
                got.iter().all(|&y| (y - exact).abs() <= exact * 1e-5),
                "{kernel:?}: {got:?}"
            );
            let scales = vec![0.25f32; n];
            let packed = PackedI8::new(kernel, (n, k), |_| &raw, &scales);
            let got = linear_int8(&x, &packed, &Epilogue::none());
            let exact = 3.0 * 127.0 * 0.25 * k as f32;
            assert!(
                got.iter().all(|&y| (y - exact).abs() <= exact * 1e-5),
                "{kernel:?}: {got:?}"
            );
        }
    }

    #[test]
    fn no_rows_give_no_output() {
        let w = values(8 * 4, 1);
        let packed = PackedI8::quantize(Int8Kernel::Portable, (8, 4), |j| &w[j * 4..(j + 1) * 4]);
        assert!(linear_int8(&[], &packed, &Epilogue::none()).is_empty());
        assert_eq!(packed.dims(), (4, 8));
    }
}
