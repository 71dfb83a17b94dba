"""Which worker runs where: device strings resolved (without importing torch on a machine
that cannot have a GPU), one worker per device, and the CPU's BLAS thread plan (one
single-threaded worker per BLAS thread)."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import sys
import warnings
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

from .base import Worker

Device = Union[str, Any]  # "cpu", "cuda:1", or a torch.device


def gpu_possible() -> bool:
    """False when no GPU torch could use can be present, judged without importing torch
    (over 500 MiB of resident memory): on Linux, no NVIDIA or AMD (ROCm) device files.
    Once torch is imported, or elsewhere than Linux, torch is asked."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return bool(os.path.exists("/dev/nvidiactl") or glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


#: What a user is told to run when a GPU scan needs torch and it is missing.
TORCH_HINT = "pip install torch (or the extra: pip install 'spectrum-rs[torch]', or '.[torch]' from a checkout)"
_DEVICE = re.compile(r"^(auto|cpu|cuda)(:(\d+))?$")
_warned_no_torch = False


def _torch_installed() -> bool:
    if sys.modules.get("torch") is not None:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def _cuda_count(asked: Optional[str] = None) -> int:
    """CUDA devices torch sees. ``asked``: the device the user asked for, when they asked
    for a GPU (then a missing torch is an error that says how to install it); for
    ``"auto"``, a machine with a GPU but no torch is told once and scans on the CPU."""
    global _warned_no_torch
    if asked is not None and not _torch_installed():
        raise ValueError(f"device {asked!r} needs torch, which is not installed: {TORCH_HINT}")
    if not gpu_possible():
        return 0
    if not _torch_installed():
        if not _warned_no_torch:
            _warned_no_torch = True
            warnings.warn(
                f"this machine has a GPU, but torch is not installed, so the scan runs on the CPU; "
                f"to scan on the GPU: {TORCH_HINT}",
                RuntimeWarning,
                stacklevel=4,
            )
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _parse(device: Device) -> Tuple[str, Optional[int]]:
    """``(kind, index)`` of a device string or ``torch.device``, checked without torch."""
    text = str(device).strip()
    m = _DEVICE.match(text)
    if m is None or (m.group(1) == "auto" and m.group(2)):
        raise ValueError(f"unknown device {text!r}: expected 'auto', 'cpu', 'cuda' (every GPU) or 'cuda:N'")
    return m.group(1), None if m.group(3) is None else int(m.group(3))


def resolve_device(device: Optional[Device]) -> str:
    """``"auto"`` (or None) is the first CUDA device when torch sees one, else the CPU;
    ``"cpu"``; ``"cuda"`` the first GPU; ``"cuda:N"`` that GPU, which must exist."""
    kind, index = ("auto", None) if device is None else _parse(device)
    if kind == "auto":
        return "cuda:0" if _cuda_count() else "cpu"
    if kind == "cpu":
        return "cpu"
    text = str(device)
    n = _cuda_count(text)
    if not n:
        raise ValueError(f"device {text!r} was asked for, but torch sees no CUDA device")
    if index is not None and index >= n:
        raise ValueError(f"device {text!r} was asked for, but torch sees {n} CUDA device(s)")
    return f"cuda:{index or 0}"


def resolve_devices(device: Union[Optional[Device], Sequence[Device]]) -> List[str]:
    """The devices to run workers on: ``"cuda"`` means every visible GPU, a list means
    those devices, anything else one device (see :func:`resolve_device`)."""
    if isinstance(device, (list, tuple)):
        if not device:
            raise ValueError("device list is empty")
        return [resolve_device(d) for d in device]
    if device is not None and _parse(device) == ("cuda", None):
        n = _cuda_count("cuda")
        if not n:
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
        return [f"cuda:{i}" for i in range(n)]
    return [resolve_device(device)]


def blas_threads() -> int:
    """The threads numpy's BLAS uses now (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
    or ``threadpoolctl`` limits set them), or the CPUs this process may run on."""
    import numpy.linalg  # noqa: F401  (loads the BLAS library)
    from threadpoolctl import threadpool_info

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
