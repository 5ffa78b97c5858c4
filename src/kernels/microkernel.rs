//! Register-blocked microkernels: `MR x NR` of C from `MR` rows of `kc` values of A and a
//! packed `kc x NR` panel of B, with the epilogue applied as the tile is stored.
//!
//! A is read in place through its strides (`A[r][p]` at `a + r * rs + p * cs`): row-major
//! activations need no packing (as in ONNX Runtime's MLAS), a packed panel has `rs = 1, cs =
//! MR`. A B panel holds the `NR` values `B[p][0..NR]` for each depth `p` (see
//! [`super::pack`]). Each step broadcasts one value of A per row and multiplies it into that
//! row's accumulators: `MR x NR / lanes` FMAs for `NR / lanes` loads of B and `MR`
//! broadcasts.

use super::epilogue::Activation;

/// How a microkernel writes its tile: `C = act(scale * acc + [C] + bias) + residual`, over
/// the tile's first `rows x cols` values (a tile at the matrix's edge is partial: the kernel
/// computes all `MR x NR`, stores that corner with masks, and reads nothing past it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Store {
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    pub accumulate: bool,
    /// `cols` values for the tile's columns, or null.
    pub bias: *const f32,
    pub activation: Activation,
    /// The residual of the tile's first value, rows `ld_residual` apart, or null.
    pub residual: *const f32,
    pub ld_residual: usize,
    /// Cache lines (of 16 values) from here to bring into L2 while the tile is computed, one
    /// every [`PREFETCH_STEPS`] steps of depth: a stretch of the next B panel, which
    /// otherwise comes from memory as the next tile waits for it.
    pub prefetch: *const f32,
    pub prefetch_lines: usize,
}

/// Steps of depth per cache line a microkernel prefetches (see [`Store::prefetch`]).
pub(crate) const PREFETCH_STEPS: usize = 8;

/// Where a microkernel reads A: element `(r, p)` at `ptr + r * rs + p * cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct APanel {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A microkernel: `(kc, a, b_panel, c, ldc, store)`.
pub(crate) type KernelFn = unsafe fn(usize, APanel, *const f32, *mut f32, usize, &Store);

/// A microkernel and its tile.
#[derive(Clone, Copy)]
pub(crate) struct Microkernel {
    pub mr: usize,
    pub nr: usize,
    pub run: KernelFn,
    /// Row-major A is best copied row by row for this kernel (else interleaved by panel).
    pub a_by_rows: bool,
}

/// The rows of every microkernel's tile (and of A's panels).
pub(crate) const MR: usize = 6;

/// The microkernel of `isa`, if it has one.
pub(crate) fn for_isa(isa: super::Isa) -> Option<Microkernel> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => Some(Microkernel {
            mr: MR,
            nr: 64,
            run: x86::kernel_6x64_avx512,
            a_by_rows: true,
        }),
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => Some(Microkernel {
            mr: MR,
            nr: 16,
            run: x86::kernel_6x16_avx2,
            a_by_rows: false,
        }),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{APanel, Store, MR, PREFETCH_STEPS};
    use crate::kernels::epilogue::Activation;
    use std::arch::x86_64::*;

    /// Asks for the cache lines of a `rows x cols` tile (rows `ld` apart) before the product
    /// starts, so that the tile's stores (and loads of C or the residual) do not wait on
    /// memory when it ends: C's rows are far apart and each tile is touched once per block.
    #[inline(always)]
    unsafe fn prefetch_tile(p: *const f32, ld: usize, rows: usize, cols: usize) {
        for i in 0..rows {
            let row = p.add(i * ld);
            for j in (0..cols).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(row.add(j) as *const i8);
            }
            _mm_prefetch::<_MM_HINT_T0>(row.add(cols - 1) as *const i8);
        }
    }

    /// Writes row `$i` of a tile: its registers of `$lanes` values, combined with C, the bias
    /// and the residual as `store` says. Exact GELU is applied in registers (`$gelu`), other
    /// activations over the stored row in place, then the residual. Of a
    /// partial row, the vector that crosses its end is read and written through a mask
    /// (`$mask(count)` for its first `count` lanes), and later vectors are skipped.
    macro_rules! store_row {
        ($store:ident, $c:ident, $ldc:ident, $i:expr, $acc:expr, $lanes:expr,
         $mul:ident, $add:ident, $set1:ident, $load:ident, $storeu:ident,
         $mask:expr, $mload:ident, $mstore:ident, $gelu:ident) => {{
            let row = $c.add($i * $ldc);
            let scale = $set1($store.scale);
            let in_registers = matches!($store.activation, Activation::None | Activation::Gelu);
            let residual_here = in_registers && !$store.residual.is_null();
            for (j, acc) in $acc.iter().enumerate() {
                let count = $store.cols.saturating_sub(j * $lanes).min($lanes);
                if count == 0 {
                    break;
                }
                let mask = $mask(count);
                macro_rules! load {
                    ($p:expr) => {
                        match count {
                            $lanes => $load($p),
                            _ => $mload($p, mask),
                        }
                    };
                }
                let mut v = if $store.scale == 1.0 {
                    *acc
                } else {
                    $mul(*acc, scale)
                };
                if $store.accumulate {
                    v = $add(v, load!(row.add(j * $lanes)));
                }
                if !$store.bias.is_null() {
                    v = $add(v, load!($store.bias.add(j * $lanes)));
                }
                if $store.activation == Activation::Gelu {
                    v = $gelu(v);
                }
                if residual_here {
                    let r = $store.residual.add($i * $store.ld_residual + j * $lanes);
                    v = $add(v, load!(r));
                }
                match count {
                    $lanes => $storeu(row.add(j * $lanes), v),
                    _ => $mstore(row.add(j * $lanes), mask, v),
                }
            }
            if !in_registers {
                let values = std::slice::from_raw_parts_mut(row, $store.cols);
                let residual = (!$store.residual.is_null()).then(|| {
                    std::slice::from_raw_parts(
                        $store.residual.add($i * $store.ld_residual),
                        $store.cols,
                    )
                });
                $store.activation.apply_row(values, residual);
            }
        }};
    }

    /// The first `count` lanes of a 16-lane vector.
    #[inline(always)]
    fn mask16(count: usize) -> __mmask16 {
        ((1u32 << count) - 1) as __mmask16
    }

    /// The first `count` lanes of an 8-lane vector (a lane is on when its sign bit is set).
    #[inline(always)]
    unsafe fn mask8(count: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(count as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// `_mm512_maskz_loadu_ps` with the address first, as `store_row!` calls every masked
    /// load and store (the other three intrinsics take theirs so already).
    #[inline(always)]
    unsafe fn maskload16(p: *const f32, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, p)
    }

    /// Exact GELU of each lane, `0.5 x (1 + erf(x / sqrt 2))`, by the same steps as
    /// [`Activation::Gelu`]'s scalar form ([`crate::kernels::math`]'s `exp` and `erf`, in
    /// the same order, without fused multiply-adds): the same values, bit for bit, in
    /// registers, so a tile's 24 vectors overlap instead of a loop over each stored row.
    macro_rules! gelu_vector {
        ($name:ident, $feature:literal, $v:ty, $set1:ident, $mul:ident, $add:ident, $sub:ident,
         $min:ident, $max:ident, $div:ident, $as_int:ident, $as_float:ident, $and:ident,
         $or:ident, $set1i:ident, $addi:ident, $subi:ident, $slli:ident) => {
            #[inline]
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(x: $v) -> $v {
                macro_rules! c {
                    ($value:expr) => {
                        $set1($value)
                    };
                }
                let sign_bit = $set1i(i32::MIN);
                let z = $mul(x, c!(std::f32::consts::FRAC_1_SQRT_2));
                // exp(-z^2), as math::exp (-z * z is -(z * z): negation is exact).
                let e = $as_float($or($as_int($mul(z, z)), sign_bit));
                let e = $min(c!(88.72), $max(c!(-87.33), e));
                let round = c!(12_582_912.0);
                let rounded = $add($mul(e, c!(std::f32::consts::LOG2_E)), round);
                let n = $sub(rounded, round);
                let r = $sub(
                    $sub(e, $mul(n, c!(0.693_359_4))),
                    $mul(n, c!(-2.121_944_4e-4)),
                );
                let mut p = c!(1.987_569_1e-4);
                for coefficient in [
                    1.398_199_9e-3,
                    8.333_452e-3,
                    4.166_579_6e-2,
                    1.666_666_5e-1,
                    5e-1,
                ] {
                    p = $add($mul(p, r), $set1(coefficient));
                }
                let e_r = $add($add($mul($mul(p, r), r), r), c!(1.0));
                let n_int = $subi($as_int(rounded), $set1i(12_582_912f32.to_bits() as i32));
                let scale = $as_float($slli::<23>($addi(n_int, $set1i(127))));
                let exp = $mul(e_r, scale);
                // erf(z) by Abramowitz and Stegun 7.1.26, as math::erf_given_exp.
                let sign = $and($as_int(z), sign_bit);
                let abs = $as_float($and($as_int(z), $set1i(i32::MAX)));
                let t = $div(c!(1.0), $add(c!(1.0), $mul(c!(0.327_591_1), abs)));
                let mut poly = c!(1.061_405_4);
                for coefficient in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
                    poly = $add($set1(coefficient), $mul(t, poly));
                }
                let poly = $mul(t, poly);
                let erf = $as_float($or($as_int($sub(c!(1.0), $mul(poly, exp))), sign));
                $mul($mul(c!(0.5), x), $add(c!(1.0), erf))
            }
        };
    }

    gelu_vector!(
        gelu_avx512,
        "avx512f",
        __m512,
        _mm512_set1_ps,
        _mm512_mul_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_min_ps,
        _mm512_max_ps,
        _mm512_div_ps,
        _mm512_castps_si512,
        _mm512_castsi512_ps,
        _mm512_and_si512,
        _mm512_or_si512,
        _mm512_set1_epi32,
        _mm512_add_epi32,
        _mm512_sub_epi32,
        _mm512_slli_epi32
    );

    gelu_vector!(
        gelu_avx2,
        "avx2,fma",
        __m256,
        _mm256_set1_ps,
        _mm256_mul_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_min_ps,
        _mm256_max_ps,
        _mm256_div_ps,
        _mm256_castps_si256,
        _mm256_castsi256_ps,
        _mm256_and_si256,
        _mm256_or_si256,
        _mm256_set1_epi32,
        _mm256_add_epi32,
        _mm256_sub_epi32,
        _mm256_slli_epi32
    );

    /// 6 x 64 on AVX-512: 24 accumulators, 4 loads of B and 6 broadcasts of A per step.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` addresses 6 rows of `kc` values, `b` holds `kc x 64`, `c`
    /// `store.rows` rows of `store.cols` values `ldc` apart; `store`'s pointers as [`Store`]
    /// says.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_6x64_avx512(
        kc: usize,
        a: APanel,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        store: &Store,
    ) {
        const NV: usize = 4;
        prefetch_tile(c, ldc, store.rows, store.cols);
        if !store.residual.is_null() {
            prefetch_tile(store.residual, store.ld_residual, store.rows, store.cols);
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let rows: [isize; MR] = std::array::from_fn(|r| r as isize * a.rs);
        let (mut ap, mut b) = (a.ptr, b);
        for step in 0..kc {
            if step % PREFETCH_STEPS == 0 && step / PREFETCH_STEPS < store.prefetch_lines {
                let line = store.prefetch.add(step / PREFETCH_STEPS * 16);
                _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
            }
            let bv = [
                _mm512_loadu_ps(b),
                _mm512_loadu_ps(b.add(16)),
                _mm512_loadu_ps(b.add(32)),
                _mm512_loadu_ps(b.add(48)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.offset(rows[i]));
                for (acc, bv) in row.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(ai, *bv, *acc);
                }
            }
            ap = ap.offset(a.cs);
            b = b.add(NV * 16);
        }
        for (i, row) in acc.iter().enumerate().take(store.rows) {
            store_row!(
                store,
                c,
                ldc,
                i,
                row,
                16,
                _mm512_mul_ps,
                _mm512_add_ps,
                _mm512_set1_ps,
                _mm512_loadu_ps,
                _mm512_storeu_ps,
                mask16,
                maskload16,
                _mm512_mask_storeu_ps,
                gelu_avx512
            );
        }
    }

    /// 6 x 16 on AVX2 + FMA: 12 accumulators, 2 loads of B and 6 broadcasts of A per step.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` addresses 6 rows of `kc` values, `b` holds `kc x 16`,
    /// `c` `store.rows` rows of `store.cols` values `ldc` apart; `store`'s pointers as
    /// [`Store`] says.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16_avx2(
        kc: usize,
        a: APanel,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        store: &Store,
    ) {
        const NV: usize = 2;
        /// `kc` steps of the 6 x 16 product, with A's row and depth strides.
        #[inline(always)]
        unsafe fn steps(
            kc: usize,
            (mut ap, rs, cs): (*const f32, isize, isize),
            mut b: *const f32,
            (prefetch, prefetch_lines): (*const f32, usize),
        ) -> [[__m256; NV]; MR] {
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            // One step of depth, unrolled by four below: less loop overhead per FMA (Zen 3, two
            // interleaved A/B runs, best of three: ViT-B/16 3-11% faster, DeiT-Tiny 4-18%).
            let mut step = |acc: &mut [[__m256; NV]; MR]| {
                let bv = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*ap.offset(i as isize * rs));
                    for (acc, bv) in row.iter_mut().zip(&bv) {
                        *acc = _mm256_fmadd_ps(ai, *bv, *acc);
                    }
                }
                ap = ap.offset(cs);
                b = b.add(NV * 8);
            };
            for quad in 0..kc / 4 {
                if quad % (PREFETCH_STEPS / 4) == 0 && quad / (PREFETCH_STEPS / 4) < prefetch_lines
                {
                    let line = prefetch.add(quad / (PREFETCH_STEPS / 4) * 16);
                    _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
                }
                step(&mut acc);
                step(&mut acc);
                step(&mut acc);
                step(&mut acc);
            }
            for _ in 0..kc % 4 {
                step(&mut acc);
            }
            acc
        }
        // A packed in panels has constant offsets: the compiler then keeps no chain of six
        // dependent address additions per step (on Zen 3, one thread, operands in L1:
        // 56-63 GFLOP/s with the chain, 77-80 without, in separate runs of a noisy machine).
        prefetch_tile(c, ldc, store.rows, store.cols);
        if !store.residual.is_null() {
            prefetch_tile(store.residual, store.ld_residual, store.rows, store.cols);
        }
        let prefetch = (store.prefetch, store.prefetch_lines);
        let acc = if a.rs == 1 && a.cs == MR as isize {
            steps(kc, (a.ptr, 1, MR as isize), b, prefetch)
        } else {
            steps(kc, (a.ptr, a.rs, a.cs), b, prefetch)
        };
        for (i, row) in acc.iter().enumerate().take(store.rows) {
            store_row!(
                store,
                c,
                ldc,
                i,
                row,
                8,
                _mm256_mul_ps,
                _mm256_add_ps,
                _mm256_set1_ps,
                _mm256_loadu_ps,
                _mm256_storeu_ps,
                mask8,
                _mm256_maskload_ps,
                _mm256_maskstore_ps,
                gelu_avx2
            );
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::x86;
    use crate::kernels::Activation;
    use std::arch::x86_64::*;

    /// Inputs across GELU's range: both signs, zeros, tiny and huge values, the exponent's
    /// clamps, infinities.
    fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 / 1000.0).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 13.2, -13.2, 1e10, -1e10]);
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::MAX,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 0.5);
        xs
    }

    fn assert_same(got: &[f32], xs: &[f32], kernel: &str) {
        for (g, &x) in got.iter().zip(xs) {
            let expected = Activation::Gelu.apply(x);
            assert!(
                g.to_bits() == expected.to_bits(),
                "{kernel}: gelu({x}) = {g}, scalar {expected}"
            );
        }
    }

    #[test]
    fn register_gelu_is_the_scalar_gelu_bit_for_bit() {
        let xs = inputs();
        if is_x86_feature_detected!("avx512f") {
            let mut got = vec![0f32; xs.len()];
            for (dst, src) in got.chunks_exact_mut(16).zip(xs.chunks_exact(16)) {
                // SAFETY: the CPU has AVX-512F; both chunks hold 16 values.
                unsafe { store16(dst, x86::gelu_avx512(load16(src))) };
            }
            assert_same(&got, &xs, "avx512");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let mut got = vec![0f32; xs.len()];
            for (dst, src) in got.chunks_exact_mut(8).zip(xs.chunks_exact(8)) {
                // SAFETY: the CPU has AVX2 and FMA; both chunks hold 8 values.
                unsafe {
                    _mm256_storeu_ps(
                        dst.as_mut_ptr(),
                        x86::gelu_avx2(_mm256_loadu_ps(src.as_ptr())),
                    )
                };
            }
            assert_same(&got, &xs, "avx2");
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn load16(src: &[f32]) -> __m512 {
        _mm512_loadu_ps(src.as_ptr())
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn store16(dst: &mut [f32], v: __m512) {
        _mm512_storeu_ps(dst.as_mut_ptr(), v)
    }
}
