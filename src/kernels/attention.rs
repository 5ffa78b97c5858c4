//! Softmax attention straight from a fused q/k/v buffer, head by head, on the engine's
//! products: no transposed copies of q, k or v.

use super::rows::softmax_rows;
use super::{gemm, pool, Epilogue, Isa, SendPtr, View};

/// The most bytes of scores one task holds (the rows of a block of queries): at 4,096 tokens,
/// 128 rows instead of a thread's half of the sequence, 33 MB per thread; DINOv3-S/16 at
/// 1024 px peaks at 232 MB instead of 387 in `vit bench`, in the same time.
const SCORES_BLOCK_BYTES: usize = 2 << 20;

/// The fewest query rows of a task, so that each product still has rows to block over.
const MIN_BLOCK_ROWS: usize = 16;

/// Softmax attention over `qkv` of `(batch, seq, 3, heads, head_dim)`: the context
/// `(batch, seq, heads, head_dim)` and, with `keep_probs`, the probabilities
/// `(batch, heads, seq, seq)` (empty otherwise). Each (batch, head) pair is one task: scores
/// by one matrix product read straight from the strided q and k, a softmax in place, then the
/// product with v written into the context's strided slot, by the CPU engine on `isa`.
pub(crate) fn attention_rows(
    qkv: &[f32],
    (batch, seq, heads, head_dim): (usize, usize, usize, usize),
    keep_probs: bool,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    // Rows of scores `ld` apart (a whole number of vectors: see softmax_rows), unless the
    // caller keeps them as probabilities, `seq` apart.
    let ld = match keep_probs {
        true => seq,
        false => seq.next_multiple_of(16),
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Every (image, head, query row) slot of the context is written by one task below.
    let mut context = Vec::with_capacity(batch * seq * hidden);
    let out = SendPtr(context.spare_capacity_mut().as_mut_ptr().cast());
    // Few (image, head) pairs (one DeiT-Tiny image has 3 heads for 2 threads) are split by
    // query rows, so that every thread gets an even share; long sequences further, so that a
    // task's scores stay in the cache.
    let pairs = batch * heads;
    let threads = rayon::current_num_threads();
    let row_blocks = (4 * threads)
        .div_ceil(pairs)
        .clamp(1, seq.div_ceil(32).max(1));
    let block_rows = seq
        .div_ceil(row_blocks)
        .min((SCORES_BLOCK_BYTES / (4 * ld)).max(MIN_BLOCK_ROWS))
        .max(1);
    let row_blocks = seq.div_ceil(block_rows).max(1);
    // A task: the query rows `first..first + rows` of one (image, head), scores into `scores`
    // (`rows x seq`).
    let task = |task: usize, scores: &mut [f32]| {
        let (pair, block) = (task / row_blocks, task % row_blocks);
        let (b, h) = (pair / heads, pair % heads);
        let first = block * block_rows;
        let rows = block_rows.min(seq - first);
        let scores = &mut scores[..rows * ld];
        let base = b * seq * stride + h * head_dim;
        let view = |offset: usize, from: usize, count: usize| {
            View::strided(qkv, base + offset + from * stride, count, head_dim, stride)
        };
        let (q, k, v) = (
            view(0, first, rows),
            view(hidden, 0, seq),
            view(2 * hidden, 0, seq),
        );
        let scaled = Epilogue {
            scale,
            ..Epilogue::none()
        };
        // SAFETY: q, k and v are checked views inside qkv; scores is this task's own
        // rows x seq block; the context rows of (b, h) from `first` are written by this task
        // only.
        unsafe {
            gemm(
                isa,
                (rows, seq, head_dim),
                q,
                k.transposed(),
                scores.as_mut_ptr(),
                ld,
                &scaled,
                false,
            );
        }
        softmax_rows(scores, seq, ld);
        unsafe {
            gemm(
                isa,
                (rows, head_dim, seq),
                View::strided(scores, 0, rows, seq, ld),
                v,
                out.at((b * seq + first) * hidden + h * head_dim),
                hidden,
                &Epilogue::none(),
                false,
            );
        }
    };
    let tasks = pairs * row_blocks;
    let probs = match keep_probs {
        true => {
            let mut probs = vec![0f32; pairs * seq * seq];
            let all = SendPtr(probs.as_mut_ptr());
            pool::for_each(tasks, |t| {
                let (pair, block) = (t / row_blocks, t % row_blocks);
                let first = block * block_rows;
                let rows = block_rows.min(seq - first);
                // SAFETY: the rows first..first + rows of pair's seq x seq block, inside probs
                // and written by this task only.
                let scores = unsafe {
                    std::slice::from_raw_parts_mut(all.at((pair * seq + first) * seq), rows * seq)
                };
                task(t, scores)
            });
            probs
        }
        false => {
            pool::for_each(tasks, |t| {
                SCORES.with_borrow_mut(|scores| {
                    scores.resize(block_rows * ld, 0.0);
                    task(t, scores)
                })
            });
            Vec::new()
        }
    };
    // SAFETY: the tasks covered every (image, query row, head) of the context (a panic in
    // one is raised by for_each before this line).
    unsafe { context.set_len(batch * seq * hidden) };
    (context, probs)
}

thread_local! {
    /// Each thread's attention scores of one task.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;

    /// A sequence long enough for the scores' budget to split each head's queries into
    /// several blocks (1,100 tokens: 474 rows a block; 8 heads, so that few threads split
    /// them no further) gives the reference's attention, with and without keeping the
    /// probabilities.
    #[test]
    fn long_sequences_split_into_blocks_give_the_reference() {
        let dims: (usize, usize, usize, usize) = (1, 1100, 8, 8);
        let qkv: Vec<f32> = (0..dims.0 * dims.1 * 3 * dims.2 * dims.3)
            .map(|i| ((i * 7919) % 1009) as f32 / 500.0 - 1.0)
            .collect();
        assert!(SCORES_BLOCK_BYTES / (4 * dims.1.next_multiple_of(16)) < dims.1 / 2);
        let (expected, bound) = bounds::attention(&qkv, dims);
        for keep_probs in [false, true] {
            let (context, probs) = attention_rows(&qkv, dims, keep_probs, Isa::current());
            bounds::assert_within(&context, &expected, &bound, "blocked attention");
            assert_eq!(probs.is_empty(), !keep_probs);
        }
    }
}
