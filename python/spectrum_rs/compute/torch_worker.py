"""The GPU worker: singular values with torch on a CUDA device. It receives the stored
bf16/f16/f32 bytes, uploads them through two fixed pinned buffers on its own copy stream
(the next layer's transfer overlaps this layer's compute) and converts them on the
device. It also runs on torch's CPU device, which is how its paths are tested on
machines without a GPU; scans on the CPU use :mod:`.numpy_worker`."""

from __future__ import annotations

import math
from typing import List, Optional, Union

import numpy as np
import torch

from ..options import check_method_dtype
from .base import GRAM_BLOCK_ELEMENTS, OutOfRange, gram_in_range, scale_exponent
from .precision import gram_suffices

#: Size of each of a GPU worker's two pinned host buffers that uploads go through.
STAGING_BYTES = 64 << 20
_TORCH_DTYPES = {"auto": torch.float32, "float32": torch.float32, "float64": torch.float64}
# Stored dtypes that arrive as raw bytes and are converted on the device.
_RAW = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


class Matrix:
    """A matrix on a worker's device and, on a GPU, the event that marks its upload done."""

    __slots__ = ("tensor", "ready")

    def __init__(self, tensor: torch.Tensor, ready: Optional[torch.cuda.Event]) -> None:
        self.tensor = tensor
        self.ready = ready


class TorchWorker:
    """Computes singular values of matrices on one torch device with one method and dtype."""

    def __init__(self, device: Union[str, torch.device] = "cuda", method: str = "gram", dtype: str = "auto") -> None:
        check_method_dtype(method, dtype)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for, but torch sees no CUDA device")
        self.method = method
        self.dtype = dtype
        self._torch_dtype = _TORCH_DTYPES[dtype]
        # Uploads run on their own stream so the next layer's copy overlaps this compute.
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.forced_fallback = False
        self._staging: Optional[List[torch.Tensor]] = None
        self._staged: List[Optional[torch.cuda.Event]] = [None, None]

    @property
    def slots(self) -> int:
        """Layers held at once: on a GPU the next one uploads while this one computes."""
        return 2 if self.device.type == "cuda" else 1

    @property
    def wants_raw(self) -> bool:
        """On CUDA the stored bytes travel (half the size of float32) and are decoded there."""
        return self.device.type == "cuda"

    def to_matrix(self, array: np.ndarray, stored: str, rows: int, cols: int) -> Matrix:
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

    def _upload(self, t: torch.Tensor) -> Matrix:
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
            pending = self._staged[slot]
            if pending is not None:
                pending.synchronize()  # the copy out of this buffer is done
            buf = self._staging[slot][: n * src.element_size()].view(src.dtype)
            buf.copy_(src[start : start + n])
            with torch.cuda.stream(self._copy_stream):
                dst[start : start + n].copy_(buf, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._copy_stream)
            self._staged[slot] = done
        ready = torch.cuda.Event()
        ready.record(self._copy_stream)
        # The allocator must not reuse this memory before the compute stream is done.
        dst.record_stream(torch.cuda.current_stream(self.device))
        return Matrix(dst.reshape(t.shape), ready)

    def singular_values(self, m: Union[Matrix, torch.Tensor]) -> Optional[np.ndarray]:
        """All singular values of a matrix (any order) as float64 numpy, or ``None`` when
        the matrix holds NaN or Inf values. A matrix whose Gram matrix (or float32 SVD)
        would overflow or underflow is computed scaled by a power of two
        (:data:`.base.GRAM_RANGE`). A forced ``dtype`` whose Gram matrix fails the
        precision bound of docs/method.md §2.9 is computed by a float64 SVD instead
        (``forced_fallback``), as on the CPU."""
        self.forced_fallback = False
        if isinstance(m, torch.Tensor):
            m = Matrix(m, None)
        if m.tensor.numel() == 0:
            return np.zeros(0)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                if m.ready is not None:
                    torch.cuda.current_stream(self.device).wait_event(m.ready)
                return self._scaled_values(m.tensor)
        return self._scaled_values(m.tensor)

    def _scaled_values(self, w: torch.Tensor) -> Optional[np.ndarray]:
        a = w.T if w.shape[0] < w.shape[1] else w  # tall: both methods work on the smaller side
        try:
            return self._singular_values(a)
        except OutOfRange:
            pass
        low, high = torch.aminmax(a)
        top = max(float(high), -float(low))
        if not math.isfinite(top):
            return None
        if top == 0:
            return np.zeros(min(a.shape))
        k = scale_exponent(top)
        try:
            s = self._singular_values(_ldexp(a, k))  # exact: a power of two
        except OutOfRange:  # the largest value is now in [0.5, 1): cannot happen
            raise AssertionError("a matrix scaled to a largest value of 1 left the Gram range") from None
        return None if s is None else np.ldexp(s, -k)

    def _singular_values(self, a: torch.Tensor) -> Optional[np.ndarray]:
        """The values of tall ``a`` by this worker's method and dtype; raises
        :class:`OutOfRange` when its Gram matrix (or a float32 SVD) would not fit."""
        if self.method == "svd":
            if self._torch_dtype == torch.float32:
                # float32 SVD sums squares too: keep its input in the float32 Gram range.
                low, high = torch.aminmax(a)
                top = max(float(high), -float(low))
                if not math.isfinite(top) or (top > 0 and not gram_in_range(top * top, "float32")):
                    raise OutOfRange
            elif not bool(torch.isfinite(a).all()):
                return None
            # float32 singular values carry an absolute error of about eps32 * S[0]:
            # inside the bound for any spectrum (this is the reference's own precision).
            s = torch.linalg.svdvals(a.to(self._torch_dtype))
            return s.to("cpu", torch.float64).numpy()
        gram_dtype = "float64" if self.dtype == "float64" else "float32"
        lam = self.gram_eigenvalues(a, self._torch_dtype)
        if lam is None:
            raise OutOfRange
        host = lam.cpu().numpy()
        if not gram_in_range(float(host[-1]), gram_dtype):
            raise OutOfRange
        if self.dtype == "auto":
            # float32 Gram -> float64 Gram -> float64 SVD, each only where the one before
            # could move the SNR by the bound or more.
            if not gram_suffices(host, a.shape[0], a.shape[1], "float32"):
                lam = self.gram_eigenvalues(a, torch.float64)
                assert lam is not None  # finite in float32, finite in float64
                if not gram_suffices(lam.cpu().numpy(), a.shape[0], a.shape[1], "float64"):
                    return torch.linalg.svdvals(a.to(torch.float64)).cpu().numpy()
        elif not gram_suffices(host, a.shape[0], a.shape[1], gram_dtype):
            self.forced_fallback = True
            return torch.linalg.svdvals(a.to(torch.float64)).cpu().numpy()
        return lam.clamp_(min=0).sqrt_().to("cpu", torch.float64).numpy()

    def gram_eigenvalues(self, a: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Eigenvalues (ascending, float64) of the Gram matrix of tall ``a`` formed in
        ``dtype``, or None when ``a`` holds NaN or Inf. The eigensolver runs in float64
        whatever the Gram's dtype: a float32 eigensolver (MKL, OpenBLAS) was measured off
        by up to 2.6e-5 times the largest eigenvalue on a 4096x4096 Gram matrix, enough to
        move a value across the noise threshold, which float32 rounding of the Gram matrix
        itself (7e-8) does not (benches/results)."""
        gram = self.gram(a, dtype)
        # Every element of the matrix is in a diagonal sum of squares: one NaN or Inf
        # anywhere shows there, without a pass over the whole matrix.
        if not bool(torch.isfinite(torch.diagonal(gram)).all()):
            return None
        return torch.linalg.eigvalsh(gram.to(torch.float64))

    def gram(self, a: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``a.T @ a`` in ``dtype``, accumulated over blocks of rows so that a tall matrix
        (an embedding) is never copied whole into the wider dtype."""
        dtype = dtype or self._torch_dtype
        rows, cols = a.shape
        step = max(1024, GRAM_BLOCK_ELEMENTS // max(cols, 1))
        if rows <= step:
            b = a.to(dtype)
            return b.T @ b
        g = torch.zeros(cols, cols, dtype=dtype, device=a.device)
        for start in range(0, rows, step):
            b = a[start : start + step].to(dtype)
            g.addmm_(b.T, b)
        return g


def _ldexp(a: torch.Tensor, k: int) -> torch.Tensor:
    """``a * 2**k``, exactly, in ``a``'s dtype: in two factors, each a normal float32
    (torch rounds a Python scalar to the tensor's dtype, and 2**149 is no float32)."""
    half = k // 2
    return (a * 2.0**half) * 2.0 ** (k - half)
