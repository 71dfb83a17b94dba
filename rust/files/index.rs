//! The index of a sharded model (`model.safetensors.index.json`): `parse_index` reads its
//! `weight_map` (tensor name -> shard file name) and checks that every shard is named
//! inside the model folder; `read_index` reads an index file, parses it and checks that
//! its shards exist. `parse_index` is pure: it never panics and allocates only in
//! proportion to the text it is given.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, SpectrumError};
use crate::naming::natural_key;

/// What an index says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightMap {
    /// Shard file names as the index writes them (relative to its folder), each once, in
    /// natural order.
    pub shards: Vec<String>,
    /// `(tensor name, shard file name)` for every entry, in natural order of the names.
    pub tensors: Vec<(String, String)>,
}

/// Why an index is refused. The messages are the ones users see after the file name.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index is not valid JSON ({0})")]
    NotJson(serde_json::Error),
    #[error("index has no \"weight_map\" object")]
    NoWeightMap,
    #[error("weight_map entry {0:?} is not a file name")]
    NotAFileName(String),
    #[error("weight_map entry {name:?} names {file:?}, which is not inside the model folder")]
    OutsideFolder { name: String, file: String },
    #[error("index weight_map is empty")]
    Empty,
}

/// Parses the text of an index file.
pub fn parse_index(text: &str) -> std::result::Result<WeightMap, IndexError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(IndexError::NotJson)?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or(IndexError::NoWeightMap)?;
    let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
    entries.sort_by_cached_key(|(k, _)| natural_key(k));
    let mut tensors = Vec::with_capacity(entries.len());
    let mut shards: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, value) in entries {
        let file = value.as_str().ok_or_else(|| IndexError::NotAFileName(name.clone()))?;
        if !inside_folder(file) {
            return Err(IndexError::OutsideFolder { name: name.clone(), file: file.to_string() });
        }
        if seen.insert(file) {
            shards.push(file.to_string());
        }
        tensors.push((name.clone(), file.to_string()));
    }
    if shards.is_empty() {
        return Err(IndexError::Empty);
    }
    shards.sort_by_cached_key(|s| natural_key(s));
    Ok(WeightMap { shards, tensors })
}

/// A relative path that does not climb out of its folder with `..`.
fn inside_folder(file: &str) -> bool {
    let rel = Path::new(file);
    !rel.is_absolute() && !rel.components().any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
}

/// An index file and what it says, with shard names resolved against its folder.
#[derive(Clone, Debug)]
pub struct Index {
    pub path: PathBuf,
    /// The shard files, in natural order.
    pub files: Vec<PathBuf>,
    /// Tensor name -> the shard file that holds it.
    pub names: HashMap<String, PathBuf>,
}

/// Reads an index file; fails when it is malformed or names a shard that is missing.
pub fn read_index(path: &Path) -> Result<Index> {
    let text = std::fs::read_to_string(path).map_err(|e| SpectrumError::file(path, format!("cannot read: {e}")))?;
    let map = parse_index(&text).map_err(|e| SpectrumError::file(path, e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let names = map.tensors.into_iter().map(|(name, file)| (name, dir.join(file))).collect();
    let mut files = Vec::with_capacity(map.shards.len());
    for s in &map.shards {
        let f = dir.join(s);
        if !f.is_file() {
            return Err(SpectrumError::file(&f, format!("shard named by {} is missing", path.display())));
        }
        files.push(f);
    }
    Ok(Index { path: path.to_path_buf(), files, names })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::testing::TempDir;

    fn refused(text: &str) -> IndexError {
        parse_index(text).expect_err("should be refused")
    }

    #[test]
    fn parses_a_weight_map_in_natural_order() {
        let text = r#"{"metadata": {"total_size": 64}, "weight_map": {
            "model.layers.10.mlp.up_proj.weight": "model-00010-of-00010.safetensors",
            "model.layers.2.mlp.up_proj.weight": "model-00002-of-00010.safetensors",
            "model.layers.1.mlp.up_proj.weight": "model-00002-of-00010.safetensors",
            "lm_head.weight": "sub/head.safetensors"}}"#;
        let map = parse_index(text).unwrap();
        assert_eq!(
            map.shards,
            ["model-00002-of-00010.safetensors", "model-00010-of-00010.safetensors", "sub/head.safetensors"]
        );
        let names: Vec<&str> = map.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "lm_head.weight",
                "model.layers.1.mlp.up_proj.weight",
                "model.layers.2.mlp.up_proj.weight",
                "model.layers.10.mlp.up_proj.weight"
            ]
        );
        assert_eq!(map.tensors[0].1, "sub/head.safetensors");
    }

    #[test]
    fn refuses_what_is_not_a_weight_map() {
        assert!(matches!(refused(""), IndexError::NotJson(_)));
        assert!(matches!(refused("{ nope"), IndexError::NotJson(_)));
        assert!(refused("{ nope").to_string().starts_with("index is not valid JSON ("));
        assert!(matches!(refused(r#"{"metadata": {}}"#), IndexError::NoWeightMap));
        assert!(matches!(refused(r#"{"weight_map": ["a"]}"#), IndexError::NoWeightMap));
        assert!(matches!(refused("[1, 2]"), IndexError::NoWeightMap));
        assert!(matches!(refused("3"), IndexError::NoWeightMap));
        assert_eq!(refused(r#"{"weight_map": 1}"#).to_string(), "index has no \"weight_map\" object");
        assert!(matches!(refused(r#"{"weight_map": {}}"#), IndexError::Empty));
        assert_eq!(refused(r#"{"weight_map": {}}"#).to_string(), "index weight_map is empty");
    }

    #[test]
    fn refuses_entries_that_are_not_file_names() {
        for value in ["1", "null", "[\"a.safetensors\"]", "{}"] {
            let e = refused(&format!(r#"{{"weight_map": {{"a.weight": "x.safetensors", "b.weight": {value}}}}}"#));
            assert!(matches!(&e, IndexError::NotAFileName(n) if n == "b.weight"), "{value}: {e}");
            assert_eq!(e.to_string(), "weight_map entry \"b.weight\" is not a file name");
        }
    }

    #[test]
    fn refuses_shards_outside_the_folder() {
        for file in
            ["../x.safetensors", "a/../../x.safetensors", "sub/../x.safetensors", "/etc/passwd", "/x.safetensors"]
        {
            let text = serde_json::json!({"weight_map": {"w.weight": file}}).to_string();
            let e = refused(&text);
            assert!(matches!(&e, IndexError::OutsideFolder { name, .. } if name == "w.weight"), "{file}: {e}");
            assert_eq!(
                e.to_string(),
                format!("weight_map entry \"w.weight\" names {file:?}, which is not inside the model folder")
            );
        }
        // Inside: a subfolder, `.` parts, names that merely contain dots.
        for file in ["sub/x.safetensors", "./x.safetensors", "x..safetensors", "..x.safetensors"] {
            let text = serde_json::json!({"weight_map": {"w.weight": file}}).to_string();
            assert_eq!(parse_index(&text).unwrap().shards, [file]);
        }
    }

    #[test]
    fn never_panics_on_odd_text() {
        for text in
            ["{", "}", "\"weight_map\"", "{\"weight_map\": {\"\": \"\"}}", "{\"weight_map\": {\"é1\": \"é\"}}", "\u{0}"]
        {
            let _ = parse_index(text);
        }
        let deep = format!("{{\"weight_map\": {}{}}}", "[".repeat(50_000), "]".repeat(50_000));
        assert!(matches!(refused(&deep), IndexError::NotJson(_)));
    }

    #[test]
    fn reads_an_index_and_finds_its_shards() {
        let dir = TempDir::new();
        dir.write("a.safetensors", b"");
        dir.write("sub/b.safetensors", b"");
        let text = r#"{"weight_map": {"x.weight": "sub/b.safetensors", "y.weight": "a.safetensors"}}"#;
        let path = dir.write("model.safetensors.index.json", text.as_bytes());
        let index = read_index(&path).unwrap();
        assert_eq!(index.path, path);
        assert_eq!(index.files, [dir.path().join("a.safetensors"), dir.path().join("sub/b.safetensors")]);
        assert_eq!(index.names["x.weight"], dir.path().join("sub/b.safetensors"));

        let text = r#"{"weight_map": {"x.weight": "gone.safetensors"}}"#;
        let path = dir.write("model.safetensors.index.json", text.as_bytes());
        let e = read_index(&path).unwrap_err().to_string();
        let gone = dir.path().join("gone.safetensors");
        assert_eq!(e, format!("{}: shard named by {} is missing", gone.display(), path.display()));

        let path = dir.write("bad.index.json", b"{\"weight_map\": \xff}");
        let e = read_index(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: cannot read: ", path.display())), "{e}");
        let path = dir.write("bad2.index.json", b"{\"weight_map\": []}");
        let e = read_index(&path).unwrap_err();
        assert_eq!(e.path(), Some(path.display().to_string().as_str()));
    }
}
