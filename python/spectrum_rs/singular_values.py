"""Which workers compute singular values, and how exact float32 is. Picks a worker per
device (:mod:`.numpy_worker` on the CPU, without importing torch; :mod:`.torch_worker`
on a GPU), sets the CPU's BLAS threads, and holds the a-posteriori bound that decides
when a float32 Gram matrix is exact enough for SPEC §2."""

from __future__ import annotations

import contextlib
import glob
import math
import os
import sys
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

try:
    from typing import Protocol
except ImportError:  # Python < 3.8
    Protocol = object  # type: ignore[assignment,misc]

import numpy as np

from . import _core

METHODS = ("gram", "svd")
DTYPES = ("auto", "float32", "float64")
#: Elements of one block of rows converted at a time when forming a Gram matrix.
GRAM_BLOCK_ELEMENTS = 1 << 25
#: With ``dtype="auto"``, each eigenvalue ``λ`` of a float32 Gram matrix is taken to be off
#: by up to ``FLOAT32_RELATIVE_ERROR * λ + max(FLOAT32_ABSOLUTE_ERROR * λmax, 2 * n)``,
#: where ``n`` is the most negative eigenvalue computed (a Gram matrix has none: its
#: size shows how far rounding spread the zero eigenvalues of a rank-deficient matrix).
#: The SNR is computed again from a float64 Gram matrix unless that perturbation moves it
#: by less than ``AUTO_MAX_ERROR`` (SPEC §2 allows 1e-4: half of it is kept as margin).
#: Measured on 80 matrices of 256..32000 x 1024..4096 with eight kinds of spectrum
#: (``python benches/calibrate_gram.py``, benches/results/gram-float32-error.md): large
#: eigenvalues moved by up to 6.6e-7 of their own value (heavy-tailed columns, whose long
#: sums of squares round the most), the bulk of a full-rank matrix by up to 1.6e-8 of the
#: largest, and the zero eigenvalues of rank-deficient ones (up to 1.2e-7 of the largest)
#: by no more than the most negative one. With this model 1 of all-MiniLM-L6-v2's 40
#: matrices takes the float64 route (5 with a uniform 1.5e-7 of the largest, 32 with 6e-7).
FLOAT32_RELATIVE_ERROR = 1.5e-6
FLOAT32_ABSOLUTE_ERROR = 4e-8
NEGATIVE_EVIDENCE = 2.0
#: The same for a float64 Gram matrix, scaled by the ratio of the two precisions. When
#: even that could move the SNR (most singular values zero or nearly: squaring them in the
#: Gram matrix buries them in rounding), ``"auto"`` takes a float64 SVD of the matrix.
PRECISION_RATIO = 2.0 ** -29
AUTO_MAX_ERROR = 5e-5

Device = Union[str, Any]  # "cpu", "cuda:1", or a torch.device


class Worker(Protocol):
    """What the pipeline needs of a worker (:class:`.numpy_worker.NumpyWorker`,
    :class:`.torch_worker.TorchWorker`)."""

    device: Any
    method: str
    dtype: str

    @property
    def wants_raw(self) -> bool: ...  # stored bytes (True) or decoded float32 (False)

    @property
    def slots(self) -> int: ...  # layers held at once (the next one prefetched when 2)

    def to_matrix(self, array: np.ndarray, stored: str, rows: int, cols: int) -> Any: ...

    def singular_values(self, matrix: Any) -> Optional[np.ndarray]: ...


def gpu_possible() -> bool:
    """False when no GPU torch could use can be present, judged without importing torch
    (over 500 MiB of resident memory): on Linux, no NVIDIA or AMD (ROCm) device files.
    Once torch is imported, or elsewhere than Linux, torch is asked."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return bool(os.path.exists("/dev/nvidiactl") or glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def _cuda_count() -> int:
    if not gpu_possible():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: Optional[Device]) -> str:
    """``"auto"`` (or None) is the first CUDA device when torch sees one, else the CPU."""
    if device is None or str(device) == "auto":
        return "cuda:0" if _cuda_count() else "cpu"
    text = str(device)
    if text == "cpu" or text.startswith("cpu:"):
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        if not _cuda_count():
            raise ValueError(f"device {text!r} was asked for, but torch sees no CUDA device")
        if text == "cuda":
            return "cuda:0"
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N ({e})") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {text!r} was asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return str(dev)


def resolve_devices(device: Union[Optional[Device], Sequence[Device]]) -> List[str]:
    """The devices to run workers on: ``"cuda"`` means every visible GPU, a list means
    those devices, anything else one device (see :func:`resolve_device`)."""
    if isinstance(device, (list, tuple)):
        if not device:
            raise ValueError("device list is empty")
        return [resolve_device(d) for d in device]
    if str(device) == "cuda":
        n = _cuda_count()
        if not n:
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
        return [f"cuda:{i}" for i in range(n)]
    return [resolve_device(device)]


def snr_error_bound(lam: np.ndarray, rows: int, cols: int, relative: float = FLOAT32_RELATIVE_ERROR,
                    absolute: float = FLOAT32_ABSOLUTE_ERROR) -> float:
    """How far the SNR can move if every Gram eigenvalue ``λ`` of ``lam`` (ascending) is off
    by up to ``relative * λ + absolute * λmax``: the relative spread of signal, noise and
    largest singular value over the perturbed spectra, or ``inf`` when a value could fall
    on either side of the threshold (then counting, not rounding, decides the SNR)."""
    top = float(lam[-1]) if lam.size else 0.0
    if not top > 0:
        return 0.0  # no spectrum: NaN whatever the precision
    delta = relative * np.abs(lam) + absolute * top
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



def gram_suffices(lam: np.ndarray, rows: int, cols: int, gram_dtype: str) -> bool:
    """Whether the eigenvalues ``lam`` of a Gram matrix formed in ``gram_dtype``
    (``"float32"`` or ``"float64"``) give the SNR within ``AUTO_MAX_ERROR``."""
    lam = np.asarray(lam, dtype=np.float64)
    return snr_error_bound(lam, rows, cols, *gram_error_model(lam, gram_dtype)) <= AUTO_MAX_ERROR


def gram_error_model(lam: np.ndarray, gram_dtype: str) -> Tuple[float, float]:
    """``(relative, absolute)`` for :func:`snr_error_bound`: how far rounding a Gram matrix
    to ``gram_dtype`` may have moved its eigenvalues ``lam`` (ascending)."""
    scale = 1.0 if gram_dtype == "float32" else PRECISION_RATIO
    top = float(lam[-1]) if lam.size else 0.0
    negative = max(0.0, -float(lam[0])) / top if lam.size and top > 0 else 0.0
    return FLOAT32_RELATIVE_ERROR * scale, max(FLOAT32_ABSOLUTE_ERROR * scale, NEGATIVE_EVIDENCE * negative)


def blas_threads() -> int:
    """The threads numpy's BLAS uses now (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
    or ``threadpoolctl`` limits set them), or the CPUs this process may run on."""
    from threadpoolctl import threadpool_info

    import numpy.linalg  # noqa: F401  (loads the BLAS library)

    counts = [int(lib.get("num_threads") or 0) for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if counts and max(counts) > 0:
        return max(counts)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_workers(device: Union[Optional[Device], Sequence[Device]]) -> Tuple[List[str], Optional[int]]:
    """The workers' devices and the BLAS threads each should use (None: leave as is).
    A single CPU device gets one single-threaded worker per BLAS thread: most of the
    eigensolver is sequential, so two matrices at once on 2 cores took 0.74x (small) and
    0.91x (llama8b-layer) the time of one matrix with 2 threads (benches/results)."""
    devices = resolve_devices(device)
    if isinstance(device, (list, tuple)) or devices != ["cpu"]:
        return devices, None
    threads = blas_threads()
    if threads <= 1:
        return devices, None
    return devices * threads, 1


@contextlib.contextmanager
def limit_blas_threads(n: Optional[int]) -> Iterator[None]:
    """Sets numpy's BLAS threads (process-wide) for the block, then restores them."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def check_method_dtype(method: str, dtype: str) -> None:
    """Raises ``ValueError`` for a method or dtype no worker knows."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def make_workers(devices: Sequence[str], method: str, dtype: str) -> List[Worker]:
    """One worker per device: numpy on the CPU, torch on a GPU."""
    workers: List[Worker] = []
    for d in devices:
        if d == "cpu":
            from .numpy_worker import NumpyWorker

            workers.append(NumpyWorker(method=method, dtype=dtype))
        else:
            from .torch_worker import TorchWorker

            workers.append(TorchWorker(device=d, method=method, dtype=dtype))
    return workers
