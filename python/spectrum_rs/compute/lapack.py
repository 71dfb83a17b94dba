"""Eigenvalues of a symmetric float64 matrix through the LAPACK that numpy has already
loaded (OpenBLAS in numpy's wheels). From ``TWO_STAGE_FROM`` rows on, the two-stage
tridiagonal reduction ``dsyevd_2stage``: for eigenvalues only it does most of its work in
matrix-matrix products, and measured 1.6x faster than numpy's own ``eigvalsh`` (one-stage
``dsyevd``) on a 4096x4096 Gram matrix (4.0 s vs 6.5 s on one core; MKL's fastest, 3.7 s,
was not worth a 200 MB dependency), at the same float64 accuracy. Below it, numpy's
``eigvalsh``, which was faster at 1024 (0.067 s vs 0.086 s).

Where the routine cannot be found (a numpy built against another LAPACK), or answers
wrongly on a known matrix at first use, ``eigvalsh`` falls back to ``numpy.linalg.eigvalsh``:
slower, never wrong."""

from __future__ import annotations

import ctypes
import functools
from typing import Callable, Optional

import numpy as np

_COL_MAJOR = 102
# Symbol names to try, most specific first: numpy's wheels ship OpenBLAS with a
# ``scipy_`` prefix and a ``64_`` suffix (64-bit integers); other builds export plain
# LAPACKE names. LAPACKE takes its integers by value, so their width only matters for
# values above 2**31, which no matrix here reaches.
_NAMES = ("scipy_LAPACKE_dsyevd_2stage64_", "LAPACKE_dsyevd_2stage64_", "LAPACKE_dsyevd_2stage")

#: Matrices with at least this many rows go to ``dsyevd_2stage``; smaller ones to numpy.
TWO_STAGE_FROM = 2048


def _find() -> Optional[Callable[..., int]]:
    """``LAPACKE_dsyevd_2stage`` from a BLAS library numpy has loaded, or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    import numpy.linalg  # noqa: F401  (loads numpy's BLAS/LAPACK library)

    for lib in threadpool_info():
        if lib.get("user_api") != "blas" or not lib.get("filepath"):
            continue
        try:
            dll = ctypes.CDLL(lib["filepath"])
        except OSError:
            continue
        for name in _NAMES:
            fn = getattr(dll, name, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                fn.argtypes = [
                    ctypes.c_int,
                    ctypes.c_char,
                    ctypes.c_char,
                    ctypes.c_int64,
                    ctypes.c_void_p,
                    ctypes.c_int64,
                    ctypes.c_void_p,
                ]
                return fn
    return None


def _two_stage(fn: Callable[..., int]) -> Callable[[np.ndarray], np.ndarray]:
    def eigvalsh(a: np.ndarray) -> np.ndarray:
        n = a.shape[0]
        w = np.empty(n, np.float64)
        # A symmetric C-ordered matrix is its own column-major transpose.
        info = fn(_COL_MAJOR, b"N", b"L", n, a.ctypes.data, max(n, 1), w.ctypes.data)
        if info != 0:
            raise np.linalg.LinAlgError(f"LAPACK dsyevd_2stage failed (info={info})")
        return w

    return eigvalsh


@functools.cache
def large_matrix_eigvalsh() -> Callable[[np.ndarray], np.ndarray]:
    """The routine :func:`eigvalsh` uses from ``TWO_STAGE_FROM`` rows on, in this process:
    ``dsyevd_2stage`` when found and right on a known matrix, else numpy's eigvalsh
    (``spectrum-rs plan`` calibrates it, and the benches time it)."""
    fn = _find()
    if fn is None:
        return _numpy_eigvalsh
    candidate = _two_stage(fn)
    probe = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 2.0]])
    try:
        ok = np.allclose(candidate(probe.copy()), np.linalg.eigvalsh(probe), rtol=1e-12, atol=1e-12)
    except np.linalg.LinAlgError:
        ok = False
    return candidate if ok else _numpy_eigvalsh


def _numpy_eigvalsh(a: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(a)


def eigvalsh(a: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric float64 matrix ``a``, which is
    overwritten. ``a`` must be C-contiguous, writable and exactly symmetric."""
    if (
        a.dtype != np.float64
        or not a.flags.c_contiguous
        or not a.flags.writeable
        or a.ndim != 2
        or a.shape[0] != a.shape[1]
    ):
        raise ValueError("eigvalsh needs a square, C-contiguous, writable float64 matrix")
    if a.shape[0] < TWO_STAGE_FROM:
        return np.linalg.eigvalsh(a) if a.shape[0] else np.zeros(0)
    return large_matrix_eigvalsh()(a)


def backend() -> str:
    """Which routine ``eigvalsh`` uses in this process (for summaries and benches)."""
    return "LAPACK dsyevd_2stage" if large_matrix_eigvalsh() is not _numpy_eigvalsh else "numpy.linalg.eigvalsh"
