//! Ordinary weights: a `*.weight` tensor is one layer. A 2-D tensor is its matrix
//! `(out, in)`; a 1-D tensor (a norm) is one row; a higher-rank one (a convolution) is
//! `(out, everything else)`. GPT-2's `Conv1D` stores `(in, out)`: the transpose has the
//! same singular values and β, so it is scanned as stored (docs/layouts.md).

use crate::layout::{base_name, Source, TensorEntry};

/// Whether a tensor is a layer's weight (docs/method.md §1: a layer owns a `*.weight`).
pub fn is_weight(t: &TensorEntry) -> bool {
    t.name.ends_with(".weight")
}

/// The layer of a weight tensor: one matrix of `matrix_dims` (unchecked: see
/// `Source::checked`). `None` for a scalar.
pub fn source(t: &TensorEntry) -> Option<Source> {
    let (rows, cols) = matrix_dims(&t.shape)?;
    Some(Source::new(base_name(t), None, rows, cols))
}

/// The rows of the matrix a weight of this shape is scanned as, and the dimensions whose
/// product is its columns; `None` for a scalar.
pub fn matrix_dims(shape: &[usize]) -> Option<(usize, &[usize])> {
    match shape {
        [] => None,
        [_] => Some((1, shape)),
        [rows, rest @ ..] => Some((*rows, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(shape: &[usize]) -> Option<(usize, usize)> {
        let (rows, cols) = matrix_dims(shape)?;
        Source::new("x", None, rows, cols).checked().map(|s| s.dims)
    }

    #[test]
    fn shapes_become_matrices() {
        assert_eq!(dims(&[4096]), Some((1, 4096)));
        assert_eq!(dims(&[1024, 4096]), Some((1024, 4096)));
        assert_eq!(dims(&[64, 3, 7, 7]), Some((64, 147)));
        assert_eq!(dims(&[8, 0, 4]), Some((8, 0)));
        assert_eq!(matrix_dims(&[]), None);
    }

    #[test]
    fn header_numbers_that_overflow_are_refused() {
        // [0, 3^30, 3^30] holds no values but its columns wrap a 64-bit product.
        let p = 3usize.pow(30);
        assert_eq!(dims(&[0, p, p]), None);
        // [0, 2^31, 2^31]: 2^62 columns fit in 64 bits but not as float32 bytes (numpy
        // refuses such an array even when it is empty).
        assert_eq!(dims(&[0, 1 << 31, 1 << 31]), None);
        assert_eq!(dims(&[1 << 62, 0]), None);
        assert_eq!(dims(&[0, 1 << 40]), Some((0, 1 << 40)));
        assert_eq!(dims(&[usize::MAX]), None);
    }
}
