"""The SVD worker: turns one weight matrix into its singular values with torch, on the
CPU or a CUDA device. Two exact methods: ``"gram"`` (eigenvalues of the Gram matrix of
the smaller side, square-rooted; several times cheaper) and ``"svd"`` (full
``torch.linalg.svdvals``, the reference tool's way, kept for checking)."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _core

METHODS = ("gram", "svd")
#: Size of each of a GPU worker's two pinned host buffers that uploads go through.
STAGING_BYTES = 64 << 20
#: Elements of one block of rows converted at a time when forming a Gram matrix.
GRAM_BLOCK_ELEMENTS = 1 << 25
DTYPES = {"auto": torch.float32, "float32": torch.float32, "float64": torch.float64}
#: With ``dtype="auto"``, each float32 Gram eigenvalue is taken to be off by up to this
#: times the largest one (float32 storage of the Gram matrix alone perturbs them by about
#: 6e-8 times it; the SNR errors measured on random matrices with outliers correspond to
#: about 3e-8), and the SNR is computed again in float64 unless that perturbation moves it
#: by less than ``AUTO_FLOAT32_MAX_ERROR`` (SPEC §2 allows 1e-4).
FLOAT32_EIGEN_ERROR = 6e-8
AUTO_FLOAT32_MAX_ERROR = 5e-5
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


def float32_snr_error_bound(lam: np.ndarray, rows: int, cols: int) -> float:
    """How far the SNR can move if every Gram eigenvalue ``lam`` (ascending) is off by up to
    ``FLOAT32_EIGEN_ERROR`` times the largest: the relative spread of signal, noise and
    largest singular value over the perturbed spectra, or ``inf`` when a value could fall
    on either side of the threshold (then counting, not rounding, decides the SNR)."""
    top = float(lam[-1]) if lam.size else 0.0
    if not top > 0:
        return 0.0  # no spectrum: NaN whatever the precision
    delta = FLOAT32_EIGEN_ERROR * top
    mid = np.sqrt(np.clip(lam, 0, None))
    lo = np.sqrt(np.clip(lam - delta, 0, None))
    hi = np.sqrt(np.clip(lam + delta, 0, None))
    stats = [_core.spectrum_stats(np.ascontiguousarray(x), rows, cols) for x in (lo, mid, hi)]
    thresholds = [st[2] for st in stats]
    t_min, t_max = min(thresholds), max(thresholds)
    if np.any(~((lo > t_max) | (hi <= t_min))):
        return math.inf
    k = stats[1][4]  # signal values: the k largest
    n = lam.size

    def spread(a: float, b: float) -> float:
        return b / a if a > 0 else (1.0 if b == 0 else math.inf)

    signal = spread(lo[n - k:].sum(), hi[n - k:].sum()) if k else 1.0
    noise = spread(lo[: n - k].sum(), hi[: n - k].sum()) if k < n else 1.0
    return signal * noise * spread(lo[-1], hi[-1]) - 1.0


def plan_workers(device: Union[str, torch.device, None, Sequence[Union[str, torch.device]]]) -> Tuple[List[torch.device], Optional[int]]:
    """The workers' devices and the torch threads each should use (None: leave as is).
    A single CPU device gets one single-threaded worker per torch thread: most of the
    eigensolver is sequential, so two matrices at once on 2 cores took 0.74x (small) and
    0.91x (llama8b-layer) the time of one matrix with 2 threads (benches/results)."""
    devices = resolve_devices(device)
    threads = torch.get_num_threads()
    if isinstance(device, (list, tuple)) or len(devices) != 1 or devices[0].type != "cpu" or threads <= 1:
        return devices, None
    return devices * threads, 1


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Sets torch's intra-op threads and numpy's BLAS threads for the block (both are
    process-wide), then restores them."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


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
        self._staging: Optional[List[torch.Tensor]] = None
        self._staged: List[Optional["torch.cuda.Event"]] = [None, None]

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
        return self._upload(t)

    def _upload(self, t: torch.Tensor) -> "Matrix":
        """Copies a host tensor to the GPU through two fixed pinned staging buffers, chunk
        by chunk: pinned host memory stays at ``2 * STAGING_BYTES`` per worker whatever
        the tensor size, and the host copy of one chunk overlaps the transfer of the
        other. Returns once the last chunk is queued; ``ready`` marks its arrival."""
        if self._staging is None:
            self._staging = [torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            self._staged = [None, None]
        src = t.reshape(-1)
        dst = torch.empty(src.numel(), dtype=src.dtype, device=self.device)
        per_chunk = max(1, STAGING_BYTES // src.element_size())
        for k, start in enumerate(range(0, src.numel(), per_chunk)):
            n = min(per_chunk, src.numel() - start)
            slot = k % 2
            if self._staged[slot] is not None:
                self._staged[slot].synchronize()  # the copy out of this buffer is done
            buf = self._staging[slot][: n * src.element_size()].view(src.dtype)
            buf.copy_(src[start:start + n])
            with torch.cuda.stream(self._copy_stream):
                dst[start:start + n].copy_(buf, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._copy_stream)
            self._staged[slot] = done
        ready = torch.cuda.Event()
        ready.record(self._copy_stream)
        # The allocator must not reuse this memory before the compute stream is done.
        dst.record_stream(torch.cuda.current_stream(self.device))
        return Matrix(dst.reshape(t.shape), ready)

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
        if (self.dtype == "auto" and self._torch_dtype == torch.float32
                and not self._float32_suffices(lam, a.shape[0], a.shape[1])):
            lam = self.gram_eigenvalues(a, torch.float64)
        return lam.clamp_(min=0).sqrt_().to("cpu", torch.float64).numpy()

    @staticmethod
    def _float32_suffices(lam: torch.Tensor, rows: int, cols: int) -> bool:
        return float32_snr_error_bound(lam.to("cpu", torch.float64).numpy(), rows, cols) <= AUTO_FLOAT32_MAX_ERROR

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
        if a.device.type == "cpu":
            return torch.from_numpy(_cpu_gram(a, dtype, step))
        if rows <= step:
            b = a.to(dtype)
            return b.T @ b
        g = torch.zeros(cols, cols, dtype=dtype, device=a.device)
        for start in range(0, rows, step):
            b = a[start:start + step].to(dtype)
            g.addmm_(b.T, b)
        return g


def _cpu_gram(a: torch.Tensor, dtype: torch.dtype, step: int) -> np.ndarray:
    """``a.T @ a`` on the CPU through numpy, which recognises the product of a matrix
    with its own transpose and calls BLAS ``syrk`` (half the work of a general product;
    measured 1.9x faster than torch's GEMM on a 14336x4096 float32 matrix, see
    benches/results)."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    if a.dtype not in (torch.float32, torch.float64):
        a = a.to(dtype)  # bf16/f16 tensors have no numpy view
    src = a.numpy()
    g: Optional[np.ndarray] = None
    for start in range(0, src.shape[0], step):
        b = src[start:start + step].astype(np_dtype, copy=False)
        part = b.T @ b
        if g is None:
            g = part
        else:
            g += part
    if g is None:
        return np.zeros((src.shape[1], src.shape[1]), np_dtype)
    return g
