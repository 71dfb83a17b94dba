//! Which safetensors files a model path stands for: a folder (its index, its single
//! `model.safetensors`, or every `*.safetensors` in it), an index file, one file, or an
//! explicit list of files.

use std::path::{Path, PathBuf};

use crate::error::{Result, SpectrumError};
use crate::files::index::{read_index, Index};

pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

/// The files of a model, and its index when it has one (then the files are the index's
/// shards).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub files: Vec<PathBuf>,
    pub index: Option<Index>,
}

impl Resolved {
    fn files(files: Vec<PathBuf>) -> Self {
        Resolved { files, index: None }
    }

    fn index(path: &Path) -> Result<Self> {
        let index = read_index(path)?;
        Ok(Resolved { files: index.files.clone(), index: Some(index) })
    }
}

/// The files `paths` stand for.
pub fn resolve(paths: &[PathBuf]) -> Result<Resolved> {
    if paths.is_empty() {
        return Err(SpectrumError::input("no model path given"));
    }
    if paths.len() > 1 {
        for p in paths {
            if !p.is_file() {
                return Err(SpectrumError::file(p, "no such file"));
            }
        }
        return Ok(Resolved::files(paths.to_vec()));
    }
    let p = &paths[0];
    if !p.exists() {
        return Err(SpectrumError::file(p, "no such file or directory"));
    }
    if p.is_file() {
        if p.to_string_lossy().ends_with(".json") {
            return Resolved::index(p);
        }
        return Ok(Resolved::files(vec![p.clone()]));
    }
    let index = p.join(INDEX_NAME);
    if index.is_file() {
        return Resolved::index(&index);
    }
    let single = p.join(SINGLE_NAME);
    if single.is_file() {
        return Ok(Resolved::files(vec![single]));
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
        return Resolved::index(&indexes[0]);
    }
    if files.is_empty() {
        return Err(SpectrumError::file(
            p,
            "folder holds no .safetensors files (expected model.safetensors, a sharded model with model.safetensors.index.json, or *.safetensors)",
        ));
    }
    files.sort();
    Ok(Resolved::files(files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::testing::TempDir;

    fn one(p: &Path) -> Result<Resolved> {
        resolve(&[p.to_path_buf()])
    }

    const INDEX: &str = r#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                           "b.weight": "model-00002-of-00002.safetensors"}}"#;

    #[test]
    fn a_folder_with_one_file_and_strays() {
        let dir = TempDir::new();
        let single = dir.write(SINGLE_NAME, b"");
        dir.write("config.json", b"{}");
        dir.write("notes.txt", b"");
        dir.write("other.safetensors", b"");
        let r = one(dir.path()).unwrap();
        assert_eq!(r.files, std::slice::from_ref(&single));
        assert!(r.index.is_none());
        // The file itself, and a list of files.
        assert_eq!(one(&single).unwrap().files, std::slice::from_ref(&single));
        let other = dir.path().join("other.safetensors");
        assert_eq!(resolve(&[other.clone(), single.clone()]).unwrap().files, [other, single]);
    }

    #[test]
    fn a_sharded_folder_uses_its_index() {
        let dir = TempDir::new();
        let a = dir.write("model-00001-of-00002.safetensors", b"");
        let b = dir.write("model-00002-of-00002.safetensors", b"");
        dir.write("stray.safetensors", b"");
        dir.write(SINGLE_NAME, b""); // the index wins over a single file
        let index = dir.write(INDEX_NAME, INDEX.as_bytes());
        let r = one(dir.path()).unwrap();
        assert_eq!(r.files, [a.clone(), b.clone()]);
        let i = r.index.unwrap();
        assert_eq!(i.path, index);
        assert_eq!(i.names.len(), 2);
        // The index file itself.
        assert_eq!(one(&index).unwrap().files, [a, b]);
    }

    #[test]
    fn a_folder_with_an_index_of_another_name_or_loose_files() {
        let dir = TempDir::new();
        dir.write("model-00001-of-00002.safetensors", b"");
        dir.write("model-00002-of-00002.safetensors", b"");
        let index = dir.write("pytorch.safetensors.index.json", INDEX.as_bytes());
        assert_eq!(one(dir.path()).unwrap().index.unwrap().path, index);

        let dir = TempDir::new();
        let b = dir.write("b.safetensors", b"");
        let a = dir.write("a.safetensors", b"");
        dir.write("weights.bin", b"");
        std::fs::create_dir(dir.path().join("c.safetensors")).unwrap(); // a folder, not a file
        assert_eq!(one(dir.path()).unwrap().files, [a, b]);
    }

    #[test]
    fn missing_and_empty() {
        let dir = TempDir::new();
        let msg = |r: Result<Resolved>| r.unwrap_err().to_string();
        assert_eq!(msg(resolve(&[])), "no model path given");
        let absent = dir.path().join("no_such_model");
        assert_eq!(msg(one(&absent)), format!("{}: no such file or directory", absent.display()));
        let e = msg(one(dir.path()));
        assert!(e.starts_with(&format!("{}: folder holds no .safetensors files", dir.path().display())), "{e}");
        let good = dir.write("a.safetensors", b"");
        let missing = dir.path().join("other.safetensors");
        assert_eq!(msg(resolve(&[good, missing.clone()])), format!("{}: no such file", missing.display()));
    }
}
