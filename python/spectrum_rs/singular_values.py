"""The SVD worker: turns one weight matrix into its singular values with torch, on the
CPU or a CUDA device. Two exact methods: ``"gram"`` (eigenvalues of the Gram matrix of
the smaller side, square-rooted; several times cheaper) and ``"svd"`` (full
``torch.linalg.svdvals``, the reference tool's way, kept for checking)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch

METHODS = ("gram", "svd")
#: Elements of one block of rows converted at a time when forming a Gram matrix.
GRAM_BLOCK_ELEMENTS = 1 << 25
DTYPES = {"auto": torch.float32, "float32": torch.float32, "float64": torch.float64}
#: With ``dtype="auto"``, a float32 Gram spectrum whose largest eigenvalue exceeds its
#: median by more than this is computed again in float64. Float32 storage of the Gram
#: matrix perturbs every eigenvalue by about eps32 * largest, so the SNR error grows with
#: this ratio: measured at most 1.6e-8 per unit of it (random matrices with 1-4 outlier
#: directions, 128..1024 x 256..4096), i.e. under 2e-5 at the cut, five times inside
#: SPEC's 1e-4. Real layers sit far below it (all-MiniLM-L6-v2: 6..50, except its
#: position embeddings at 4000, which fall back).
AUTO_FLOAT32_MAX_SPREAD = 1000.0
# Stored dtypes that arrive as raw bytes and are converted on the device.
_RAW = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``"auto"`` (or None) is the first CUDA device when torch sees one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device")
    return dev


class Matrix:
    """A matrix on a worker's device and, on a GPU, the event that marks its upload done."""

    __slots__ = ("tensor", "ready")

    def __init__(self, tensor: torch.Tensor, ready: Optional["torch.cuda.Event"]) -> None:
        self.tensor = tensor
        self.ready = ready


def resolve_devices(device: Union[str, torch.device, None, Sequence[Union[str, torch.device]]]) -> List[torch.device]:
    """The devices to run workers on: ``"cuda"`` means every visible GPU, a list means
    those devices, anything else one device (see :func:`resolve_device`)."""
    if isinstance(device, (list, tuple)):
        if not device:
            raise ValueError("device list is empty")
        return [resolve_device(d) for d in device]
    if str(device) == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [resolve_device(device)]


class SingularValueWorker:
    """Computes singular values of matrices on one device with one method and dtype."""

    def __init__(self, device: Union[str, torch.device, None] = "auto", method: str = "gram",
                 dtype: str = "auto") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        self.device = resolve_device(device)
        self.method = method
        self.dtype = dtype
        self._torch_dtype = DTYPES[dtype]
        # Uploads run on their own stream so the next layer's copy overlaps this compute.
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def wants_raw(self) -> bool:
        """On CUDA the stored bytes travel (half the size of float32) and are decoded there."""
        return self.device.type == "cuda"

    def to_matrix(self, array: np.ndarray, stored: str, rows: int, cols: int) -> "Matrix":
        """The streamed payload as a ``rows x cols`` tensor on this worker's device. On a
        GPU the copy is only queued (on the copy stream); ``singular_values`` waits for it."""
        t = torch.from_numpy(array)
        if stored != "F32" or t.dim() == 1:
            # Raw little-endian bytes of the stored dtype.
            t = t.view(_RAW[stored]) if stored in _RAW else t
            t = t.reshape(rows, cols)
        if self._copy_stream is None:
            return Matrix(t, None)
        staged = t.pin_memory()  # one bounded staging buffer per layer in flight
        with torch.cuda.stream(self._copy_stream):
            t = staged.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        # The allocator must not reuse this memory before the compute stream is done.
        t.record_stream(torch.cuda.current_stream(self.device))
        return Matrix(t, ready)

    def singular_values(self, m: Union["Matrix", torch.Tensor]) -> Optional[np.ndarray]:
        """All singular values of a matrix (any order) as float64 numpy, or ``None`` when
        the matrix holds NaN or Inf values."""
        if isinstance(m, torch.Tensor):
            m = Matrix(m, None)
        if m.tensor.numel() == 0:
            return np.zeros(0)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                if m.ready is not None:
                    torch.cuda.current_stream(self.device).wait_event(m.ready)
                return self._singular_values(m.tensor)
        return self._singular_values(m.tensor)

    def _singular_values(self, w: torch.Tensor) -> Optional[np.ndarray]:
        a = w.T if w.shape[0] < w.shape[1] else w  # tall: both methods work on the smaller side
        if self.method == "svd":
            if not bool(torch.isfinite(a).all()):
                return None
            # float32 singular values carry an absolute error of about eps32 * S[0]:
            # inside the bound for any spectrum (this is the reference's own precision).
            s = torch.linalg.svdvals(a.to(self._torch_dtype))
            return s.to("cpu", torch.float64).numpy()
        lam = self.gram_eigenvalues(a, self._torch_dtype)
        if lam is None:
            return None
        if self.dtype == "auto" and self._torch_dtype == torch.float32 and not self._float32_suffices(lam):
            lam = self.gram_eigenvalues(a, torch.float64)
        return lam.clamp_(min=0).sqrt_().to("cpu", torch.float64).numpy()

    @staticmethod
    def _float32_suffices(lam: torch.Tensor) -> bool:
        top = float(lam[-1])  # eigvalsh sorts ascending
        median = float(lam[(lam.numel() - 1) // 2])
        return median > 0 and top / median <= AUTO_FLOAT32_MAX_SPREAD

    def gram_eigenvalues(self, a: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Eigenvalues (ascending) of the Gram matrix of tall ``a`` in ``dtype``, or None
        when ``a`` holds NaN or Inf."""
        gram = self.gram(a, dtype)
        # Every element of the matrix is in a diagonal sum of squares: one NaN or Inf
        # anywhere shows there, without a pass over the whole matrix.
        if not bool(torch.isfinite(torch.diagonal(gram)).all()):
            return None
        return torch.linalg.eigvalsh(gram)

    def gram(self, a: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``a.T @ a`` in this worker's dtype, accumulated over blocks of rows so that a
        tall matrix (an embedding) is never copied whole into the wider dtype."""
        dtype = dtype or self._torch_dtype
        rows, cols = a.shape
        step = max(1024, GRAM_BLOCK_ELEMENTS // max(cols, 1))
        if rows <= step:
            b = a.to(dtype)
            return b.T @ b
        g = torch.zeros(cols, cols, dtype=dtype, device=a.device)
        for start in range(0, rows, step):
            b = a[start:start + step].to(dtype)
            g.addmm_(b.T, b)
        return g
