//! The header of a safetensors file: `parse` reads the 8-byte length, the JSON header and
//! every tensor's dtype, shape and byte range out of the first bytes of a file, and
//! checks them the way the safetensors crate does, and refuses a name declared twice
//! (which the safetensors crate silently resolves to the last one); `read` reads a file's
//! head and parses it. `parse` is pure: it never panics and allocates only in proportion
//! to the bytes it is given, whatever lengths, offsets or shapes they claim (fuzzed:
//! `fuzz/README.md`).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorInfo};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Result, SpectrumError};

/// Bytes of the little-endian header length that starts every safetensors file.
pub const LEN_BYTES: usize = 8;
/// The largest JSON header accepted, as the safetensors crate limits it.
pub const MAX_HEADER: usize = 100_000_000;

/// One tensor as its header declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub data_offsets: (usize, usize),
}

/// A parsed and checked header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header in bytes (the file's first 8 bytes).
    pub header_len: usize,
    /// Bytes the data section holds: the end of the last tensor.
    pub data_len: usize,
    /// FNV-1a 64 of the JSON header bytes: identifies the file's layout cheaply.
    pub hash: u64,
    /// Every tensor, in the order of its data (ties, empty tensors at one offset, by name).
    pub tensors: Vec<HeaderTensor>,
}

impl Header {
    /// Where the data section starts in the file.
    pub fn data_start(&self) -> usize {
        LEN_BYTES + self.header_len
    }

    /// The size the file must have (`None` when it overflows: no file is that long).
    pub fn file_len(&self) -> Option<u64> {
        (self.data_start() as u64).checked_add(self.data_len as u64)
    }
}

/// Why a header is refused. The messages are the ones users see after the file name.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("file is shorter than the 8-byte header length: truncated or not a safetensors file")]
    TooSmall,
    #[error("header length is larger than 100 MB or the file: not a safetensors file?")]
    TooLarge,
    #[error("header length is larger than the file: truncated or not a safetensors file")]
    PastEnd,
    #[error("header is not valid UTF-8 ({0})")]
    NotUtf8(std::str::Utf8Error),
    #[error("header is not valid safetensors JSON ({0})")]
    NotJson(serde_json::Error),
    #[error("tensor {name:?} is declared twice in the header (data_offsets [{}, {}] and [{}, {}])", .first.0, .first.1, .second.0, .second.1)]
    Duplicate { name: String, first: (usize, usize), second: (usize, usize) },
    #[error("tensor {0:?} has data offsets that are out of range, overlapping or leave gaps")]
    Offsets(String),
    #[error("tensor {name:?} of shape {shape:?}: its size overflows when multiplied out")]
    Overflow { name: String, shape: Vec<usize> },
    #[error("tensor {0:?} does not end on a byte boundary (invalid safetensors file: MisalignedSlice)")]
    Misaligned(String),
    #[error("tensor {name:?} of shape {shape:?}: its shape and dtype do not match its byte range [{}, {}]", .offsets.0, .offsets.1)]
    Mismatch { name: String, shape: Vec<usize>, offsets: (usize, usize) },
    #[error("file size does not match the tensors its header declares: truncated or padded")]
    FileSize,
}

/// The JSON header as safetensors declares it (the same shape as the safetensors crate's
/// own, so that the JSON errors read the same).
#[derive(Deserialize)]
struct HashMetadata {
    #[serde(rename = "__metadata__")]
    // Parsed so that a malformed `__metadata__` is refused, as safetensors does; not used.
    _metadata: Option<HashMap<String, String>>,
    #[serde(flatten)]
    tensors: Entries,
}

/// The tensors of a header in the order written, a name written twice included (a map
/// would silently keep the last of the two).
struct Entries(Vec<(String, TensorInfo)>);

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
                while let Some(entry) = map.next_entry::<String, TensorInfo>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Each)
    }
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Parses the header at the start of `bytes` (the first bytes of a file: at least the
/// 8-byte length and the JSON header; more is ignored). Checks what the safetensors crate
/// checks, except that the file's size matches (`Header::file_len`, which only the
/// whole file can tell).
pub fn parse(bytes: &[u8]) -> std::result::Result<Header, HeaderError> {
    let len: [u8; LEN_BYTES] = bytes.get(..LEN_BYTES).and_then(|b| b.try_into().ok()).ok_or(HeaderError::TooSmall)?;
    let n = usize::try_from(u64::from_le_bytes(len)).map_err(|_| HeaderError::TooLarge)?;
    if n > MAX_HEADER {
        return Err(HeaderError::TooLarge);
    }
    let json = bytes.get(LEN_BYTES..LEN_BYTES + n).ok_or(HeaderError::PastEnd)?;
    let text = std::str::from_utf8(json).map_err(HeaderError::NotUtf8)?;
    let meta: HashMetadata = serde_json::from_str(text).map_err(HeaderError::NotJson)?;
    let mut first: HashMap<&str, (usize, usize)> = HashMap::with_capacity(meta.tensors.0.len());
    for (name, info) in &meta.tensors.0 {
        match first.entry(name) {
            Entry::Occupied(e) => {
                return Err(HeaderError::Duplicate { name: name.clone(), first: *e.get(), second: info.data_offsets })
            }
            Entry::Vacant(e) => {
                e.insert(info.data_offsets);
            }
        }
    }
    drop(first);
    let mut tensors: Vec<HeaderTensor> = meta
        .tensors
        .0
        .into_iter()
        .map(|(name, info)| HeaderTensor {
            name,
            dtype: info.dtype,
            shape: info.shape,
            data_offsets: info.data_offsets,
        })
        .collect();
    tensors.sort_by(|a, b| (a.data_offsets, &a.name).cmp(&(b.data_offsets, &b.name)));
    let data_len = validate(&tensors)?;
    let header = Header { header_len: n, data_len, hash: fnv1a(json), tensors };
    if header.data_start().checked_add(data_len).is_none() {
        return Err(HeaderError::FileSize);
    }
    Ok(header)
}

/// The safetensors rules: tensors follow each other without gaps from offset 0, and each
/// spans exactly its elements. Returns the end of the data.
fn validate(tensors: &[HeaderTensor]) -> std::result::Result<usize, HeaderError> {
    let mut start = 0;
    for t in tensors {
        let (s, e) = t.data_offsets;
        if s != start || e < s {
            return Err(HeaderError::Offsets(t.name.clone()));
        }
        start = e;
        let overflow = || HeaderError::Overflow { name: t.name.clone(), shape: t.shape.clone() };
        let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
        let bits = elements.checked_mul(t.dtype.bitsize()).ok_or_else(overflow)?;
        if bits % 8 != 0 {
            return Err(HeaderError::Misaligned(t.name.clone()));
        }
        if e - s != bits / 8 {
            return Err(HeaderError::Mismatch {
                name: t.name.clone(),
                shape: t.shape.clone(),
                offsets: t.data_offsets,
            });
        }
    }
    Ok(start)
}

/// Reads and checks the header of one file, and that the file is as long as it says.
/// Returns the file's size and its header.
pub fn read(path: &Path) -> Result<(u64, Header)> {
    read_open(path).map(|(_, meta, header)| (meta.len(), header))
}

/// `read`, also returning the open file and its metadata as it was before the header was
/// read (the size returned is its length).
pub fn read_open(path: &Path) -> Result<(File, Metadata, Header)> {
    let mut file = File::open(path).map_err(|e| SpectrumError::file(path, format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| SpectrumError::file(path, format!("cannot stat: {e}")))?;
    let size = meta.len();
    if size < LEN_BYTES as u64 {
        return Err(SpectrumError::file(
            path,
            format!("file is {size} bytes, too short to be safetensors (truncated?)"),
        ));
    }
    let mut head = vec![0u8; LEN_BYTES];
    file.read_exact(&mut head).map_err(|e| SpectrumError::file(path, format!("cannot read: {e}")))?;
    // Then the JSON header, when the file holds it and it is within the limit; otherwise
    // the 8 bytes alone make `parse` say which of the two is wrong.
    let claimed = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
    if claimed <= MAX_HEADER as u64 && claimed <= size - LEN_BYTES as u64 {
        head.try_reserve_exact(claimed as usize)
            .map_err(|_| SpectrumError::memory(path, format!("cannot allocate {claimed} bytes to read the header")))?;
        head.resize(LEN_BYTES + claimed as usize, 0);
        file.read_exact(&mut head[LEN_BYTES..]).map_err(|e| SpectrumError::file(path, format!("cannot read: {e}")))?;
    }
    let header = parse(&head).map_err(|e| SpectrumError::file(path, e.to_string()))?;
    if header.file_len() != Some(size) {
        return Err(SpectrumError::file(path, HeaderError::FileSize.to_string()));
    }
    Ok((file, meta, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::testing::{f32_bytes, safetensors, with_len, TempDir};

    fn err(bytes: &[u8]) -> HeaderError {
        parse(bytes).expect_err("should be refused")
    }

    fn json(header: &str) -> HeaderError {
        err(&with_len(header.as_bytes()))
    }

    #[test]
    fn parses_a_hand_built_header() {
        // Listed out of order; data in the order b, a.
        let text = r#"{"__metadata__": {"format": "pt"},
            "a.weight": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [16, 28]},
            "b.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#;
        let mut file = with_len(text.as_bytes());
        let h = parse(&file).unwrap();
        assert_eq!(h.header_len, text.len());
        assert_eq!(h.data_start(), 8 + text.len());
        assert_eq!(h.data_len, 28);
        assert_eq!(h.hash, fnv1a(text.as_bytes()));
        assert_eq!(h.file_len(), Some(8 + text.len() as u64 + 28));
        let b = HeaderTensor { name: "b.weight".into(), dtype: Dtype::F32, shape: vec![4], data_offsets: (0, 16) };
        let a = HeaderTensor { name: "a.weight".into(), dtype: Dtype::BF16, shape: vec![2, 3], data_offsets: (16, 28) };
        assert_eq!(h.tensors, vec![b, a]);
        // The data after the header does not matter to `parse`.
        file.extend_from_slice(&[0u8; 28]);
        assert_eq!(parse(&file).unwrap(), h);
        // Empty header, empty tensors at one offset (ordered by name), scalars.
        assert_eq!(parse(&with_len(b"{}")).unwrap().tensors, vec![]);
        let h = parse(&with_len(
            br#"{"z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
                 "y": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]},
                 "s": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}}"#,
        ))
        .unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["y", "z", "s"]);
        assert_eq!(h.data_len, 8);
    }

    #[test]
    fn short_buffers_and_lengths_past_the_end() {
        assert!(matches!(err(b""), HeaderError::TooSmall));
        assert!(matches!(err(&[16, 0, 0]), HeaderError::TooSmall));
        assert!(matches!(err(&[0; 7]), HeaderError::TooSmall));
        let mut b = with_len(b"{}");
        b[0] = 3; // claims 3 bytes, holds 2
        assert!(matches!(err(&b), HeaderError::PastEnd));
        assert!(err(&b).to_string().starts_with("header length is larger than the file"));
        // The largest length allowed, on 10 bytes: refused without allocating 100 MB.
        let mut b = (MAX_HEADER as u64).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(matches!(err(&b), HeaderError::PastEnd));
    }

    #[test]
    fn huge_declared_lengths() {
        for n in [MAX_HEADER as u64 + 1, 1 << 32, 1 << 63, u64::MAX] {
            let mut b = n.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            assert!(matches!(err(&b), HeaderError::TooLarge), "{n}");
        }
        assert!(err(&u64::MAX.to_le_bytes()).to_string().contains("100 MB"));
    }

    #[test]
    fn bad_json_and_bad_utf8() {
        let e = json("this is not json at all!");
        assert!(matches!(e, HeaderError::NotJson(_)));
        assert!(e.to_string().starts_with("header is not valid safetensors JSON ("), "{e}");
        assert!(matches!(json("[1, 2, 3]"), HeaderError::NotJson(_)));
        assert!(matches!(json(""), HeaderError::NotJson(_)));
        assert!(matches!(json(r#"{"a": 1}"#), HeaderError::NotJson(_)));
        assert!(matches!(json(r#"{"__metadata__": {"a": 1}}"#), HeaderError::NotJson(_)));
        assert!(matches!(
            json(r#"{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#),
            HeaderError::NotJson(_)
        ));
        let e = json(r#"{"w": {"dtype": "F12", "shape": [2, 2], "data_offsets": [0, 16]}}"#);
        assert!(e.to_string().contains("F12"), "{e}");
        let e = err(&with_len(b"{\"\xff\xfe\": 1}"));
        assert!(matches!(e, HeaderError::NotUtf8(_)));
        assert!(e.to_string().contains("UTF-8"));
        // Deep nesting is refused by serde_json's recursion limit, not by the stack.
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(json(&deep), HeaderError::NotJson(_)));
    }

    #[test]
    fn a_name_declared_twice_is_refused() {
        // The same offsets twice: safetensors accepts it (its map keeps the last entry).
        let text = r#"{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                       "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}"#;
        let mut file = with_len(text.as_bytes());
        file.extend_from_slice(&[0; 16]);
        assert!(safetensors::tensor::SafeTensors::read_metadata(&file).is_ok());
        let e = err(&file);
        assert!(matches!(&e, HeaderError::Duplicate { name, first: (0, 16), second: (0, 16) } if name == "w"));
        assert_eq!(e.to_string(), "tensor \"w\" is declared twice in the header (data_offsets [0, 16] and [0, 16])");
        // Another shape and dtype at other offsets: named with both places.
        let e = json(
            r#"{"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
                "w": {"dtype": "BF16", "shape": [8], "data_offsets": [32, 48]}}"#,
        );
        assert_eq!(e.to_string(), "tensor \"w\" is declared twice in the header (data_offsets [16, 32] and [32, 48])");
        // Names that differ only in escaping are the same name.
        let e = json(
            r#"{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                "\u0077": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}"#,
        );
        assert!(matches!(&e, HeaderError::Duplicate { name, .. } if name == "w"), "{e}");
        // `__metadata__` twice is malformed JSON for safetensors too.
        assert!(matches!(json(r#"{"__metadata__": {}, "__metadata__": {}}"#), HeaderError::NotJson(_)));
    }

    #[test]
    fn offsets_that_overlap_leave_gaps_or_run_backwards() {
        let e = json(
            r#"{"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}"#,
        );
        assert!(matches!(&e, HeaderError::Offsets(n) if n == "b.weight"));
        assert!(e.to_string().contains("overlapping"));
        let e = json(
            r#"{"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [1000, 1016]}}"#,
        );
        assert!(matches!(&e, HeaderError::Offsets(n) if n == "b.weight"));
        let e = json(
            r#"{"w": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},
                         "v": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}"#,
        );
        assert!(matches!(e, HeaderError::Offsets(_)));
        assert!(matches!(
            json(r#"{"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}"#),
            HeaderError::Offsets(_)
        ));
    }

    #[test]
    fn shapes_that_do_not_match_their_bytes() {
        let e = json(r#"{"w.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}"#);
        assert!(matches!(&e, HeaderError::Mismatch { name, .. } if name == "w.weight"));
        assert_eq!(
            e.to_string(),
            "tensor \"w.weight\" of shape [3, 3]: its shape and dtype do not match its byte range [0, 16]"
        );
        assert!(matches!(
            json(r#"{"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 64]}}"#),
            HeaderError::Mismatch { .. }
        ));
        // Products of header numbers that overflow name the tensor and its shape.
        let e = json(r#"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}}"#);
        assert_eq!(
            e.to_string(),
            "tensor \"w\" of shape [4294967296, 4294967296]: its size overflows when multiplied out"
        );
        let e = json(r#"{"w": {"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 16]}}"#);
        assert!(matches!(&e, HeaderError::Overflow { name, shape } if name == "w" && shape[..] == [1 << 61]));
        // A zero first does not hide an overflow later: 0 x 3^30 x 3^30 is 0 elements.
        let h = parse(&with_len(
            br#"{"w": {"dtype": "F32", "shape": [0, 205891132094649, 205891132094649], "data_offsets": [0, 0]}}"#,
        ));
        assert_eq!(h.unwrap().tensors[0].shape, [0, 205891132094649, 205891132094649]);
        let e = json(r#"{"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}"#);
        assert!(matches!(&e, HeaderError::Misaligned(name) if name == "w"));
        assert!(e.to_string().starts_with("tensor \"w\" does not end on a byte boundary"), "{e}");
    }

    #[test]
    fn claims_of_more_data_than_any_file_holds() {
        // Eight consistent tensors of 2^61 - 1 bytes each end just below usize::MAX: the
        // header is valid, but no file can hold it after the header.
        let each = usize::MAX / 8;
        let entries: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    r#""t{i}": {{"dtype": "U8", "shape": [{each}], "data_offsets": [{}, {}]}}"#,
                    i * each,
                    (i + 1) * each
                )
            })
            .collect();
        let e = json(&format!("{{{}}}", entries.join(",")));
        assert!(matches!(e, HeaderError::FileSize), "{e}");
        // One such tensor parses, and says the file length it needs.
        let h = parse(&with_len(format!("{{{}}}", entries[0]).as_bytes())).unwrap();
        assert_eq!(h.data_len, each);
    }

    #[test]
    fn never_panics_on_damaged_headers() {
        let file = safetensors(&[
            ("model.layers.0.a.weight", "F32", &[2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            ("model.layers.0.b.weight", "BF16", &[2], vec![0, 0x3f, 0, 0x40]),
        ]);
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        assert!(parse(&file).is_ok());
        // Every prefix, and a few thousand single-byte changes (a fixed pseudo-random
        // sequence), must come back Ok or Err.
        for end in 0..file.len() {
            let _ = parse(&file[..end]);
        }
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut damaged = file.clone();
            let at = (state as usize) % (8 + n);
            damaged[at] = (state >> 32) as u8;
            same_as_safetensors(&damaged);
        }
    }

    /// What the safetensors crate's own reader says about a whole file, in the words
    /// spectrum-rs used for it before it parsed headers itself.
    fn safetensors_says(file: &[u8]) -> std::result::Result<(), String> {
        use safetensors::tensor::{SafeTensorError::*, SafeTensors};
        SafeTensors::read_metadata(file).map(|_| ()).map_err(|e| match e {
            InvalidHeader(e) => format!("header is not valid UTF-8 ({e})"),
            InvalidHeaderDeserialization(e) => format!("header is not valid safetensors JSON ({e})"),
            HeaderTooLarge => "header length is larger than 100 MB or the file: not a safetensors file?".into(),
            HeaderTooSmall => {
                "file is shorter than the 8-byte header length: truncated or not a safetensors file".into()
            }
            InvalidHeaderLength => "header length is larger than the file: truncated or not a safetensors file".into(),
            InvalidOffset(name) => {
                format!("tensor {name:?} has data offsets that are out of range, overlapping or leave gaps")
            }
            TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
            MetadataIncompleteBuffer => {
                "file size does not match the tensors its header declares: truncated or padded".into()
            }
            ValidationOverflow => "a tensor's shape overflows when multiplied out".into(),
            other => format!("invalid safetensors file ({other:?})"),
        })
    }

    /// `parse` plus the file-size check says what the safetensors crate says.
    fn same_as_safetensors(file: &[u8]) {
        // Where we name the tensor, safetensors does not: compare the kinds.
        let generic = |e: HeaderError| match e {
            HeaderError::Overflow { .. } => "a tensor's shape overflows when multiplied out".to_string(),
            HeaderError::Misaligned(_) => "invalid safetensors file (MisalignedSlice)".to_string(),
            HeaderError::Mismatch { .. } => "a tensor's shape and dtype do not match its byte range".to_string(),
            e => e.to_string(),
        };
        let ours = parse(file).map_err(generic).and_then(|h| {
            (h.file_len() == Some(file.len() as u64)).then_some(()).ok_or_else(|| HeaderError::FileSize.to_string())
        });
        match (ours, safetensors_says(file)) {
            (Ok(()), Ok(())) => {}
            // Which of several tensors at one offset is named is arbitrary in safetensors.
            (Err(a), Err(b)) if a.contains("has data offsets") && b.contains("has data offsets") => {}
            // A name written twice: safetensors keeps the last one, which then fails or not.
            (Err(a), _) if a.contains("is declared twice") => {}
            (a, b) => assert_eq!(a, b, "on {file:?}"),
        }
    }

    #[test]
    fn agrees_with_the_safetensors_crate() {
        let w = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        let good = safetensors(&[("w.weight", "F32", &[2, 2], w.clone())]);
        same_as_safetensors(&good);
        for end in 0..good.len() {
            same_as_safetensors(&good[..end]);
        }
        same_as_safetensors(&[&good[..], &[0]].concat());
        for text in [
            "this is not json at all!",
            "[1, 2, 3]",
            "",
            r#"{"a": 1}"#,
            r#"{"__metadata__": {"a": 1}}"#,
            r#"{"__metadata__": {"a": "b"}}"#,
            r#"{"w": {"dtype": "F12", "shape": [2, 2], "data_offsets": [0, 16]}}"#,
            r#"{"w": {"dtype": "F32", "shape": [2, 2]}}"#,
            r#"{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], "extra": 1}}"#,
            r#"{"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}"#,
            r#"{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 20]}}"#,
            r#"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}}"#,
            r#"{"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}"#,
            r#"{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "w": 3}"#,
        ] {
            let mut file = with_len(text.as_bytes());
            file.extend_from_slice(&w);
            same_as_safetensors(&file);
        }
        let mut file = with_len(b"{\"\xff\": 1}");
        file.extend_from_slice(&w);
        same_as_safetensors(&file);
    }

    #[test]
    fn reads_a_file_and_checks_its_size() {
        let dir = TempDir::new();
        let bytes = safetensors(&[("w.weight", "F32", &[2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        let path = dir.write("model.safetensors", &bytes);
        let (size, h) = read(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(h.file_len(), Some(size));
        assert_eq!(h.tensors[0].name, "w.weight");

        let msg = |p: &Path| read(p).unwrap_err().to_string();
        let p = dir.write("truncated.safetensors", &bytes[..bytes.len() - 3]);
        assert_eq!(msg(&p), format!("{}: {}", p.display(), HeaderError::FileSize));
        let p = dir.write("padded.safetensors", &[&bytes[..], &[0]].concat());
        assert!(msg(&p).contains("truncated or padded"));
        let p = dir.write("short.safetensors", &[16, 0, 0]);
        assert_eq!(msg(&p), format!("{}: file is 3 bytes, too short to be safetensors (truncated?)", p.display()));
        let mut long = bytes.clone();
        long[..8].copy_from_slice(&10_000u64.to_le_bytes());
        let p = dir.write("long.safetensors", &long);
        assert!(msg(&p).contains("header length is larger than the file"));
        long[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
        let p = dir.write("absurd.safetensors", &long);
        assert!(msg(&p).contains("header length is larger than 100 MB"));
        let p = dir.path().join("absent.safetensors");
        assert!(msg(&p).starts_with(&format!("{}: cannot open: ", p.display())));
        assert!(matches!(read(&p), Err(SpectrumError::File { .. })));
    }
}
