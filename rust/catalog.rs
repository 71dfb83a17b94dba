//! The catalog of a model: which safetensors files make it up, every tensor's name,
//! dtype, shape and byte range, and the layers (weight matrices) built from them.
//!
//! A layer is described by *parts*, not by a tensor: a weight tensor, an optional slice
//! of it (one expert of a fused `[E, out, in]` tensor) and an optional scale tensor (FP8
//! checkpoints). The streamer only ever reads parts, so new layouts add parts, not code.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use crate::decode::element_size;
use crate::error::{Result, SpectrumError};
use crate::naming::{layer_name, layer_type, matches};

pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

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
#[derive(Clone, Copy, Debug)]
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

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn describe(err: &SafeTensorError) -> String {
    use SafeTensorError::*;
    match err {
        InvalidHeader(e) => format!("header is not valid UTF-8 ({e})"),
        InvalidHeaderDeserialization(e) => format!("header is not valid safetensors JSON ({e})"),
        HeaderTooLarge => "header length is larger than 100 MB or the file: not a safetensors file?".into(),
        HeaderTooSmall => "file is shorter than the 8-byte header length: truncated or not a safetensors file".into(),
        InvalidHeaderLength => "header length is larger than the file: truncated or not a safetensors file".into(),
        InvalidOffset(name) => format!("tensor {name:?} has data offsets that are out of range, overlapping or leave gaps"),
        TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
        InvalidTensorView(dtype, shape, len) => {
            format!("a tensor of dtype {dtype:?} and shape {shape:?} cannot span {len} bytes")
        }
        MetadataIncompleteBuffer => {
            "file size does not match the tensors its header declares: truncated or padded".into()
        }
        ValidationOverflow => "a tensor's shape overflows when multiplied out".into(),
        other => format!("invalid safetensors file ({other:?})"),
    }
}

/// Reads and validates one file's header.
fn read_header(path: &Path) -> Result<(Shard, usize, safetensors::tensor::Metadata)> {
    let file = File::open(path).map_err(|e| SpectrumError::file(path, format!("cannot open: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| SpectrumError::file(path, format!("cannot stat: {e}")))?
        .len();
    if size < 8 {
        return Err(SpectrumError::file(
            path,
            format!("file is {size} bytes, too short to be safetensors (truncated?)"),
        ));
    }
    // SAFETY: the map is read-only and dropped before return; a concurrent writer could
    // change bytes under us, which safetensors' validation then reports.
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| SpectrumError::file(path, format!("cannot map: {e}")))?;
    let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| SpectrumError::file(path, describe(&e)))?;
    let shard = Shard { path: path.to_path_buf(), size, header_hash: fnv1a(&map[8..8 + n]) };
    Ok((shard, 8 + n, meta))
}

/// Natural order of names: runs of digits compare as numbers (`layers.2` < `layers.10`),
/// which is the order the layers have in the model.
pub fn natural_key(s: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let digit = bytes[i].is_ascii_digit();
        while i < bytes.len() && bytes[i].is_ascii_digit() == digit {
            i += 1;
        }
        let run = &s[start..i];
        if digit {
            key.push((0, run.parse::<u128>().unwrap_or(u128::MAX), run.to_string()));
        } else if run.starts_with("decoder") {
            // Encoder-decoder models define the encoder first.
            key.push((2, 0, run.to_string()));
        } else {
            key.push((1, 0, run.to_string()));
        }
    }
    key
}

/// The files a path stands for, and the names the index gives (when there is one).
fn resolve(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Option<(PathBuf, HashMap<String, PathBuf>)>)> {
    if paths.is_empty() {
        return Err(SpectrumError::input("no model path given"));
    }
    if paths.len() > 1 {
        for p in paths {
            if !p.is_file() {
                return Err(SpectrumError::file(p, "no such file"));
            }
        }
        return Ok((paths.to_vec(), None));
    }
    let p = &paths[0];
    if !p.exists() {
        return Err(SpectrumError::file(p, "no such file or directory"));
    }
    if p.is_file() {
        if p.to_string_lossy().ends_with(".json") {
            return read_index(p).map(|(files, map)| (files, Some((p.clone(), map))));
        }
        return Ok((vec![p.clone()], None));
    }
    let index = p.join(INDEX_NAME);
    if index.is_file() {
        return read_index(&index).map(|(files, map)| (files, Some((index, map))));
    }
    let single = p.join(SINGLE_NAME);
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let entries = std::fs::read_dir(p).map_err(|e| SpectrumError::file(p, format!("cannot list folder: {e}")))?;
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(entry.path());
        } else if name.ends_with(".safetensors") && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    if indexes.len() == 1 {
        let index = indexes.remove(0);
        return read_index(&index).map(|(files, map)| (files, Some((index, map))));
    }
    if files.is_empty() {
        return Err(SpectrumError::file(
            p,
            "folder holds no .safetensors files (expected model.safetensors, a sharded model with model.safetensors.index.json, or *.safetensors)",
        ));
    }
    files.sort();
    Ok((files, None))
}

/// Reads `weight_map` of an index file; returns its shard files (in natural order) and
/// the tensor -> shard file map. Shards are named relative to the index's folder.
fn read_index(index: &Path) -> Result<(Vec<PathBuf>, HashMap<String, PathBuf>)> {
    let text = std::fs::read_to_string(index).map_err(|e| SpectrumError::file(index, format!("cannot read: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SpectrumError::file(index, format!("index is not valid JSON ({e})")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| SpectrumError::file(index, "index has no \"weight_map\" object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names = HashMap::new();
    let mut shards: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| natural_key(k));
    for k in keys {
        let file = map[k]
            .as_str()
            .ok_or_else(|| SpectrumError::file(index, format!("weight_map entry {k:?} is not a file name")))?;
        let rel = Path::new(file);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(SpectrumError::file(
                index,
                format!("weight_map entry {k:?} names {file:?}, which is not inside the model folder"),
            ));
        }
        if seen.insert(file.to_string()) {
            shards.push(file.to_string());
        }
        names.insert(k.clone(), dir.join(rel));
    }
    if shards.is_empty() {
        return Err(SpectrumError::file(index, "index weight_map is empty"));
    }
    shards.sort_by_key(|s| natural_key(s));
    let mut files = Vec::new();
    for s in &shards {
        let f = dir.join(s);
        if !f.is_file() {
            return Err(SpectrumError::file(
                &f,
                format!("shard named by {} is missing", index.display()),
            ));
        }
        files.push(f);
    }
    Ok((files, names))
}

impl Catalog {
    /// Opens a model: a folder, an index file, one `.safetensors` file, or several files.
    pub fn open(paths: &[PathBuf]) -> Result<Catalog> {
        let (files, index) = resolve(paths)?;
        let mut cat = Catalog::default();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (si, path) in files.iter().enumerate() {
            let (shard, data_start, meta) = read_header(path)?;
            for name in meta.offset_keys() {
                if let Some((_, map)) = &index {
                    // Names come from the index: a tensor the index does not place in
                    // this shard is not part of the model.
                    if map.get(&name) != Some(path) {
                        continue;
                    }
                }
                let info = meta.info(&name).expect("offset_keys come from the same metadata");
                if let Some(&prev) = by_name.get(&name) {
                    return Err(SpectrumError::file(
                        path,
                        format!(
                            "tensor {name:?} is also in {}",
                            cat.shards[cat.tensors[prev].shard].path.display()
                        ),
                    ));
                }
                by_name.insert(name.clone(), cat.tensors.len());
                cat.tensors.push(TensorEntry {
                    name,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    shard: si,
                    begin: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                });
            }
            cat.shards.push(shard);
        }
        if let Some((index_path, map)) = &index {
            let mut missing: Vec<(&String, &PathBuf)> =
                map.iter().filter(|(k, _)| !by_name.contains_key(*k)).collect();
            if !missing.is_empty() {
                missing.sort();
                let (name, file) = missing[0];
                return Err(SpectrumError::file(
                    index_path,
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

    fn build_layers(&mut self, by_name: &HashMap<String, usize>) {
        // FP8 weights and their scale tensors (which are not layers themselves).
        let scale_of: HashMap<usize, usize> = self
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| is_fp8(t.dtype))
            .filter_map(|(ti, t)| {
                [format!("{}_scale_inv", t.name), format!("{}_scale", t.name)]
                    .iter()
                    .find_map(|n| by_name.get(n).copied())
                    .map(|s| (ti, s))
            })
            .collect();
        let scales: BTreeSet<usize> = scale_of.values().copied().collect();
        let mut layers = Vec::new();
        for (ti, t) in self.tensors.iter().enumerate() {
            let weight = t.name.ends_with(".weight");
            let experts = is_stacked_experts(t);
            // A layer owns a `*.weight`; fused experts may be stored without the suffix.
            if !(weight || experts) || t.shape.is_empty() || scales.contains(&ti) {
                continue;
            }
            let name = layer_name(&t.name).to_string();
            let scale = scale_of.get(&ti).copied();
            let whole = Part { tensor: ti, expert: None };
            let mut push = |name: String, weight: Part, rows: usize, cols: usize| {
                layers.push(Layer { kind: layer_type(&name), name, weight, scale, rows, cols })
            };
            let shape = &t.shape;
            match shape.len() {
                1 => push(name, whole, 1, shape[0]),
                2 => push(name, whole, shape[0], shape[1]),
                3 if experts => {
                    for e in 0..shape[0] {
                        push(format!("{name}.{e}"), Part { tensor: ti, expert: Some(e) }, shape[1], shape[2]);
                    }
                }
                // Convolutions and other higher-rank weights: (out, everything else).
                _ => push(name, whole, shape[0], shape[1..].iter().product()),
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
                return Err(SpectrumError::file(
                    &self.shards[t.shard].path,
                    format!(
                        "tensor {:?} has dtype {:?}, which cannot be scanned (supported: BF16, F16, F32, F64, F8_E4M3, F8_E5M2); exclude it with its type {:?}",
                        t.name, t.dtype, l.kind
                    ),
                ));
            }
            if let Some(s) = l.scale {
                let st = &self.tensors[s];
                if element_size(st.dtype).is_none() || !is_float(st.dtype) {
                    return Err(SpectrumError::file(
                        &self.shards[st.shard].path,
                        format!("scale tensor {:?} has dtype {:?}, which cannot be decoded", st.name, st.dtype),
                    ));
                }
            }
            chosen.push(i);
        }
        Ok(chosen)
    }

    /// Bytes a layer occupies on disk (its slice of the weight plus its scale).
    pub fn layer_bytes(&self, layer: &Layer) -> usize {
        let t = &self.tensors[layer.weight.tensor];
        let w = match layer.weight.expert {
            Some(_) => (t.end - t.begin) / t.shape[0].max(1),
            None => t.end - t.begin,
        };
        w + layer.scale.map(|s| self.tensors[s].end - self.tensors[s].begin).unwrap_or(0)
    }
}

/// A fused tensor of stacked experts `[E, out, in]` (SPEC §1): 3-D, a float type, a
/// `experts` part in its name, and data for every expert (a header declaring millions of
/// empty experts is not split).
pub fn is_stacked_experts(t: &TensorEntry) -> bool {
    t.shape.len() == 3
        && is_float(t.dtype)
        && t.name.split('.').any(|p| p == "experts")
        && t.end > t.begin
        && t.shape[0] <= t.end - t.begin
}

pub fn is_fp8(d: Dtype) -> bool {
    matches!(d, Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::F8_E4M3FNUZ | Dtype::F8_E5M2FNUZ)
}

pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::BF16 | Dtype::F16 | Dtype::F32 | Dtype::F64) || is_fp8(d)
}
