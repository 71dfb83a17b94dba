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
import threading
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


def parse_device(device: Device) -> Tuple[str, Optional[int]]:
    """``(kind, index)`` of a device string or ``torch.device``, checked without torch."""
    text = str(device).strip()
    m = _DEVICE.match(text)
    if m is None or (m.group(1) == "auto" and m.group(2)):
        raise ValueError(f"unknown device {text!r}: expected 'auto', 'cpu', 'cuda' (every GPU) or 'cuda:N'")
    return m.group(1), None if m.group(3) is None else int(m.group(3))


def resolve_device(device: Optional[Device]) -> str:
    """``"auto"`` (or None) is the first CUDA device when torch sees one, else the CPU;
    ``"cpu"``; ``"cuda"`` the first GPU; ``"cuda:N"`` that GPU, which must exist."""
    kind, index = ("auto", None) if device is None else parse_device(device)
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
    if device is not None and parse_device(device) == ("cuda", None):
        n = _cuda_count("cuda")
        if not n:
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
        return [f"cuda:{i}" for i in range(n)]
    return [resolve_device(device)]


def blas_threads() -> int:
    """The threads numpy's BLAS uses outside a scan (``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS`` or ``threadpoolctl`` limits set them), or the CPUs this
    process may run on. While scans hold :func:`limit_blas_threads`, the count from before
    the first of them: a scan planned beside another plans the same workers as alone."""
    with _blas_lock:
        if _blas_users:
            return _blas_outside
        return _live_blas_threads()


def _live_blas_threads() -> int:
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
    """The workers' devices and the BLAS threads each CPU worker uses (None: leave them).
    A single CPU device gets one single-threaded worker per BLAS thread: most of the
    eigensolver is sequential, so two matrices at once on 2 cores took 0.74x (small) and
    0.91x (llama8b-layer) the time of one matrix with 2 threads (benches/results). A list
    gets the workers it names, CPU ones on one thread too: OpenBLAS sums in another order
    on more threads (benches/results/schedule-2026-12-01.md), and every plan is to give
    the numbers of every other."""
    devices = resolve_devices(device)
    if "cpu" not in devices:
        return devices, None
    threads = blas_threads()
    if threads <= 1:
        return devices, None
    if isinstance(device, (list, tuple)) or devices != ["cpu"]:
        return devices, 1
    return devices * threads, 1


# numpy's BLAS threads are process-wide: scans in several threads share one limit, set by
# the first to enter and restored by the last to leave (restoring each scan's own view of
# "before" would leave the process at one thread, or lift the limit under a scan still
# running, whose numbers would then depend on the other scan).
_blas_lock = threading.Lock()
_blas_users = 0
_blas_outside = 1
_blas_saved: List[Tuple[Any, int]] = []


@contextlib.contextmanager
def limit_blas_threads(n: Optional[int]) -> Iterator[None]:
    """Sets numpy's BLAS threads (process-wide) for the block, then restores them. Blocks
    running at once in several threads share one limit, reference-counted: the first sets
    it (to its ``n``; the plan gives every CPU scan the same), the last restores what was
    there before the first. ``n`` None: leave the threads as they are."""
    global _blas_users, _blas_outside, _blas_saved
    if n is None:
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_outside = _live_blas_threads()
            libs = _blas_libraries()
            _blas_saved = [(lib, lib.get_num_threads()) for lib in libs]
            for lib in libs:
                _set_threads(lib, n)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                saved, _blas_saved = _blas_saved, []
                for lib, threads in saved:
                    _set_threads(lib, threads)


def _blas_libraries() -> List[Any]:
    import numpy.linalg  # noqa: F401  (loads the BLAS library)
    from threadpoolctl import ThreadpoolController

    return list(ThreadpoolController().select(user_api="blas").lib_controllers)


def _set_threads(lib: Any, n: Optional[int]) -> None:
    """Sets one BLAS library's threads from whatever thread this is. threadpoolctl (3.6
    on) ignores an OpenBLAS limit set from any thread but the first to have set one while
    that thread lives: a scan called from another thread would then compute with every
    BLAS thread in each of its workers (other numbers than the same scan from the main
    thread, and oversubscribed cores), and could not restore the threads it found. The
    limit here is shared and reference-counted, so it is set directly."""
    if n is None:
        return
    setter = getattr(lib, "_real_set_num_threads", None) or lib.set_num_threads
    setter(n)


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
