//! The blocked, threaded matrix product over the microkernels (BLIS's loop nest): for each
//! block of `kc` depths, a block of `mc` rows of A is packed into L2, then every `kc x nr`
//! panel of B (kept in L1) meets every `mr`-row panel of A. Threads split the output into
//! (row block, column chunk) tasks, so 197 rows (one image) still keep every core busy.

use rayon::prelude::*;

use super::cache::{Blocking, CacheSizes};
use super::epilogue::Epilogue;
use super::microkernel::{self, APanel, Microkernel, Store, PREFETCH_STEPS};
use super::pack::{pack_panels, pack_rows, AlignedBuf, PackedB};
use super::{Isa, SendPtr, View};

/// `C (m x n, rows ldc apart) = epilogue(A (m x k) B)` with `B` packed; on all of rayon's
/// threads when `parallel`.
///
/// # Safety
/// `a` must address every element of the `m x k` view, `c` `m` rows of `n` values `ldc`
/// apart that nothing else reads or writes meanwhile; the epilogue's bias must hold `n`
/// values and its residual `m x n`.
pub unsafe fn gemm_packed(
    m: usize,
    a: View,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    check_epilogue(m, b.dims().1, epilogue);
    match microkernel::for_isa(b.isa()) {
        Some(kernel) => blocked(kernel, m, a, b, c, ldc, epilogue, parallel),
        None => portable(m, a, b, c, ldc, epilogue, parallel),
    }
}

/// `C = epilogue(A (m x k) B (k x n))` from strided views, packing `B` for this product.
///
/// # Safety
/// As [`gemm_packed`], and `b` must address every element of the `k x n` view.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    c: *mut f32,
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    check_epilogue(m, n, epilogue);
    match microkernel::for_isa(isa) {
        Some(kernel) => {
            // The buffer is this thread's, kept between products (taken, so that a product
            // started meanwhile on this thread gets its own).
            let buffer = PACKED_B.take();
            let packed = PackedB::from_view(isa, kernel, b, (k, n), parallel, buffer);
            blocked(kernel, m, a, &packed, c, ldc, epilogue, parallel);
            PACKED_B.set(packed.into_buffer());
        }
        None => {
            gemm_crate(c, ldc, (m, n, k), a, b, epilogue, parallel);
            finish_rows(c, ldc, (m, n), epilogue);
        }
    }
}

fn check_epilogue(m: usize, n: usize, epilogue: &Epilogue) {
    if let Some(bias) = epilogue.bias {
        assert!(
            bias.len() >= n,
            "bias of {} values for {n} columns",
            bias.len()
        );
    }
    if let Some(residual) = epilogue.residual {
        assert!(
            residual.len() >= m * n,
            "residual of {} values for {m}x{n}",
            residual.len()
        );
    }
}

/// How the output is split among threads: `row_blocks` blocks of `mc` rows by `chunks`
/// chunks of `chunk` panels, one task each.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) mc: usize,
    pub(crate) row_blocks: usize,
    pub(crate) chunk: usize,
    pub(crate) chunks: usize,
}

impl Split {
    /// The split whose busiest thread has the fewest tiles (`mr x nr` each), counting tasks
    /// as dealt out in turn; among equals, the fewest tasks (each task packs its block of A
    /// again). Blocks of A stay within `max_mc` rows (see [`Blocking`]).
    fn new(kernel: Microkernel, m: usize, panels: usize, threads: usize) -> Self {
        let max_mc = Blocking::for_kernel(CacheSizes::current(), kernel.mr, kernel.nr).mc;
        Self::for_tiles(kernel.mr, max_mc, m, panels, threads)
    }

    /// As [`Split::new`], for tiles of `mr` rows and blocks of A of at most `max_mc` rows.
    pub(crate) fn for_tiles(
        mr: usize,
        max_mc: usize,
        m: usize,
        panels: usize,
        threads: usize,
    ) -> Self {
        let row_panels = m.div_ceil(mr).max(1);
        let min_blocks = m.div_ceil(max_mc).max(1);
        let panels = panels.max(1);
        let mut best: Option<((usize, usize), Split)> = None;
        let max_blocks = if threads > 1 {
            row_panels.min(min_blocks * 8)
        } else {
            min_blocks
        };
        for row_blocks in min_blocks..=max_blocks.max(min_blocks) {
            let block_panels = row_panels.div_ceil(row_blocks);
            let row_blocks = row_panels.div_ceil(block_panels);
            for chunks in 1..=panels.min(if threads > 1 { 16 } else { 1 }) {
                let chunk = panels.div_ceil(chunks);
                let chunks = panels.div_ceil(chunk);
                let tasks = row_blocks * chunks;
                let busiest = tasks.div_ceil(threads) * block_panels * chunk;
                let score = (busiest, tasks);
                if best.as_ref().is_none_or(|(b, _)| score < *b) {
                    let split = Split {
                        mc: block_panels * mr,
                        row_blocks,
                        chunk,
                        chunks,
                    };
                    best = Some((score, split));
                }
            }
        }
        best.expect("at least one candidate").1
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn blocked(
    kernel: Microkernel,
    m: usize,
    a: View,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    let (k, n) = b.dims();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        finish_rows_of_zero_product(c, ldc, (m, n), epilogue);
        return;
    }
    let (mr, nr, kc) = (kernel.mr, kernel.nr, b.kc());
    let panels = n.div_ceil(nr);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let split = Split::new(kernel, m, panels, threads);
    let c = SendPtr(c);
    // The AVX-512 kernel reads row-major A in place, rows apart by A's own stride, and only
    // a last, partial row panel is copied (row by row); otherwise each block of A is
    // interleaved by panel, whose constant offsets spare the AVX2 kernel a chain of address
    // additions per step (see `kernel_6x16_avx2`).
    let row_major = a.col_stride == 1 && kernel.a_by_rows;
    let task = |t: usize| {
        let (a, c) = (a, c);
        let (block, chunk) = (t / split.chunks, t % split.chunks);
        let i0 = block * split.mc;
        let rows = split.mc.min(m - i0);
        let panels_here = chunk * split.chunk..(panels.min((chunk + 1) * split.chunk));
        let row_panels = rows.div_ceil(mr);
        SCRATCH.with_borrow_mut(|packed_a| {
            packed_a.reserve_len(row_panels * mr * kc);
            for k0 in (0..k).step_by(kc) {
                let depth = kc.min(k - k0);
                let a_block = View {
                    ptr: a
                        .ptr
                        .offset(i0 as isize * a.row_stride + k0 as isize * a.col_stride),
                    ..a
                };
                // Full row panels of a row-major A are read in place, also for a block of a
                // deeper A and rows 4 KiB apart (paired runs on Zen 5 with kc 768: the
                // copy cost fc2's product, 3072 deep, 4-5%); a last, partial panel, which
                // the kernel reads whole, is copied (zero-padded).
                let in_place = row_major && a.row_stride > 0;
                let full_panels = if in_place { rows / mr } else { 0 };
                let copied = row_panels - full_panels;
                let dst = &mut packed_a.as_mut_slice()[..copied * mr * depth];
                let copy_from = View {
                    // Wrapping: past the end when no row is left to copy (then unread).
                    ptr: a_block
                        .ptr
                        .wrapping_offset((full_panels * mr) as isize * a.row_stride),
                    ..a_block
                };
                let copy_rows = rows - full_panels * mr;
                match row_major {
                    true => pack_rows(dst, copy_from, (copy_rows, depth)),
                    false => pack_panels(dst, copy_from, (copy_rows, depth), mr),
                }
                let a_panel = |p: usize| match (p < full_panels, row_major) {
                    (true, _) => APanel {
                        ptr: a_block.ptr.offset((p * mr) as isize * a.row_stride),
                        rs: a.row_stride,
                        cs: 1,
                    },
                    (false, true) => APanel {
                        ptr: packed_a.as_slice()[(p - full_panels) * mr * depth..].as_ptr(),
                        rs: depth as isize,
                        cs: 1,
                    },
                    (false, false) => APanel {
                        ptr: packed_a.as_slice()[(p - full_panels) * mr * depth..].as_ptr(),
                        rs: 1,
                        cs: mr as isize,
                    },
                };
                let last = k0 + depth == k;
                let lines_per_tile = depth.div_ceil(PREFETCH_STEPS);
                for q in panels_here.clone() {
                    let b_panel = b.panel(k0, q);
                    // The panel this task reads next, prefetched a stretch per tile.
                    let (next_panel, next_lines) = if q + 1 < panels_here.end {
                        (b.panel(k0, q + 1), depth * nr / 16)
                    } else if !last {
                        let next_depth = kc.min(k - k0 - kc);
                        (b.panel(k0 + kc, panels_here.start), next_depth * nr / 16)
                    } else {
                        (std::ptr::null(), 0)
                    };
                    let j0 = q * nr;
                    let cols = nr.min(n - j0);
                    for p in 0..row_panels {
                        let r0 = i0 + p * mr;
                        let first_line = (p * lines_per_tile).min(next_lines);
                        let tile_rows = mr.min(m - r0);
                        let c_tile = c.at(r0 * ldc + j0);
                        let store = Store {
                            rows: tile_rows,
                            cols,
                            scale: epilogue.scale,
                            accumulate: k0 > 0 || epilogue.accumulate,
                            bias: match epilogue.bias {
                                Some(bias) if last => bias[j0..].as_ptr(),
                                _ => std::ptr::null(),
                            },
                            activation: match last {
                                true => epilogue.activation,
                                false => super::Activation::None,
                            },
                            residual: match epilogue.residual {
                                Some(residual) if last => residual[r0 * n + j0..].as_ptr(),
                                _ => std::ptr::null(),
                            },
                            ld_residual: n,
                            prefetch: next_panel.wrapping_add(first_line * 16),
                            prefetch_lines: lines_per_tile.min(next_lines - first_line),
                        };
                        (kernel.run)(depth, a_panel(p), b_panel, c_tile, ldc, &store);
                    }
                }
            }
        });
    };
    let tasks = split.row_blocks * split.chunks;
    if parallel && tasks > 1 {
        super::pool::for_each(tasks, task);
    } else {
        (0..tasks).for_each(task);
    }
}

thread_local! {
    /// Each thread's buffer for packed blocks of A.
    static SCRATCH: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::zeros(0));
    /// Each thread's buffer for B packed by [`gemm`].
    static PACKED_B: std::cell::Cell<AlignedBuf> = std::cell::Cell::new(AlignedBuf::zeros(0));
}

/// The portable path: the `gemm` crate over the plain weight, then the epilogue by rows.
unsafe fn portable(
    m: usize,
    a: View,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    let (k, n) = b.dims();
    // B (p, j) = W (j, p).
    let weight = View::of(b.plain_weight(), n, k).transposed();
    gemm_crate(c, ldc, (m, n, k), a, weight, epilogue, parallel);
    finish_rows(c, ldc, (m, n), epilogue);
}

/// `C = scale * A B + [C]` by the `gemm` crate.
unsafe fn gemm_crate(
    c: *mut f32,
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    epilogue: &Epilogue,
    parallel: bool,
) {
    let parallelism = match (parallel, rayon::current_num_threads()) {
        (true, threads) if threads > 1 => gemm::Parallelism::Rayon(threads),
        _ => gemm::Parallelism::None,
    };
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        epilogue.accumulate,
        a.ptr,
        a.col_stride,
        a.row_stride,
        b.ptr,
        b.col_stride,
        b.row_stride,
        1.0,
        epilogue.scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// Bias, activation and residual over rows of `C` that already hold the scaled product.
unsafe fn finish_rows(c: *mut f32, ldc: usize, (m, n): (usize, usize), epilogue: &Epilogue) {
    if epilogue.bias.is_none()
        && epilogue.residual.is_none()
        && epilogue.activation == super::Activation::None
    {
        return;
    }
    let c = SendPtr(c);
    (0..m).into_par_iter().with_min_len(16).for_each(|i| {
        let row = std::slice::from_raw_parts_mut(c.at(i * ldc), n);
        if let Some(bias) = epilogue.bias {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
        let residual = epilogue.residual.map(|r| &r[i * n..(i + 1) * n]);
        epilogue.activation.apply_row(row, residual);
    });
}

/// The epilogue of an empty sum (`k = 0`).
unsafe fn finish_rows_of_zero_product(
    c: *mut f32,
    ldc: usize,
    (m, n): (usize, usize),
    epilogue: &Epilogue,
) {
    if !epilogue.accumulate {
        for i in 0..m {
            std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0);
        }
    }
    finish_rows(c, ldc, (m, n), epilogue);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{bounds, Activation};

    /// Values in [-1, 1) from a small linear congruential generator.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product with its epilogue, element by element: the dot products in f64, the
    /// epilogue in f32 as the kernels apply it, and the bound of each value's error
    /// ([`bounds`]): the products' `γ(k) Σ|a b|`, scaled, carried through the activation,
    /// plus a few roundings of every value the epilogue adds or makes.
    fn reference(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        w: &[f32],
        c_before: &[f32],
        epilogue: &Epilogue,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut out, mut bound) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for j in 0..n {
                let dot = bounds::Dot::of(&a[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                let scaled = epilogue.scale * dot.value as f32;
                let mut v = scaled;
                let mut touched = vec![scaled as f64];
                if epilogue.accumulate {
                    v += c_before[i * n + j];
                    touched.extend([c_before[i * n + j] as f64, v as f64]);
                }
                if let Some(bias) = epilogue.bias {
                    v += bias[j];
                    touched.extend([bias[j] as f64, v as f64]);
                }
                v = epilogue.activation.apply(v);
                touched.push(v as f64);
                if let Some(residual) = epilogue.residual {
                    v += residual[i * n + j];
                    touched.extend([residual[i * n + j] as f64, v as f64]);
                }
                out[i * n + j] = v as f64;
                let carried = epilogue.scale.abs() as f64 * dot.bound;
                bound[i * n + j] = bounds::after_epilogue(carried, 8, &touched);
            }
        }
        (out, bound)
    }

    #[test]
    fn packed_products_match_a_reference_on_every_isa() {
        // Tails in every direction, k past one block (read in place, rows 2304 values
        // apart, and copied), m past one row block.
        let shapes = [
            (1, 1, 1),
            (7, 13, 5),
            (197, 70, 96),
            (13, 130, 700),
            (40, 70, 2304),
            (1200, 64, 33),
        ];
        for isa in Isa::supported() {
            for &(m, n, k) in &shapes {
                let a = values(m * k, 1);
                let w = values(n * k, 2);
                let bias = values(n, 3);
                let residual = values(m * n, 4);
                let before = values(m * n, 5);
                let packed = PackedB::from_weight_rows(isa, (n, k), |j| &w[j * k..(j + 1) * k]);
                let epilogues = [
                    Epilogue::none(),
                    Epilogue::dense(Some(&bias), Activation::Gelu),
                    Epilogue {
                        residual: Some(&residual),
                        ..Epilogue::dense(Some(&bias), Activation::None)
                    },
                    Epilogue {
                        scale: 0.125,
                        accumulate: true,
                        residual: Some(&residual),
                        ..Epilogue::dense(None, Activation::Silu)
                    },
                ];
                for (e, epilogue) in epilogues.iter().enumerate() {
                    for parallel in [false, true] {
                        let mut c = before.clone();
                        // SAFETY: every buffer holds its view.
                        unsafe {
                            gemm_packed(
                                m,
                                View::of(&a, m, k),
                                &packed,
                                c.as_mut_ptr(),
                                n,
                                epilogue,
                                parallel,
                            )
                        };
                        let (expected, bound) = reference((m, n, k), &a, &w, &before, epilogue);
                        let what = format!(
                            "{} {m}x{n}x{k} epilogue {e} parallel {parallel}",
                            isa.name()
                        );
                        bounds::assert_within(&c, &expected, &bound, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn strided_products_match_a_reference_on_every_isa() {
        let (m, n, k) = (37, 45, 300);
        // A transposed in memory (k x m), B given as W (n x k), C inside a wider buffer.
        let a_t = values(k * m, 6);
        let w = values(n * k, 7);
        let a: Vec<f32> = (0..m * k).map(|x| a_t[(x % k) * m + x / k]).collect();
        for isa in Isa::supported() {
            for activation in [
                Activation::GeluTanh,
                Activation::QuickGelu,
                Activation::Relu,
            ] {
                let ldc = n + 3;
                let mut c = vec![9f32; m * ldc];
                let epilogue = Epilogue::dense(None, activation);
                unsafe {
                    gemm(
                        isa,
                        (m, n, k),
                        View::of(&a_t, k, m).transposed(),
                        View::of(&w, n, k).transposed(),
                        c.as_mut_ptr(),
                        ldc,
                        &epilogue,
                        true,
                    )
                };
                let (expected, bound) = reference((m, n, k), &a, &w, &[], &epilogue);
                for i in 0..m {
                    bounds::assert_within(
                        &c[i * ldc..i * ldc + n],
                        &expected[i * n..(i + 1) * n],
                        &bound[i * n..(i + 1) * n],
                        isa.name(),
                    );
                    assert_eq!(
                        &c[i * ldc + n..(i + 1) * ldc],
                        &[9.0; 3],
                        "untouched padding"
                    );
                }
            }
        }
    }

    #[test]
    fn splits_keep_both_threads_busy() {
        let kernel = microkernel::Microkernel {
            mr: 6,
            nr: 64,
            run: |_, _, _, _, _, _| {},
            a_by_rows: true,
        };
        // Blocks of A as a Zen 5's L2 (1 MiB) allows: 210 rows.
        let max_mc = Blocking::for_kernel(CacheSizes::parse("48,1024").unwrap(), 6, 64).mc;
        let split = |m, panels, threads| Split::for_tiles(kernel.mr, max_mc, m, panels, threads);
        // One image of ViT-B (197 rows, 33 row panels) by 768 columns (12 panels): two
        // chunks of 6 panels, 198 tiles each.
        let vit_b = split(197, 12, 2);
        assert_eq!((vit_b.row_blocks, vit_b.chunks, vit_b.chunk), (1, 2, 6));
        // DeiT-Tiny's 192 columns are 3 panels: split the rows instead (17 + 16 panels).
        let deit = split(197, 3, 2);
        assert_eq!((deit.row_blocks, deit.chunks, deit.mc), (2, 1, 102));
        // One thread: one task per block of A.
        let one_thread = split(197, 12, 1);
        assert_eq!((one_thread.row_blocks, one_thread.chunks), (1, 1));
    }

    #[test]
    fn an_empty_depth_gives_the_epilogue_of_zero() {
        for isa in Isa::supported() {
            let packed = PackedB::from_weight_rows(isa, (3, 0), |_| &[]);
            let bias = [1.0, -2.0, 3.0];
            let y = crate::kernels::linear(
                &[],
                &packed,
                &Epilogue::dense(Some(&bias), Activation::Relu),
            );
            assert!(y.is_empty());
            let mut c = [5f32; 6];
            unsafe {
                gemm_packed(
                    2,
                    View::of(&[], 2, 0),
                    &packed,
                    c.as_mut_ptr(),
                    3,
                    &Epilogue::dense(Some(&bias), Activation::Relu),
                    false,
                )
            };
            assert_eq!(c, [1.0, 0.0, 3.0, 1.0, 0.0, 3.0], "{}", isa.name());
        }
    }
}
