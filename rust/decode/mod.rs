//! Stored element types: their serialized names, their sizes, and decoding them to
//! float32 (`float` for BF16/F16/F32/F64, `fp8` for the FP8 formats and their scales,
//! `mxfp4` for the OCP MX types: packed FP4 E2M1 values and E8M0 scales).

pub mod float;
pub mod fp8;
pub mod mxfp4;

use safetensors::tensor::Dtype;

pub use fp8::{apply_scale, block_side, is_fp8, scale_blocks, FP8_BLOCK};

/// The name safetensors writes for a dtype in its JSON headers (`"BF16"`, `"F8_E4M3"`).
pub fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BOOL => "BOOL",
        Dtype::F4 => "F4",
        Dtype::F6_E2M3 => "F6_E2M3",
        Dtype::F6_E3M2 => "F6_E3M2",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::F8_E5M2 => "F8_E5M2",
        Dtype::F8_E4M3 => "F8_E4M3",
        Dtype::F8_E8M0 => "F8_E8M0",
        Dtype::F8_E4M3FNUZ => "F8_E4M3FNUZ",
        Dtype::F8_E5M2FNUZ => "F8_E5M2FNUZ",
        Dtype::I16 => "I16",
        Dtype::U16 => "U16",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I32 => "I32",
        Dtype::U32 => "U32",
        Dtype::F32 => "F32",
        Dtype::C64 => "C64",
        Dtype::F64 => "F64",
        Dtype::I64 => "I64",
        Dtype::U64 => "U64",
        // `Dtype` is non-exhaustive: a dtype added by a later safetensors release has no
        // name here until it is listed (the test below fails on the upgrade).
        _ => "UNKNOWN",
    }
}

/// Bytes per element of a whole-byte dtype this crate can decode; `None` for the others
/// (F4 packs two values in a byte: see `decoded_len`).
pub fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F64 => Some(8),
        Dtype::F32 => Some(4),
        Dtype::BF16 | Dtype::F16 => Some(2),
        Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::F8_E4M3FNUZ | Dtype::F8_E5M2FNUZ | Dtype::F8_E8M0 => Some(1),
        _ => None,
    }
}

/// How many values `nbytes` stored bytes of `dtype` decode to; `None` for a dtype this
/// crate cannot decode.
pub fn decoded_len(dtype: Dtype, nbytes: usize) -> Option<usize> {
    match dtype {
        Dtype::F4 => nbytes.checked_mul(2),
        _ => element_size(dtype).map(|size| nbytes / size),
    }
}

/// Whether this crate decodes `dtype` (the float types, FP8, and the MX types F4 and
/// F8_E8M0).
pub fn is_decodable(dtype: Dtype) -> bool {
    decoded_len(dtype, 0).is_some()
}

/// A floating-point dtype this crate decodes (BF16, F16, F32, F64, FP8, F4, F8_E8M0).
pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::BF16 | Dtype::F16 | Dtype::F32 | Dtype::F64 | Dtype::F4 | Dtype::F8_E8M0) || is_fp8(d)
}

/// Decodes little-endian `bytes` of `dtype` into `out` (one float32 per element).
/// The caller guarantees `out.len() == decoded_len(dtype, bytes.len())`.
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::F32 => float::decode_f32(bytes, out),
        Dtype::BF16 => float::decode_bf16(bytes, out),
        Dtype::F16 => float::decode_f16(bytes, out),
        Dtype::F64 => float::decode_f64(bytes, out),
        Dtype::F4 => mxfp4::decode_f4(bytes, out),
        Dtype::F8_E8M0 => mxfp4::decode_e8m0(bytes, out),
        _ => fp8::decode_fp8(dtype, bytes, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Dtype; 22] = [
        Dtype::BOOL,
        Dtype::F4,
        Dtype::F6_E2M3,
        Dtype::F6_E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::F8_E4M3FNUZ,
        Dtype::F8_E5M2FNUZ,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    #[test]
    fn names_are_the_serialized_safetensors_names() {
        for d in ALL {
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(format!("\"{}\"", dtype_name(d)), json);
            let back: Dtype = serde_json::from_str(&json).unwrap();
            assert_eq!(back, d);
        }
    }

    #[test]
    fn decodable_dtypes_are_the_floats() {
        for d in ALL {
            assert_eq!(is_decodable(d), is_float(d), "{}", dtype_name(d));
            if let Some(size) = element_size(d) {
                assert_eq!(size * 8, d.bitsize());
            }
            // Every decodable dtype: values = bits / bitsize.
            if let Some(n) = decoded_len(d, 64) {
                assert_eq!(n, 64 * 8 / d.bitsize(), "{}", dtype_name(d));
            }
        }
        assert_eq!(decoded_len(Dtype::F4, 3), Some(6));
        assert_eq!(decoded_len(Dtype::I32, 4), None);
        assert!(!is_decodable(Dtype::U8) && !is_decodable(Dtype::I8) && !is_decodable(Dtype::F6_E2M3));
    }
}
