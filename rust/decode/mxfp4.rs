//! The OCP Microscaling (MX) element and scale types that MXFP4 checkpoints store
//! (gpt-oss): FP4 E2M1 values packed two to a byte, low nibble first, and E8M0 scales,
//! one byte each, worth `2^(s - 127)` (`0xFF` is NaN). The block arithmetic (one scale per
//! 32 values of a row) is the scale machinery of `fp8.rs`; docs/layouts.md describes the
//! layout.

/// The 16 values of FP4 E2M1 (1 sign, 2 exponent, 1 mantissa bit, bias 1; no infinities
/// or NaN), by their 4-bit code: the table of the OCP MX specification v1.0 §5.3.3, and
/// `FP4_VALUES` of transformers' `integrations/mxfp4.py`.
pub const E2M1: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// The value of one E8M0 scale byte: `2^(s - 127)`, NaN for `0xFF` (OCP MX v1.0 §5.4.1).
/// `s = 0` is `2^-127`, a float32 subnormal, so every code but NaN is exact.
pub fn e8m0_value(s: u8) -> f32 {
    if s == 0xFF {
        f32::NAN
    } else {
        // 2^(s-127) for s in 1..=254 is the float32 with biased exponent s.
        if s == 0 {
            f32::from_bits(1 << 22)
        } else {
            f32::from_bits((s as u32) << 23)
        }
    }
}

/// Decodes packed FP4 E2M1 bytes: byte `i` holds value `2i` in its low nibble and value
/// `2i + 1` in its high nibble. `out` holds twice as many values as `bytes` has bytes.
pub fn decode_f4(bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
        o[0] = E2M1[(b & 0x0F) as usize];
        o[1] = E2M1[(b >> 4) as usize];
    }
}

/// Decodes E8M0 scale bytes, one value each.
pub fn decode_e8m0(bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = e8m0_value(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_codes_are_sign_exponent_mantissa() {
        // Recompute the table from the bit fields: bias 1, subnormal at exponent 0.
        for code in 0u8..16 {
            let sign = if code & 0x8 != 0 { -1.0f32 } else { 1.0 };
            let exp = ((code >> 1) & 0x3) as i32;
            let mant = (code & 0x1) as f32;
            let v = if exp == 0 { sign * mant * 0.5 } else { sign * (1.0 + mant / 2.0) * 2f32.powi(exp - 1) };
            assert_eq!(E2M1[code as usize].to_bits(), v.to_bits(), "code {code}");
        }
    }

    #[test]
    fn nibbles_low_first() {
        let mut o = [0f32; 4];
        decode_f4(&[0x72, 0xF9], &mut o); // low 2 = 1.0, high 7 = 6.0; low 9 = -0.5, high F = -6.0
        assert_eq!(o, [1.0, 6.0, -0.5, -6.0]);
    }

    #[test]
    fn e8m0_is_a_power_of_two() {
        assert_eq!(e8m0_value(127), 1.0);
        assert_eq!(e8m0_value(128), 2.0);
        assert_eq!(e8m0_value(120), 2f32.powi(-7));
        assert_eq!(e8m0_value(254), 2f32.powi(127));
        assert_eq!(e8m0_value(1), 2f32.powi(-126));
        assert_eq!(e8m0_value(0) as f64, 2f64.powi(-127));
        assert!(e8m0_value(255).is_nan());
        let mut o = [0f32; 2];
        decode_e8m0(&[126, 130], &mut o);
        assert_eq!(o, [0.5, 8.0]);
    }
}
