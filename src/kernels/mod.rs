//! The CPU engine: an f32 matrix product built as BLIS and ONNX Runtime's MLAS build theirs.
//!
//! - [`microkernel`]: register-blocked FMA kernels for AVX-512 and AVX2, chosen at run time
//!   ([`Isa`]); other CPUs use the `gemm` crate.
//! - [`pack`]: the panel layout the kernels read; weights ([`PackedB`]) are packed once,
//!   when the model loads.
//! - [`cache`]: block sizes from the caches the CPU reports (or `VIT_CACHE_SIZES`).
//! - [`gemm`](mod@gemm): the loop nest and the split over threads.
//! - [`epilogue`]: bias, activation and residual applied as each tile is stored.
//! - [`pool`]: the threads that run the parallel steps of a forward pass.
//! - [`int8`]: int8 dense layers (per-channel weights, activations quantized per row) on
//!   the same split and threads.
//! - [`rows`]: layer norm, exact GELU and softmax over rows, in vector lanes; [`attention`]:
//!   softmax attention from a fused q/k/v buffer; [`rope`]: rotary embeddings turned in
//!   place; `dense`: the training step's products over slices.

pub mod attention;
#[cfg(test)]
pub(crate) mod bounds;
pub mod cache;
pub(crate) mod dense;
pub mod epilogue;
pub mod gemm;
pub mod int8;
pub mod isa;
pub mod math;
pub(crate) mod microkernel;
pub mod pack;
pub mod pool;
pub mod rope;
pub mod rows;

use std::marker::PhantomData;

pub use cache::CacheSizes;
pub use epilogue::{Activation, Epilogue};
pub use gemm::{gemm, gemm_packed};
pub use isa::Isa;
pub use pack::PackedB;

/// Reports a setting the engine ignores on stderr (a failed write, stderr closed, is
/// ignored too).
pub(crate) fn warn(message: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Keeps the memory of freed buffers in the process, for the CPU engine's inference and
/// training alike. A forward pass or a training step allocates and frees buffers of megabytes
/// (a step some hundred); glibc hands large freed blocks back to the OS (above its mmap and
/// trim thresholds), so each pass paid again for zeroed pages, page faults and TLB
/// shootdowns: on a DeiT-Tiny training epoch (batch 32) 2.1 million page faults and 8 s of
/// system time, against 0.4 million and 2.5 s when the memory is kept; in DeiT-Tiny
/// inference at batch 8, a twentieth of the CPU time (0.33-0.40 s of system time in 40
/// batches, 0.08 s kept). One arena for every thread: buffers made on the engine's threads
/// went to per-thread arenas, whose heaps (64 MiB at most) are unmapped once empty and fault
/// again in the next pass; `vit explain` of 26 photos (DeiT-Tiny) kept 60 MB of attention per
/// batch and took 65,000 page faults instead of 29,000, 12% of its time. It changes the
/// process's allocator parameters, once.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters (arenas made before it are
            // kept). 32 MiB is glibc's largest mmap threshold.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        });
    }
}

/// A raw output pointer shared by parallel tasks that write disjoint parts of one buffer.
pub(crate) struct SendPtr<T = f32>(pub(crate) *mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: every task sharing it writes a disjoint part of the buffer, so sharing the pointer
// is sound.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer `offset` values in (a method, so that closures capture the whole
    /// `SendPtr`, which is `Send`, not its raw field).
    ///
    /// # Safety
    /// `offset` must stay inside the buffer the pointer addresses (`pointer::add`'s rule).
    pub(crate) unsafe fn at(self, offset: usize) -> *mut T {
        // SAFETY: the caller keeps the offset inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// A strided view of a `rows x cols` matrix: element `(r, c)` at `ptr + r * row_stride + c *
/// col_stride`. Built only over a slice that holds every element (checked), which it borrows
/// for `'a`: the compiler, not a comment, keeps the data alive and unwritten while a product
/// reads it.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub(in crate::kernels) ptr: *const f32,
    pub(in crate::kernels) row_stride: isize,
    pub(in crate::kernels) col_stride: isize,
    pub(in crate::kernels) rows: usize,
    pub(in crate::kernels) cols: usize,
    pub(in crate::kernels) data: PhantomData<&'a [f32]>,
}

// SAFETY: a view only reads the slice it borrows (shared, so nobody writes it meanwhile).
unsafe impl Send for View<'_> {}
unsafe impl Sync for View<'_> {}

impl<'a> View<'a> {
    /// `rows x cols` row-major values of `data` (checked to be there).
    pub fn of(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "matrix of {rows}x{cols} over {} values",
            data.len()
        );
        Self {
            ptr: data.as_ptr(),
            row_stride: cols as isize,
            col_stride: 1,
            rows,
            cols,
            data: PhantomData,
        }
    }

    /// `rows` rows of `cols` values of `data` from `offset`, `row_stride` apart (checked to
    /// be there).
    pub fn strided(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        assert!(
            rows == 0 || offset + (rows - 1) * row_stride + cols <= data.len(),
            "{rows} rows of {cols} values, {row_stride} apart from {offset}, over {} values",
            data.len()
        );
        Self {
            ptr: data[offset..].as_ptr(),
            row_stride: row_stride as isize,
            col_stride: 1,
            rows,
            cols,
            data: PhantomData,
        }
    }

    /// The transpose.
    pub fn transposed(self) -> Self {
        Self {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            rows: self.cols,
            cols: self.rows,
            ..self
        }
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// `y = epilogue(x W^T)` for `x` of `rows x k` row-major and a packed weight, on all threads.
pub fn linear(x: &[f32], weight: &PackedB, epilogue: &Epilogue) -> Vec<f32> {
    let (k, n) = weight.dims();
    let rows = x.len().checked_div(k).unwrap_or(0);
    assert_eq!(rows * k, x.len(), "{} inputs are not rows of {k}", x.len());
    assert!(!epilogue.accumulate, "linear: nothing to accumulate into");
    let mut y = Vec::with_capacity(rows * n);
    // SAFETY: x holds the rows x k view, y's capacity is this call's own rows x n buffer, and
    // the epilogue's sizes are checked by gemm_packed; without `accumulate` the product
    // writes every value of it (and reads none), so all rows x n are initialized after.
    unsafe {
        gemm_packed(
            rows,
            View::of(x, rows, k),
            weight,
            y.spare_capacity_mut().as_mut_ptr().cast(),
            n,
            epilogue,
            true,
        );
        y.set_len(rows * n);
    }
    y
}
