"""What the pipeline needs of a worker: the :class:`Worker` protocol, and the constants both
workers share."""

from __future__ import annotations

from typing import Any, Optional, Protocol

import numpy as np

#: Elements of one block of rows converted at a time when forming a Gram matrix.
GRAM_BLOCK_ELEMENTS = 1 << 25


class Worker(Protocol):
    """A worker computes singular values on one device with one method and dtype
    (:class:`.numpy_worker.NumpyWorker`, :class:`.torch_worker.TorchWorker`)."""

    device: Any
    method: str
    dtype: str

    @property
    def wants_raw(self) -> bool: ...  # stored bytes (True) or decoded float32 (False)

    @property
    def slots(self) -> int: ...  # layers held at once (the next one prefetched when 2)

    def to_matrix(self, array: np.ndarray, stored: str, rows: int, cols: int) -> Any: ...

    def singular_values(self, matrix: Any) -> Optional[np.ndarray]: ...
