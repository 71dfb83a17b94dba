//! Fused projections split on request (`Options::split_fused`, docs/layouts.md): a
//! `gate_up_proj` holds the gate and the up projection of an MLP in one tensor. By
//! default it is scanned as one matrix, as the reference would; split, each half is a
//! layer of its own (`gate_proj`, `up_proj` in place of `gate_up_proj` in the name), read
//! from the same bytes. How the halves are laid out depends on the family
//! (`config.json`'s `model_type`), as transformers' modeling code reads them:
//!
//! * gpt-oss (`gpt_oss`): `[E, in, 2 out]`, interleaved along the last axis: gate is
//!   `[..., ::2]`, up `[..., 1::2]` (`GptOssExperts._apply_gate`). MXFP4 blocks hold each
//!   expert as `[2 out, in]`: gate is every other row.
//! * Llama-4 (`llama4`, `llama4_text`): `[E, in, 2 out]`, concatenated along the last
//!   axis: gate is the first half (`gate_up.chunk(2, dim=-1)`).
//! * every other family (Qwen3-MoE and Qwen2-MoE fused exports, Phi-3's dense
//!   `mlp.gate_up_proj` `[2 out, in]`): `[E, 2 out, in]`, concatenated along the
//!   output axis: gate is the first half of the rows (`linear(x, W).chunk(2, dim=-1)`).
//!
//! Fused attention is split the same way, with the heads from the config
//! (`Options::attention_heads`: heads, key/value heads, head size):
//!
//! * `qkv_proj` (Phi-3): `[(H + 2 KV) d, in]`, rows `q | k | v` (`Phi3Attention`:
//!   `qkv[..., :H d]`, then `KV d`, then the rest); layers `q_proj`, `k_proj`, `v_proj`.
//! * `c_attn` (GPT-2 `Conv1D`, `[in, 3 out]`): columns `q | k | v` in equal thirds
//!   (`split(split_size, dim=2)`); layers `c_attn.q`, `c_attn.k`, `c_attn.v`.
//! * `query_key_value` of GPT-NeoX, Pythia and BLOOM (`gpt_neox`, `bloom`):
//!   `[3 H d, in]`, per head `q | k | v` of `d` rows each (`view(..., -1, 3 d)` then
//!   `chunk(3)`); layers `query_key_value.query`, `.key`, `.value`.
//! * `query_key_value` of Falcon (`falcon`): `[(H + 2 KV) d, in]` in KV groups, each
//!   `H/KV` query heads then one key and one value head (`FalconAttention._split_heads`:
//!   `view(..., -1, H/KV + 2, d)`; the multi-query Falcon-7B is KV = 1, the old
//!   per-head layout KV = H); layers `.query`, `.key`, `.value`.
//! * `query_key_value` of ChatGLM (`chatglm`): rows `q | k | v`, `H d`, `KV d`, `KV d`
//!   (`mixed_x_layer.split`); layers `.query`, `.key`, `.value`.
//! * `wqkv` of InternLM2 (`internlm2`): KV groups as Falcon's (`rearrange(..., "(h gs d)",
//!   gs=2 + H/KV)`); layers `wqkv.q`, `.k`, `.v`.
//! * `Wqkv` of MPT (`mpt`): rows `q | k | v` in equal thirds (`chunk(3)`); of DBRX
//!   (`dbrx`): rows `H d`, `KV d`, `KV d` (`split([hidden, KV d, KV d])`); layers
//!   `Wqkv.q`, `.k`, `.v`.
//! * `qkv` of the Qwen-VL vision towers (`qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`,
//!   `qwen3_vl_moe`): rows in equal thirds (`reshape(seq, 3, heads, -1)`); layers `qkv.q`,
//!   `.k`, `.v`.
//!
//! Another family's `query_key_value` is refused: how it orders its heads is not known.
//! Another family's `wqkv`, `Wqkv` or `qkv` stays one matrix.

use crate::layout::{mxfp4, Source, TensorEntry};

/// The rows or columns of a `full` matrix that a layer keeps: index `i` along the axis
/// is kept when `offset <= i % period < offset + width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// The matrix read, `(rows, cols)`.
    pub full: (usize, usize),
    pub along_rows: bool,
    pub period: usize,
    pub offset: usize,
    pub width: usize,
}

impl Split {
    fn keeps(&self, i: usize) -> bool {
        (self.offset..self.offset + self.width).contains(&(i % self.period))
    }

    /// The `(rows, cols)` of the part kept.
    pub fn dims(&self) -> (usize, usize) {
        let (r, c) = self.full;
        let n = if self.along_rows { r } else { c };
        let kept = n / self.period * self.width;
        if self.along_rows {
            (kept, c)
        } else {
            (r, kept)
        }
    }

    /// The part kept of the row-major `full` matrix `w`, compacted in place.
    pub fn take(&self, mut w: Vec<f32>) -> Vec<f32> {
        let (r, c) = self.full;
        let mut o = 0;
        if self.along_rows {
            for i in (0..r).filter(|&i| self.keeps(i)) {
                w.copy_within(i * c..(i + 1) * c, o * c);
                o += 1;
            }
            w.truncate(o * c);
        } else {
            for i in 0..r {
                for j in (0..c).filter(|&j| self.keeps(j)) {
                    w[o] = w[i * c + j];
                    o += 1;
                }
            }
            w.truncate(o);
        }
        w.shrink_to_fit();
        w
    }
}

/// The gate and up layers of a fused `gate_up_proj` tensor (`None` for any other
/// tensor): their names and splits. Fails when the fused axis cannot be halved.
pub fn gate_up(
    t: &TensorEntry,
    source: &Source,
    model_type: Option<&str>,
) -> Result<Option<Vec<(String, Split)>>, String> {
    let Some(stem) = source.name.strip_suffix("gate_up_proj").filter(|s| s.is_empty() || s.ends_with('.')) else {
        return Ok(None);
    };
    let family = model_type.unwrap_or("");
    let interleaved = family == "gpt_oss";
    // [E, in, 2 out] as stored; MXFP4 blocks are always [out, in].
    let transposed =
        source.experts.is_some() && !mxfp4::is_mxfp4(t) && matches!(family, "gpt_oss" | "llama4" | "llama4_text");
    let along_rows = !transposed;
    let (rows, cols) = source.dims;
    let n = if along_rows { rows } else { cols };
    if n == 0 || n % 2 != 0 {
        return Err(format!(
            "cannot split fused tensor {:?} of shape {:?} into gate and up: its fused axis has {n} values, not an even number",
            t.name, t.shape
        ));
    }
    let half = |offset, width, period| Split { full: (rows, cols), along_rows, period, offset, width };
    let (gate, up) =
        if interleaved { (half(0, 1, 2), half(1, 1, 2)) } else { (half(0, n / 2, n), half(n / 2, n / 2, n)) };
    Ok(Some(vec![(format!("{stem}gate_proj"), gate), (format!("{stem}up_proj"), up)]))
}

/// Heads of the attention: `(H, KV, d)`.
pub type Heads = (usize, usize, usize);

/// The query, key and value layers of a fused attention tensor (`None` for any other
/// tensor). Fails when the family's layout is unknown or the heads do not fit the shape.
pub fn attention(
    t: &TensorEntry,
    source: &Source,
    model_type: Option<&str>,
    heads: Option<Heads>,
) -> Result<Option<Vec<(String, Split)>>, String> {
    let last = source.name.rsplit('.').next().unwrap_or("");
    if source.experts.is_some() || !matches!(last, "qkv_proj" | "c_attn" | "query_key_value" | "wqkv" | "Wqkv" | "qkv")
    {
        return Ok(None);
    }
    let (rows, cols) = source.dims;
    let family = model_type.unwrap_or("");
    let cannot = |why: String| format!("cannot split fused attention {:?} of shape {:?}: {why}", t.name, t.shape);
    let part = |along_rows, period, offset, width| Split { full: (rows, cols), along_rows, period, offset, width };
    let named =
        |names: [String; 3], splits: [Split; 3]| -> Vec<(String, Split)> { names.into_iter().zip(splits).collect() };
    let suffixed = |parts: [&str; 3]| parts.map(|p| format!("{}.{p}", source.name));
    let stem = &source.name[..source.name.len() - last.len()];
    let need_heads = || {
        heads
            .filter(|&(h, kv, d)| h > 0 && kv > 0 && d > 0)
            .ok_or_else(|| cannot("config.json declares no attention heads".into()))
    };
    // Rows `q | k | v`: `H d`, `KV d`, `KV d` (Phi-3, ChatGLM).
    let concatenated = |names: [String; 3]| -> Result<Vec<(String, Split)>, String> {
        let (h, kv, d) = need_heads()?;
        let (q, k) = (h * d, kv * d);
        if q + 2 * k != rows {
            return Err(cannot(format!("{rows} rows are not (heads {h} + 2 x key/value heads {kv}) x head size {d}")));
        }
        let splits = [part(true, rows, 0, q), part(true, rows, q, k), part(true, rows, q + k, k)];
        Ok(named(names, splits))
    };
    // KV groups of `H/KV` query heads, one key head, one value head (Falcon, InternLM2).
    let grouped = |names: [String; 3]| -> Result<Vec<(String, Split)>, String> {
        let (h, kv, d) = need_heads()?;
        if h % kv != 0 || (h + 2 * kv) * d != rows {
            return Err(cannot(format!(
                "{rows} rows are not key/value groups of (heads {h} / key/value heads {kv} + 2) x head size {d}"
            )));
        }
        let g = h / kv;
        let period = (g + 2) * d;
        let splits = [part(true, period, 0, g * d), part(true, period, g * d, d), part(true, period, (g + 1) * d, d)];
        Ok(named(names, splits))
    };
    let thirds = |names: [String; 3], along_rows: bool| -> Result<Vec<(String, Split)>, String> {
        let n = if along_rows { rows } else { cols };
        if n == 0 || n % 3 != 0 {
            let what = if along_rows { "rows" } else { "columns" };
            return Err(cannot(format!("{n} {what} are not three equal parts")));
        }
        let w = n / 3;
        let splits = [part(along_rows, n, 0, w), part(along_rows, n, w, w), part(along_rows, n, 2 * w, w)];
        Ok(named(names, splits))
    };
    Ok(Some(match (last, family) {
        ("c_attn", _) => thirds(suffixed(["q", "k", "v"]), false)?,
        ("Wqkv", "mpt") => thirds(suffixed(["q", "k", "v"]), true)?,
        ("Wqkv", "dbrx") => concatenated(suffixed(["q", "k", "v"]))?,
        ("qkv", "qwen2_vl" | "qwen2_5_vl" | "qwen3_vl" | "qwen3_vl_moe") => thirds(suffixed(["q", "k", "v"]), true)?,
        ("wqkv", "internlm2") => grouped(suffixed(["q", "k", "v"]))?,
        ("qkv_proj", _) => concatenated(["q_proj", "k_proj", "v_proj"].map(|p| format!("{stem}{p}")))?,
        ("query_key_value", "falcon") => grouped(suffixed(["query", "key", "value"]))?,
        ("query_key_value", "chatglm") => concatenated(suffixed(["query", "key", "value"]))?,
        ("query_key_value", "gpt_neox" | "bloom") => {
            let (h, _, d) = need_heads()?;
            if 3 * h * d != rows {
                return Err(cannot(format!("{rows} rows are not 3 x heads {h} x head size {d}")));
            }
            named(
                suffixed(["query", "key", "value"]),
                [part(true, 3 * d, 0, d), part(true, 3 * d, d, d), part(true, 3 * d, 2 * d, d)],
            )
        }
        // Names first split for a few families: elsewhere they stay one matrix, as they did
        // before (a vision tower's `qkv` must not stop the splits beside it).
        ("wqkv" | "Wqkv" | "qkv", _) => return Ok(None),
        _ => return Err(cannot(format!("how model type {family:?} lays out its heads is not known"))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(r: usize, c: usize) -> Vec<f32> {
        (0..r * c).map(|i| i as f32).collect()
    }

    #[test]
    fn halves_and_interleaved_rows_and_columns() {
        // 4 x 3: rows 0..4 of values 3r + c.
        let s = Split { full: (4, 3), along_rows: true, period: 4, offset: 2, width: 2 };
        assert_eq!(s.dims(), (2, 3));
        assert_eq!(s.take(m(4, 3)), [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        let s = Split { full: (4, 3), along_rows: true, period: 2, offset: 1, width: 1 };
        assert_eq!(s.take(m(4, 3)), [3.0, 4.0, 5.0, 9.0, 10.0, 11.0]);
        // 2 x 4 columns: interleaved gate (even columns), concatenated up (last half).
        let s = Split { full: (2, 4), along_rows: false, period: 2, offset: 0, width: 1 };
        assert_eq!(s.dims(), (2, 2));
        assert_eq!(s.take(m(2, 4)), [0.0, 2.0, 4.0, 6.0]);
        let s = Split { full: (2, 4), along_rows: false, period: 4, offset: 2, width: 2 };
        assert_eq!(s.take(m(2, 4)), [2.0, 3.0, 6.0, 7.0]);
    }
}
