//! Decoding the IEEE-style float types (BF16, F16, F32, F64) from little-endian bytes
//! to float32.

use half::{bf16, f16};

pub fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

pub fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

pub fn decode_f64(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        *o = f64::from_le_bytes(a) as f32;
    }
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::Dtype;

    use crate::decode::decode_into;

    #[test]
    fn half_types_and_wide_floats() {
        let mut o = [0f32; 2];
        decode_into(Dtype::BF16, &[0x80, 0x3f, 0x00, 0xc0], &mut o); // 1.0, -2.0
        assert_eq!(o, [1.0, -2.0]);
        decode_into(Dtype::F16, &[0x00, 0x3c, 0x00, 0x38], &mut o); // 1.0, 0.5
        assert_eq!(o, [1.0, 0.5]);
        let b: Vec<u8> = [0.25f64, -3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        decode_into(Dtype::F64, &b, &mut o);
        assert_eq!(o, [0.25, -3.0]);
        let b: Vec<u8> = [1.5f32, -0.125].iter().flat_map(|v| v.to_le_bytes()).collect();
        decode_into(Dtype::F32, &b, &mut o);
        assert_eq!(o, [1.5, -0.125]);
    }
}
