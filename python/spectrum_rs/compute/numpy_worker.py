"""The CPU worker: singular values of one decoded float32 matrix with numpy, without torch
(importing torch alone costs over 500 MiB of resident memory). ``"gram"``: the Gram
matrix of the smaller side by BLAS ``syrk`` (float32 or float64), then its eigenvalues in
float64 (:mod:`.lapack`), square-rooted, with the precision bound of docs/method.md §2.9
deciding when to take a float64 SVD instead; ``"svd"``: a float64 SVD, for checking."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..options import check_method_dtype
from . import lapack
from .base import GRAM_BLOCK_ELEMENTS, OutOfRange, gram_in_range, scale_exponent
from .precision import gram_suffices


class NumpyWorker:
    """Computes singular values of matrices on the CPU with one method and dtype.

    ``dtype="auto"`` forms the Gram matrix in float32 and escalates to float64, then to a
    float64 SVD, where the precision bound of docs/method.md §2.9 asks for it. A forced
    ``dtype`` (``"float32"``, ``"float64"``) forms the Gram matrix in that precision and
    checks the same bound: where it fails, the values come from a float64 SVD instead
    (``forced_fallback`` is then True; the scan tells it in one warning), so that no
    setting gives a number off by more than the bound without saying so."""

    device = "cpu"
    wants_raw = False  # the Rust reader decodes every dtype to float32 off the GIL
    slots = 1  # layers held at once: there is no upload to overlap with the computation

    def __init__(self, method: str = "gram", dtype: str = "auto") -> None:
        check_method_dtype(method, dtype)
        self.method = method
        self.dtype = dtype
        self.forced_fallback = False

    def to_matrix(self, array: np.ndarray, stored: str, rows: int, cols: int) -> np.ndarray:
        """The streamed payload as a ``rows x cols`` array: decoded float32, or the stored
        little-endian bytes of an F64 tensor (kept in float64: its values may lie beyond
        float32's range)."""
        if stored == "F64" and array.dtype == np.uint8:
            return array.view("<f8").reshape(rows, cols)
        if stored != "F32":
            raise ValueError(f"the CPU worker takes decoded float32 matrices, got stored bytes of {stored}")
        return array.reshape(rows, cols)

    def singular_values(self, w: np.ndarray) -> Optional[np.ndarray]:
        """All singular values of ``w`` (any order) as float64, or ``None`` when it holds
        NaN or Inf values. A matrix whose Gram matrix would overflow or underflow is
        computed scaled by a power of two (:data:`.base.GRAM_RANGE`)."""
        self.forced_fallback = False
        if w.size == 0:
            return np.zeros(0)
        a = w.T if w.shape[0] < w.shape[1] else w  # tall: work on the smaller side
        try:
            # Overflow (float64 values cast to float32, or their products) is expected
            # here and handled below: numpy need not warn of it (errstate is per thread).
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                return self._singular_values(a)
        except OutOfRange:
            pass
        # Only here (rarely) a pass over the matrix for its largest value: overflow, NaN
        # or Inf, underflow or all zeros showed in the Gram matrix.
        top = max(float(a.max()), -float(a.min()))
        if not math.isfinite(top):
            return None
        if top == 0:
            return np.zeros(min(a.shape))
        k = scale_exponent(top)
        try:
            s = self._singular_values(np.ldexp(a, k))  # exact: a power of two
        except OutOfRange:  # the largest value is now in [0.5, 1): cannot happen
            raise AssertionError("a matrix scaled to a largest value of 1 left the Gram range") from None
        return None if s is None else np.ldexp(s, -k)

    def _singular_values(self, a: np.ndarray) -> Optional[np.ndarray]:
        """The values of tall ``a`` by this worker's method and dtype; raises
        :class:`OutOfRange` when its Gram matrix did not fit its dtype."""
        if self.method == "svd":
            return _svd(a)
        gram_dtype = "float64" if self.dtype == "float64" else "float32"
        lam = self.gram_eigenvalues(a, np.dtype(gram_dtype))
        if lam is None or not gram_in_range(float(lam[-1]), gram_dtype):
            raise OutOfRange
        if self.dtype == "auto":
            # float32 Gram -> float64 Gram -> float64 SVD, each only where the one before
            # could move the SNR by the bound or more.
            if not gram_suffices(lam, a.shape[0], a.shape[1], "float32"):
                lam = self.gram_eigenvalues(a, np.dtype(np.float64))
                assert lam is not None  # finite in float32, finite in float64
                if not gram_suffices(lam, a.shape[0], a.shape[1], "float64"):
                    return _svd(a)
        elif not gram_suffices(lam, a.shape[0], a.shape[1], gram_dtype):
            self.forced_fallback = True
            return _svd(a)
        return np.sqrt(np.clip(lam, 0, None, out=lam), out=lam)

    @staticmethod
    def gram_eigenvalues(a: np.ndarray, dtype: np.dtype) -> Optional[np.ndarray]:
        """Eigenvalues (ascending, float64) of the Gram matrix of tall ``a`` formed in
        ``dtype``, or None when it holds NaN or Inf (``a`` does, or the products overflowed)."""
        g = gram(a, dtype)
        # Every element of the matrix is in a diagonal sum of squares: one NaN or Inf
        # anywhere shows there, without a pass over the whole matrix.
        if not np.isfinite(np.diagonal(g)).all():
            return None
        return lapack.eigvalsh(g if g.dtype == np.float64 else g.astype(np.float64))


def _svd(a: np.ndarray) -> Optional[np.ndarray]:
    """Singular values by a float64 SVD, or None when ``a`` holds NaN or Inf."""
    if not np.isfinite(a).all():
        return None
    return np.linalg.svd(a.astype(np.float64), compute_uv=False)


def gram(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a.T @ a`` in ``dtype``, summed over blocks of rows so that a tall matrix (an
    embedding) is never copied whole into a wider dtype. numpy recognises the product of
    a matrix with its own transpose and calls BLAS ``syrk``: half the work of a general
    product, measured 1.9x faster than torch's GEMM on a 14336x4096 float32 matrix
    (benches/results). The result is exactly symmetric."""
    rows, cols = a.shape
    step = max(1024, GRAM_BLOCK_ELEMENTS // max(cols, 1))
    g: Optional[np.ndarray] = None
    for start in range(0, rows, step):
        b = a[start : start + step].astype(dtype, copy=False)
        part = b.T @ b
        if g is None:
            g = part
        else:
            g += part
    if g is None:
        return np.zeros((cols, cols), dtype)
    return np.ascontiguousarray(g)
