//! The catalog of a model: its safetensors files (`Shard`), every tensor's name, dtype,
//! shape and byte range (`TensorEntry`), and the layers (weight matrices) built from them,
//! with the selection of the layers to scan.
//!
//! A layer is described by *parts*, not by a tensor: a weight tensor, an optional slice
//! of it (one expert of a fused `[E, out, in]` tensor), an optional scale tensor (FP8 and
//! MXFP4 checkpoints) and an optional split (one half of a fused `gate_up_proj`). The
//! streamer only ever reads parts, so new layouts add parts, not code. Each layout has its
//! module: `dense` (ordinary weights), `experts` (stacked experts), `quant` (FP8 weights
//! and their scales), `mxfp4` (MXFP4 blocks and scales), `packed` (integer-packed formats,
//! which are refused), `fused` (splitting fused projections), `kinds` (layer types and
//! their grouping). docs/layouts.md lists every layout and its test.
//!
//! What a header can make us do is bounded (`Options`): at most `max_experts` layers from
//! one tensor and `max_layers` layers in all, and every product of header numbers is
//! checked, so a small hostile file is refused at once, naming itself and the tensor.

pub mod dense;
pub mod experts;
pub mod fused;
pub mod kinds;
pub mod mxfp4;
pub mod packed;
pub mod quant;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use safetensors::tensor::Dtype;

use crate::decode::{dtype_name, is_decodable};
use crate::error::{Result, SpectrumError};
use crate::files::resolve;
pub use crate::files::Shard;
use crate::naming::{layer_name, matches, natural_key};

pub use fused::Split;
pub use kinds::GroupBy;

/// Layers one tensor may become (stacked experts) unless raised: far above the 384
/// experts of the largest MoE checkpoints published (Kimi-K2), far below what makes a
/// 1 MB header cost minutes (a `[1e6, 2, 2]` F8 tensor is a million layers).
pub const MAX_EXPERTS: usize = 65_536;
/// Layers a model may have unless raised: 85 times DeepSeek-V3's 47,000.
pub const MAX_LAYERS: usize = 4_000_000;

/// How tensors become layers. `Default` is the reference-compatible layout with the
/// default caps.
#[derive(Clone, Debug)]
pub struct Options {
    /// Most layers one stacked-experts tensor may become.
    pub max_experts: usize,
    /// Most layers in all.
    pub max_layers: usize,
    /// One type for all experts of a projection (`mlp.experts.*.down_proj`) instead of
    /// one type per expert index (the reference's).
    pub group_experts: bool,
    /// `Type` (the reference's) or `Stack` (the stack a layer is in is part of its type).
    pub group_by: GroupBy,
    /// Split fused `gate_up_proj` tensors into their gate and up halves, and fused
    /// attention into query, key and value.
    pub split_fused: bool,
    /// `config.json`'s `model_type`: how a family fuses its projections (docs/layouts.md).
    pub model_type: Option<String>,
    /// `config.json`'s `quantization_config.quant_method`, named in refusals.
    pub quant_method: Option<String>,
    /// `(heads, key/value heads, head size)` from `config.json`, to split fused attention.
    pub attention_heads: Option<fused::Heads>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_experts: MAX_EXPERTS,
            max_layers: MAX_LAYERS,
            group_experts: false,
            group_by: GroupBy::Type,
            split_fused: false,
            model_type: None,
            quant_method: None,
            attention_heads: None,
        }
    }
}

/// One tensor as stored. MXFP4 tensors are given the dtype their bytes encode
/// (`mxfp4::retype`): `*_blocks` are F4 (two values a byte, the shape counting values),
/// `*_scales` are F8_E8M0.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub shard: usize,
    /// Absolute byte range in the shard file.
    pub begin: usize,
    pub end: usize,
}

/// A slice of a tensor that one layer reads: `expert` selects one matrix of a stacked
/// 3-D tensor; `None` is the whole tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub tensor: usize,
    pub expert: Option<usize>,
}

/// One weight matrix to scan.
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub kind: String,
    pub weight: Part,
    /// A scale tensor to multiply the weight by (FP8 block or per-tensor scales).
    pub scale: Option<usize>,
    /// The `rows x cols` matrix scanned (after a split).
    pub rows: usize,
    pub cols: usize,
    /// The part of the matrix read that this layer is (one half of a fused tensor).
    pub split: Option<Split>,
}

impl Layer {
    /// Dimensions of the stored tensor (1 for norms, 3 for stacked experts, ...).
    pub fn ndim(&self, cat: &Catalog) -> usize {
        cat.tensors[self.weight.tensor].shape.len()
    }

    /// The `(rows, cols)` of the matrix read from the parts, before a split; the scale
    /// covers this matrix.
    pub fn read_dims(&self) -> (usize, usize) {
        self.split.map_or((self.rows, self.cols), |s| s.full)
    }

    /// The layer's matrix from the matrix read (`read_dims`, row-major): itself, or the
    /// rows or columns of its split.
    pub fn finish(&self, read: Vec<f32>) -> Vec<f32> {
        match self.split {
            None => read,
            Some(s) => s.take(read),
        }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    pub shards: Vec<Shard>,
    pub tensors: Vec<TensorEntry>,
    pub layers: Vec<Layer>,
    /// The FP8 scale block `(rows, cols)` the model's config declares, if any.
    pub scale_block: Option<(usize, usize)>,
    /// Tensors of an integer-packed format (weight tensor index -> what it is): their
    /// layers are refused when chosen (`packed`).
    pub packed: HashMap<usize, packed::Packed>,
}

impl Catalog {
    /// Opens a model: a folder, an index file, one `.safetensors` file, or several files,
    /// with the default options.
    pub fn open(paths: &[PathBuf]) -> Result<Catalog> {
        Catalog::open_with(paths, &Options::default())
    }

    /// Opens a model with `options` (caps, type grouping, splits).
    pub fn open_with(paths: &[PathBuf], options: &Options) -> Result<Catalog> {
        let resolved = resolve(paths)?;
        let mut cat = Catalog::default();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (si, path) in resolved.files.iter().enumerate() {
            let (shard, header) = Shard::open(path)?;
            let data_start = header.data_start();
            for t in header.tensors {
                if let Some(index) = &resolved.index {
                    // Names come from the index: a tensor the index does not place in
                    // this shard is not part of the model.
                    if index.names.get(&t.name) != Some(path) {
                        continue;
                    }
                }
                if let Some(&prev) = by_name.get(&t.name) {
                    return Err(SpectrumError::file(
                        path,
                        format!(
                            "tensor {:?} is also in {}",
                            t.name,
                            cat.shards[cat.tensors[prev].shard].path.display()
                        ),
                    ));
                }
                by_name.insert(t.name.clone(), cat.tensors.len());
                // In range: `Shard::open` checked that the file holds every tensor.
                let (begin, end) = t.data_offsets;
                cat.tensors.push(TensorEntry {
                    name: t.name,
                    dtype: t.dtype,
                    shape: t.shape,
                    shard: si,
                    begin: data_start + begin,
                    end: data_start + end,
                });
            }
            cat.shards.push(shard);
        }
        if let Some(index) = &resolved.index {
            let mut missing: Vec<(&String, &PathBuf)> =
                index.names.iter().filter(|(k, _)| !by_name.contains_key(*k)).collect();
            if !missing.is_empty() {
                missing.sort();
                let (name, file) = missing[0];
                return Err(SpectrumError::file(
                    &index.path,
                    format!(
                        "tensor {name:?} is listed in {} but that file does not hold it ({} such tensors)",
                        file.display(),
                        missing.len()
                    ),
                ));
            }
        }
        cat.build_layers(&by_name, options)?;
        Ok(cat)
    }

    /// An error about tensor `ti`, in the file that holds it.
    fn file_error(&self, ti: usize, message: impl Into<String>) -> SpectrumError {
        SpectrumError::file(&self.shards[self.tensors[ti].shard].path, message)
    }

    /// Every tensor that is a layer becomes one (or, stacked experts, one per expert; a
    /// split fused tensor, one per part), in natural order of the layer names. Scale
    /// tensors are not layers.
    fn build_layers(&mut self, by_name: &HashMap<String, usize>, options: &Options) -> Result<()> {
        let mx = mxfp4::retype(self, by_name)?;
        let mut scale_of = quant::scale_pairs(&self.tensors, by_name);
        scale_of.extend(mx.iter().map(|(&b, &s)| (b, s)));
        let scales: BTreeSet<usize> = scale_of.values().copied().collect();
        self.packed = packed::detect(&self.tensors, by_name, options.quant_method.as_deref());
        let mut layers = Vec::new();
        for ti in 0..self.tensors.len() {
            if scales.contains(&ti) {
                continue;
            }
            let t = &self.tensors[ti];
            let source = if mx.contains_key(&ti) {
                mxfp4::source(t)
            } else if let Some(p) = self.packed.get(&ti) {
                p.source(t)
            } else if experts::is_stacked_experts(t) {
                experts::source(t)
            } else if dense::is_weight(t) && !t.shape.is_empty() {
                dense::source(t)
            } else {
                None
            };
            let Some(source) = source else { continue };
            let Some(source) = source.checked() else {
                return Err(self.file_error(
                    ti,
                    format!(
                        "tensor {:?} of shape {:?} is too large to scan: its dimensions overflow when multiplied",
                        t.name, t.shape
                    ),
                ));
            };
            let count = source.experts.unwrap_or(1);
            if source.experts.is_some() && count > options.max_experts {
                return Err(self.file_error(
                    ti,
                    format!(
                        "tensor {:?} of shape {:?} declares {count} stacked experts, more than the limit of {} per tensor (raise it with max_experts)",
                        t.name, t.shape, options.max_experts
                    ),
                ));
            }
            let splits = if options.split_fused {
                let model_type = options.model_type.as_deref();
                match fused::gate_up(t, &source, model_type) {
                    Ok(None) => fused::attention(t, &source, model_type, options.attention_heads),
                    other => other,
                }
                .map_err(|message| self.file_error(ti, message))?
            } else {
                None
            };
            let parts = splits.as_ref().map_or(1, |s| s.len());
            if count.saturating_mul(parts) > options.max_layers.saturating_sub(layers.len()) {
                return Err(self.file_error(
                    ti,
                    format!(
                        "the model has more than {} layers (at tensor {:?}); raise the limit with max_layers",
                        options.max_layers, t.name
                    ),
                ));
            }
            let scale = scale_of.get(&ti).copied();
            let mut push = |name: String, expert: Option<usize>, split: Option<Split>| {
                let (rows, cols) = split.map_or(source.dims, |s| s.dims());
                let kind = kinds::layer_kind(&name, expert.is_some(), options);
                layers.push(Layer { name, kind, weight: Part { tensor: ti, expert }, scale, rows, cols, split });
            };
            match (&splits, source.experts) {
                (None, None) => push(source.name.clone(), None, None),
                (None, Some(e)) => (0..e).for_each(|e| push(format!("{}.{e}", source.name), Some(e), None)),
                (Some(splits), experts) => {
                    for (name, split) in splits {
                        match experts {
                            None => push(name.clone(), None, Some(*split)),
                            Some(e) => (0..e).for_each(|e| push(format!("{name}.{e}"), Some(e), Some(*split))),
                        }
                    }
                }
            }
        }
        layers.sort_by_cached_key(|l| natural_key(&l.name));
        self.layers = layers;
        Ok(())
    }

    /// The layers to scan: every layer with 2 or more dimensions (1-D ones only when
    /// asked), whose type or name matches one of `include` (all when empty) and none
    /// of `exclude`. Fails when a chosen layer is integer-packed or has a dtype that
    /// cannot be decoded.
    pub fn select(&self, include: &[String], exclude: &[String], include_1d: bool) -> Result<Vec<usize>> {
        let mut chosen = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let ndim = l.ndim(self);
            if ndim < 2 && !include_1d {
                continue;
            }
            if !include.is_empty() && !include.iter().any(|p| matches(p, &l.name, &l.kind)) {
                continue;
            }
            if exclude.iter().any(|p| matches(p, &l.name, &l.kind)) {
                continue;
            }
            let t = &self.tensors[l.weight.tensor];
            if let Some(p) = self.packed.get(&l.weight.tensor) {
                return Err(SpectrumError::layout(&self.shards[t.shard].path, p.refusal(t, &l.kind)));
            }
            if !is_decodable(t.dtype) {
                return Err(SpectrumError::layout(
                    &self.shards[t.shard].path,
                    format!(
                        "tensor {:?} has dtype {}, which cannot be scanned (supported: BF16, F16, F32, F64, F8_E4M3, F8_E5M2, MXFP4); exclude it with its type {:?}",
                        t.name,
                        dtype_name(t.dtype),
                        l.kind
                    ),
                ));
            }
            if let Some(s) = l.scale {
                quant::check_scale_dtype(self, s)?;
                quant::scale_grid(self, l, s)?;
            }
            chosen.push(i);
        }
        Ok(chosen)
    }

    /// Byte range of a part inside its shard file.
    pub fn part_range(&self, part: Part) -> (usize, usize) {
        let t = &self.tensors[part.tensor];
        match part.expert {
            Some(e) => experts::expert_range(t, e),
            None => (t.begin, t.end),
        }
    }

    /// Bytes a layer occupies on disk: its slice of the weight plus its scales (one
    /// expert's slice of stacked scales). A split layer counts the whole matrix it reads.
    pub fn layer_bytes(&self, layer: &Layer) -> usize {
        let (begin, end) = self.part_range(layer.weight);
        let scale = layer.scale.map_or(0, |s| {
            let (b, e) = self.part_range(quant::scale_part(self, layer, s));
            e - b
        });
        (end - begin) + scale
    }
}

/// Where a tensor's layers come from: the layer name, the number of stacked experts
/// (`None`: one matrix), and the `(rows, cols)` of each matrix, as header numbers that
/// `checked` verifies.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub experts: Option<usize>,
    /// `rows` and the factors whose product is `cols` (unchecked header numbers).
    pub rows: usize,
    pub cols: Vec<usize>,
    /// Set by `checked`.
    pub dims: (usize, usize),
}

impl Source {
    pub fn new(name: impl Into<String>, experts: Option<usize>, rows: usize, cols: &[usize]) -> Source {
        Source { name: name.into(), experts, rows, cols: cols.to_vec(), dims: (0, 0) }
    }

    /// The source with its `dims`, when the float32 bytes of a `rows x cols` matrix, of
    /// one of its rows or columns (numpy's limit, even for an empty matrix) and of all
    /// its experts fit in `isize`; `None` when a product overflows.
    pub fn checked(mut self) -> Option<Source> {
        let fits = |n: usize| n.checked_mul(4).filter(|&b| b <= isize::MAX as usize);
        let cols = self.cols.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        fits(self.rows)?;
        fits(cols)?;
        fits(self.rows.checked_mul(cols)?.checked_mul(self.experts.unwrap_or(1))?)?;
        self.dims = (self.rows, cols);
        Some(self)
    }
}

/// The layer name of a weight tensor (`layer_name`), as the layout modules use it.
pub(crate) fn base_name(t: &TensorEntry) -> &str {
    layer_name(&t.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::testing::{f32_bytes, safetensors, Spec, TempDir};

    fn open(tensors: &[Spec<'_>]) -> (TempDir, Catalog) {
        let dir = TempDir::new();
        dir.write("model.safetensors", &safetensors(tensors));
        let cat = Catalog::open(&[dir.path().to_path_buf()]).unwrap();
        (dir, cat)
    }

    fn names(cat: &Catalog) -> Vec<&str> {
        cat.layers.iter().map(|l| l.name.as_str()).collect()
    }

    fn zeros(n: usize) -> Vec<u8> {
        vec![0; n]
    }

    #[test]
    fn two_d_weights_and_one_d_tensors() {
        let (_dir, cat) = open(&[
            ("model.layers.10.self_attn.q_proj.weight", "F32", &[2, 3], zeros(24)),
            ("model.layers.2.self_attn.q_proj.weight", "BF16", &[4, 2], zeros(16)),
            ("model.layers.2.self_attn.q_proj.bias", "BF16", &[4], zeros(8)),
            ("model.layers.2.input_layernorm.weight", "F32", &[5], zeros(20)),
            ("model.embed_tokens.weight", "F16", &[7, 2], zeros(28)),
            ("model.rotary.inv_freq", "F32", &[2], zeros(8)),
            ("scalar.weight", "F32", &[], zeros(4)),
        ]);
        assert_eq!(
            names(&cat),
            [
                "model.embed_tokens",
                "model.layers.2.input_layernorm",
                "model.layers.2.self_attn.q_proj",
                "model.layers.10.self_attn.q_proj"
            ]
        );
        let l = &cat.layers[3];
        assert_eq!((l.kind.as_str(), l.rows, l.cols, l.scale, l.weight.expert), ("self_attn.q_proj", 2, 3, None, None));
        assert_eq!(cat.layer_bytes(l), 24);
        let norm = &cat.layers[1];
        assert_eq!((norm.kind.as_str(), norm.rows, norm.cols, norm.ndim(&cat)), ("input_layernorm", 1, 5, 1));
        // 1-D layers only when asked; patterns match types, names and globs.
        assert_eq!(cat.select(&[], &[], false).unwrap(), [0, 2, 3]);
        assert_eq!(cat.select(&[], &[], true).unwrap(), [0, 1, 2, 3]);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(cat.select(&s(&["self_attn.*"]), &s(&["model.layers.2.*"]), false).unwrap(), [3]);
        assert_eq!(cat.shards.len(), 1);
        assert_eq!(cat.tensors.len(), 7);
    }

    #[test]
    fn stacked_experts_become_one_layer_each() {
        let (_dir, cat) = open(&[
            ("model.layers.0.mlp.experts.down_proj", "BF16", &[12, 3, 2], zeros(144)),
            ("model.layers.0.mlp.router.weight", "F32", &[12, 4], zeros(192)),
            // Not experts: no `experts` part, or no data for them.
            ("model.layers.0.mlp.stack.weight", "F32", &[2, 2, 2], zeros(32)),
            ("model.layers.0.mlp.experts.empty", "BF16", &[1000, 0, 4], zeros(0)),
        ]);
        let experts: Vec<&Layer> = cat.layers.iter().filter(|l| l.name.contains("down_proj")).collect();
        assert_eq!(experts.len(), 12);
        assert_eq!(experts[2].name, "model.layers.0.mlp.experts.down_proj.2");
        assert_eq!(experts[10].name, "model.layers.0.mlp.experts.down_proj.10"); // natural order
        assert_eq!(experts[10].kind, "mlp.experts.down_proj.10");
        let e = experts[5];
        assert_eq!((e.rows, e.cols, e.weight.expert), (3, 2, Some(5)));
        assert_eq!(cat.layer_bytes(e), 12);
        let t = &cat.tensors[e.weight.tensor];
        assert_eq!(cat.part_range(e.weight), (t.begin + 60, t.begin + 72));
        let stack = cat.layers.iter().find(|l| l.name == "model.layers.0.mlp.stack").unwrap();
        assert_eq!((stack.rows, stack.cols, stack.weight.expert), (2, 4, None));
        assert!(!cat.layers.iter().any(|l| l.name.contains("empty")));
    }

    #[test]
    fn fp8_weights_pair_with_their_scales() {
        let (_dir, cat) = open(&[
            ("a.weight", "F8_E4M3", &[4, 8], zeros(32)),
            ("a.weight_scale_inv", "F32", &[1, 1], zeros(4)),
            ("b.weight", "F8_E5M2", &[2, 2], zeros(4)),
            ("b.weight_scale", "BF16", &[2], zeros(4)),
            ("c.weight", "BF16", &[2, 2], zeros(8)),
            ("c.weight_scale", "F32", &[1], zeros(4)),
            ("d.weight", "F8_E4M3", &[2, 2], zeros(4)),
        ]);
        assert_eq!(names(&cat), ["a", "b", "c", "d"]);
        let scale = |i: usize| cat.layers[i].scale.map(|s| cat.tensors[s].name.as_str());
        assert_eq!(scale(0), Some("a.weight_scale_inv"));
        assert_eq!(scale(1), Some("b.weight_scale"));
        assert_eq!(scale(2), None); // BF16 weights are not scaled
        assert_eq!(scale(3), None);
        assert_eq!(cat.layer_bytes(&cat.layers[0]), 36);
        assert_eq!(cat.select(&[], &[], false).unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn dtypes_that_cannot_be_scanned_are_layout_errors() {
        let (dir, cat) = open(&[
            ("model.layers.0.q.weight", "I32", &[2, 2], zeros(16)),
            ("model.layers.0.k.weight", "F8_E4M3", &[2, 2], zeros(4)),
            ("model.layers.0.k.weight_scale_inv", "I8", &[1], zeros(1)),
        ]);
        let file = dir.path().join("model.safetensors").display().to_string();
        // Layers in model order: `k` (its scale) is refused before `q`.
        let e = cat.select(&[], &[], false).unwrap_err();
        assert!(matches!(&e, SpectrumError::Layout { path, .. } if *path == file));
        assert_eq!(
            e.to_string(),
            format!("{file}: scale tensor \"model.layers.0.k.weight_scale_inv\" has dtype I8, which cannot be decoded")
        );
        let e = cat.select(&[], &["k".to_string()], false).unwrap_err();
        assert!(matches!(&e, SpectrumError::Layout { .. }));
        assert_eq!(
            e.to_string(),
            format!("{file}: tensor \"model.layers.0.q.weight\" has dtype I32, which cannot be scanned (supported: BF16, F16, F32, F64, F8_E4M3, F8_E5M2, MXFP4); exclude it with its type \"q\"")
        );
        assert!(cat.select(&[], &["q".to_string(), "k".to_string()], false).unwrap().is_empty());
    }

    #[test]
    fn shards_follow_their_index() {
        let dir = TempDir::new();
        let one = dir.write(
            "model-00001-of-00002.safetensors",
            &safetensors(&[("a.weight", "F32", &[2, 2], f32_bytes(&[1.0; 4])), ("old.weight", "F32", &[1], zeros(4))]),
        );
        let two =
            dir.write("model-00002-of-00002.safetensors", &safetensors(&[("b.weight", "F32", &[1, 2], zeros(8))]));
        let index = r#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                       "b.weight": "model-00002-of-00002.safetensors"}}"#;
        dir.write("model.safetensors.index.json", index.as_bytes());
        let cat = Catalog::open(&[dir.path().to_path_buf()]).unwrap();
        // `old.weight` is in a shard but not in the index: not part of the model.
        assert_eq!(names(&cat), ["a", "b"]);
        assert_eq!(cat.tensors[1].shard, 1);
        assert_eq!(cat.shards[0].path, one);
        assert_eq!(cat.shards[1].size, std::fs::metadata(&two).unwrap().len());
        let (begin, end) = cat.part_range(cat.layers[0].weight);
        assert_eq!(std::fs::read(&one).unwrap()[begin..end], f32_bytes(&[1.0; 4])[..]);

        // A tensor the index lists that its shard does not hold; one tensor in two files.
        let index = r#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                       "zz.weight": "model-00002-of-00002.safetensors"}}"#;
        let path = dir.write("model.safetensors.index.json", index.as_bytes());
        let e = Catalog::open(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: tensor \"zz.weight\" is listed in {} but that file does not hold it (1 such tensors)",
                path.display(),
                two.display()
            )
        );
        let copy = dir.write("copy.safetensors", &std::fs::read(&one).unwrap());
        let e = Catalog::open(&[one.clone(), copy.clone()]).unwrap_err().to_string();
        assert_eq!(e, format!("{}: tensor \"a.weight\" is also in {}", copy.display(), one.display()));
    }

    fn open_with(tensors: &[Spec<'_>], options: &Options) -> (TempDir, PathBuf, Result<Catalog>) {
        let dir = TempDir::new();
        let file = dir.write("model.safetensors", &safetensors(tensors));
        let cat = Catalog::open_with(&[dir.path().to_path_buf()], options);
        (dir, file, cat)
    }

    fn message(r: Result<Catalog>) -> String {
        let e = r.expect_err("should be refused");
        assert!(matches!(e, SpectrumError::File { .. }), "{e}");
        e.to_string()
    }

    #[test]
    fn products_of_header_numbers_are_checked() {
        let p = 3usize.pow(30);
        for shape in [vec![0, p, p], vec![0, 1 << 31, 1 << 31]] {
            let spec: Spec<'_> = ("m.w.weight", "BF16", &shape, vec![]);
            let (_dir, file, cat) = open_with(&[spec], &Options::default());
            assert_eq!(
                message(cat),
                format!(
                    "{}: tensor \"m.w.weight\" of shape {shape:?} is too large to scan: its dimensions overflow when multiplied",
                    file.display()
                )
            );
        }
    }

    #[test]
    fn a_header_cannot_make_millions_of_layers() {
        // [1e6, 1, 1] F8 "experts": one (1e6, 1) matrix, not a million 1 x 1 layers.
        let (_dir, _file, cat) =
            open_with(&[("m.experts.w.weight", "F8_E4M3", &[1_000_000, 1, 1], zeros(1_000_000))], &Options::default());
        let cat = cat.unwrap();
        assert_eq!(cat.layers.len(), 1);
        assert_eq!((cat.layers[0].rows, cat.layers[0].cols, cat.layers[0].weight.expert), (1_000_000, 1, None));
        // [70000, 2, 2] is real experts, above the per-tensor cap unless raised.
        let spec: Spec<'_> = ("m.experts.w", "F8_E4M3", &[70_000, 2, 2], zeros(280_000));
        let (_dir, file, cat) = open_with(std::slice::from_ref(&spec), &Options::default());
        assert_eq!(
            message(cat),
            format!(
                "{}: tensor \"m.experts.w\" of shape [70000, 2, 2] declares 70000 stacked experts, more than the limit of 65536 per tensor (raise it with max_experts)",
                file.display()
            )
        );
        let raised = Options { max_experts: 70_000, ..Options::default() };
        let (_dir, _file, cat) = open_with(std::slice::from_ref(&spec), &raised);
        assert_eq!(cat.unwrap().layers.len(), 70_000);
        // The total is capped too, counting every tensor's layers.
        let few = Options { max_layers: 3, ..Options::default() };
        let specs: Vec<Spec<'_>> = vec![
            ("a.weight", "F32", &[2, 2], zeros(16)),
            ("b.weight", "F32", &[2, 2], zeros(16)),
            ("m.experts.w", "F32", &[2, 2, 2], zeros(32)),
        ];
        let (_dir, file, cat) = open_with(&specs, &few);
        assert_eq!(
            message(cat),
            format!(
                "{}: the model has more than 3 layers (at tensor \"m.experts.w\"); raise the limit with max_layers",
                file.display()
            )
        );
        let (_dir, _file, cat) = open_with(&specs, &Options { max_layers: 4, ..Options::default() });
        assert_eq!(cat.unwrap().layers.len(), 4);
    }

    fn refusal(cat: &Catalog) -> String {
        let e = cat.select(&[], &[], false).unwrap_err();
        assert!(matches!(e, SpectrumError::Layout { .. }), "{e}");
        e.to_string()
    }

    #[test]
    fn integer_packed_modules_are_layers_that_are_refused() {
        let (_dir, _file, cat) = open_with(
            &[
                ("model.layers.0.self_attn.q_proj.qweight", "I32", &[4, 8], zeros(128)),
                ("model.layers.0.self_attn.q_proj.qzeros", "I32", &[1, 1], zeros(4)),
                ("model.layers.0.self_attn.q_proj.scales", "F16", &[1, 8], zeros(16)),
                ("model.layers.0.self_attn.q_proj.g_idx", "I32", &[32], zeros(128)),
                ("model.embed_tokens.weight", "F16", &[4, 4], zeros(32)),
            ],
            &Options::default(),
        );
        let cat = cat.unwrap();
        assert_eq!(names(&cat), ["model.embed_tokens", "model.layers.0.self_attn.q_proj"]);
        let m = refusal(&cat);
        assert!(m.contains("tensor \"model.layers.0.self_attn.q_proj.qweight\" (I32) holds GPTQ quantized"), "{m}");
        assert!(m.contains("scan the unquantized base model"), "{m}");
        assert!(m.contains("exclude its type \"self_attn.q_proj\""), "{m}");
        assert_eq!(cat.select(&[], &["self_attn.*".into()], false).unwrap(), [0]);
        // The config names AWQ (no g_idx); bitsandbytes int8 and 4-bit; plain int8.
        let awq = Options { quant_method: Some("awq".into()), ..Options::default() };
        let (_dir, _file, cat) = open_with(
            &[
                ("m.layers.0.o.qweight", "I32", &[4, 1], zeros(16)),
                ("m.layers.0.o.qzeros", "I32", &[1, 1], zeros(4)),
                ("m.layers.0.o.scales", "F16", &[1, 8], zeros(16)),
            ],
            &awq,
        );
        assert!(refusal(&cat.unwrap()).contains("holds AWQ quantized"));
        for (specs, words) in [
            (
                vec![
                    ("m.layers.0.o.weight", "I8", &[4, 4][..], zeros(16)),
                    ("m.layers.0.o.SCB", "F32", &[4][..], zeros(16)),
                    ("m.layers.0.o.weight_format", "U8", &[1][..], zeros(1)),
                ],
                "\"m.layers.0.o.weight\" (I8) holds bitsandbytes LLM.int8() quantized",
            ),
            (
                vec![
                    ("m.layers.0.o.weight", "U8", &[8, 1][..], zeros(8)),
                    ("m.layers.0.o.weight.absmax", "F32", &[1][..], zeros(4)),
                    ("m.layers.0.o.weight.quant_map", "F32", &[16][..], zeros(64)),
                    ("m.layers.0.o.weight.quant_state.bitsandbytes__nf4", "U8", &[4][..], zeros(4)),
                ],
                "\"m.layers.0.o.weight\" (U8) holds bitsandbytes 4-bit (NF4) quantized",
            ),
            (
                vec![
                    ("m.layers.0.o.weight_packed", "I32", &[4, 1][..], zeros(16)),
                    ("m.layers.0.o.weight_scale", "F16", &[4, 1][..], zeros(8)),
                    ("m.layers.0.o.weight_shape", "I64", &[2][..], zeros(16)),
                ],
                "\"m.layers.0.o.weight_packed\" (I32) holds compressed-tensors packed quantized",
            ),
            (
                vec![("m.layers.0.o.weight", "I8", &[4, 4][..], zeros(16))],
                "\"m.layers.0.o.weight\" (I8) holds int8 quantized",
            ),
        ] {
            let (_dir, _file, cat) = open_with(&specs, &Options::default());
            let cat = cat.unwrap();
            assert_eq!(names(&cat), ["m.layers.0.o"]);
            let m = refusal(&cat);
            assert!(m.contains(words), "{m}");
        }
    }

    #[test]
    fn mxfp4_blocks_and_scales_are_one_layer_per_expert() {
        let (_dir, _file, cat) = open_with(
            &[
                ("model.layers.0.mlp.experts.gate_up_proj_blocks", "U8", &[3, 4, 2, 16], zeros(384)),
                ("model.layers.0.mlp.experts.gate_up_proj_scales", "U8", &[3, 4, 2], zeros(24)),
                ("model.layers.0.mlp.experts.gate_up_proj_bias", "BF16", &[3, 4], zeros(24)),
                ("model.layers.0.mlp.experts.down_proj_blocks", "U8", &[3, 64, 1, 16], zeros(3072)),
                ("model.layers.0.mlp.experts.down_proj_scales", "U8", &[3, 64, 1], zeros(192)),
            ],
            &Options::default(),
        );
        let cat = cat.unwrap();
        assert_eq!(cat.layers.len(), 6);
        let l = cat.layers.iter().find(|l| l.name == "model.layers.0.mlp.experts.gate_up_proj.2").unwrap();
        assert_eq!((l.kind.as_str(), l.rows, l.cols, l.weight.expert), ("mlp.experts.gate_up_proj.2", 4, 64, Some(2)));
        let t = &cat.tensors[l.weight.tensor];
        assert_eq!((t.dtype, &t.shape[..]), (Dtype::F4, &[3, 4, 2, 32][..]));
        let s = &cat.tensors[l.scale.unwrap()];
        assert_eq!((s.name.as_str(), s.dtype), ("model.layers.0.mlp.experts.gate_up_proj_scales", Dtype::F8_E8M0));
        // One expert's blocks and scales: 4 x 2 x 16 bytes and 4 x 2.
        assert_eq!(cat.layer_bytes(l), 128 + 8);
        assert_eq!(cat.select(&[], &[], false).unwrap().len(), 6);
        // Scales of another shape are an error naming both tensors.
        let (_dir, _file, cat) = open_with(
            &[
                ("x.experts.w_blocks", "U8", &[2, 4, 2, 16], zeros(256)),
                ("x.experts.w_scales", "U8", &[2, 4, 3], zeros(24)),
            ],
            &Options::default(),
        );
        let e = cat.err().unwrap();
        assert!(matches!(e, SpectrumError::Layout { .. }));
        assert!(e.to_string().contains("MXFP4 scales \"x.experts.w_scales\" (U8 of shape [2, 4, 3]) do not match the blocks \"x.experts.w_blocks\" of shape [2, 4, 2, 16]"), "{e}");
    }

    /// The float32 matrices of every chosen layer, streamed.
    fn stream_all(cat: Catalog) -> HashMap<String, (usize, usize, Vec<f32>)> {
        use crate::stream::{Payload, Streamer};
        let cat = std::sync::Arc::new(cat);
        let chosen = cat.select(&[], &[], false).unwrap();
        let mut s = Streamer::start(std::sync::Arc::clone(&cat), chosen, 1 << 20, true).unwrap();
        let mut out = HashMap::new();
        while let Some(item) = s.next_item() {
            let item = item.unwrap();
            let Payload::F32(v) = item.payload else { panic!("raw payload") };
            out.insert(cat.layers[item.layer].name.clone(), (item.rows, item.cols, v));
        }
        out
    }

    #[test]
    fn mxfp4_experts_dequantize_to_their_values() {
        // Expert e, row r, block g: values k * 0.5 (codes 0..7 and their negatives)
        // times 2^(g - r + e), low nibble first.
        let (e_n, rows, g_n) = (2, 3, 2);
        let mut blocks = Vec::new();
        let mut scales = Vec::new();
        let mut expected = vec![Vec::new(); e_n];
        for (e, want) in expected.iter_mut().enumerate() {
            for r in 0..rows {
                for g in 0..g_n {
                    let s = 127 + g as i32 - r as i32 + e as i32;
                    scales.push(s as u8);
                    for k in 0..16u8 {
                        let (lo, hi) = ((k + e as u8) % 16, (k * 3 + r as u8) % 16);
                        blocks.push(lo | (hi << 4));
                        let scale = 2f32.powi(s - 127);
                        want.push(crate::decode::mxfp4::E2M1[lo as usize] * scale);
                        want.push(crate::decode::mxfp4::E2M1[hi as usize] * scale);
                    }
                }
            }
        }
        let (_dir, _file, cat) = open_with(
            &[
                ("m.layers.0.mlp.experts.down_proj_blocks", "U8", &[e_n, rows, g_n, 16], blocks),
                ("m.layers.0.mlp.experts.down_proj_scales", "U8", &[e_n, rows, g_n], scales),
            ],
            &Options::default(),
        );
        let got = stream_all(cat.unwrap());
        for (e, want) in expected.iter().enumerate() {
            let (r, c, v) = &got[&format!("m.layers.0.mlp.experts.down_proj.{e}")];
            assert_eq!((*r, *c), (rows, g_n * 32));
            assert_eq!(v, want, "expert {e}");
        }
    }

    #[test]
    fn mxfp4_quantizer_round_trips_exact_values() {
        // Values that are E2M1 codes times a power of two per block survive exactly.
        let w: Vec<f32> =
            (0..64).map(|i| crate::decode::mxfp4::E2M1[i % 16] * if i < 32 { 4.0 } else { 0.25 }).collect();
        let (blocks, scales) = mxfp4::quantize(&w, 1, 64);
        let (_dir, _file, cat) = open_with(
            &[("m.w_blocks", "U8", &[1, 2, 16], blocks), ("m.w_scales", "U8", &[1, 2], scales)],
            &Options::default(),
        );
        let got = stream_all(cat.unwrap());
        assert_eq!(got["m.w"].2, w);
    }

    #[test]
    fn fused_gate_up_splits_by_family() {
        // Expert 1 of [2, 4, 6] (Qwen3: [E, 2 out, in], concatenated rows) and of
        // [2, 6, 4] (gpt-oss: [E, in, 2 out], interleaved columns).
        let vals: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let specs: Vec<Spec<'_>> = vec![("m.layers.0.mlp.experts.gate_up_proj", "F32", &[2, 4, 6], f32_bytes(&vals))];
        let split =
            |model_type: &str| Options { split_fused: true, model_type: Some(model_type.into()), ..Options::default() };
        let (_dir, _file, cat) = open_with(&specs, &split("qwen3_moe"));
        let cat = cat.unwrap();
        assert_eq!(
            names(&cat),
            [
                "m.layers.0.mlp.experts.gate_proj.0",
                "m.layers.0.mlp.experts.gate_proj.1",
                "m.layers.0.mlp.experts.up_proj.0",
                "m.layers.0.mlp.experts.up_proj.1"
            ]
        );
        assert_eq!(cat.layers[1].kind, "mlp.experts.gate_proj.1");
        let got = stream_all(cat);
        let e1 = |r: usize, c: usize| 24.0 + (r * 6 + c) as f32;
        let (r, c, v) = &got["m.layers.0.mlp.experts.up_proj.1"];
        assert_eq!((*r, *c), (2, 6));
        assert_eq!(v, &(2..4).flat_map(|r| (0..6).map(move |c| e1(r, c))).collect::<Vec<_>>());
        let (_dir, _file, cat) = open_with(&specs, &split("gpt_oss"));
        let got = stream_all(cat.unwrap());
        let (r, c, v) = &got["m.layers.0.mlp.experts.gate_proj.1"];
        assert_eq!((*r, *c), (4, 3));
        assert_eq!(v, &(0..4).flat_map(|r| [0, 2, 4].map(move |c| e1(r, c))).collect::<Vec<_>>());
        let (_dir, _file, cat) = open_with(&specs, &split("llama4"));
        let got = stream_all(cat.unwrap());
        assert_eq!(
            got["m.layers.0.mlp.experts.up_proj.0"].2,
            (0..4).flat_map(|r| [3, 4, 5].map(move |c| (r * 6 + c) as f32)).collect::<Vec<_>>()
        );
        // Not split unless asked; an odd fused axis cannot be split.
        let (_dir, _file, cat) = open_with(&specs, &Options::default());
        assert_eq!(cat.unwrap().layers.len(), 2);
        let odd: Vec<Spec<'_>> = vec![("m.mlp.gate_up_proj.weight", "F32", &[3, 2], zeros(24))];
        let (_dir, _file, cat) = open_with(&odd, &split("phi3"));
        assert!(message(cat).contains("its fused axis has 3 values, not an even number"));
    }

    #[test]
    fn grouped_types() {
        let specs: Vec<Spec<'_>> = vec![
            ("model.layers.0.mlp.experts.0.down_proj.weight", "F32", &[2, 2], zeros(16)),
            ("model.layers.0.mlp.experts.1.down_proj.weight", "F32", &[2, 2], zeros(16)),
            ("model.layers.0.mlp.experts.gate_up_proj", "F32", &[2, 2, 2], zeros(32)),
        ];
        let (_dir, _file, cat) = open_with(&specs, &Options { group_experts: true, ..Options::default() });
        let kinds: BTreeSet<&str> = cat.as_ref().unwrap().layers.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["mlp.experts.*.down_proj", "mlp.experts.gate_up_proj.*"]);
        // The grouped type selects its layers.
        assert_eq!(cat.unwrap().select(&["mlp.experts.*.down_proj".into()], &[], false).unwrap(), [0, 1]);
    }

    #[test]
    fn fused_attention_splits_by_heads() {
        let opts = |model_type: &str, heads| Options {
            split_fused: true,
            model_type: Some(model_type.into()),
            attention_heads: heads,
            ..Options::default()
        };
        let rows = |r: &[usize], cols: usize| -> Vec<f32> {
            r.iter().flat_map(|&i| (0..cols).map(move |j| (i * cols + j) as f32)).collect()
        };
        // Phi-3: 2 heads, 1 key/value head, head size 2: rows q 0..4, k 4..6, v 6..8.
        let vals: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let phi: Vec<Spec<'_>> = vec![("m.layers.0.self_attn.qkv_proj.weight", "F32", &[8, 3], f32_bytes(&vals))];
        let (_dir, _file, cat) = open_with(&phi, &opts("phi3", Some((2, 1, 2))));
        let got = stream_all(cat.unwrap());
        assert_eq!(got["m.layers.0.self_attn.q_proj"].2, rows(&[0, 1, 2, 3], 3));
        assert_eq!(got["m.layers.0.self_attn.k_proj"].2, rows(&[4, 5], 3));
        assert_eq!(got["m.layers.0.self_attn.v_proj"].2, rows(&[6, 7], 3));
        let (_dir, _file, cat) = open_with(&phi, &opts("phi3", Some((2, 2, 2))));
        assert!(message(cat).contains("8 rows are not (heads 2 + 2 x key/value heads 2) x head size 2"));
        let (_dir, _file, cat) = open_with(&phi, &opts("phi3", None));
        assert!(message(cat).contains("config.json declares no attention heads"));
        // GPT-NeoX: 2 heads of size 2, per head q | k | v.
        let neox: Vec<Spec<'_>> =
            vec![("gpt_neox.layers.0.attention.query_key_value.weight", "F32", &[12, 2], f32_bytes(&vals))];
        let (_dir, _file, cat) = open_with(&neox, &opts("gpt_neox", Some((2, 2, 2))));
        let got = stream_all(cat.unwrap());
        let p = "gpt_neox.layers.0.attention.query_key_value";
        assert_eq!(got[&format!("{p}.query")].2, rows(&[0, 1, 6, 7], 2));
        assert_eq!(got[&format!("{p}.key")].2, rows(&[2, 3, 8, 9], 2));
        assert_eq!(got[&format!("{p}.value")].2, rows(&[4, 5, 10, 11], 2));
        // Falcon, multi-query (4 heads, 1 key/value head of size 2): one group, q 0..8, k 8..10, v 10..12.
        let (_dir, _file, cat) = open_with(&neox, &opts("falcon", Some((4, 1, 2))));
        let got = stream_all(cat.unwrap());
        assert_eq!(got[&format!("{p}.query")].2, rows(&[0, 1, 2, 3, 4, 5, 6, 7], 2));
        assert_eq!(got[&format!("{p}.key")].2, rows(&[8, 9], 2));
        assert_eq!(got[&format!("{p}.value")].2, rows(&[10, 11], 2));
        // Falcon, 2 groups of 1 query head: per group q | k | v, as GPT-NeoX's per head.
        let (_dir, _file, cat) = open_with(&neox, &opts("falcon", Some((2, 2, 2))));
        assert_eq!(stream_all(cat.unwrap())[&format!("{p}.key")].2, rows(&[2, 3, 8, 9], 2));
        let (_dir, _file, cat) = open_with(&neox, &opts("falcon", Some((3, 1, 2))));
        assert!(message(cat)
            .contains("12 rows are not key/value groups of (heads 3 / key/value heads 1 + 2) x head size 2"));
        let (_dir, _file, cat) = open_with(&neox, &opts("codegen", Some((2, 2, 2))));
        assert!(message(cat).contains("how model type \"codegen\" lays out its heads is not known"));
        // GPT-2 Conv1D [in, 3 out]: columns in thirds.
        let gpt2: Vec<Spec<'_>> = vec![("transformer.h.0.attn.c_attn.weight", "F32", &[2, 6], f32_bytes(&vals[..12]))];
        let (_dir, _file, cat) = open_with(&gpt2, &opts("gpt2", None));
        let got = stream_all(cat.unwrap());
        assert_eq!(got["transformer.h.0.attn.c_attn.k"], (2, 2, vec![2.0, 3.0, 8.0, 9.0]));
    }
}
