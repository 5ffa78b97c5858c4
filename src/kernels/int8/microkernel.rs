//! int8 x int8 -> int32 microkernels, and the store that turns a tile of sums into f32.
//!
//! Each kernel computes a full `MR x nr` tile of `sum_p A[r][p] W[c][p]` over the whole
//! depth from a padded block of quantized A (rows `lda` bytes apart) and one packed panel of
//! the weight, then stores it through [`store_tile`]. Two layouts, one per family of
//! instructions (see [`super::Layout`]); the integer sums are exact in every kernel, so
//! every kernel gives the same result bit for bit.

use super::Layout;
use crate::kernels::epilogue::Activation;
use crate::kernels::microkernel::MR;

/// How a tile of integer sums becomes the layer's output:
/// `C = act((sum - row_zero_point * column_sum) * row_scale * col_scale + bias) + residual`.
pub(super) struct TileStore {
    /// The tile's first output value; rows `ldc` apart.
    pub c: *mut f32,
    pub ldc: usize,
    /// The valid corner of the tile.
    pub rows: usize,
    pub cols: usize,
    /// One scale per row (the activation's, times the epilogue's scale).
    pub row_scales: *const f32,
    /// One zero point per row (the activation's).
    pub row_zero_points: *const i32,
    /// One scale per column (the weight channel's).
    pub col_scales: *const f32,
    /// Per column, the sum of its weights.
    pub column_sums: *const i32,
    /// One value per column, or null.
    pub bias: *const f32,
    pub activation: Activation,
    /// The residual of the tile's first value, rows `ld_residual` apart, or null.
    pub residual: *const f32,
    pub ld_residual: usize,
}

/// A kernel: `(steps, a, lda, panel, store)`; `steps` of the layout's depth each.
pub(super) type Int8KernelFn = unsafe fn(usize, *const u8, usize, *const u8, &TileStore);

/// The kernel for `layout` on this CPU, as `kernel` names it.
pub(super) fn kernel_for(kernel: super::Int8Kernel) -> Int8KernelFn {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        super::Int8Kernel::Avx512Vnni => x86::kernel_6x64_vnni,
        #[cfg(target_arch = "x86_64")]
        super::Int8Kernel::Avx2 => x86::kernel_6x16_avx2,
        _ => kernel_6x16_portable,
    }
}

/// Writes the valid corner of `tile` (rows `nr` apart) as `store` says.
///
/// # Safety
/// `store`'s pointers address what [`TileStore`] says for its `rows x cols`.
#[inline(always)]
pub(super) unsafe fn store_tile(tile: &[i32], nr: usize, store: &TileStore) {
    let cols = store.cols;
    let col_scales = std::slice::from_raw_parts(store.col_scales, cols);
    let column_sums = std::slice::from_raw_parts(store.column_sums, cols);
    for i in 0..store.rows {
        let sums = &tile[i * nr..i * nr + cols];
        let row_scale = *store.row_scales.add(i);
        let zero_point = *store.row_zero_points.add(i);
        let row = store.c.add(i * store.ldc);
        if store.bias.is_null() {
            for j in 0..cols {
                let sum = sums[j].wrapping_sub(zero_point.wrapping_mul(column_sums[j]));
                *row.add(j) = sum as f32 * (row_scale * col_scales[j]);
            }
        } else {
            let bias = std::slice::from_raw_parts(store.bias, cols);
            for j in 0..cols {
                let sum = sums[j].wrapping_sub(zero_point.wrapping_mul(column_sums[j]));
                *row.add(j) = sum as f32 * (row_scale * col_scales[j]) + bias[j];
            }
        }
        let values = std::slice::from_raw_parts_mut(row, cols);
        let residual = (!store.residual.is_null())
            .then(|| std::slice::from_raw_parts(store.residual.add(i * store.ld_residual), cols));
        store.activation.apply_row(values, residual);
    }
}

/// 6 x 16 in plain Rust over the [`Layout::Pairs`] layout: any CPU.
///
/// # Safety
/// `a` addresses 6 rows of `2 * steps` i16 values `lda` bytes apart, `b` a panel of `steps`
/// steps; `store` as [`store_tile`] says.
unsafe fn kernel_6x16_portable(
    steps: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
    store: &TileStore,
) {
    const NR: usize = Layout::Pairs.nr();
    let (a, b) = (a.cast::<i16>(), b.cast::<i16>());
    let mut tile = [0i32; MR * NR];
    for i in 0..MR {
        let row = a.add(i * lda / 2);
        for g in 0..steps {
            let (a0, a1) = (*row.add(2 * g) as i32, *row.add(2 * g + 1) as i32);
            let step = b.add(g * 2 * NR);
            for j in 0..NR {
                tile[i * NR + j] += a0 * *step.add(2 * j) as i32 + a1 * *step.add(2 * j + 1) as i32;
            }
        }
    }
    store_tile(&tile, NR, store);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_tile, Layout, TileStore, MR};
    use std::arch::x86_64::*;

    /// 6 x 64 on AVX-512 VNNI: per step of 4 depths, 4 loads of the panel, 6 broadcasts of
    /// 4 bytes of A and 24 `vpdpbusd` (unsigned A times signed W, summed in fours into
    /// int32: no intermediate saturates).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI; `a` addresses 6 rows of `4 * steps` bytes `lda`
    /// apart, `b` a [`Layout::Quads`] panel of `steps` steps; `store` as [`store_tile`] says.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn kernel_6x64_vnni(
        steps: usize,
        a: *const u8,
        lda: usize,
        b: *const u8,
        store: &TileStore,
    ) {
        const NR: usize = Layout::Quads.nr();
        let mut acc = [[_mm512_setzero_si512(); 4]; MR];
        for g in 0..steps {
            let step = b.add(g * 4 * NR);
            let bv = [
                _mm512_loadu_si512(step.cast()),
                _mm512_loadu_si512(step.add(64).cast()),
                _mm512_loadu_si512(step.add(128).cast()),
                _mm512_loadu_si512(step.add(192).cast()),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let quad = a.add(i * lda + 4 * g).cast::<i32>().read_unaligned();
                let av = _mm512_set1_epi32(quad);
                for (sum, &w) in row.iter_mut().zip(&bv) {
                    *sum = _mm512_dpbusd_epi32(*sum, av, w);
                }
            }
        }
        let mut tile = [0i32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                _mm512_storeu_si512(tile.as_mut_ptr().add(i * NR + v * 16).cast(), *sum);
            }
        }
        store_tile(&tile, NR, store);
    }

    /// 6 x 16 on AVX2: per step of 2 depths, 2 loads of the panel, 6 broadcasts of a pair
    /// of i16 of A and 12 `vpmaddwd` (i16 x i16, summed in pairs into int32: exact, unlike
    /// `vpmaddubsw`'s saturating i16 sums).
    ///
    /// # Safety
    /// The CPU has AVX2; `a` addresses 6 rows of `2 * steps` i16 values `lda` bytes apart,
    /// `b` a [`Layout::Pairs`] panel of `steps` steps; `store` as [`store_tile`] says.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16_avx2(
        steps: usize,
        a: *const u8,
        lda: usize,
        b: *const u8,
        store: &TileStore,
    ) {
        const NR: usize = Layout::Pairs.nr();
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for g in 0..steps {
            let step = b.add(g * 4 * NR);
            let bv = [
                _mm256_loadu_si256(step.cast()),
                _mm256_loadu_si256(step.add(32).cast()),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let pair = a.add(i * lda + 4 * g).cast::<i32>().read_unaligned();
                let av = _mm256_set1_epi32(pair);
                for (sum, &w) in row.iter_mut().zip(&bv) {
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(av, w));
                }
            }
        }
        let mut tile = [0i32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                _mm256_storeu_si256(tile.as_mut_ptr().add(i * NR + v * 8).cast(), *sum);
            }
        }
        store_tile(&tile, NR, store);
    }
}
