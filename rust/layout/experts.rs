//! Fused mixture-of-experts layouts: one 3-D tensor `[E, out, in]` of stacked experts
//! (docs/method.md §1) is E layers, `<layer>.<e>`, each reading its expert's slice of the tensor.

use crate::decode::is_float;
use crate::layout::{Part, TensorEntry};

/// A fused tensor of stacked experts `[E, out, in]`: 3-D, a float type, an `experts`
/// part in its name, and data for every expert (a header declaring millions of empty
/// experts is not split).
pub fn is_stacked_experts(t: &TensorEntry) -> bool {
    t.shape.len() == 3
        && is_float(t.dtype)
        && t.name.split('.').any(|p| p == "experts")
        && t.end > t.begin
        && t.shape[0] <= t.end - t.begin
}

/// The layers of a stacked tensor `ti` of `shape` `[E, out, in]` named `name`: one per
/// expert, as `(name.e, part, (out, in))`.
pub fn expert_layers<'a>(
    name: &'a str,
    ti: usize,
    shape: &[usize],
) -> impl Iterator<Item = (String, Part, (usize, usize))> + 'a {
    let (experts, rows, cols) = match shape {
        [e, rows, cols] => (*e, *rows, *cols),
        _ => (0, 0, 0),
    };
    (0..experts).map(move |e| (format!("{name}.{e}"), Part { tensor: ti, expert: Some(e) }, (rows, cols)))
}

/// Byte range of expert `e` of a stacked tensor.
pub fn expert_range(t: &TensorEntry, e: usize) -> (usize, usize) {
    let each = (t.end - t.begin) / t.shape.first().copied().unwrap_or(1).max(1);
    (t.begin + e * each, t.begin + (e + 1) * each)
}
