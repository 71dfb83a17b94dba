//! The catalog of a model: its safetensors files (`Shard`), every tensor's name, dtype,
//! shape and byte range (`TensorEntry`), and the layers (weight matrices) built from them,
//! with the selection of the layers to scan.
//!
//! A layer is described by *parts*, not by a tensor: a weight tensor, an optional slice
//! of it (one expert of a fused `[E, out, in]` tensor) and an optional scale tensor (FP8
//! checkpoints). The streamer only ever reads parts, so new layouts add parts, not code.
//! Each layout has its module: `dense` (ordinary weights), `experts` (stacked experts),
//! `quant` (FP8 weights and their scales).

pub mod dense;
pub mod experts;
pub mod quant;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use safetensors::tensor::Dtype;

use crate::decode::{dtype_name, element_size};
use crate::error::{Result, SpectrumError};
use crate::files::{header, resolve};
use crate::naming::{layer_name, layer_type, matches, natural_key};

/// One safetensors file of the model.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub size: u64,
    /// FNV-1a 64 of the header bytes: identifies the file's layout cheaply.
    pub header_hash: u64,
}

/// One tensor as stored.
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
    pub rows: usize,
    pub cols: usize,
}

impl Layer {
    /// Dimensions of the stored tensor (1 for norms, 3 for stacked experts, ...).
    pub fn ndim(&self, cat: &Catalog) -> usize {
        cat.tensors[self.weight.tensor].shape.len()
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    pub shards: Vec<Shard>,
    pub tensors: Vec<TensorEntry>,
    pub layers: Vec<Layer>,
    /// The FP8 scale block `(rows, cols)` the model's config declares, if any.
    pub scale_block: Option<(usize, usize)>,
}

impl Catalog {
    /// Opens a model: a folder, an index file, one `.safetensors` file, or several files.
    pub fn open(paths: &[PathBuf]) -> Result<Catalog> {
        let resolved = resolve(paths)?;
        let mut cat = Catalog::default();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (si, path) in resolved.files.iter().enumerate() {
            let (size, header) = header::read(path)?;
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
                // In range: `header::read` checked that the file holds every tensor.
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
            cat.shards.push(Shard { path: path.clone(), size, header_hash: header.hash });
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
        cat.build_layers(&by_name);
        Ok(cat)
    }

    /// Every tensor that is a layer becomes one (or, stacked experts, one per expert), in
    /// natural order of the layer names. Scale tensors are not layers.
    fn build_layers(&mut self, by_name: &HashMap<String, usize>) {
        let scale_of = quant::scale_pairs(&self.tensors, by_name);
        let scales: BTreeSet<usize> = scale_of.values().copied().collect();
        let mut layers = Vec::new();
        for (ti, t) in self.tensors.iter().enumerate() {
            let stacked = experts::is_stacked_experts(t);
            // A layer owns a `*.weight`; fused experts may be stored without the suffix.
            if !(dense::is_weight(t) || stacked) || t.shape.is_empty() || scales.contains(&ti) {
                continue;
            }
            let name = layer_name(&t.name);
            let scale = scale_of.get(&ti).copied();
            let mut push = |name: String, weight: Part, (rows, cols): (usize, usize)| {
                layers.push(Layer { kind: layer_type(&name), name, weight, scale, rows, cols })
            };
            if stacked {
                for (name, part, dims) in experts::expert_layers(name, ti, &t.shape) {
                    push(name, part, dims);
                }
            } else {
                push(name.to_string(), Part { tensor: ti, expert: None }, dense::matrix_dims(&t.shape));
            }
        }
        layers.sort_by_cached_key(|l| natural_key(&l.name));
        self.layers = layers;
    }

    /// The layers to scan: every layer with 2 or more dimensions (1-D ones only when
    /// asked), whose type or name matches one of `include` (all when empty) and none
    /// of `exclude`. Fails when a chosen layer has a dtype that cannot be decoded.
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
            if element_size(t.dtype).is_none() {
                return Err(SpectrumError::layout(
                    &self.shards[t.shard].path,
                    format!(
                        "tensor {:?} has dtype {}, which cannot be scanned (supported: BF16, F16, F32, F64, F8_E4M3, F8_E5M2); exclude it with its type {:?}",
                        t.name,
                        dtype_name(t.dtype),
                        l.kind
                    ),
                ));
            }
            if let Some(s) = l.scale {
                quant::check_scale_dtype(self, s)?;
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

    /// Bytes a layer occupies on disk (its slice of the weight plus its scale).
    pub fn layer_bytes(&self, layer: &Layer) -> usize {
        let (begin, end) = self.part_range(layer.weight);
        (end - begin) + layer.scale.map(|s| self.tensors[s].end - self.tensors[s].begin).unwrap_or(0)
    }
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
            format!("{file}: tensor \"model.layers.0.q.weight\" has dtype I32, which cannot be scanned (supported: BF16, F16, F32, F64, F8_E4M3, F8_E5M2); exclude it with its type \"q\"")
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
}
