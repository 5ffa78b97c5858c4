//! Softmax attention straight from a fused q/k/v buffer, head by head, on the engine's
//! products: no transposed copies of q, k or v.

use super::microkernel::{self, Microkernel};
use super::pack::{AlignedBuf, PackedB};
use super::rows::{exp_rows, softmax_rows};
use super::{gemm, gemm_packed, pool, Epilogue, Isa, SendPtr, View};

/// The most bytes of scores one task holds (the rows of a block of queries): at 4,096 tokens,
/// 128 rows instead of a thread's half of the sequence, 33 MB per thread; DINOv3-S/16 at
/// 1024 px peaks at 232 MB instead of 387 in `vit bench`, in the same time.
const SCORES_BLOCK_BYTES: usize = 2 << 20;

/// The fewest query rows of a task, so that each product still has rows to block over.
const MIN_BLOCK_ROWS: usize = 16;

/// From this many blocks of queries per head on, a head's keys and values are packed once
/// and shared by its blocks: each block's own products packed them again, 18% of
/// DINOv3-S/16's time at 4,096 tokens (32 blocks a head).
const SHARED_PACKING_MIN_BLOCKS: usize = 4;

/// Softmax attention over `qkv` of `(batch, seq, 3, heads, head_dim)`: the context
/// `(batch, seq, heads, head_dim)` and, with `keep_probs`, the probabilities
/// `(batch, heads, seq, seq)` (empty otherwise), as [`attend`] computes them.
pub(crate) fn attention_rows(
    qkv: &[f32],
    dims: (usize, usize, usize, usize),
    keep_probs: bool,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let (batch, seq, heads, head_dim) = dims;
    let mut probs = match keep_probs {
        true => vec![0f32; batch * heads * seq * seq],
        false => Vec::new(),
    };
    let len = batch * seq * heads * head_dim;
    let mut context = Vec::with_capacity(len);
    let out = SendPtr(context.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: out has room for the whole context.
    unsafe { attend(qkv, dims, out, keep_probs.then_some(&mut probs[..]), isa) };
    // SAFETY: attend wrote every value of the context (a panic in one of its tasks is raised
    // before this line).
    unsafe { context.set_len(len) };
    (context, probs)
}

/// [`attention_rows`] keeping the probabilities, both in one buffer: the context, then the
/// probabilities.
pub(crate) fn attention_rows_and_probs(
    qkv: &[f32],
    dims: (usize, usize, usize, usize),
    isa: Isa,
) -> Vec<f32> {
    let (batch, seq, heads, head_dim) = dims;
    let len = batch * seq * heads * head_dim;
    let mut both = vec![0f32; len + batch * heads * seq * seq];
    let (context, probs) = both.split_at_mut(len);
    // SAFETY: context is a buffer of the whole context's size.
    unsafe { attend(qkv, dims, SendPtr(context.as_mut_ptr()), Some(probs), isa) };
    both
}

/// Writes the context of the attention over `qkv` through `out` and, given `probs`, the
/// probabilities into it. Each (batch, head) pair is split into blocks of query rows, one task
/// each: scores by one matrix product read straight from the strided q and k, a softmax in
/// place, then the product with v written into the context's strided slot, by the CPU engine
/// on `isa`. Without `probs` the exponentials stay unnormalized and the context rows are
/// divided by their sums instead (a pass over `head_dim` values per row instead of `seq`),
/// and long sequences share each head's packed keys and values.
///
/// # Safety
/// `out` points to `batch * seq * heads * head_dim` writable values that nothing else reads
/// or writes meanwhile.
unsafe fn attend(
    qkv: &[f32],
    (batch, seq, heads, head_dim): (usize, usize, usize, usize),
    out: SendPtr,
    probs: Option<&mut [f32]>,
    isa: Isa,
) {
    let hidden = heads * head_dim;
    // Rows of scores `ld` apart (a whole number of vectors: see softmax_rows), unless the
    // caller keeps them as probabilities, `seq` apart.
    let ld = match probs {
        Some(_) => seq,
        None => seq.next_multiple_of(16),
    };
    let pairs = batch * heads;
    let (block_rows, row_blocks) = query_blocks(seq, pairs, ld, rayon::current_num_threads());
    let head = Head {
        qkv,
        seq,
        heads,
        hidden,
        head_dim,
        ld,
        isa,
        out,
    };
    let task_rows = |block: usize| {
        let first = block * block_rows;
        (first, block_rows.min(seq - first))
    };
    match probs {
        Some(probs) => {
            assert_eq!(
                probs.len(),
                pairs * seq * seq,
                "attention probabilities' size"
            );
            let all = SendPtr(probs.as_mut_ptr());
            pool::for_each(pairs * row_blocks, |t| {
                let (pair, (first, rows)) = (t / row_blocks, task_rows(t % row_blocks));
                // SAFETY: the rows first..first + rows of pair's seq x seq block, inside probs
                // and written by this task only.
                let scores = unsafe {
                    std::slice::from_raw_parts_mut(all.at((pair * seq + first) * seq), rows * seq)
                };
                let block = QueryBlock { pair, first, rows };
                // SAFETY: this task's own rows of the context.
                unsafe { head.block(block, None, Softmax::Probabilities(scores)) };
            });
        }
        None => match microkernel::for_isa(isa) {
            Some(kernel) if row_blocks >= SHARED_PACKING_MIN_BLOCKS => {
                let (mut keys, mut values) = (AlignedBuf::default(), AlignedBuf::default());
                for pair in 0..pairs {
                    let packed = head.pack(kernel, pair, keys, values);
                    pool::for_each(row_blocks, |block| {
                        let (first, rows) = task_rows(block);
                        let block = QueryBlock { pair, first, rows };
                        // SAFETY: this task's own rows of the context.
                        unsafe { head.with_scores(block, Some(&packed)) };
                    });
                    (keys, values) = (packed.0.into_buffer(), packed.1.into_buffer());
                }
            }
            _ => {
                pool::for_each(pairs * row_blocks, |t| {
                    let (pair, (first, rows)) = (t / row_blocks, task_rows(t % row_blocks));
                    // SAFETY: this task's own rows of the context.
                    unsafe { head.with_scores(QueryBlock { pair, first, rows }, None) };
                });
            }
        },
    }
}

/// The query rows of a task and the tasks per head, for `pairs` (image, head) pairs of `seq`
/// tokens whose scores' rows are `ld` apart. Few pairs (one DeiT-Tiny image has 3 heads for 2
/// threads) are split by query rows, so that every thread gets an even share; long sequences
/// further, so that a task's scores stay in the cache.
fn query_blocks(seq: usize, pairs: usize, ld: usize, threads: usize) -> (usize, usize) {
    let row_blocks = (4 * threads)
        .div_ceil(pairs)
        .clamp(1, seq.div_ceil(32).max(1));
    let block_rows = seq
        .div_ceil(row_blocks)
        .min((SCORES_BLOCK_BYTES / (4 * ld)).max(MIN_BLOCK_ROWS))
        .max(1);
    (block_rows, seq.div_ceil(block_rows).max(1))
}

/// What the attention of one head reads and where it writes.
#[derive(Clone, Copy)]
struct Head<'a> {
    qkv: &'a [f32],
    seq: usize,
    heads: usize,
    hidden: usize,
    head_dim: usize,
    /// Scores' row stride.
    ld: usize,
    isa: Isa,
    /// The context's first value.
    out: SendPtr,
}

/// The query rows `first..first + rows` of one (image, head) pair, `image * heads + head`.
#[derive(Clone, Copy)]
struct QueryBlock {
    pair: usize,
    first: usize,
    rows: usize,
}

/// How a block's scores become weights of the values.
enum Softmax<'s> {
    /// Normalized in place, in the caller's buffer (kept as probabilities).
    Probabilities(&'s mut [f32]),
    /// Exponentials in the thread's buffer; the context rows are divided by their sums.
    Deferred(&'s mut [f32], &'s mut [f32]),
}

impl Head<'_> {
    /// q, k or v (`part` 0, 1, 2) of an (image, head) pair: `count` rows from `from`.
    fn view(&self, pair: usize, part: usize, from: usize, count: usize) -> View<'_> {
        let (b, h) = (pair / self.heads, pair % self.heads);
        let stride = 3 * self.hidden;
        let base = b * self.seq * stride + h * self.head_dim + part * self.hidden;
        View::strided(self.qkv, base + from * stride, count, self.head_dim, stride)
    }

    /// An (image, head) pair's keys (as the `head_dim x seq` right-hand side of the scores)
    /// and values, packed into `keys` and `values`' memory.
    fn pack(
        &self,
        kernel: Microkernel,
        pair: usize,
        keys: AlignedBuf,
        values: AlignedBuf,
    ) -> (PackedB, PackedB) {
        let (seq, d) = (self.seq, self.head_dim);
        // SAFETY: both views are checked views inside qkv.
        unsafe {
            (
                PackedB::from_view(
                    self.isa,
                    kernel,
                    self.view(pair, 1, 0, seq).transposed(),
                    (d, seq),
                    true,
                    keys,
                ),
                PackedB::from_view(
                    self.isa,
                    kernel,
                    self.view(pair, 2, 0, seq),
                    (seq, d),
                    true,
                    values,
                ),
            )
        }
    }

    /// [`Head::block`] with unnormalized exponentials in this thread's buffers.
    ///
    /// # Safety
    /// As [`Head::block`].
    unsafe fn with_scores(&self, block: QueryBlock, packed: Option<&(PackedB, PackedB)>) {
        let rows = block.rows;
        SCORES.with_borrow_mut(|(scores, sums)| {
            scores.resize(rows * self.ld, 0.0);
            sums.resize(rows, 0.0);
            let softmax = Softmax::Deferred(&mut scores[..rows * self.ld], &mut sums[..rows]);
            self.block(block, packed, softmax)
        })
    }

    /// The context rows of `block`: scores, softmax, and the product with the values, from
    /// `packed` keys and values when given.
    ///
    /// # Safety
    /// No other task writes those context rows meanwhile.
    unsafe fn block(
        &self,
        QueryBlock { pair, first, rows }: QueryBlock,
        packed: Option<&(PackedB, PackedB)>,
        mut softmax: Softmax,
    ) {
        let (seq, d) = (self.seq, self.head_dim);
        let (b, h) = (pair / self.heads, pair % self.heads);
        let (scores, ld) = match &mut softmax {
            Softmax::Probabilities(scores) => (scores.as_mut_ptr(), seq),
            Softmax::Deferred(scores, _) => (scores.as_mut_ptr(), self.ld),
        };
        let scaled = Epilogue {
            scale: 1.0 / (d as f32).sqrt(),
            ..Epilogue::none()
        };
        let q = self.view(pair, 0, first, rows);
        let context = self.out.at((b * seq + first) * self.hidden + h * d);
        // SAFETY (both products): q, k and v are checked views inside qkv, or packed from
        // them; scores is this task's own rows x ld block; the context rows of (b, h) from
        // `first` are this task's (the caller's promise).
        match packed {
            Some((keys, _)) => gemm_packed(rows, q, keys, scores, ld, &scaled, false),
            None => gemm(
                self.isa,
                (rows, seq, d),
                q,
                self.view(pair, 1, 0, seq).transposed(),
                scores,
                ld,
                &scaled,
                false,
            ),
        }
        let (weights, sums) = match softmax {
            Softmax::Probabilities(scores) => {
                softmax_rows(scores, seq, ld);
                (View::strided(scores, 0, rows, seq, ld), None)
            }
            Softmax::Deferred(scores, sums) => {
                exp_rows(scores, seq, ld, sums);
                (View::strided(scores, 0, rows, seq, ld), Some(sums))
            }
        };
        match packed {
            Some((_, values)) => gemm_packed(
                rows,
                weights,
                values,
                context,
                self.hidden,
                &Epilogue::none(),
                false,
            ),
            None => gemm(
                self.isa,
                (rows, d, seq),
                weights,
                self.view(pair, 2, 0, seq),
                context,
                self.hidden,
                &Epilogue::none(),
                false,
            ),
        }
        if let Some(sums) = sums {
            for (r, &sum) in sums.iter().enumerate() {
                let inverse = 1.0 / sum;
                std::slice::from_raw_parts_mut(context.add(r * self.hidden), d)
                    .iter_mut()
                    .for_each(|x| *x *= inverse);
            }
        }
    }
}

thread_local! {
    /// Each thread's attention scores of one task, and their rows' sums.
    static SCORES: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bounds;

    /// A sequence long enough for the scores' budget to split each head's queries into
    /// several blocks (1,100 tokens: 474 rows a block; 8 heads, so that few threads split
    /// them no further) gives the reference's attention, with and without keeping the
    /// probabilities; so does one long enough for its heads to share their packed keys and
    /// values (1,500 tokens, 2 heads: 5 blocks a head or more).
    #[test]
    fn long_sequences_split_into_blocks_give_the_reference() {
        let shared = (1, 1500, 2, 8);
        let threads = rayon::current_num_threads();
        let (_, blocks) = query_blocks(shared.1, shared.2, shared.1.next_multiple_of(16), threads);
        assert!(blocks >= SHARED_PACKING_MIN_BLOCKS, "{blocks} blocks");
        for dims in [(1, 1100, 8, 8), shared] {
            check_against_the_reference(dims);
        }
    }

    fn check_against_the_reference(dims: (usize, usize, usize, usize)) {
        let qkv: Vec<f32> = (0..dims.0 * dims.1 * 3 * dims.2 * dims.3)
            .map(|i| ((i * 7919) % 1009) as f32 / 500.0 - 1.0)
            .collect();
        assert!(SCORES_BLOCK_BYTES / (4 * dims.1.next_multiple_of(16)) < dims.1 / 2);
        let (expected, bound) = bounds::attention(&qkv, dims);
        for isa in Isa::supported() {
            for keep_probs in [false, true] {
                let (context, probs) = attention_rows(&qkv, dims, keep_probs, isa);
                let what = format!("{dims:?} on {isa:?}, probabilities kept: {keep_probs}");
                bounds::assert_within(&context, &expected, &bound, &what);
                assert_eq!(probs.is_empty(), !keep_probs);
                if keep_probs {
                    let both = attention_rows_and_probs(&qkv, dims, isa);
                    assert!(both == [context, probs].concat(), "{what}: in one buffer");
                }
            }
        }
    }
}
