"""What the pipeline needs of a worker: the :class:`Worker` protocol, and the constants and
rules both workers share: the Gram block size, and the power-of-two scaling that keeps a
Gram matrix of finite weights from overflowing or underflowing (docs/method.md §2.8)."""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol

import numpy as np

#: Elements of one block of rows converted at a time when forming a Gram matrix.
GRAM_BLOCK_ELEMENTS = 1 << 25

#: Per Gram dtype, the range of its largest eigenvalue (the squared largest singular value)
#: in which forming the Gram matrix loses nothing to overflow or underflow. Weights of
#: ordinary size are far inside it (a largest eigenvalue of 1e-3..1e6); weights scaled by
#: 1e19 overflow a float32 Gram matrix (1e38), by 1e-22 or less its products underflow
#: into subnormals (1e-38) or to zero. Outside the range, the matrix is scaled by a power
#: of two (exact) so that its largest absolute value is in [0.5, 1), and the singular
#: values are scaled back: the reported SNR is then the unscaled matrix's. The float32
#: bounds keep a margin of 2^20 on the float32 range for the sums of up to 2^20 rows and
#: for products 2^-24 below the largest, which the error model of docs/method.md §2.9
#: still counts.
GRAM_RANGE = {"float32": (2.0**-64, 2.0**100), "float64": (2.0**-900, 2.0**900)}


class OutOfRange(Exception):
    """A Gram matrix overflowed, underflowed or held NaN/Inf: the caller finds out which
    from the matrix itself, and scales it (:func:`scale_exponent`)."""


def gram_in_range(lam_max: float, gram_dtype: str) -> bool:
    """Whether a Gram matrix formed in ``gram_dtype`` whose largest eigenvalue is
    ``lam_max`` lost nothing to its range (see :data:`GRAM_RANGE`)."""
    low, high = GRAM_RANGE[gram_dtype]
    return low <= lam_max <= high


def scale_exponent(max_abs: float) -> int:
    """``k`` such that ``max_abs * 2**k`` is in [0.5, 1): scaling a matrix by ``2**k`` is
    exact (barring subnormals far below its largest value), and so is scaling its
    singular values back by ``2**-k``."""
    return -math.frexp(max_abs)[1]


class Worker(Protocol):
    """A worker computes singular values on one device with one method and dtype
    (:class:`.numpy_worker.NumpyWorker`, :class:`.torch_worker.TorchWorker`)."""

    device: Any
    method: str
    dtype: str
    #: True when the last ``singular_values`` call had a forced Gram ``dtype`` whose
    #: precision bound failed, so that the values come from a float64 SVD instead.
    forced_fallback: bool

    @property
    def wants_raw(self) -> bool: ...  # stored bytes (True) or decoded float32 (False)

    @property
    def slots(self) -> int: ...  # layers held at once (the next one prefetched when 2)

    def to_matrix(self, array: np.ndarray, stored: str, rows: int, cols: int) -> Any: ...

    def singular_values(self, matrix: Any) -> Optional[np.ndarray]: ...
