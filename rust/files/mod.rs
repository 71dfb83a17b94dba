//! The model's files on disk: which files a path stands for (`resolve`), the header of
//! each safetensors file (`header`), the index of a sharded model (`index`), and each
//! file as the catalog opened it, with the checked reads of its bytes (`shard`).

pub mod header;
pub mod index;
pub mod resolve;
pub mod shard;

pub use header::{Header, HeaderError, HeaderTensor};
pub use index::{parse_index, Index, IndexError, WeightMap};
pub use resolve::{resolve, Resolved, INDEX_NAME, SINGLE_NAME};
pub use shard::{Shard, ShardReader, Stamp};

/// Temporary folders and hand-built safetensors files for the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system's temporary folder, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let name =
                format!("spectrum-rs-test-{}-{}-{nanos}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Writes `bytes` to `name` inside the folder and returns its path.
        pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The 8-byte length and the header text, as they start a safetensors file.
    pub fn with_len(header: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header);
        out
    }

    /// A tensor to write: name, safetensors dtype name, shape and stored bytes.
    pub type Spec<'a> = (&'a str, &'a str, &'a [usize], Vec<u8>);

    /// The bytes of a safetensors file holding `tensors`, stored in the order given.
    pub fn safetensors(tensors: &[Spec<'_>]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let mut out = with_len(serde_json::Value::Object(header).to_string().as_bytes());
        out.extend_from_slice(&data);
        out
    }

    pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// `n` float32 values `start, start + 1, ...`.
    pub fn f32_seq(start: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| start + i as f32).collect()
    }
}
