//! Fuzzes `files::header::parse` (a safetensors file's header) on arbitrary bytes: it must
//! never panic, and what it accepts must be consistent (tensors back to back from offset
//! 0, each spanning exactly its elements, names unique, the file length representable).
//! The whole buffer is also given to the safetensors crate's own reader: both must accept
//! or both refuse the same files, except for a name declared twice, which only we refuse.

#![no_main]

use std::collections::HashSet;

use _core::files::header::{parse, HeaderError, LEN_BYTES};
use libfuzzer_sys::fuzz_target;
use safetensors::tensor::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let ours = parse(data);
    if let Ok(h) = &ours {
        assert!(LEN_BYTES + h.header_len <= data.len());
        let mut end = 0;
        let mut names = HashSet::new();
        for t in &h.tensors {
            assert_eq!(t.data_offsets.0, end, "{}", t.name);
            end = t.data_offsets.1;
            let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).expect("checked by parse");
            assert_eq!((end - t.data_offsets.0) * 8, elements * t.dtype.bitsize());
            assert!(names.insert(t.name.as_str()), "{} twice", t.name);
        }
        assert_eq!(end, h.data_len);
        assert!(h.file_len().is_some());
    }
    // Differential: the same verdict as safetensors on the buffer taken as a whole file.
    let whole =
        ours.as_ref().map_err(|_| ()).and_then(|h| (h.file_len() == Some(data.len() as u64)).then_some(()).ok_or(()));
    let theirs = SafeTensors::read_metadata(data).map(|_| ());
    match (&ours, whole, theirs) {
        (Err(HeaderError::Duplicate { .. }), _, _) => {}
        (_, a, b) => assert_eq!(a.is_ok(), b.is_ok(), "ours {:?}, safetensors {:?}", ours.as_ref().err(), b.err()),
    }
});
