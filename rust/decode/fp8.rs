//! The FP8 formats (E4M3, E5M2 and their FNUZ variants): the value of every byte, and the
//! scale tensors FP8 checkpoints store beside their weights (per tensor, per row or per
//! block, with the block tiling they use).

use safetensors::tensor::Dtype;

/// Whether a dtype is one of the FP8 formats.
pub fn is_fp8(d: Dtype) -> bool {
    matches!(d, Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::F8_E4M3FNUZ | Dtype::F8_E5M2FNUZ)
}

/// The value of one FP8 byte with `e` exponent bits, `m` mantissa bits and `bias`.
/// `fnuz`: the "finite, no negative zero" layout (0x80 is NaN, no infinities);
/// otherwise E4M3 has only NaN at all-ones and E5M2 follows IEEE.
fn fp8_value(b: u8, e: u32, m: u32, bias: i32, fnuz: bool) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b as u32) >> m) & ((1 << e) - 1);
    let mant = (b as u32) & ((1 << m) - 1);
    let all_ones_exp = exp == (1 << e) - 1;
    if fnuz {
        if b == 0x80 {
            return f32::NAN;
        }
    } else if e == 4 {
        if all_ones_exp && mant == (1 << m) - 1 {
            return f32::NAN;
        }
    } else if all_ones_exp {
        return if mant == 0 { sign * f32::INFINITY } else { f32::NAN };
    }
    let frac = mant as f32 / (1u32 << m) as f32;
    if exp == 0 {
        sign * frac * 2f32.powi(1 - bias)
    } else {
        sign * (1.0 + frac) * 2f32.powi(exp as i32 - bias)
    }
}

fn fp8_table(dtype: Dtype) -> [f32; 256] {
    let (e, m, bias, fnuz) = match dtype {
        Dtype::F8_E4M3 => (4, 3, 7, false),
        Dtype::F8_E5M2 => (5, 2, 15, false),
        Dtype::F8_E4M3FNUZ => (4, 3, 8, true),
        _ => (5, 2, 16, true),
    };
    let mut t = [0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = fp8_value(i as u8, e, m, bias, fnuz);
    }
    t
}

/// Decodes FP8 bytes of `dtype` (one byte per element) into `out`.
pub fn decode_fp8(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let table = fp8_table(dtype);
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = table[b as usize];
    }
}

/// The block size FP8 checkpoints use (DeepSeek-V3/R1, Qwen3-FP8: `weight_block_size`
/// `[128, 128]`).
pub const FP8_BLOCK: usize = 128;

/// The side of the block each of `s` scales covers along a dimension of `n` values.
/// Checkpoints quantise in fixed `FP8_BLOCK` tiles with a partial tile at the end
/// (DeepSeek-V3's 576-row `kv_a_proj_with_mqa` has 5 row scales: 4 x 128 + 64), so
/// that block is used whenever it is consistent with `s`; otherwise the smallest block
/// that is (`ceil(n / s)`: one scale per row, per tensor, or other even tilings).
pub fn block_side(n: usize, s: usize) -> usize {
    if n.div_ceil(FP8_BLOCK) == s {
        FP8_BLOCK
    } else {
        n.div_ceil(s)
    }
}

/// The `(rows, cols)` block each of `sr x sc` scales covers: the model's configured
/// block (`weight_block_size` in its config) or, without one, `block_side` per
/// dimension. `None` when that tiling does not produce exactly `sr x sc` blocks.
pub fn scale_blocks(
    rows: usize,
    cols: usize,
    sr: usize,
    sc: usize,
    configured: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    if rows == 0 || cols == 0 || sr == 0 || sc == 0 {
        return None;
    }
    let (br, bc) = match configured {
        // A per-tensor or per-row scale ignores the block size.
        Some((br, bc)) if br > 0 && bc > 0 => (
            if sr == 1 {
                rows
            } else if sr == rows {
                1
            } else {
                br
            },
            if sc == 1 {
                cols
            } else if sc == cols {
                1
            } else {
                bc
            },
        ),
        _ => (block_side(rows, sr), block_side(cols, sc)),
    };
    (rows.div_ceil(br) == sr && cols.div_ceil(bc) == sc).then_some((br, bc))
}

/// Multiplies a `rows x cols` matrix by a scale tensor of shape `(sr, sc)` (a scalar,
/// one scale per row, or one per block), each scale covering a `br x bc` block (from
/// `scale_blocks`), as FP8 checkpoints store them.
pub fn apply_scale(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    scale: &[f32],
    sr: usize,
    sc: usize,
    block: (usize, usize),
) {
    if rows == 0 || cols == 0 || sr == 0 || sc == 0 {
        return;
    }
    let (br, bc) = block;
    for i in 0..rows {
        let srow = &scale[(i / br).min(sr - 1) * sc..][..sc];
        let row = &mut w[i * cols..(i + 1) * cols];
        for (j, v) in row.iter_mut().enumerate() {
            *v *= srow[(j / bc).min(sc - 1)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_into;

    fn one(dtype: Dtype, b: u8) -> f32 {
        let mut o = [0f32];
        decode_into(dtype, &[b], &mut o);
        o[0]
    }

    #[test]
    fn fp8_e4m3_known_values() {
        assert_eq!(one(Dtype::F8_E4M3, 0x38), 1.0); // exp 7, mant 0
        assert_eq!(one(Dtype::F8_E4M3, 0x7e), 448.0); // largest finite
        assert_eq!(one(Dtype::F8_E4M3, 0xb8), -1.0);
        assert_eq!(one(Dtype::F8_E4M3, 0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(one(Dtype::F8_E4M3, 0x7f).is_nan());
    }

    #[test]
    fn fp8_e5m2_known_values() {
        assert_eq!(one(Dtype::F8_E5M2, 0x3c), 1.0);
        assert_eq!(one(Dtype::F8_E5M2, 0x7b), 57344.0);
        assert_eq!(one(Dtype::F8_E5M2, 0x7c), f32::INFINITY);
        assert!(one(Dtype::F8_E5M2, 0x7d).is_nan());
        assert_eq!(one(Dtype::F8_E5M2, 0x01), 2f32.powi(-16));
    }

    #[test]
    fn fp8_fnuz_known_values() {
        assert_eq!(one(Dtype::F8_E4M3FNUZ, 0x40), 1.0);
        assert!(one(Dtype::F8_E4M3FNUZ, 0x80).is_nan());
        assert_eq!(one(Dtype::F8_E5M2FNUZ, 0x40), 1.0);
    }

    #[test]
    fn block_scales_cover_ragged_edges() {
        // 3x3 matrix of ones, 2x2 scale blocks of size ceil(3/2)=2.
        let mut w = vec![1f32; 9];
        apply_scale(&mut w, 3, 3, &[1.0, 2.0, 3.0, 4.0], 2, 2, scale_blocks(3, 3, 2, 2, None).unwrap());
        assert_eq!(w, vec![1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0]);
        let mut w = vec![2f32; 4];
        apply_scale(&mut w, 2, 2, &[0.5], 1, 1, scale_blocks(2, 2, 1, 1, None).unwrap());
        assert_eq!(w, vec![1.0; 4]);
    }

    #[test]
    fn ragged_fp8_tiles_are_128_wide() {
        // 200 rows, 2 row scales: rows 0..128 use the first, 128..200 the second
        // (not 0..100 / 100..200).
        assert_eq!(block_side(200, 2), 128);
        assert_eq!(block_side(576, 5), 128);
        assert_eq!(block_side(256, 2), 128);
        assert_eq!(block_side(96, 96), 1); // per-row scales
        assert_eq!(block_side(300, 1), 300); // per-tensor
        let mut w = vec![1f32; 200];
        apply_scale(&mut w, 200, 1, &[1.0, 2.0], 2, 1, scale_blocks(200, 1, 2, 1, None).unwrap());
        assert_eq!(w[127], 1.0);
        assert_eq!(w[128], 2.0);
    }

    #[test]
    fn configured_blocks_and_inconsistent_tilings() {
        // weight_block_size [96, 96]: 200 rows in 3 blocks (96, 96, 8), 300 cols in 4.
        assert_eq!(scale_blocks(200, 300, 3, 4, Some((96, 96))), Some((96, 96)));
        // Without the config: 3 row scales over 200 rows read as ceil(200/3) = 67 (128
        // would give 2 blocks), 3 column scales over 300 as 128-wide tiles.
        assert_eq!(scale_blocks(200, 300, 3, 3, None), Some((67, 128)));
        // Per-tensor and per-row scales whatever the configured block.
        assert_eq!(scale_blocks(200, 300, 1, 1, Some((128, 128))), Some((200, 300)));
        assert_eq!(scale_blocks(200, 300, 200, 1, Some((128, 128))), Some((1, 300)));
        // 6 scales cannot tile 10 values evenly (blocks of 2 give 5).
        assert_eq!(scale_blocks(10, 4, 6, 1, None), None);
        assert_eq!(scale_blocks(200, 300, 2, 3, Some((96, 96))), None);
    }
}
