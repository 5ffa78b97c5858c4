//! Packing: matrices copied into the panel layout the microkernels read, and weights packed
//! once at load time.

use rayon::prelude::*;

use super::microkernel::{self, Microkernel};
use super::{CacheSizes, Isa, SendPtr, View};
use crate::kernels::cache::Blocking;

/// An f32 buffer aligned to a cache line, so that packed panels start on one.
pub struct AlignedBuf {
    lines: Vec<CacheLine>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::zeros(0)
    }
}

impl AlignedBuf {
    /// `len` zeros, from zeroed memory (for large buffers, pages the system zeroes when they
    /// are first written, instead of a pass over them here).
    pub fn zeros(len: usize) -> Self {
        let count = len.div_ceil(16);
        if count == 0 {
            return Self {
                lines: Vec::new(),
                len,
            };
        }
        let layout = std::alloc::Layout::array::<CacheLine>(count).expect("buffer size");
        // SAFETY: the layout is not empty; all-zero bytes are a valid CacheLine; the vector
        // takes the allocation made with the global allocator and the layout of `count`
        // lines, as Vec<CacheLine> would.
        let lines = unsafe {
            let ptr = std::alloc::alloc_zeroed(layout).cast::<CacheLine>();
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Vec::from_raw_parts(ptr, count, count)
        };
        Self { lines, len }
    }

    /// Grows to at least `len` values (contents unspecified).
    pub fn reserve_len(&mut self, len: usize) {
        if self.len < len {
            *self = Self::zeros(len);
        }
    }

    /// Exactly `len` values, reusing this buffer's memory when it holds enough (contents
    /// unspecified).
    fn resized(mut self, len: usize) -> Self {
        if self.lines.len() * 16 < len {
            return Self::zeros(len);
        }
        self.len = len;
        self
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: the lines are contiguous f32 arrays holding at least `len` values.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in as_slice, and borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// Writes `width` rows (a multiple of 8) of `depth` contiguous values, row `r` at
/// `rows_at(r)`, into a panel (`width` values per depth), 8 x 8 blocks at a time.
///
/// # Safety
/// The CPU has AVX2; each row holds `depth` values; `panel` holds `width * depth`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_rows_avx2(
    panel: &mut [f32],
    rows_at: impl Fn(usize) -> *const f32,
    width: usize,
    depth: usize,
) {
    use std::arch::x86_64::*;
    let whole = depth / 8 * 8;
    let out = panel.as_mut_ptr();
    for r0 in (0..width).step_by(8) {
        let rows: [*const f32; 8] = std::array::from_fn(|i| rows_at(r0 + i));
        for d0 in (0..whole).step_by(8) {
            let v: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i].add(d0)));
            let lo: [__m256; 4] =
                std::array::from_fn(|i| _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]));
            let hi: [__m256; 4] =
                std::array::from_fn(|i| _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
            let quads = [
                _mm256_shuffle_ps::<0x44>(lo[0], lo[1]),
                _mm256_shuffle_ps::<0xEE>(lo[0], lo[1]),
                _mm256_shuffle_ps::<0x44>(hi[0], hi[1]),
                _mm256_shuffle_ps::<0xEE>(hi[0], hi[1]),
                _mm256_shuffle_ps::<0x44>(lo[2], lo[3]),
                _mm256_shuffle_ps::<0xEE>(lo[2], lo[3]),
                _mm256_shuffle_ps::<0x44>(hi[2], hi[3]),
                _mm256_shuffle_ps::<0xEE>(hi[2], hi[3]),
            ];
            for i in 0..4 {
                let low = _mm256_permute2f128_ps::<0x20>(quads[i], quads[i + 4]);
                let high = _mm256_permute2f128_ps::<0x31>(quads[i], quads[i + 4]);
                _mm256_storeu_ps(out.add((d0 + i) * width + r0), low);
                _mm256_storeu_ps(out.add((d0 + i + 4) * width + r0), high);
            }
        }
        for d in whole..depth {
            for (i, row) in rows.iter().enumerate() {
                *out.add(d * width + r0 + i) = *row.add(d);
            }
        }
    }
}

/// Copies `rows x depth` values of `src` (element `(r, d)` at `r * row_stride + d *
/// col_stride`) into panels of `width` rows: panel `q` holds, for each `d`, the values of
/// rows `q * width ..` at depth `d`, zeros past the last row.
///
/// # Safety
/// `src` must address every element of the `rows x depth` view; `dst` holds
/// `rows.div_ceil(width) * width * depth` values.
pub(crate) unsafe fn pack_panels(
    dst: &mut [f32],
    src: View,
    (rows, depth): (usize, usize),
    width: usize,
) {
    debug_assert!(dst.len() >= rows.div_ceil(width) * width * depth);
    for (q, panel) in dst
        .chunks_exact_mut(width * depth)
        .take(rows.div_ceil(width))
        .enumerate()
    {
        let first = q * width;
        let count = width.min(rows - first);
        let rows_at = |r: usize| src.ptr.offset((first + r) as isize * src.row_stride);
        if src.col_stride == 1 && count == width && width == microkernel::MR {
            // A's panels: one value of each row per depth, so the panel is written in order.
            let rows: [*const f32; microkernel::MR] = std::array::from_fn(&rows_at);
            for (d, values) in panel.chunks_exact_mut(microkernel::MR).enumerate() {
                for (value, row) in values.iter_mut().zip(&rows) {
                    *value = *row.add(d);
                }
            }
        } else if src.col_stride == 1
            && count == width
            && width.is_multiple_of(8)
            && Isa::Avx2.is_supported()
        {
            #[cfg(target_arch = "x86_64")]
            transpose_rows_avx2(panel, rows_at, width, depth);
        } else if src.col_stride == 1 {
            // Rows are contiguous along the depth: read each row, write it `width` apart.
            for r in 0..count {
                let row = src.ptr.offset((first + r) as isize * src.row_stride);
                for d in 0..depth {
                    *panel.get_unchecked_mut(d * width + r) = *row.add(d);
                }
            }
        } else if src.row_stride == 1 {
            // Each depth's values are contiguous (B row-major, as attention's V): a copy each.
            for d in 0..depth {
                let column = src.ptr.offset(d as isize * src.col_stride + first as isize);
                let out = &mut panel[d * width..d * width + count];
                out.copy_from_slice(std::slice::from_raw_parts(column, count));
            }
        } else {
            for d in 0..depth {
                let column = src.ptr.offset(d as isize * src.col_stride);
                for r in 0..count {
                    *panel.get_unchecked_mut(d * width + r) =
                        *column.offset((first + r) as isize * src.row_stride);
                }
            }
        }
        if count < width {
            for d in 0..depth {
                panel[d * width + count..(d + 1) * width].fill(0.0);
            }
        }
    }
}

/// Copies `rows x depth` values of row-major `src` (rows `src.row_stride` apart, `col_stride`
/// 1) into `dst`, rows `depth` apart, and zeros the rows after them up to `dst`'s end.
///
/// # Safety
/// `src` must address every element of the `rows x depth` view; `dst` holds at least
/// `rows x depth` values, a whole number of rows.
pub(crate) unsafe fn pack_rows(dst: &mut [f32], src: View, (rows, depth): (usize, usize)) {
    debug_assert_eq!(src.col_stride, 1);
    if depth == 0 {
        return;
    }
    for (r, row) in dst.chunks_exact_mut(depth).enumerate() {
        if r < rows {
            let from = src.ptr.offset(r as isize * src.row_stride);
            row.copy_from_slice(std::slice::from_raw_parts(from, depth));
        } else {
            row.fill(0.0);
        }
    }
}

/// The right-hand side `B (k x n)` of products, packed for one instruction set: for each
/// block of `kc` depths, the panels of `nr` columns, each `kc x nr` (zeros past column `n`).
/// The portable instruction set keeps `B` as given instead, for the `gemm` crate.
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    kc: usize,
    nr: usize,
    data: AlignedBuf,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("isa", &self.isa)
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// `B = W^T` for a weight `W` of `n` rows (output features) by `k` (input features),
    /// given by row: row `j` of `W` is `row(j)`, `k` values. Packed in parallel.
    pub fn from_weight_rows<'w>(
        isa: Isa,
        (n, k): (usize, usize),
        row: impl Fn(usize) -> &'w [f32] + Sync,
    ) -> Self {
        let Some(kernel) = microkernel::for_isa(isa) else {
            let mut data = AlignedBuf::zeros(n * k);
            data.as_mut_slice()
                .par_chunks_mut(k.max(1))
                .enumerate()
                .for_each(|(j, dst)| dst.copy_from_slice(row(j)));
            return Self {
                isa,
                k,
                n,
                kc: k,
                nr: 1,
                data,
            };
        };
        let mut packed = Self::empty(isa, kernel, (k, n), AlignedBuf::default());
        let (kc, nr, n_pad) = (packed.kc, packed.nr, packed.padded_n());
        let panels = n.div_ceil(nr);
        // One task per panel: its blocks of every depth.
        let data = SendPtr(packed.data.as_mut_slice().as_mut_ptr());
        (0..panels).into_par_iter().for_each(|q| {
            let width = nr.min(n - q * nr);
            for k0 in (0..k).step_by(kc) {
                let depth = kc.min(k - k0);
                let offset = k0 * n_pad + q * depth * nr;
                // SAFETY: each (panel, block) region is written by this task only, and lies
                // inside the k x n_pad buffer.
                let dst = unsafe { std::slice::from_raw_parts_mut(data.at(offset), depth * nr) };
                // Depth by depth, so that each panel row is written whole (the `width` source
                // rows are read side by side, each a cache line at a time).
                let sources: Vec<&[f32]> = (0..width)
                    .map(|r| &row(q * nr + r)[k0..k0 + depth])
                    .collect();
                for (d, out) in dst.chunks_exact_mut(nr).enumerate() {
                    for (value, src) in out.iter_mut().zip(&sources) {
                        // SAFETY: d < depth, the length of every source.
                        *value = unsafe { *src.get_unchecked(d) };
                    }
                    out[width..].fill(0.0);
                }
            }
        });
        packed
    }

    /// `B (k x n)` from a strided view, packed in parallel when `parallel`, into `buffer`'s
    /// memory when it is large enough. Not for the portable set, which has no microkernel.
    ///
    /// # Safety
    /// `b` must address every element of the `k x n` view.
    pub(crate) unsafe fn from_view(
        isa: Isa,
        kernel: Microkernel,
        b: View,
        (k, n): (usize, usize),
        parallel: bool,
        buffer: AlignedBuf,
    ) -> Self {
        let mut packed = Self::empty(isa, kernel, (k, n), buffer);
        let (kc, nr, n_pad) = (packed.kc, packed.nr, packed.padded_n());
        let data = SendPtr(packed.data.as_mut_slice().as_mut_ptr());
        let pack_panel = |q: usize| {
            let (b, data) = (b, data);
            for k0 in (0..k).step_by(kc) {
                let depth = kc.min(k - k0);
                // Columns of B are the panel's rows.
                let src = View {
                    ptr: b
                        .ptr
                        .offset(k0 as isize * b.row_stride + (q * nr) as isize * b.col_stride),
                    ..b.transposed()
                };
                let offset = k0 * n_pad + q * depth * nr;
                // SAFETY: each (panel, block) region is written by this task only, inside
                // the k x n_pad buffer; src stays inside b's view.
                let dst = std::slice::from_raw_parts_mut(data.at(offset), depth * nr);
                pack_panels(dst, src, (nr.min(n - q * nr), depth), nr);
            }
        };
        let panels = n.div_ceil(nr);
        if parallel {
            super::pool::for_each(panels, pack_panel);
        } else {
            (0..panels).for_each(pack_panel);
        }
        packed
    }

    /// The packed form's header over `buffer` resized to hold it (contents unspecified:
    /// packing writes every value, padding included).
    fn empty(isa: Isa, kernel: Microkernel, (k, n): (usize, usize), buffer: AlignedBuf) -> Self {
        let kc = Blocking::for_kernel(CacheSizes::current(), kernel.mr, kernel.nr).kc;
        let n_pad = n.div_ceil(kernel.nr) * kernel.nr;
        Self {
            isa,
            k,
            n,
            kc,
            nr: kernel.nr,
            data: buffer.resized(k * n_pad),
        }
    }

    /// The buffer, for reuse.
    pub(crate) fn into_buffer(self) -> AlignedBuf {
        self.data
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    pub(crate) fn kc(&self) -> usize {
        self.kc
    }

    fn padded_n(&self) -> usize {
        self.n.div_ceil(self.nr) * self.nr
    }

    /// The `kc x nr` panel `q` of the block starting at depth `k0`.
    pub(crate) fn panel(&self, k0: usize, q: usize) -> *const f32 {
        let depth = self.kc.min(self.k - k0);
        self.data.as_slice()[k0 * self.padded_n() + q * depth * self.nr..].as_ptr()
    }

    /// The portable layout: `W (n x k)` row-major, as given.
    pub(crate) fn plain_weight(&self) -> &[f32] {
        self.data.as_slice()
    }
}
