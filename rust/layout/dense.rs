//! Ordinary weights: a `*.weight` tensor is one layer. A 2-D tensor is its matrix
//! `(out, in)`; a 1-D tensor (a norm) is one row; a higher-rank one (a convolution) is
//! `(out, everything else)`.

use crate::layout::TensorEntry;

/// Whether a tensor is a layer's weight (docs/method.md §1: a layer owns a `*.weight`).
pub fn is_weight(t: &TensorEntry) -> bool {
    t.name.ends_with(".weight")
}

/// The `(rows, cols)` of the matrix a weight of this shape is scanned as.
pub fn matrix_dims(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, cols] => (*rows, *cols),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_become_matrices() {
        assert_eq!(matrix_dims(&[4096]), (1, 4096));
        assert_eq!(matrix_dims(&[1024, 4096]), (1024, 4096));
        assert_eq!(matrix_dims(&[64, 3, 7, 7]), (64, 147));
        assert_eq!(matrix_dims(&[8, 0, 4]), (8, 0));
    }
}
