//! Fused mixture-of-experts layouts: one 3-D tensor `[E, out, in]` of stacked experts
//! (docs/method.md §1, docs/layouts.md) is E layers, `<layer>.<e>`, each reading its
//! expert's slice of the tensor (the tensor is never read whole). gpt-oss and Llama-4
//! store `[E, in, out]`: the SNR of a matrix and of its transpose are the same.

use crate::decode::is_float;
use crate::layout::{base_name, Source, TensorEntry};

/// A fused tensor of stacked experts `[E, out, in]`: 3-D, a float type, an `experts`
/// part in its name, and each expert a real matrix (at least 2 x 2, so that a tiny
/// header declaring a million empty or 1 x 1 experts is one matrix, not a million
/// layers). How many experts one tensor may have is capped (`Options::max_experts`).
pub fn is_stacked_experts(t: &TensorEntry) -> bool {
    matches!(t.shape[..], [e, rows, cols] if e > 0 && rows >= 2 && cols >= 2)
        && is_float(t.dtype)
        && t.name.split('.').any(|p| p == "experts")
}

/// The layers of a stacked tensor: `[E, out, in]` is E matrices `(out, in)`.
pub fn source(t: &TensorEntry) -> Option<Source> {
    match t.shape[..] {
        [e, rows, cols] => Some(Source::new(base_name(t), Some(e), rows, &[cols])),
        _ => None,
    }
}

/// Byte range of expert `e` of a stacked tensor.
pub fn expert_range(t: &TensorEntry, e: usize) -> (usize, usize) {
    let each = (t.end - t.begin) / t.shape.first().copied().unwrap_or(1).max(1);
    (t.begin + e * each, t.begin + (e + 1) * each)
}
