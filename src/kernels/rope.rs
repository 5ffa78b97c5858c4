//! Rotary position embeddings applied in place to the queries and keys of a fused q/k/v
//! projection: the `i`-th pair of a head's values turns by the `i`-th angle of its token,
//! pairs taken as the family takes them ([`RotaryPairs`]).

use super::pool;

/// Tokens rotated by one parallel task.
const TOKENS_PER_TASK: usize = 16;

/// Which of a head's values form the pairs that turn together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryPairs {
    /// `(x[i], x[i + d/2])`: HF's `rotate_half` (DINOv3, Llama's text models).
    Halves,
    /// `(x[2i], x[2i + 1])`: the values read as complex numbers (Llama 4's and Pixtral's
    /// vision encoders, `torch.view_as_complex`; timm's EVA).
    Adjacent,
}

/// The shape of a fused q/k/v buffer, `(batch, tokens, 3, heads, head_dim)` row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Rotates the queries and keys of the last `patches` tokens of each sequence of `qkv`
/// (the tokens before them, class and register tokens, keep theirs), values untouched.
/// `cos` and `sin` hold `head_dim / 2` values per patch: the angles of the pairs, the same
/// for every head, or, `per_head`, `(heads, patches, head_dim / 2)` (RoPE-Mixed's learned
/// frequencies).
///
/// Panics if the buffers do not have the sizes `shape` gives.
pub fn rotate_queries_and_keys(
    qkv: &mut [f32],
    shape: QkvShape,
    pairs: RotaryPairs,
    (cos, sin): (&[f32], &[f32]),
    per_head: bool,
) {
    let QkvShape {
        batch,
        tokens,
        heads,
        head_dim,
    } = shape;
    let half = head_dim / 2;
    let row = 3 * heads * head_dim;
    assert!(
        head_dim.is_multiple_of(2),
        "rotary head_dim {head_dim} is odd"
    );
    assert_eq!(qkv.len(), batch * tokens * row, "q/k/v buffer size");
    assert_eq!(cos.len(), sin.len(), "rotary tables");
    let tables = if per_head { heads } else { 1 };
    let patches = cos.len() / (half * tables).max(1);
    assert!(
        patches <= tokens,
        "{patches} rotated patches of {tokens} tokens"
    );
    let prefix = tokens - patches;
    pool::for_each_chunk_mut(qkv, TOKENS_PER_TASK * row, |chunk_index, chunk| {
        let first = chunk_index * TOKENS_PER_TASK;
        for (offset, token_row) in chunk.chunks_exact_mut(row).enumerate() {
            let token = (first + offset) % tokens;
            let Some(patch) = token.checked_sub(prefix) else {
                continue;
            };
            // Queries, then keys: the first two thirds of the row.
            let heads_of_row = token_row[..2 * heads * head_dim].chunks_exact_mut(head_dim);
            for (index, head) in heads_of_row.enumerate() {
                let table = if per_head { index % heads } else { 0 };
                let start = (table * patches + patch) * half;
                let (cos, sin) = (&cos[start..start + half], &sin[start..start + half]);
                match pairs {
                    RotaryPairs::Halves => rotate_halves(head, cos, sin),
                    RotaryPairs::Adjacent => rotate_adjacent(head, cos, sin),
                }
            }
        }
    });
}

/// `x * cos + rotate_half(x) * sin` for one head, in place.
#[inline]
fn rotate_halves(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (low, high) = head.split_at_mut(cos.len());
    for (((x, y), c), s) in low.iter_mut().zip(high).zip(cos).zip(sin) {
        (*x, *y) = turn(*x, *y, *c, *s);
    }
}

/// Each adjacent pair as a complex number times `cos + i sin`, in place.
#[inline]
fn rotate_adjacent(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        (pair[0], pair[1]) = turn(pair[0], pair[1], *c, *s);
    }
}

/// `(a + ib)(c + is)`: as torch multiplies complex f32 numbers, `ac - bs`, `as + bc`.
#[inline]
fn turn(a: f32, b: f32, c: f32, s: f32) -> (f32, f32) {
    (a * c - b * s, b * c + a * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference formulas on one head: HF's `q * cos + rotate_half(q) * sin` with the
    /// angle tables repeated over both halves, or the complex product of adjacent pairs.
    fn reference(head: &[f32], pairs: RotaryPairs, cos: &[f32], sin: &[f32]) -> Vec<f32> {
        let half = head.len() / 2;
        (0..head.len())
            .map(|i| match pairs {
                RotaryPairs::Halves => {
                    let rotated = match i < half {
                        true => -head[i + half],
                        false => head[i - half],
                    };
                    head[i] * cos[i % half] + rotated * sin[i % half]
                }
                RotaryPairs::Adjacent => {
                    let (a, b, pair) = (head[i & !1], head[i | 1], i / 2);
                    match i % 2 {
                        0 => a * cos[pair] - b * sin[pair],
                        _ => a * sin[pair] + b * cos[pair],
                    }
                }
            })
            .collect()
    }

    #[test]
    fn patches_turn_as_the_references_rotate_them_and_prefix_tokens_and_values_stay() {
        for pairs in [RotaryPairs::Halves, RotaryPairs::Adjacent] {
            let shape = QkvShape {
                batch: 2,
                tokens: 37,
                heads: 3,
                head_dim: 8,
            };
            let (row, half, prefix) = (3 * 3 * 8, 4, 2);
            let patches = shape.tokens - prefix;
            let original: Vec<f32> = (0..shape.batch * shape.tokens * row)
                .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
                .collect();
            let angles: Vec<f32> = (0..patches * half).map(|i| i as f32 * 0.37).collect();
            let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            let mut qkv = original.clone();
            rotate_queries_and_keys(&mut qkv, shape, pairs, (&cos, &sin), false);
            for b in 0..shape.batch {
                for t in 0..shape.tokens {
                    let start = (b * shape.tokens + t) * row;
                    let (got, was) = (&qkv[start..start + row], &original[start..start + row]);
                    if t < prefix {
                        assert_eq!(got, was, "prefix token {t} moved");
                        continue;
                    }
                    let p = t - prefix;
                    let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
                    for head in 0..2 * shape.heads {
                        let at = head * shape.head_dim..(head + 1) * shape.head_dim;
                        let expected = reference(&was[at.clone()], pairs, c, s);
                        for (g, e) in got[at].iter().zip(&expected) {
                            assert!(
                                (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                                "{pairs:?}: {g} vs {e}"
                            );
                        }
                    }
                    assert_eq!(got[2 * 24..], was[2 * 24..], "values of token {t} moved");
                }
            }
        }
    }

    #[test]
    fn per_head_tables_turn_each_head_by_its_own_angles() {
        let shape = QkvShape {
            batch: 1,
            tokens: 5,
            heads: 2,
            head_dim: 4,
        };
        let (row, half, prefix) = (3 * 2 * 4, 2, 1);
        let patches = shape.tokens - prefix;
        let original: Vec<f32> = (0..shape.tokens * row)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let angles: Vec<f32> = (0..2 * patches * half).map(|i| i as f32 * 0.21).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let mut qkv = original.clone();
        rotate_queries_and_keys(&mut qkv, shape, RotaryPairs::Adjacent, (&cos, &sin), true);
        for t in prefix..shape.tokens {
            let p = t - prefix;
            // Query heads 0 and 1, then key heads 0 and 1.
            for (slot, head) in [0, 1, 0, 1].into_iter().enumerate() {
                let at = t * row + slot * 4..t * row + (slot + 1) * 4;
                let start = (head * patches + p) * half;
                let expected = reference(
                    &original[at.clone()],
                    RotaryPairs::Adjacent,
                    &cos[start..start + half],
                    &sin[start..start + half],
                );
                for (g, e) in qkv[at].iter().zip(&expected) {
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{g} vs {e}");
                }
            }
        }
    }
}
