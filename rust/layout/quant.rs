//! FP8 weights and their scales: a weight `W.weight` of an FP8 dtype is multiplied by
//! `W.weight_scale_inv` (DeepSeek-V3, Qwen3-FP8) or `W.weight_scale` when the model has
//! one; the scale tensor is then part of that layer, not a layer itself. This module
//! pairs them, checks the scale's dtype, and works out how a scale covers its weight
//! (the block arithmetic itself is in `decode::fp8`).

use std::collections::HashMap;

use crate::decode::{dtype_name, element_size, is_float, is_fp8, scale_blocks};
use crate::error::{Result, SpectrumError};
use crate::layout::{Catalog, Layer, Part, TensorEntry};

/// FP8 weights and their scale tensors: weight tensor index -> scale tensor index.
pub fn scale_pairs(tensors: &[TensorEntry], by_name: &HashMap<String, usize>) -> HashMap<usize, usize> {
    tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| is_fp8(t.dtype))
        .filter_map(|(ti, t)| {
            [format!("{}_scale_inv", t.name), format!("{}_scale", t.name)]
                .iter()
                .find_map(|n| by_name.get(n).copied())
                .map(|s| (ti, s))
        })
        .collect()
}

/// Fails when the scale tensor `s` has a dtype that cannot be decoded.
pub fn check_scale_dtype(cat: &Catalog, s: usize) -> Result<()> {
    let st = &cat.tensors[s];
    if element_size(st.dtype).is_none() || !is_float(st.dtype) {
        return Err(SpectrumError::layout(
            &cat.shards[st.shard].path,
            format!("scale tensor {:?} has dtype {}, which cannot be decoded", st.name, dtype_name(st.dtype)),
        ));
    }
    Ok(())
}

/// Which scales apply to one layer: the part of the scale tensor to read and the
/// `(rows, cols)` grid of scales it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleGrid {
    pub part: Part,
    pub rows: usize,
    pub cols: usize,
}

/// The scales of `layer` from its scale tensor `s`: one expert of a stacked weight takes
/// the same slice of stacked scales; otherwise the whole scale tensor.
pub fn scale_grid(cat: &Catalog, layer: &Layer, s: usize) -> Result<ScaleGrid> {
    let t = &cat.tensors[layer.weight.tensor];
    let st = &cat.tensors[s];
    let stacked = st.shape.len() == 3 && layer.weight.expert.is_some();
    if stacked && st.shape[0] != t.shape[0] {
        return Err(SpectrumError::layout(
            &cat.shards[st.shard].path,
            format!(
                "scale tensor {:?} of shape {:?} does not stack the {} experts of {:?}",
                st.name, st.shape, t.shape[0], t.name
            ),
        ));
    }
    let part = Part { tensor: s, expert: if stacked { layer.weight.expert } else { None } };
    let dims = if stacked { &st.shape[1..] } else { &st.shape[..] };
    let (rows, cols) = match dims.len() {
        0 => (1, 1),
        1 => (dims[0], 1),
        _ => (dims[0], dims[1..].iter().product()),
    };
    Ok(ScaleGrid { part, rows, cols })
}

/// The `(rows, cols)` block each scale of `grid` covers in `layer`'s matrix, given the
/// `n` scale values decoded; fails when the scales do not tile the weight.
pub fn scale_block(cat: &Catalog, layer: &Layer, s: usize, grid: &ScaleGrid, n: usize) -> Result<(usize, usize)> {
    (grid.rows * grid.cols == n)
        .then(|| scale_blocks(layer.rows, layer.cols, grid.rows, grid.cols, cat.scale_block))
        .flatten()
        .ok_or_else(|| {
            let t = &cat.tensors[layer.weight.tensor];
            let st = &cat.tensors[s];
            SpectrumError::layout(
                &cat.shards[st.shard].path,
                format!(
                    "scale tensor {:?} of shape {:?} does not tile weight {:?} of shape {:?}{}",
                    st.name,
                    st.shape,
                    t.name,
                    t.shape,
                    cat.scale_block.map(|b| format!(" in blocks of {b:?}")).unwrap_or_default()
                ),
            )
        })
}
