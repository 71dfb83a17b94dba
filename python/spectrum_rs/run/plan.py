"""``spectrum-rs plan``: what a scan will cost, from the safetensors headers alone (no weight
byte is read). It owns the cost model of a scan (the work of each layer's singular values,
the time of this machine's kernels for it, the reader, the workers' schedule, the peak
host memory), the short calibration of the kernels behind it and its cache
(``calibration.json``), and the plan's report (a table per type, a total block, or JSON).

The model follows the scan as docs/method.md describes it: §2.8-§2.9 for the work of one
layer (a float32 Gram matrix of the smaller side by BLAS ``syrk``, float64 eigenvalues),
§5.1 for the reader (file order, the read-ahead window), §5.2 for the workers (on the CPU
one single-threaded worker per BLAS thread, each holding one layer), §5.3 for what is held
when."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import mmap
import os
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .. import _core
from ..compute.base import GRAM_BLOCK_ELEMENTS
from ..compute.lapack import TWO_STAGE_FROM
from ..errors import SpectrumError
from ..model.config import attention_heads, fp8_scale_block, model_type, quant_method, read_config
from ..model.layouts import HEAD, tied_head_source
from ..model.source import looks_like_repo_id, resolve_model
from ..options import DEFAULT_WINDOW_BYTES, GROUP_BY, as_list, check_choice
from .schedule import read_order

#: Version of the JSON that ``plan(...)`` returns (``"schema"``); a change of its keys
#: raises it.
SCHEMA_VERSION = 1
#: Version of the calibration's measurements; a change of what is measured raises it, so
#: that older cached calibrations are measured again.
CALIBRATION_VERSION = 3
#: Disk read rate assumed for model bytes that are not in the page cache when no rate is
#: stated (``--read-mib-s``): a guess (a local SSD or a fast network filesystem), said so
#: in the report.
ASSUMED_DISK_BYTES_PER_S = 1 << 30

# The calibration's sizes, about 3 s in all on an idle core: Gram matrices ``(rows, m)``
# (above the largest ``m`` at the rate measured there), eigensolvers of ``n x n`` matrices,
# each routine on sizes it serves (above them, see ``_CpuModel.eig_seconds``).
_GRAM32_SIZES = ((1024, 256), (2048, 512), (4096, 1024), (4096, 2048))
_GRAM64_SIZES = ((2048, 512), (2048, 1024))
_EIG_NUMPY_SIZES = (256, 512, 1024)
_EIG_TWO_STAGE_SIZES = (1536, 2048)  # the two-stage routine called directly below 2048
_DECODE_TENSORS = (8, 1024, 1024)  # BF16 tensors of the reader's calibration file: count, rows, cols
_GPU_GRAM_SIZES = ((8192, 2048), (16384, 4096))
_GPU_EIG_SIZES = (1024, 2048, 4096)
_GPU_UPLOAD_BYTES = 256 << 20

#: The GPU model used when no GPU is here to calibrate on ("uncalibrated"): rough figures
#: for an H100/H200-class GPU, not measured by this project (no GPU run has been made yet,
#: README "Speed and memory"). Gram: the full product ``2 max min^2`` flops in float32
#: (TF32 off, as torch's default); eigenvalues: cuSOLVER ``syevd`` in float64 taken as
#: ``(4/3) n^3`` flops at the rate below plus a fixed latency; upload: the stored bytes
#: through the worker's pinned buffers; host memory and start-up: the interpreter with
#: torch imported (over 500 MiB, README "Install"; importing torch and starting CUDA takes
#: seconds).
GPU_ROUGH: Dict[str, float] = {
    "gram_flops_per_s": 20e12,
    "eig_flops_per_s": 3e11,
    "eig_latency_s": 3e-3,
    "upload_bytes_per_s": 10e9,
    "layer_overhead_s": 2e-3,
    "baseline_rss_bytes": 600 << 20,
    "startup_s": 5.0,
}
#: Host bytes a GPU worker holds besides its layers: two pinned staging buffers of 64 MiB
#: (``compute.torch_worker.STAGING_BYTES``).
GPU_STAGING_BYTES = 2 * (64 << 20)
#: A CPU worker that is given several BLAS threads (a device list naming ``cpu``) is taken
#: to run this fraction of ``threads`` times faster than one thread: rough, uncalibrated
#: (one matrix at a time with both threads took 1.58x the time of two single-threaded
#: matrices at once on `small`, 1.0x on `llama8b-layer`: benches/results/cpu-2026-11-28-a386dd7.md).
MULTI_THREAD_EFFICIENCY = 0.7

#: The route ``dtype="auto"`` takes first, and the one the plan predicts for every matrix
#: (docs/method.md §2.9): which matrices need the float64 Gram matrix only their spectrum tells.
ROUTE = "float32 Gram, float64 eigenvalues"

PathLike = Union[str, "os.PathLike[str]"]


# =========================================================================== the plan


def plan(
    model: Union[PathLike, Sequence[PathLike]],
    *,
    device: Union[str, Sequence[str]] = "auto",
    types: Union[None, str, Iterable[str]] = None,
    exclude: Union[None, str, Iterable[str]] = None,
    include_1d: bool = False,
    group_experts: bool = False,
    group_by: str = "type",
    split_fused: bool = False,
    max_experts: Optional[int] = None,
    max_layers: Optional[int] = None,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    read_bytes_per_s: Optional[float] = None,
    recalibrate: bool = False,
    on_calibrate: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """What ``scan(model, device=..., types=..., exclude=...)`` will cost, from the headers
    alone: no weight byte is read (the page cache is asked, with ``mincore``, which bytes
    are already in memory; that reads nothing). A Hugging Face id is looked up in the
    local cache only. The kernels' speed comes from a calibration of this machine, made
    once (a few seconds) and cached in ``calibration.json`` under ``$SPECTRUM_RS_CACHE``
    (default ``$XDG_CACHE_HOME/spectrum-rs``, i.e. ``~/.cache/spectrum-rs``), keyed by the
    machine, the BLAS and the thread plan; ``recalibrate`` measures again. For a GPU that
    is not here, a rough model is used and the plan says ``"uncalibrated"``.

    Args:
        model: as for ``scan``: a folder, a file, an index, a list of files, or a cached id.
        device: as for ``scan`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a list).
        types, exclude, include_1d, group_experts, group_by, split_fused, max_experts,
            max_layers: the layers and their types, as for ``scan``.
        window_bytes: the read-ahead window (``--window-mb``).
        read_bytes_per_s: disk read rate for bytes not in the page cache (stated); None:
            ``ASSUMED_DISK_BYTES_PER_S``, reported as assumed.
        recalibrate: measure the kernels again even when a cached calibration fits.
        on_calibrate: called with a message before a calibration runs.

    Returns:
        A JSON-serialisable dict, the stable schema of ``spectrum-rs plan --json``
        (``schema`` = ``SCHEMA_VERSION``; sizes in bytes, times in seconds, work in
        floating-point operations)::

            schema: 1
            model: the model as given; files: [the safetensors files]
            prediction: "a prediction from headers and a calibration, not a measurement"
            layers: [{name, type, rows, cols, dtype, stored_bytes, decoded_bytes,
                      gram_flops, eig_flops, route, eigensolver, seconds,
                      float64_gram_extra_seconds, read_seconds, cached_bytes}]
                      (model order; ``seconds``: on one worker, the route ``auto`` will
                      likely take; ``float64_gram_extra_seconds``: added when ``auto``
                      forms the Gram matrix again in float64)
            types: [{type, layers, shapes: [[rows, cols], ...], stored_bytes, gram_flops,
                     eig_flops, seconds}]  (sorted by type)
            tied_head: null, or {name, source}: a tied lm_head, reported with its source's numbers
            device: {requested, kind ("cpu" | "cuda" | "mixed"), workers: [device, ...],
                     threads_per_worker, cores, calibrated (bool), calibration ("measured now"
                     | "cached" | "uncalibrated"), calibration_file, calibration_created,
                     eigensolver, load_average (1, 5, 15 min, now)}
            read: {stored_bytes, decoded_bytes, cached_bytes (in the page cache now),
                   reader_float32_bytes_per_s (measured: the reader from the page cache),
                   disk_bytes_per_s (for the rest), disk_rate ("stated" | "assumed"), seconds}
            time: {kernel_seconds (sum over the layers, one worker each), wall_seconds
                   (the predicted duration of scan()), stream_order_seconds (the workers
                   taking layers in file order, as the reader streams them, with the
                   window), largest_first_seconds (list scheduling, largest first, no
                   reader), floor_seconds (kernel_seconds / workers), cpu_seconds (the
                   CPU time of the CPU workers' kernels and the reader's decoding),
                   cpu_bound_seconds (cpu_seconds over the cores),
                   startup_seconds (a fresh process importing spectrum_rs),
                   all_float64_gram_seconds (wall time if every matrix took the float64 Gram)}
            memory: {peak_bytes (predicted peak resident memory: a simulation of the
                     stream), bound_bytes (baseline + window + each worker's largest layer
                     with its Gram matrices), baseline_bytes (measured after import
                     spectrum_rs), window_bytes, per_worker_bytes: [...], largest_layer_bytes}
            notes: [strings]
    """
    paths = _resolve(model)
    config = read_config(_model_folder(paths))
    # The catalog as scan() opens it (scan.py _plan), so that the layers are the scan's.
    caps = {k: v for k, v in (("max_experts", max_experts), ("max_layers", max_layers)) if v is not None}
    catalog = _core.Catalog(
        paths,
        scale_block=fp8_scale_block(config),
        group_experts=bool(group_experts),
        group_by=check_choice("group_by", group_by, GROUP_BY),
        split_fused=bool(split_fused),
        model_type=model_type(config),
        quant_method=quant_method(config),
        attention_heads=attention_heads(config),
        **caps,
    )
    infos = catalog.layers()
    type_list, exclude_list = as_list(types), as_list(exclude)
    chosen = catalog.select(type_list, exclude_list, include_1d)
    tied = _tied_head(config, infos, type_list, exclude_list)
    if tied is not None and tied[1] not in chosen:
        chosen = sorted(chosen + [tied[1]])
    if not chosen:
        raise SpectrumError(
            f"{paths[0]}: no layer matches the requested types (types={type_list or 'all'}, exclude={exclude_list})"
        )
    files = [f for f, _, _ in catalog.files()]
    work = _layer_work(infos, chosen, files)
    workers = _workers(device)
    models: Dict[str, _KindModel] = {}
    cal_meta: Dict[str, Any] = {}
    for kind in sorted({w.kind for w in workers}):
        models[kind], meta = _kind_model(kind, workers, recalibrate, on_calibrate)
        cal_meta[kind] = meta
    return _assemble(model, files, work, infos, tied, workers, models, cal_meta, device, window_bytes, read_bytes_per_s)


def _resolve(model: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """The model's files, never downloading: a local path, or an id in the local cache."""
    if not isinstance(model, (str, os.PathLike)):
        paths = [os.fspath(p) for p in model]
        if not paths:
            raise SpectrumError("no model path given")
        return paths
    spec = os.fspath(model)
    try:
        return [os.fspath(resolve_model(spec, download=False))]
    except SpectrumError as e:
        if Path(spec).expanduser().exists() or not looks_like_repo_id(spec):
            raise
        text = str(e).replace(
            "downloading is disabled (--no-download)",
            "plan reads local files only (`spectrum-rs scan` downloads a model id)",
        )
        raise SpectrumError(text) from None


def _model_folder(paths: List[str]) -> Path:
    first = Path(paths[0])
    return first if first.is_dir() else first.parent


def _tied_head(
    config: Dict[str, Any], infos: List[_core.LayerInfo], types: List[str], exclude: List[str]
) -> Optional[Tuple[str, int]]:
    """(``lm_head``, index of its source) for a tied head the scan reports (docs/method.md
    §1.6): it costs nothing of its own, but its source is computed even when its type was
    not asked for."""
    source = tied_head_source(config, [i.name for i in infos], types, exclude)
    return None if source is None else (HEAD, source)


# --------------------------------------------------------------------------- layers


@dataclasses.dataclass
class LayerWork:
    """One layer to compute: its shape, its bytes and where the reader finds them."""

    index: int
    name: str
    type: str
    rows: int
    cols: int
    dtype: str
    stored_bytes: int
    file_rank: int
    offset: int
    cached_bytes: int = 0

    @property
    def small(self) -> int:
        return min(self.rows, self.cols)

    @property
    def large(self) -> int:
        return max(self.rows, self.cols)

    @property
    def decoded_bytes(self) -> int:
        return 4 * self.rows * self.cols

    @property
    def gram_flops(self) -> int:
        """``max * min^2``: the Gram matrix of the smaller side by ``syrk``, which computes
        one triangle, ``max * min^2 / 2`` multiply-adds of 2 flops each."""
        return self.large * self.small * self.small

    @property
    def eig_flops(self) -> int:
        """``(4/3) min^3``: the reduction to tridiagonal form, which dominates an
        eigenvalues-only symmetric eigensolver (the rest is ``O(min^2)``)."""
        return (4 * self.small**3) // 3


def _layer_work(infos: List[_core.LayerInfo], chosen: List[int], files: List[str]) -> List[LayerWork]:
    """The chosen layers with their place in the files (the reader's order, §5.1) and the
    bytes of each already in the page cache."""
    rank = {f: k for k, f in enumerate(files)}
    headers: Dict[str, Tuple[Dict[str, Any], int]] = {}
    out = []
    for i in chosen:
        info = infos[i]
        if info.file not in headers:
            headers[info.file] = _read_header(info.file)
        header, base = headers[info.file]
        begin = int(header.get(info.tensor, {}).get("data_offsets", [0, 0])[0]) + base
        if info.expert is not None:
            begin += int(info.expert) * info.nbytes
        out.append(
            LayerWork(
                index=i,
                name=info.name,
                type=info.type,
                rows=info.rows,
                cols=info.cols,
                dtype=info.dtype,
                stored_bytes=info.nbytes,
                file_rank=rank.get(info.file, len(rank)),
                offset=begin,
            )
        )
    by_file: Dict[str, List[LayerWork]] = {}
    for w in out:
        by_file.setdefault(files[w.file_rank] if w.file_rank < len(files) else "", []).append(w)
    for f, ws in by_file.items():
        resident = _resident_pages(f) if f else None
        if resident is None:
            continue
        pages, page = resident
        for w in ws:
            w.cached_bytes = min(w.stored_bytes, page * _count_pages(pages, w.offset, w.stored_bytes, page))
    return out


def _read_header(path: str) -> Tuple[Dict[str, Any], int]:
    """A safetensors header (the catalog has checked it already) and where its data begins."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def _resident_pages(path: str) -> Optional[Tuple[Any, int]]:
    """Which pages of a file are in the page cache (``mincore`` on a mapping that is never
    touched, so nothing is read), as a numpy uint8 array of 0/1 and the page size; None
    where that cannot be asked (not Linux, an empty file)."""
    if not sys.platform.startswith("linux"):
        return None
    import numpy as np

    libc = _libc()
    if libc is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            page = mmap.PAGESIZE
            n = (size + page - 1) // page
            out = np.zeros(n, np.uint8)
            chunk = 1 << 18  # pages per mincore call (1 GiB of 4 KiB pages)
            for start in range(0, n, chunk):
                count = min(chunk, n - start)
                vec = (ctypes.c_ubyte * count)()
                length = min(count * page, size - start * page)
                if libc.mincore(ctypes.c_void_p(addr + start * page), length, vec) != 0:
                    return None
                out[start : start + count] = np.ctypeslib.as_array(vec) & 1
            return out, page
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def _count_pages(pages: Any, offset: int, length: int, page: int) -> int:
    first, last = offset // page, (offset + max(length, 1) - 1) // page
    return int(pages[first : last + 1].sum())


_LIBC: List[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_long,
            ]
            libc.mincore.restype = ctypes.c_int
            libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            libc.munmap.restype = ctypes.c_int
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


# --------------------------------------------------------------------------- workers


@dataclasses.dataclass(frozen=True)
class _Worker:
    device: str
    kind: str  # "cpu" or "cuda"
    threads: int  # BLAS threads of a CPU worker (1 for a GPU worker)
    calibrated_device: bool  # False: a GPU that is not here


def _workers(device: Union[str, Sequence[str]]) -> List[_Worker]:
    """The scan's worker plan (``compute.devices.plan_workers``); a GPU that is not here
    (or torch missing) is planned with the uncalibrated model, one worker per GPU named."""
    from ..compute.devices import blas_threads, parse_device, plan_workers

    try:
        devices, threads = plan_workers(list(device) if isinstance(device, (list, tuple)) else device)
    except ValueError:
        asked = list(device) if isinstance(device, (list, tuple)) else [device]
        kinds = [parse_device(d) for d in asked]  # raises for a device string that means nothing
        if not all(kind == "cuda" for kind, _ in kinds):
            raise
        return [
            _Worker(device=f"cuda:{index or 0}", kind="cuda", threads=1, calibrated_device=False) for _, index in kinds
        ]
    cores = _cores()
    out = []
    for d in devices:
        if d == "cpu":
            t = threads if threads is not None else blas_threads()
            out.append(_Worker(device="cpu", kind="cpu", threads=max(1, min(t, cores)), calibrated_device=True))
        else:
            out.append(_Worker(device=d, kind="cuda", threads=1, calibrated_device=True))
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# =========================================================================== cost models


class _KindModel:
    """The time and memory of one layer on one kind of worker."""

    kind = ""
    raw = False  # the reader hands stored bytes (GPU) rather than decoded float32
    slots = 1
    eigensolver = ""

    def __init__(self, cal: Dict[str, Any]) -> None:
        self.cal = cal

    def seconds(self, w: LayerWork, threads: int = 1) -> float:
        raise NotImplementedError

    def float64_extra(self, w: LayerWork, threads: int = 1) -> float:
        raise NotImplementedError

    def worker_bytes(self, w: LayerWork) -> int:
        """Host bytes a worker holds while it computes ``w`` besides the matrix itself."""
        raise NotImplementedError

    def decode_seconds(self, w: LayerWork) -> float:
        """The reader's time for ``w`` from the page cache (decoding, or copying raw bytes)."""
        rate = float(self.cal["decode_elements_per_s"])
        elements = w.rows * w.cols
        if self.raw:  # a copy of the stored bytes: taken at the decoder's rate per float32 written
            return w.stored_bytes / (4 * rate)
        return elements / rate

    def matrix_bytes(self, w: LayerWork) -> int:
        return w.stored_bytes if self.raw else w.decoded_bytes

    @property
    def baseline_bytes(self) -> int:
        return int(self.cal["baseline_rss_bytes"])

    @property
    def startup_s(self) -> float:
        return float(self.cal["startup_s"])

    @property
    def setup_s(self) -> float:
        """What ``scan()`` spends once before its first layer (worker plan, BLAS limits)."""
        return float(self.cal.get("scan_setup_s", 0.0))


def _rate_at(points: Sequence[Tuple[float, float]], size: float) -> float:
    """A kernel's rate (flops per second) at ``size``: measured at a few sizes, interpolated
    linearly in log(size) and log(rate) between them, and held at the nearest end beyond."""
    pts = sorted(points)
    if size <= pts[0][0]:
        return pts[0][1]
    if size >= pts[-1][0]:
        return pts[-1][1]
    for (s0, r0), (s1, r1) in zip(pts, pts[1:]):
        if s0 <= size <= s1:
            t = (math.log(size) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))
    return pts[-1][1]


def _cubic_fit(points: Sequence[Sequence[float]]) -> Tuple[float, float]:
    """``(a, b)`` of ``t = a n^3 + b n^2`` through the two largest ``(n, t)`` points; a
    constant rate through the largest one when there is one point, or when the two give a
    negative coefficient (a noisy calibration)."""
    pts = sorted((float(n), float(t)) for n, t in points)
    n1, t1 = pts[-1]
    flat = (t1 / n1**3, 0.0)
    if len(pts) < 2:
        return flat
    n0, t0 = pts[-2]
    # t0 = a n0^3 + b n0^2, t1 = a n1^3 + b n1^2
    a = (t1 / n1**2 - t0 / n0**2) / (n1 - n0)
    b = t0 / n0**2 - a * n0
    return (a, b) if a > 0 and b >= 0 else flat


class _CpuModel(_KindModel):
    """The numpy worker (docs/method.md §2.8-§2.9): Gram of the smaller side in float32 by
    ``syrk``, converted to float64, eigenvalues by numpy's ``eigvalsh`` below
    ``TWO_STAGE_FROM`` rows and LAPACK ``dsyevd_2stage`` from it on, each kernel's time
    ``flops / rate(size)`` with the rates calibrated on this machine, plus a fixed cost per
    layer (statistics, the auto check, ``malloc_trim``)."""

    kind = "cpu"

    def __init__(self, cal: Dict[str, Any]) -> None:
        super().__init__(cal)
        k = cal["kernels"]
        self._gram32 = [(m, rows * m * m / s) for m, rows, s in k["gram_float32"]]
        self._gram64 = [(m, rows * m * m / s) for m, rows, s in k["gram_float64"]]
        self._eig_numpy = [(n, (4 * n**3 / 3) / s) for n, s in k["eig_numpy"]]
        self._eig_two = [(n, (4 * n**3 / 3) / s) for n, s in k["eig_two_stage"]] or self._eig_numpy
        self._eig_fit_numpy = _cubic_fit(k["eig_numpy"])
        self._eig_fit_two = _cubic_fit(k["eig_two_stage"] or k["eig_numpy"])
        self.eigensolver = str(cal.get("eigensolver", ""))

    def _speed(self, threads: int) -> float:
        return 1.0 if threads <= 1 else MULTI_THREAD_EFFICIENCY * threads

    def gram_seconds(self, w: LayerWork, dtype: str = "float32") -> float:
        pts = self._gram32 if dtype == "float32" else self._gram64
        return w.gram_flops / _rate_at(pts, w.small) if w.small > 1 else 0.0

    def eig_seconds(self, n: int) -> float:
        """Interpolated between the calibrated sizes; above them ``a n^3 + b n^2`` fitted to
        the two largest: the reduction's matrix products gain speed with the size, which
        a constant rate misses (OpenBLAS ``dsyevd_2stage`` on one thread: 22.1, 22.7 and 25.3
        GFLOP/s of CPU time at 2048, 3072 and 4096 rows; the fit through 2048 and 4096 is 6 %
        low at 3072, a constant rate from 2048 15 % high at 4096: benches/results/plan-2026-12-01.md)."""
        if n <= 1:
            return 0.0
        two = n >= TWO_STAGE_FROM
        pts = self._eig_two if two else self._eig_numpy
        top = max(s for s, _ in pts)
        if n <= top:
            return (4 * n**3 / 3) / _rate_at(pts, n)
        a, b = self._eig_fit_two if two else self._eig_fit_numpy
        return a * n**3 + b * n**2

    def seconds(self, w: LayerWork, threads: int = 1) -> float:
        base = float(self.cal["kernels"]["layer_overhead_s"])
        return base + (self.gram_seconds(w) + self.eig_seconds(w.small)) / self._speed(threads)

    def float64_extra(self, w: LayerWork, threads: int = 1) -> float:
        return (self.gram_seconds(w, "float64") + self.eig_seconds(w.small)) / self._speed(threads)

    def worker_bytes(self, w: LayerWork) -> int:
        """The Gram matrix in float32 (and, for a matrix of several row blocks, the block's
        product being added to it) and its float64 copy (§5.3); below ``TWO_STAGE_FROM``
        numpy's ``eigvalsh`` works on a copy of its own."""
        m = w.small
        step = max(1024, GRAM_BLOCK_ELEMENTS // max(m, 1))
        gram32 = 4 * m * m * (2 if w.large > step else 1)
        gram = max(gram32, 12 * m * m)
        return gram + (8 * m * m if m < TWO_STAGE_FROM else 0)


class _GpuModel(_KindModel):
    """The torch worker on a GPU: the stored bytes uploaded through pinned buffers (the
    next layer's upload overlaps this one's compute: two layers per worker, §5.2), the
    Gram matrix in float32 (a full product), eigenvalues in float64 on the GPU."""

    kind = "cuda"
    raw = True
    slots = 2
    eigensolver = "torch.linalg.eigvalsh (cuSOLVER)"

    def __init__(self, cal: Dict[str, Any]) -> None:
        super().__init__(cal)
        k = cal["kernels"]
        self._gram = [(m, 2 * rows * m * m / s) for m, rows, s in k["gram_float32"]]
        self._eig = [(n, (4 * n**3 / 3) / s) for n, s in k["eig"]]

    def _compute(self, w: LayerWork) -> float:
        k = self.cal["kernels"]
        n = w.small
        if self._gram:
            gram = 2 * w.gram_flops / _rate_at(self._gram, n)
            eig = (4 * n**3 / 3) / _rate_at(self._eig, n)
        else:
            gram = 2 * w.gram_flops / k["gram_flops_per_s"]
            eig = k["eig_latency_s"] + (4 * n**3 / 3) / k["eig_flops_per_s"]
        return float(k["layer_overhead_s"]) + gram + eig

    def seconds(self, w: LayerWork, threads: int = 1) -> float:
        upload = w.stored_bytes / float(self.cal["kernels"]["upload_bytes_per_s"])
        return max(self._compute(w), upload)

    def float64_extra(self, w: LayerWork, threads: int = 1) -> float:
        return 2 * self._compute(w)  # float64 runs at a fraction of float32 on most GPUs: rough

    def worker_bytes(self, w: LayerWork) -> int:
        return 0  # the pinned staging buffers are the worker's whatever it holds: added once per worker


def _kind_model(
    kind: str, workers: List[_Worker], recalibrate: bool, on_calibrate: Optional[Callable[[str], None]]
) -> Tuple[_KindModel, Dict[str, Any]]:
    """The cost model of one kind of worker, from the cached calibration, a new one, or
    (a GPU that is not here) the rough model."""
    mine = [w for w in workers if w.kind == kind]
    if kind == "cuda" and not all(w.calibrated_device for w in mine):
        cal: Dict[str, Any] = {"kernels": dict(GPU_ROUGH), "decode_elements_per_s": None}
        cpu_cal, cpu_meta = _calibration("cpu", len(mine), 1, recalibrate, on_calibrate)
        cal["decode_elements_per_s"] = cpu_cal["decode_elements_per_s"]
        cal["baseline_rss_bytes"] = GPU_ROUGH["baseline_rss_bytes"]
        cal["startup_s"] = GPU_ROUGH["startup_s"]
        cal["scan_setup_s"] = 0.0
        cal["kernels"]["gram_float32"] = []
        cal["kernels"]["eig"] = []
        meta = dict(cpu_meta, calibration="uncalibrated", calibrated=False)
        return _GpuModel(cal), meta
    if kind == "cuda":
        cal, meta = _calibration("cuda", len(mine), 1, recalibrate, on_calibrate, device=mine[0].device)
        return _GpuModel(cal), meta
    cal, meta = _calibration("cpu", len(mine), mine[0].threads if len(mine) == 1 else 1, recalibrate, on_calibrate)
    return _CpuModel(cal), meta


# =========================================================================== calibration


def cache_dir() -> Path:
    """Where the calibration is cached: ``$SPECTRUM_RS_CACHE``, else
    ``$XDG_CACHE_HOME/spectrum-rs``, else ``~/.cache/spectrum-rs``."""
    if os.environ.get("SPECTRUM_RS_CACHE"):
        return Path(os.environ["SPECTRUM_RS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spectrum-rs"


def calibration_file() -> Path:
    return cache_dir() / "calibration.json"


def machine_key(kind: str, workers: int, threads: int, device: Optional[str] = None) -> Dict[str, Any]:
    """What a calibration depends on: the machine (CPU model, cores), numpy and its BLAS
    (version, kernel architecture, threading), the worker plan, and for a GPU its name and
    torch's versions. A calibration is reused only for the same key."""
    key: Dict[str, Any] = {
        "calibration": CALIBRATION_VERSION,
        "spectrum_rs": _core.__version__,
        "kind": kind,
        "cpu": _cpu_model(),
        "cores": _cores(),
        "python": platform.python_version(),
        "workers": workers,
        "threads_per_worker": threads,
    }
    import numpy as np

    key["numpy"] = np.__version__
    try:
        from threadpoolctl import threadpool_info

        key["blas"] = sorted(
            f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')} {lib.get('threading_layer')}"
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        )
    except ImportError:
        key["blas"] = []
    if kind == "cuda":
        import torch

        index = torch.device(device or "cuda").index or 0
        key["torch"] = torch.__version__
        key["cuda"] = torch.version.cuda
        key["gpu"] = torch.cuda.get_device_name(index)
    return key


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key_id(key: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _calibration(
    kind: str,
    workers: int,
    threads: int,
    recalibrate: bool,
    on_calibrate: Optional[Callable[[str], None]],
    device: Optional[str] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The calibration of this machine for ``kind`` with ``workers`` workers at once: the
    cached one when its key matches, else measured now and cached."""
    key = machine_key(kind, workers, threads, device)
    kid = _key_id(key)
    path = calibration_file()
    store = _load_store(path)
    entry = store["entries"].get(kid)
    how = "cached"
    if entry is None or recalibrate:
        if on_calibrate is not None:
            on_calibrate(
                f"calibrating this machine's kernels ({kind}, {workers} worker(s) at once; a few seconds, once), "
                f"cached in {path}"
            )
        start = time.perf_counter()
        measured = _calibrate_cuda(device or "cuda") if kind == "cuda" else _calibrate_cpu(workers)
        measured.update(_process_baseline(kind))
        entry = {
            "key": key,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "calibration_seconds": round(time.perf_counter() - start, 2),
            **measured,
        }
        store = _load_store(path)  # another process may have written meanwhile
        store["entries"][kid] = entry
        _save_store(path, store)
        how = "measured now"
    meta = {
        "calibrated": True,
        "calibration": how,
        "calibration_file": str(path),
        "calibration_created": entry.get("created"),
        "calibration_key": kid,
    }
    return entry, meta


def _load_store(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("entries"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"version": CALIBRATION_VERSION, "entries": {}}


def _save_store(path: Path, store: Dict[str, Any]) -> None:
    """Written to a temporary file beside it and renamed: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibration.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(store, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _concurrent(make: Callable[[int], Callable[[], Any]], workers: int, reps: int) -> float:
    """CPU seconds of one call when ``workers`` threads make it at once (numpy and LAPACK
    release the GIL), as the scan's single-threaded workers do: each thread's own CPU time
    (``time.thread_time``: one BLAS thread runs in its caller), the mean over the threads,
    best of ``reps`` rounds. CPU time rather than wall time, so that other processes on a
    busy machine slow the calibration less than they would a clock: the plan predicts the
    scan on this machine with its cores to itself."""
    calls = [make(k) for k in range(workers)]
    barrier = threading.Barrier(workers)
    times: List[List[float]] = [[] for _ in range(workers)]

    def body(k: int) -> None:
        for _ in range(reps):
            barrier.wait()
            t0 = time.thread_time()
            calls[k]()
            times[k].append(time.thread_time() - t0)

    if workers == 1:
        body(0)
    else:
        threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return min(sum(times[k][r] for k in range(workers)) / workers for r in range(reps))


def _reps(seconds_guess: float) -> int:
    return 3 if seconds_guess < 0.05 else 2 if seconds_guess < 0.5 else 1


def _calibrate_cpu(workers: int) -> Dict[str, Any]:
    """Times the CPU worker's own kernels (``compute.numpy_worker.gram``, the f32 -> f64
    conversion and ``compute.lapack.eigvalsh``) with one BLAS thread per worker and
    ``workers`` of them at once, as the scan runs them; the fixed cost of a layer; and
    the reader's rate from the page cache on a small file written for it."""
    import numpy as np

    from ..compute import lapack
    from ..compute.devices import limit_blas_threads
    from ..compute.memory import release_freed
    from ..compute.numpy_worker import NumpyWorker, gram
    from ..compute.precision import gram_suffices

    rng = np.random.default_rng(20261201)
    kernels: Dict[str, Any] = {}
    with limit_blas_threads(1):

        def gram_case(rows: int, m: int, dtype: Any) -> Callable[[int], Callable[[], Any]]:
            def make(_: int) -> Callable[[], Any]:
                a = rng.standard_normal((rows, m), dtype=np.float32)
                return lambda: gram(a, np.dtype(dtype))

            return make

        kernels["gram_float32"] = [
            [m, rows, _concurrent(gram_case(rows, m, np.float32), workers, _reps(rows * m * m / 3e10))]
            for rows, m in _GRAM32_SIZES
        ]
        kernels["gram_float64"] = [
            [m, rows, _concurrent(gram_case(rows, m, np.float64), workers, _reps(rows * m * m / 1e10))]
            for rows, m in _GRAM64_SIZES
        ]

        def eig_case(n: int, two_stage: bool) -> Callable[[int], Callable[[], Any]]:
            # The worker's routine for n rows, or the two-stage one at any size (the one
            # ``lapack.eigvalsh`` takes from TWO_STAGE_FROM on), to see how its time grows.
            eigvalsh = lapack.large_matrix_eigvalsh() if two_stage else lapack.eigvalsh

            def make(_: int) -> Callable[[], Any]:
                s = rng.standard_normal((n, n), dtype=np.float32)
                g = (s + s.T) / 2 + np.float32(3 * math.sqrt(n)) * np.eye(n, dtype=np.float32)  # positive definite

                def run() -> None:
                    lam = eigvalsh(g.astype(np.float64))
                    gram_suffices(lam, 4 * n, n, "float32")

                return run

            return make

        kernels["eig_numpy"] = [
            [n, _concurrent(eig_case(n, False), workers, _reps(n**3 / 1e10))] for n in _EIG_NUMPY_SIZES
        ]
        kernels["eig_two_stage"] = [
            [n, _concurrent(eig_case(n, True), workers, _reps(n**3 / 1e10))] for n in _EIG_TWO_STAGE_SIZES
        ]
        worker = NumpyWorker()
        tiny = rng.standard_normal((64, 32), dtype=np.float32)

        def layer() -> None:
            s = worker.singular_values(tiny)
            assert s is not None
            _core.spectrum_stats(np.ascontiguousarray(s, dtype=np.float64), 64, 32, False)
            release_freed()

        best = math.inf
        for _ in range(20):
            t0 = time.thread_time()
            layer()
            best = min(best, time.thread_time() - t0)
        kernels["layer_overhead_s"] = best
    return {
        "kernels": kernels,
        "decode_elements_per_s": _calibrate_reader(),
        "eigensolver": f"numpy.linalg.eigvalsh below {TWO_STAGE_FROM} rows, {lapack.backend()} from {TWO_STAGE_FROM}",
    }


def _write_bf16_model(path: Path, count: int, rows: int, cols: int) -> Path:
    """A safetensors file of ``count`` random BF16 ``rows x cols`` matrices, for the
    calibration (in a temporary folder, never the model's)."""
    size = 2 * rows * cols
    header = {
        f"model.layers.{k}.mlp.up_proj.weight": {
            "dtype": "BF16",
            "shape": [rows, cols],
            "data_offsets": [k * size, (k + 1) * size],
        }
        for k in range(count)
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    block = os.urandom(size)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(count):
            f.write(block)
    return path


def _calibrate_reader() -> float:
    """Float32 elements per CPU second the Rust reader delivers from the page cache: a
    small BF16 file written for it is streamed."""
    count, rows, cols = _DECODE_TENSORS
    with tempfile.TemporaryDirectory(prefix="spectrum-rs-calibrate-") as d:
        path = _write_bf16_model(Path(d) / "model.safetensors", count, rows, cols)
        catalog = _core.Catalog([str(path)])
        best = math.inf
        for _ in range(2):
            t0 = time.process_time()  # the reader thread's CPU time (this thread waits)
            stream = catalog.stream(list(range(count)), window_bytes=1 << 30)
            try:
                for _item in stream:
                    pass
            finally:
                stream.close()
            best = min(best, time.process_time() - t0)
    return count * rows * cols / best


def _process_baseline(kind: str) -> Dict[str, Any]:
    """In a fresh process: the resident memory after ``import spectrum_rs`` (and the CPU
    worker's modules; torch's for a GPU), the time to get there, and what ``scan()`` costs
    besides its layers (opening the files, the worker plan, the BLAS limits, the threads):
    a scan of a model of two tiny matrices."""
    code = (
        "import sys, time, json\n"
        "import spectrum_rs, spectrum_rs.compute.numpy_worker\n"
        + ("import spectrum_rs.compute.torch_worker\n" if kind == "cuda" else "")
        + "rss = 0\n"
        "with open('/proc/self/status') as f:\n"
        "    for line in f:\n"
        "        if line.startswith('VmRSS:'):\n"
        "            rss = int(line.split()[1]) * 1024\n"
        # The first scan of a process, as a real one: it looks up the BLAS and LAPACK.
        "t0 = time.perf_counter()\n"
        "spectrum_rs.scan(sys.argv[1], device='cpu')\n"
        "print(json.dumps({'rss': rss, 'setup': time.perf_counter() - t0}))\n"
    )
    got: Dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spectrum-rs-calibrate-") as d:
        model = _write_bf16_model(Path(d) / "model.safetensors", 2, 16, 8)
        try:
            p = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=300)
            if p.returncode == 0:
                got = json.loads(p.stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            got = {}
    wall = time.perf_counter() - t0
    rss = int(got.get("rss", 0))
    if rss <= 0:  # not Linux, or the child failed: this process's own figure
        rss = _own_rss()
    # Start-up: the interpreter and the imports (the child's wall time less its scan).
    startup = max(0.0, wall - float(got["setup"])) if got else wall
    return {"baseline_rss_bytes": rss, "startup_s": startup, "scan_setup_s": float(got.get("setup", 0.0))}


def _own_rss() -> int:
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    except (ImportError, OSError):
        return 0


def _calibrate_cuda(device: str) -> Dict[str, Any]:
    """Times the torch worker's own steps on the GPU (``TorchWorker.to_matrix`` upload of
    stored BF16 bytes, ``gram`` in float32, ``torch.linalg.eigvalsh`` in float64)."""
    import numpy as np
    import torch

    from ..compute.torch_worker import TorchWorker

    dev = torch.device(device)
    worker = TorchWorker(device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def best_of(fn: Callable[[], Any], reps: int = 3) -> float:
        fn()  # warm-up: kernels loaded, workspaces allocated
        sync()
        best = math.inf
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    kernels: Dict[str, Any] = {}
    gen = torch.Generator(device=dev).manual_seed(20261201)
    grams = []
    for rows, m in _GPU_GRAM_SIZES:
        a = torch.randn(rows, m, device=dev, generator=gen)
        grams.append([m, rows, best_of(functools.partial(worker.gram, a, torch.float32))])
    kernels["gram_float32"] = grams
    eigs = []
    for n in _GPU_EIG_SIZES:
        s = torch.randn(n, n, device=dev, dtype=torch.float64, generator=gen)
        g = (s + s.T) / 2 + 3 * math.sqrt(n) * torch.eye(n, device=dev, dtype=torch.float64)
        eigs.append([n, best_of(functools.partial(torch.linalg.eigvalsh, g), 2)])
    kernels["eig"] = eigs
    rows = _GPU_UPLOAD_BYTES // (2 * 4096)
    host = np.frombuffer(bytearray(os.urandom(rows * 4096 * 2)), np.uint8)  # writable, as the reader's buffers

    def upload() -> None:
        m = worker.to_matrix(host, "BF16", rows, 4096)
        if m.ready is not None:
            m.ready.synchronize()

    kernels["upload_bytes_per_s"] = host.nbytes / best_of(upload, 2)
    kernels["layer_overhead_s"] = GPU_ROUGH["layer_overhead_s"]
    return {"kernels": kernels, "decode_elements_per_s": _calibrate_reader(), "eigensolver": _GpuModel.eigensolver}


# =========================================================================== schedules


@dataclasses.dataclass
class StreamSimulation:
    """The stream of docs/method.md §5.1-§5.2 played out with predicted times."""

    seconds: float
    peak_bytes: int  # matrices and worker workspaces at the worst moment (no baseline)
    assignment: List[int]  # the worker of each layer, in stream order


def simulate_stream(
    decode_s: Sequence[float],
    charge: Sequence[int],
    run_s: Sequence[Sequence[float]],
    window_bytes: int,
    held_bytes: Sequence[int],
    workspace_bytes: Sequence[Sequence[int]],
    slots: Optional[Sequence[int]] = None,
    frees_at_handout: Optional[Sequence[bool]] = None,
) -> StreamSimulation:
    """Layers in stream order (index ``i``): the reader decodes one after the other, each
    once its ``charge`` fits in the window with the layers queued and the one most recently
    handed out (or nothing else is charged); the worker that asks first takes the next
    layer when it is ready and computes it for ``run_s[w][i]`` after the layer before. A
    worker holds up to ``slots[w]`` layers (1 on the CPU; 2 on a GPU, whose next upload
    overlaps the compute): it asks again after a hand-out once a slot is free. A layer's
    charge is given back at the next request after it was handed out.
    ``held_bytes[i]``: the layer's host buffer, held from its decoding until its
    computation ends (or its hand-out, for a worker that copies it to a GPU there:
    ``frees_at_handout[w]``); ``workspace_bytes[w][i]``: what worker ``w`` adds while
    computing it."""
    n_workers = len(run_s)
    slots = list(slots) if slots is not None else [1] * n_workers
    frees = list(frees_at_handout) if frees_at_handout is not None else [False] * n_workers
    request = [0.0] * n_workers  # when each worker asks for its next layer
    finishes: List[List[float]] = [[] for _ in range(n_workers)]
    reader = 0.0
    charges: List[Tuple[int, float]] = []  # (bytes, release time)
    events: List[Tuple[float, int]] = []
    assignment = []
    for i in range(len(decode_s)):
        t = reader
        while True:
            live = [(c, rel) for c, rel in charges if rel > t]
            held = sum(c for c, _ in live)
            if held == 0 or held + charge[i] <= window_bytes:
                break
            t = min(rel for _, rel in live)
        ready = t + decode_s[i]
        reader = ready
        w = min(range(n_workers), key=lambda k: (request[k], k))
        handout = max(request[w], ready)
        done = finishes[w]
        start = max(handout, done[-1] if done else 0.0)
        finish = start + run_s[w][i]
        done.append(finish)
        request[w] = max(handout, done[-slots[w]] if len(done) >= slots[w] else 0.0)
        charges.append((charge[i], max(handout, min(request))))
        charges = [(c, rel) for c, rel in charges if rel > t]
        events += [(t, held_bytes[i]), (handout if frees[w] else finish, -held_bytes[i])]
        events += [(start, workspace_bytes[w][i]), (finish, -workspace_bytes[w][i])]
        assignment.append(w)
    peak = now = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # at one instant, frees first
        now += delta
        peak = max(peak, now)
    end = max((d[-1] for d in finishes if d), default=0.0)
    return StreamSimulation(seconds=end, peak_bytes=peak, assignment=assignment)


def largest_first(run_s: Sequence[Sequence[float]]) -> Tuple[float, List[int]]:
    """List scheduling, largest first: each layer (by its time on the first worker, longest
    first) to the worker that would finish it earliest, with no reader and no window (the
    schedule issue 12 asks the pipeline for). Returns the makespan and each layer's worker."""
    n_workers = len(run_s)
    n = len(run_s[0]) if run_s else 0
    assignment = [0] * n
    loads = [0.0] * n_workers
    for i in sorted(range(n), key=lambda i: -run_s[0][i]):
        w = min(range(n_workers), key=lambda k: (loads[k] + run_s[k][i], k))
        loads[w] += run_s[w][i]
        assignment[i] = w
    return max(loads, default=0.0), assignment


# =========================================================================== assembling


def _assemble(
    model: Any,
    files: List[str],
    work: List[LayerWork],
    infos: List[_core.LayerInfo],
    tied: Optional[Tuple[str, int]],
    workers: List[_Worker],
    models: Dict[str, _KindModel],
    cal_meta: Dict[str, Dict[str, Any]],
    device: Any,
    window_bytes: int,
    read_bytes_per_s: Optional[float],
) -> Dict[str, Any]:
    disk = float(read_bytes_per_s) if read_bytes_per_s else float(ASSUMED_DISK_BYTES_PER_S)
    stream = sorted(range(len(work)), key=lambda k: (work[k].file_rank, work[k].offset, work[k].index))
    # The order the scan reads in (run/schedule.py): largest first for several CPU workers.
    stream = read_order(stream, lambda k: (work[k].rows, work[k].cols), [w.kind for w in workers])
    wm = [models[w.kind] for w in workers]
    lead = wm[0]
    # The reader serves every worker; it decodes for the CPU and copies raw bytes for GPUs.
    reader = models["cuda"] if all(m.raw for m in wm) else models.get("cpu", lead)
    run = [[m.seconds(work[k], w.threads) for k in stream] for m, w in zip(wm, workers)]
    extra = [[m.float64_extra(work[k], w.threads) for k in stream] for m, w in zip(wm, workers)]
    read_s = [reader.decode_seconds(work[k]) + (work[k].stored_bytes - work[k].cached_bytes) / disk for k in stream]
    charge = [reader.matrix_bytes(work[k]) for k in stream]
    workspace = [[m.worker_bytes(work[k]) for k in stream] for m in wm]
    slots = [m.slots for m in wm]
    raw = [m.raw for m in wm]
    sim = simulate_stream(read_s, charge, run, window_bytes, charge, workspace, slots, raw)
    run64 = [[a + b for a, b in zip(r, e)] for r, e in zip(run, extra)]
    sim64 = simulate_stream(read_s, charge, run64, window_bytes, charge, workspace, slots, raw)
    lf, _ = largest_first(run)
    kernel_s = sum(run[0])
    n_workers = len(workers)
    cores = _cores()
    read_total = sum(read_s)
    decode_total = sum(reader.decode_seconds(w) for w in work)
    # The threads that compete for the cores: the CPU workers' kernels (core-seconds: a
    # worker's time times its BLAS threads) and the reader's decoding.
    cpu_work = sum(run[w][pos] * workers[w].threads for pos, w in enumerate(sim.assignment) if workers[w].kind == "cpu")
    cpu_bound = (cpu_work + decode_total) / cores if cpu_work else 0.0
    setup = max(m.setup_s for m in wm)
    wall = setup + max(sim.seconds, cpu_bound, read_total)
    cpu_extra = sum(
        extra[w][pos] * workers[w].threads for pos, w in enumerate(sim64.assignment) if workers[w].kind == "cpu"
    )
    all64 = setup + max(sim64.seconds, cpu_bound + cpu_extra / cores if cpu_work else 0.0, read_total)
    # The bound of §5.3: the window, and each worker's largest layer with its workspace.
    per_worker = [0] * n_workers
    for pos, w in enumerate(sim.assignment):
        per_worker[w] = max(per_worker[w], wm[w].slots * charge[pos] + workspace[w][pos])
    baseline = max(m.baseline_bytes for m in wm)
    staging = sum(GPU_STAGING_BYTES for w in workers if w.kind == "cuda")
    bound = baseline + window_bytes + sum(per_worker) + staging
    peak = baseline + sim.peak_bytes + staging
    by_index = {work[k].index: pos for pos, k in enumerate(stream)}
    layers_out = []
    for lw in sorted(work, key=lambda x: x.index):
        pos = by_index[lw.index]
        layers_out.append(
            {
                "name": lw.name,
                "type": lw.type,
                "rows": lw.rows,
                "cols": lw.cols,
                "dtype": lw.dtype,
                "stored_bytes": lw.stored_bytes,
                "decoded_bytes": lw.decoded_bytes,
                "gram_flops": lw.gram_flops,
                "eig_flops": lw.eig_flops,
                "route": ROUTE,
                "eigensolver": _eigensolver(lead, lw.small),
                "seconds": run[0][pos],
                "float64_gram_extra_seconds": extra[0][pos],
                "read_seconds": read_s[pos],
                "cached_bytes": lw.cached_bytes,
            }
        )
    kinds = sorted({w.kind for w in workers})
    meta = cal_meta[kinds[0]] if len(kinds) == 1 else cal_meta.get("cuda", cal_meta[kinds[0]])
    notes = [
        "a prediction: the route is taken from the shapes (float32 Gram matrix, float64 eigenvalues); "
        "dtype=auto forms a matrix's Gram again in float64 when its spectrum needs it, which headers cannot "
        "tell (time.all_float64_gram_seconds if every matrix did)",
    ]
    if not all(meta_k.get("calibrated", True) for meta_k in cal_meta.values()):
        notes.append(
            "uncalibrated: no GPU is visible here, so the GPU times come from a rough model of an H100-class GPU "
            "(spectrum_rs.run.plan.GPU_ROUGH), not from a measurement; run plan on the GPU machine for a calibrated one"
        )
    load = _load_average()
    if load is not None and load[0] > max(1.0, cores / 2):
        notes.append(
            f"this machine is busy now (load average {load[0]:.2f} on {cores} cores): the times are for the scan "
            "with the cores to itself; with other work beside it, it takes longer"
        )
    if tied is not None:
        notes.append(f"{tied[0]} is tied to {infos[tied[1]].name}: reported with its numbers, at no cost of its own")
    cached = sum(w.cached_bytes for w in work)
    stored = sum(w.stored_bytes for w in work)
    return {
        "schema": SCHEMA_VERSION,
        "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else [os.fspath(p) for p in model],
        "files": files,
        "prediction": "a prediction from headers and a calibration, not a measurement",
        "layers": layers_out,
        "types": _types(layers_out),
        "tied_head": None if tied is None else {"name": tied[0], "source": infos[tied[1]].name},
        "device": {
            "requested": list(device) if isinstance(device, (list, tuple)) else str(device),
            "kind": kinds[0] if len(kinds) == 1 else "mixed",
            "workers": [w.device for w in workers],
            "threads_per_worker": workers[0].threads,
            "cores": cores,
            "calibrated": all(m.get("calibrated", True) for m in cal_meta.values()),
            "calibration": meta.get("calibration"),
            "calibration_file": meta.get("calibration_file"),
            "calibration_created": meta.get("calibration_created"),
            "eigensolver": lead.eigensolver,
            "load_average": None if load is None else list(load),
        },
        "read": {
            "stored_bytes": stored,
            "decoded_bytes": sum(w.decoded_bytes for w in work),
            "cached_bytes": cached,
            "reader_float32_bytes_per_s": 4 * float(reader.cal["decode_elements_per_s"]),
            "disk_bytes_per_s": disk,
            "disk_rate": "stated" if read_bytes_per_s else "assumed",
            "seconds": read_total,
        },
        "time": {
            "kernel_seconds": kernel_s,
            "wall_seconds": wall,
            "stream_order_seconds": sim.seconds,
            "largest_first_seconds": lf,
            "floor_seconds": kernel_s / n_workers,
            "cpu_bound_seconds": cpu_bound,
            "cpu_seconds": setup + cpu_work + decode_total,
            "startup_seconds": max(m.startup_s for m in wm),
            "all_float64_gram_seconds": all64,
        },
        "memory": {
            "peak_bytes": peak,
            "bound_bytes": bound,
            "baseline_bytes": baseline,
            "window_bytes": window_bytes,
            "per_worker_bytes": per_worker,
            "largest_layer_bytes": max(charge, default=0),
        },
        "notes": notes,
    }


def _load_average() -> Optional[Tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def _eigensolver(m: _KindModel, n: int) -> str:
    if m.kind == "cuda":
        return "torch.linalg.eigvalsh"
    return "numpy.linalg.eigvalsh" if n < TWO_STAGE_FROM else "LAPACK dsyevd_2stage"


def _types(layers: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for layer in layers:
        groups.setdefault(layer["type"], []).append(layer)
    out = []
    for t in sorted(groups):
        ls = groups[t]
        shapes: List[List[int]] = []
        for layer in ls:
            s = [layer["rows"], layer["cols"]]
            if s not in shapes:
                shapes.append(s)
        out.append(
            {
                "type": t,
                "layers": len(ls),
                "shapes": shapes,
                "stored_bytes": sum(layer["stored_bytes"] for layer in ls),
                "gram_flops": sum(layer["gram_flops"] for layer in ls),
                "eig_flops": sum(layer["eig_flops"] for layer in ls),
                "seconds": sum(layer["seconds"] for layer in ls),
            }
        )
    return out


# =========================================================================== the report


def format_plan(p: Dict[str, Any]) -> str:
    """The human report of :func:`plan`: a table per type and a total block."""
    t, mem, rd, dev = p["time"], p["memory"], p["read"], p["device"]
    n_types = len(p["types"])
    out = [
        f"{_model_label(p['model'])}: {len(p['layers'])} layers in {n_types} types, {_size(rd['stored_bytes'])} stored "
        f"({', '.join(sorted({layer['dtype'] for layer in p['layers']}))}); planned from the headers, no weight read",
        "",
    ]
    width = max([len("type")] + [len(x["type"]) for x in p["types"]])
    out.append(
        f"  {'type':<{width}}  {'layers':>6}  {'shape':>13}  {'stored':>10}  {'Gram GFLOP':>10}  {'eig GFLOP':>10}"
        f"  {'seconds':>9}"
    )
    for x in p["types"]:
        shape = "x".join(map(str, x["shapes"][0])) if len(x["shapes"]) == 1 else f"{len(x['shapes'])} shapes"
        out.append(
            f"  {x['type']:<{width}}  {x['layers']:>6}  {shape:>13}  {_size(x['stored_bytes']):>10}"
            f"  {x['gram_flops'] / 1e9:>10.4g}  {x['eig_flops'] / 1e9:>10.4g}  {_secs(x['seconds']):>9}"
        )
    gram = sum(x["gram_flops"] for x in p["types"])
    eig = sum(x["eig_flops"] for x in p["types"])
    out.append(
        f"  {'total':<{width}}  {len(p['layers']):>6}  {'':>13}  {_size(rd['stored_bytes']):>10}  {gram / 1e9:>10.4g}"
        f"  {eig / 1e9:>10.4g}  {_secs(t['kernel_seconds']):>9}"
    )
    out.append("  (seconds: each type's matrices on one worker, one after the other)")
    out.append("")
    workers = dev["workers"]
    names = f"{workers[0]} x{len(workers)}" if len(set(workers)) == 1 and len(workers) > 1 else ", ".join(workers)
    n_threads = dev["threads_per_worker"]
    threads = f", {_count(n_threads, 'BLAS thread')} each, on {dev['cores']} cores" if dev["kind"] == "cpu" else ""
    if dev["calibrated"]:
        cal = f"calibrated {dev['calibration_created']} ({dev['calibration']}: {dev['calibration_file']})"
    else:
        cal = "uncalibrated: rough GPU model, no GPU here to measure (see notes)"
    cached = rd["cached_bytes"] / rd["stored_bytes"] if rd["stored_bytes"] else 1.0
    rest = rd["stored_bytes"] - rd["cached_bytes"]
    disk = (
        f"; the other {_size(rest)} at {_size(rd['disk_bytes_per_s'])}/s ({rd['disk_rate']}"
        + (", --read-mib-s to state yours)" if rd["disk_rate"] == "assumed" else ")")
        if rest
        else ""
    )
    rows = [
        (
            "route (predicted)",
            f"{ROUTE} ({dev['eigensolver']}); +{_secs(t['all_float64_gram_seconds'] - t['wall_seconds'])}"
            " if every matrix needed the float64 Gram",
        ),
        ("workers", f"{names}{threads}; {cal}"),
        (
            "read",
            f"{_size(rd['stored_bytes'])}, {cached:.0%} in the page cache (reader measured at "
            f"{_size(rd['reader_float32_bytes_per_s'])}/s of float32){disk}: {_secs(rd['seconds'])}",
        ),
        (
            "compute",
            f"{_secs(t['kernel_seconds'])} of kernels; on {_count(len(workers), 'worker')} in file order "
            f"{_secs(t['stream_order_seconds'])}, largest first {_secs(t['largest_first_seconds'])}, "
            f"floor {_secs(t['floor_seconds'])}",
        ),
        (
            "predicted wall",
            f"{_secs(t['wall_seconds'])} for the scan with the cores to itself "
            f"(+{_secs(t['startup_seconds'])} to start a process)",
        ),
        (
            "peak host memory",
            f"{_size(mem['peak_bytes'])} predicted (at most {_size(mem['bound_bytes'])}: "
            f"{_size(mem['baseline_bytes'])} process + {_size(mem['window_bytes'])} window + "
            f"{' + '.join(_size(b) for b in mem['per_worker_bytes'])} per worker)",
        ),
    ]
    label = max(len(k) for k, _ in rows)
    out += [f"  {k:<{label}}  {v}" for k, v in rows]
    out += ["", *(f"  note: {n}" for n in p["notes"])]
    return "\n".join(out) + "\n"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _model_label(model: Any) -> str:
    return model if isinstance(model, str) else f"{len(model)} files"


def _size(n: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def _secs(s: float) -> str:
    if s < 0.095:
        return f"{s * 1000:.2g} ms" if s >= 0.001 else f"{s * 1000:.1g} ms"
    if s < 100:
        return f"{s:.3g} s"
    if s < 6000:
        return f"{s / 60:.3g} min"
    if s < 2 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} d"
