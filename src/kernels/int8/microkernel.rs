//! int8 x int8 -> int32 microkernels, and the store that turns a tile of sums into f32.
//!
//! Each kernel computes a full `MR x nr` tile of `sum_p A[r][p] W[c][p]` over the whole
//! depth from a padded block of quantized A (rows `lda` bytes apart) and one packed panel of
//! the weight (see [`super::Int8Kernel`]), then stores it through [`store_tile`]. The
//! integer sums are exact in every kernel (the AVX2 one by the weights' pair bound), so every
//! kernel gives the same result bit for bit.

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

/// A kernel: `(steps, a, lda, panel, store)`; `steps` of 4 depths each.
pub(super) type Int8KernelFn = unsafe fn(usize, *const u8, usize, *const u8, &TileStore);

/// The function of `kernel`.
pub(super) fn kernel_for(kernel: super::Int8Kernel) -> Int8KernelFn {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        super::Int8Kernel::Avx512Vnni => x86::kernel_6x64_vnni,
        #[cfg(target_arch = "x86_64")]
        super::Int8Kernel::Avx2 => x86::kernel_6x16_avx2,
        _ => kernel_6x16_portable,
    }
}

/// Writes the valid corner of `tile` (rows `NR` apart) as `store` says. Each row's values
/// are made whole (scales, bias, activation) over the tile's full width in a local array, and
/// written once with the residual: writing them out and reading them back for the
/// activation stalls each load on the stores before it.
///
/// # Safety
/// `store`'s pointers address what [`TileStore`] says for its `rows x cols`; its column
/// scales and sums `NR` values (a panel's, padded).
#[inline(always)]
pub(super) unsafe fn store_tile<const NR: usize>(tile: &[i32], store: &TileStore) {
    let cols = store.cols;
    let col_scales = &*store.col_scales.cast::<[f32; NR]>();
    let column_sums = &*store.column_sums.cast::<[i32; NR]>();
    let mut bias = [0f32; NR];
    if !store.bias.is_null() {
        bias[..cols].copy_from_slice(std::slice::from_raw_parts(store.bias, cols));
    }
    for (i, sums) in tile.chunks_exact(NR).take(store.rows).enumerate() {
        let row_scale = *store.row_scales.add(i);
        let zero_point = *store.row_zero_points.add(i);
        let mut values = [0f32; NR];
        for j in 0..NR {
            let sum = sums[j].wrapping_sub(zero_point.wrapping_mul(column_sums[j]));
            values[j] = sum as f32 * (row_scale * col_scales[j]) + bias[j];
        }
        store.activation.apply_row(&mut values, None);
        let row = std::slice::from_raw_parts_mut(store.c.add(i * store.ldc), cols);
        match store.residual.is_null() {
            true => row.copy_from_slice(&values[..cols]),
            false => {
                let residual =
                    std::slice::from_raw_parts(store.residual.add(i * store.ld_residual), cols);
                for ((out, v), r) in row.iter_mut().zip(&values).zip(residual) {
                    *out = v + r;
                }
            }
        }
    }
}

/// 6 x 16 in plain Rust: any CPU.
///
/// # Safety
/// `a` addresses 6 rows of `4 * steps` bytes `lda` apart, `b` a panel of 16 columns and
/// `steps` steps; `store` as [`store_tile`] says.
unsafe fn kernel_6x16_portable(
    steps: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
    store: &TileStore,
) {
    const NR: usize = 16;
    let mut tile = [0i32; MR * NR];
    for i in 0..MR {
        let row = std::slice::from_raw_parts(a.add(i * lda), 4 * steps);
        let sums = &mut tile[i * NR..(i + 1) * NR];
        for (g, codes) in row.chunks_exact(4).enumerate() {
            let step = std::slice::from_raw_parts(b.add(g * 4 * NR).cast::<i8>(), 4 * NR);
            for (sum, weights) in sums.iter_mut().zip(step.chunks_exact(4)) {
                *sum += codes
                    .iter()
                    .zip(weights)
                    .map(|(&u, &w)| u as i32 * w as i32)
                    .sum::<i32>();
            }
        }
    }
    store_tile::<NR>(&tile, store);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_tile, TileStore, MR};
    use std::arch::x86_64::*;

    /// 6 x 64 on AVX-512 VNNI: per step of 4 depths, 4 loads of the panel, 6 broadcasts of
    /// 4 bytes of A and 24 `vpdpbusd` (unsigned A times signed W, summed in fours into
    /// int32: no intermediate saturates).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI; `a` addresses 6 rows of `4 * steps` bytes `lda`
    /// apart, `b` a panel of 64 columns and `steps` steps; `store` as [`store_tile`] says.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn kernel_6x64_vnni(
        steps: usize,
        a: *const u8,
        lda: usize,
        b: *const u8,
        store: &TileStore,
    ) {
        const NR: usize = 64;
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
        store_tile::<NR>(&tile, store);
    }

    /// 6 x 16 on AVX2: per step of 4 depths, 2 loads of the panel, 6 broadcasts of 4 bytes
    /// of A, 12 `vpmaddubsw` (unsigned A times signed W, adjacent pairs summed into i16 with
    /// saturation) and 12 `vpmaddwd` by ones (the i16 pairs summed into i32, exact). No pair
    /// saturates: A's codes are at most 255 and the weights' of a pair of one sign sum to at
    /// most 128 in magnitude ([`super::quantize::fits_pair_bound`]), so a pair's sum lies in
    /// `[-255 * 128, 255 * 128] = [-32640, 32640]`, inside i16; the kernel's sums equal the
    /// exact ones.
    ///
    /// # Safety
    /// The CPU has AVX2; `a` addresses 6 rows of `4 * steps` bytes `lda` apart, `b` a panel
    /// of 16 columns and `steps` steps whose weights fit the pair bound; `store` as
    /// [`store_tile`] says.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16_avx2(
        steps: usize,
        a: *const u8,
        lda: usize,
        b: *const u8,
        store: &TileStore,
    ) {
        const NR: usize = 16;
        let ones = [1i16; 16];
        let mut tile = [0i32; MR * NR];
        // Written out in assembly: the 12 accumulators, 2 weight vectors, A's broadcast and a
        // product take all 16 registers with the ones read from memory, which LLVM does not
        // see (it keeps the ones in a register and spills accumulators every step).
        // SAFETY: the loop reads `steps` steps of 4 bytes from each of the 6 rows at `a`,
        // `lda` apart, and `steps * 64` bytes of the panel at `b`, as the caller guarantees;
        // it writes the 96 sums into `tile`, and touches no other memory.
        std::arch::asm!(
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm4, ymm4, ymm4",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm6, ymm6, ymm6",
            "vpxor ymm7, ymm7, ymm7",
            "vpxor ymm8, ymm8, ymm8",
            "vpxor ymm9, ymm9, ymm9",
            "vpxor ymm10, ymm10, ymm10",
            "vpxor ymm11, ymm11, ymm11",
            "test {steps}, {steps}",
            "jz 3f",
            "2:",
            "vmovdqu ymm12, [{b}]",
            "vmovdqu ymm13, [{b} + 32]",
            "vpbroadcastd ymm14, [{a}]",
            "vpmaddubsw ymm15, ymm14, ymm12",
            "vpmaddwd ymm15, ymm15, [{ones}]",
            "vpaddd ymm0, ymm0, ymm15",
            "vpmaddubsw ymm14, ymm14, ymm13",
            "vpmaddwd ymm14, ymm14, [{ones}]",
            "vpaddd ymm1, ymm1, ymm14",
            "vpbroadcastd ymm14, [{a} + {lda}]",
            "vpmaddubsw ymm15, ymm14, ymm12",
            "vpmaddwd ymm15, ymm15, [{ones}]",
            "vpaddd ymm2, ymm2, ymm15",
            "vpmaddubsw ymm14, ymm14, ymm13",
            "vpmaddwd ymm14, ymm14, [{ones}]",
            "vpaddd ymm3, ymm3, ymm14",
            "vpbroadcastd ymm14, [{a} + 2 * {lda}]",
            "vpmaddubsw ymm15, ymm14, ymm12",
            "vpmaddwd ymm15, ymm15, [{ones}]",
            "vpaddd ymm4, ymm4, ymm15",
            "vpmaddubsw ymm14, ymm14, ymm13",
            "vpmaddwd ymm14, ymm14, [{ones}]",
            "vpaddd ymm5, ymm5, ymm14",
            "vpbroadcastd ymm14, [{a3}]",
            "vpmaddubsw ymm15, ymm14, ymm12",
            "vpmaddwd ymm15, ymm15, [{ones}]",
            "vpaddd ymm6, ymm6, ymm15",
            "vpmaddubsw ymm14, ymm14, ymm13",
            "vpmaddwd ymm14, ymm14, [{ones}]",
            "vpaddd ymm7, ymm7, ymm14",
            "vpbroadcastd ymm14, [{a3} + {lda}]",
            "vpmaddubsw ymm15, ymm14, ymm12",
            "vpmaddwd ymm15, ymm15, [{ones}]",
            "vpaddd ymm8, ymm8, ymm15",
            "vpmaddubsw ymm14, ymm14, ymm13",
            "vpmaddwd ymm14, ymm14, [{ones}]",
            "vpaddd ymm9, ymm9, ymm14",
            "vpbroadcastd ymm14, [{a3} + 2 * {lda}]",
            "vpmaddubsw ymm15, ymm14, ymm12",
            "vpmaddwd ymm15, ymm15, [{ones}]",
            "vpaddd ymm10, ymm10, ymm15",
            "vpmaddubsw ymm14, ymm14, ymm13",
            "vpmaddwd ymm14, ymm14, [{ones}]",
            "vpaddd ymm11, ymm11, ymm14",
            "add {a}, 4",
            "add {a3}, 4",
            "add {b}, 64",
            "dec {steps}",
            "jnz 2b",
            "3:",
            "vmovdqu [{tile}], ymm0",
            "vmovdqu [{tile} + 32], ymm1",
            "vmovdqu [{tile} + 64], ymm2",
            "vmovdqu [{tile} + 96], ymm3",
            "vmovdqu [{tile} + 128], ymm4",
            "vmovdqu [{tile} + 160], ymm5",
            "vmovdqu [{tile} + 192], ymm6",
            "vmovdqu [{tile} + 224], ymm7",
            "vmovdqu [{tile} + 256], ymm8",
            "vmovdqu [{tile} + 288], ymm9",
            "vmovdqu [{tile} + 320], ymm10",
            "vmovdqu [{tile} + 352], ymm11",
            steps = inout(reg) steps => _,
            a = inout(reg) a => _,
            a3 = inout(reg) a.add(3 * lda) => _,
            lda = in(reg) lda,
            b = inout(reg) b => _,
            ones = in(reg) ones.as_ptr(),
            tile = in(reg) tile.as_mut_ptr(),
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
        store_tile::<NR>(&tile, store);
    }
}
