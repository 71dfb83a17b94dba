//! The index of a sharded model (`model.safetensors.index.json`): `parse_index` reads its
//! `weight_map` (tensor name -> shard file name) and checks that every shard is named
//! inside the model folder, and that no tensor is listed twice; `read_index` reads an
//! index file, parses it and checks that its shards exist. `parse_index` is pure: it
//! never panics and allocates only in proportion to the text it is given (fuzzed:
//! `fuzz/README.md`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

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
    #[error("weight_map lists tensor {name:?} twice ({first} and {second})")]
    Duplicate { name: String, first: String, second: String },
    #[error("index has more than one \"weight_map\"")]
    TwoWeightMaps,
}

/// The index's `weight_map` as written: every entry in order, a name written twice
/// included (the JSON object that `serde_json::Value` makes keeps only the last).
#[derive(Deserialize)]
struct Written {
    weight_map: Entries,
}

struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Each)
    }
}

/// Refuses a tensor the weight map lists twice. Called once the text parsed as JSON with
/// a `weight_map` object, so the only way this second, order-keeping parse can fail is
/// a second `weight_map`.
fn no_duplicates(text: &str) -> std::result::Result<(), IndexError> {
    #[derive(Deserialize)]
    struct Keys {
        #[serde(rename = "weight_map")]
        _weight_map: IgnoredAny,
    }
    let _ = serde_json::from_str::<Keys>(text).map_err(|_| IndexError::TwoWeightMaps)?;
    let written: Written = serde_json::from_str(text).map_err(|_| IndexError::TwoWeightMaps)?;
    let mut first: HashMap<&str, &serde_json::Value> = HashMap::with_capacity(written.weight_map.0.len());
    for (name, file) in &written.weight_map.0 {
        match first.entry(name) {
            Entry::Occupied(e) => {
                return Err(IndexError::Duplicate {
                    name: name.clone(),
                    first: e.get().to_string(),
                    second: file.to_string(),
                })
            }
            Entry::Vacant(e) => {
                e.insert(file);
            }
        }
    }
    Ok(())
}

/// Parses the text of an index file.
pub fn parse_index(text: &str) -> std::result::Result<WeightMap, IndexError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(IndexError::NotJson)?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or(IndexError::NoWeightMap)?;
    no_duplicates(text)?;
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
    fn refuses_a_tensor_listed_twice() {
        // serde_json keeps the last of two keys: the first file would be silently ignored.
        let text = r#"{"weight_map": {"a.weight": "x.safetensors", "b.weight": "x.safetensors",
                                      "a.weight": "y.safetensors"}}"#;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(text).unwrap()["weight_map"].as_object().unwrap().len(),
            2
        );
        let e = refused(text);
        assert!(matches!(&e, IndexError::Duplicate { name, .. } if name == "a.weight"));
        assert_eq!(
            e.to_string(),
            "weight_map lists tensor \"a.weight\" twice (\"x.safetensors\" and \"y.safetensors\")"
        );
        // Twice with the same file, and a name spelt with an escape, are duplicates too.
        let e = refused(r#"{"weight_map": {"a": "x.safetensors", "\u0061": "x.safetensors"}}"#);
        assert_eq!(e.to_string(), "weight_map lists tensor \"a\" twice (\"x.safetensors\" and \"x.safetensors\")");
        // Two weight maps: the first would be silently ignored.
        let e = refused(r#"{"weight_map": {"a": "x.safetensors"}, "weight_map": {"b": "y.safetensors"}}"#);
        assert!(matches!(e, IndexError::TwoWeightMaps));
        let e = refused(r#"{"weight_map": 3, "metadata": {}, "weight_map": {"b": "y.safetensors"}}"#);
        assert_eq!(e.to_string(), "index has more than one \"weight_map\"");
        // Other keys may repeat (only the weight map is read).
        assert!(parse_index(r#"{"metadata": 1, "metadata": 2, "weight_map": {"a": "x.safetensors"}}"#).is_ok());
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
