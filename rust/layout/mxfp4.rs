//! MXFP4 weights (gpt-oss): `X_blocks` uint8 `[E, out, G, 16]` holds FP4 E2M1 values,
//! two a byte (low nibble first), 32 per block; `X_scales` uint8 `[E, out, G]` holds one
//! E8M0 scale per block, `2^(s - 127)`. Expert `e` is the matrix `(out, 32 G)` with
//! `W[r, 32 g + k] = e2m1(blocks[e, r, g, k]) * 2^(scales[e, r, g] - 127)`: transformers'
//! `integrations/mxfp4.py` (`_convert_moe_packed_tensors`) computes the same values and
//! then transposes each expert to gpt-oss's `[in, out]`; the SNR does not depend on the
//! orientation. The layers are named as the dequantized model names them:
//! `...mlp.experts.gate_up_proj.<e>` from `...mlp.experts.gate_up_proj_blocks`.
//!
//! `retype` gives both tensors the dtype their bytes encode (F4 with 32 values per block,
//! F8_E8M0), after which they are an ordinary weight and its block scale: the decoder
//! and the scale machinery of FP8 do the rest (`quant::scale_block`: blocks of 1 x 32).
//! A 3-D `X_blocks` `[out, G, 16]` (no experts) is one matrix.

use std::collections::HashMap;

use safetensors::tensor::Dtype;

use crate::error::{Result, SpectrumError};
use crate::layout::{Catalog, Source, TensorEntry};

/// Values in one MXFP4 block (one scale each).
pub const BLOCK: usize = 32;
const BLOCKS: &str = "_blocks";
const SCALES: &str = "_scales";

/// Finds every MXFP4 pair (a `*_blocks` uint8 tensor of rank 3 or 4 whose last dimension
/// is 16 and a `*_scales` uint8 tensor of its shape without that dimension), retypes both
/// (blocks: F4 with a last dimension of 32; scales: F8_E8M0), and returns blocks tensor ->
/// scales tensor. A `*_blocks` tensor whose scales do not match it is an error.
pub fn retype(cat: &mut Catalog, by_name: &HashMap<String, usize>) -> Result<HashMap<usize, usize>> {
    let mut pairs = HashMap::new();
    for (bi, b) in cat.tensors.iter().enumerate() {
        let Some(stem) = b.name.strip_suffix(BLOCKS) else { continue };
        let Some(&si) = by_name.get(&format!("{stem}{SCALES}")) else { continue };
        if b.dtype != Dtype::U8 || !matches!(b.shape.len(), 3 | 4) || b.shape.last() != Some(&(BLOCK / 2)) {
            continue;
        }
        let s = &cat.tensors[si];
        if s.dtype != Dtype::U8 || s.shape[..] != b.shape[..b.shape.len() - 1] {
            return Err(SpectrumError::layout(
                &cat.shards[s.shard].path,
                format!(
                    "MXFP4 scales {:?} ({} of shape {:?}) do not match the blocks {:?} of shape {:?} (expected U8 of shape {:?})",
                    s.name,
                    crate::decode::dtype_name(s.dtype),
                    s.shape,
                    b.name,
                    b.shape,
                    &b.shape[..b.shape.len() - 1]
                ),
            ));
        }
        pairs.insert(bi, si);
    }
    for (&bi, &si) in &pairs {
        let b = &mut cat.tensors[bi];
        b.dtype = Dtype::F4;
        if let Some(last) = b.shape.last_mut() {
            *last = BLOCK;
        }
        cat.tensors[si].dtype = Dtype::F8_E8M0;
    }
    Ok(pairs)
}

/// The layers of retyped MXFP4 blocks: `[E, out, G, 32]` is E matrices `(out, 32 G)`,
/// `[out, G, 32]` one.
pub fn source(t: &TensorEntry) -> Option<Source> {
    let name = t.name.strip_suffix(BLOCKS).unwrap_or(&t.name);
    match t.shape[..] {
        [e, rows, g, k] => Some(Source::new(name, Some(e), rows, &[g, k])),
        [rows, g, k] => Some(Source::new(name, None, rows, &[g, k])),
        _ => None,
    }
}

/// Whether a tensor holds MXFP4 values (after `retype`).
pub fn is_mxfp4(t: &TensorEntry) -> bool {
    t.dtype == Dtype::F4
}

/// Turns a float32 matrix (row-major, `cols` a multiple of 32) into MXFP4 blocks and
/// scales the way gpt-oss's quantizer does (a scale of `2^(floor(log2 max|w|) - 2)` per
/// block, each value rounded to the nearest E2M1 code): for the tests.
#[cfg(test)]
pub fn quantize(w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>) {
    use crate::decode::mxfp4::E2M1;
    let mut blocks = Vec::new();
    let mut scales = Vec::new();
    for r in 0..rows {
        for g in 0..cols / BLOCK {
            let vals = &w[r * cols + g * BLOCK..][..BLOCK];
            let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
            let e = if amax > 0.0 { amax.log2().floor() as i32 - 2 } else { -127 };
            let s = (e + 127).clamp(0, 254) as u8;
            scales.push(s);
            let scale = crate::decode::mxfp4::e8m0_value(s);
            let code = |v: f32| {
                (0..16u8)
                    .min_by(|&a, &b| {
                        (E2M1[a as usize] - v / scale).abs().total_cmp(&(E2M1[b as usize] - v / scale).abs())
                    })
                    .unwrap_or(0)
            };
            for pair in vals.chunks_exact(2) {
                blocks.push(code(pair[0]) | (code(pair[1]) << 4));
            }
        }
    }
    (blocks, scales)
}
