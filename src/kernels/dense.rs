//! Dense products over slices for the training step, whose weights change every step (so
//! they are packed per call), on the engine's products.

use super::{gemm, Activation, Epilogue, Isa, View};

/// `dst (m x n, row stride dst_stride) = [dst +] scale * a (m x k) * b (k x n)` by the CPU
/// engine, on all threads when `parallel`.
///
/// # Safety
/// `dst`, `a` and `b` must address matrices of those sizes with their strides, and `dst`
/// must not overlap `a` or `b` nor be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_stride: usize,
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let epilogue = Epilogue {
        scale,
        accumulate,
        ..Epilogue::none()
    };
    gemm(
        Isa::current(),
        (m, n, k),
        a,
        b,
        dst,
        dst_stride,
        &epilogue,
        parallel,
    );
}

/// `dst (m x n) = [dst +] a (m x k) * b (k x n)` on all threads.
///
/// Panics unless the views and `dst` have those sizes.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    accumulate: bool,
) {
    assert_eq!(
        dst.len(),
        m * n,
        "product of {m}x{n} into {} values",
        dst.len()
    );
    assert_eq!(
        (a.dims(), b.dims()),
        ((m, k), (k, n)),
        "views for a {m}x{k}x{n} product"
    );
    // SAFETY: dst is an exclusive m x n buffer; a and b address their m x k and k x n
    // matrices inside slices they borrow (checked as they were built and above), which the
    // borrow checker keeps apart from dst.
    unsafe { gemm_raw(dst.as_mut_ptr(), n, (m, n, k), a, b, accumulate, 1.0, true) }
}

/// `x W^T + b (+ residual)` for `x` of `(rows, in)` and `W` of `(out, in)`, row-major, with
/// the bias and residual added as the product stores (the training step's dense layers,
/// whose weights change every step, so `W` is packed per call).
pub(crate) fn linear_rows(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    let inner = weight.len() / out;
    let rows = x.len() / inner;
    let mut y = vec![0f32; rows * out];
    let epilogue = Epilogue {
        residual,
        ..Epilogue::dense(bias, Activation::None)
    };
    // SAFETY: the views are checked over x and weight; y is this call's own buffer.
    unsafe {
        gemm(
            Isa::current(),
            (rows, out, inner),
            View::of(x, rows, inner),
            View::of(weight, out, inner).transposed(),
            y.as_mut_ptr(),
            out,
            &epilogue,
            true,
        )
    };
    y
}
