//! Fuzzes `files::index::parse_index` (a sharded model's `model.safetensors.index.json`) on
//! arbitrary text: it must never panic, and what it accepts must be consistent (at least
//! one shard, every tensor's shard listed once among the shards, no tensor twice, no
//! shard outside the model folder).

#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use _core::files::index::parse_index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(map) = parse_index(text) else { return };
    assert!(!map.shards.is_empty());
    let shards: HashSet<&str> = map.shards.iter().map(String::as_str).collect();
    assert_eq!(shards.len(), map.shards.len(), "a shard listed twice");
    let mut names = HashSet::new();
    for (name, file) in &map.tensors {
        assert!(shards.contains(file.as_str()), "{file} not among the shards");
        assert!(names.insert(name.as_str()), "{name} twice");
        let p = Path::new(file);
        assert!(!p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir)), "{file} outside");
    }
});
