//! FP8 weights and their scales: a weight `W.weight` of an FP8 dtype is multiplied by
//! `W.weight_scale_inv` (DeepSeek-V3, Qwen3-FP8) or `W.weight_scale` when the model has
//! one (compressed-tensors: a scalar, `[out]` or `[out, 1]`); the scale tensor is then
//! part of that layer, not a layer itself. This module pairs them, checks the scale's
//! dtype, and works out how a scale covers its weight (the block arithmetic itself is in
//! `decode::fp8`). MXFP4 scales (`mxfp4`) use the same path with blocks of 1 x 32.

use std::collections::HashMap;

use crate::decode::{dtype_name, is_decodable, is_float, is_fp8, scale_blocks};
use crate::error::{Result, SpectrumError};
use crate::layout::{mxfp4, Catalog, Layer, Part, TensorEntry};

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
    if !is_decodable(st.dtype) || !is_float(st.dtype) || st.dtype == safetensors::tensor::Dtype::F4 {
        return Err(SpectrumError::layout(
            &cat.shards[st.shard].path,
            format!("scale tensor {:?} has dtype {}, which cannot be decoded", st.name, dtype_name(st.dtype)),
        ));
    }
    Ok(())
}

/// Which scales apply to one layer: the part of the scale tensor to read, the
/// `(rows, cols)` grid of scales it holds, and the `(rows, cols)` block of the weight
/// each scale covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleGrid {
    pub part: Part,
    pub rows: usize,
    pub cols: usize,
    pub block: (usize, usize),
}

/// Whether the scale tensor `s` of `layer` is stacked like its experts (`[E, sr, sc]`
/// beside `[E, out, in]`): each expert then reads its own slice.
fn stacked(cat: &Catalog, layer: &Layer, s: usize) -> bool {
    let st = &cat.tensors[s];
    layer.weight.expert.is_some() && st.shape.len() == 3
}

/// The part of the scale tensor `s` that `layer` reads.
pub fn scale_part(cat: &Catalog, layer: &Layer, s: usize) -> Part {
    Part { tensor: s, expert: if stacked(cat, layer, s) { layer.weight.expert } else { None } }
}

/// The scales of `layer` from its scale tensor `s`: one expert of a stacked weight takes
/// the same slice of stacked scales; otherwise the whole scale tensor. Fails when the
/// scales do not tile the matrix the layer reads (before any byte is read).
pub fn scale_grid(cat: &Catalog, layer: &Layer, s: usize) -> Result<ScaleGrid> {
    let t = &cat.tensors[layer.weight.tensor];
    let st = &cat.tensors[s];
    let stacked = stacked(cat, layer, s);
    // One expert of a stacked weight takes its slice of stacked scales, or one scale for
    // all: any other scale shape (`[E]`, `[E, 1]`) would be read as row blocks.
    let single = st.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(1);
    if (stacked && st.shape.first() != t.shape.first()) || (layer.weight.expert.is_some() && !stacked && !single) {
        return Err(SpectrumError::layout(
            &cat.shards[st.shard].path,
            format!(
                "scale tensor {:?} of shape {:?} does not stack the {} experts of {:?}",
                st.name, st.shape, t.shape[0], t.name
            ),
        ));
    }
    let part = scale_part(cat, layer, s);
    let dims = if stacked { &st.shape[1..] } else { &st.shape[..] };
    let (rows, cols) = match dims.len() {
        0 => (1, Some(1)),
        1 => (dims[0], Some(1)),
        _ => (dims[0], dims[1..].iter().try_fold(1usize, |a, &d| a.checked_mul(d))),
    };
    let (wr, wc) = layer.read_dims();
    let block = cols.and_then(|cols| {
        if mxfp4::is_mxfp4(t) {
            // One E8M0 scale per 32 values of a row, whatever the config says.
            (rows == wr && cols.checked_mul(mxfp4::BLOCK) == Some(wc)).then_some((1, mxfp4::BLOCK))
        } else {
            scale_blocks(wr, wc, rows, cols, cat.scale_block)
        }
    });
    match (cols, block) {
        (Some(cols), Some(block)) => Ok(ScaleGrid { part, rows, cols, block }),
        _ => Err(no_tile(cat, layer, s)),
    }
}

fn no_tile(cat: &Catalog, layer: &Layer, s: usize) -> SpectrumError {
    let t = &cat.tensors[layer.weight.tensor];
    let st = &cat.tensors[s];
    let blocks = if mxfp4::is_mxfp4(t) { Some((1, mxfp4::BLOCK)) } else { cat.scale_block };
    SpectrumError::layout(
        &cat.shards[st.shard].path,
        format!(
            "scale tensor {:?} of shape {:?} does not tile weight {:?} of shape {:?}{}",
            st.name,
            st.shape,
            t.name,
            t.shape,
            blocks.map(|b| format!(" in blocks of {b:?}")).unwrap_or_default()
        ),
    )
}

/// The `(rows, cols)` block each scale of `grid` covers in `layer`'s matrix, given the
/// `n` scale values decoded; fails when the scales do not tile the weight.
pub fn scale_block(cat: &Catalog, layer: &Layer, s: usize, grid: &ScaleGrid, n: usize) -> Result<(usize, usize)> {
    if grid.rows.checked_mul(grid.cols) == Some(n) {
        Ok(grid.block)
    } else {
        Err(no_tile(cat, layer, s))
    }
}
