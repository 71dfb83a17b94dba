"""Drives the layer stream through the SVD workers: one background thread per worker, all
pulling from the shared stream, while the calling thread takes the finished layers and
stays free to act on Ctrl-C at once. Each worker's feeder thread uploads the next layer
while the current one is computed, and each finished layer is handed to a callback
(checkpoint, progress) as soon as its statistics are known. Matrices without a spectrum
are told about in one summary warning per scan (:class:`Problems`)."""

from __future__ import annotations

import atexit
import math
import queue
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .. import _core
from ..compute.base import Worker
from ..compute.memory import release_freed
from ..io.text import printable
from ..results import LayerResult

OnRecord = Callable[[int, LayerResult], None]


class LayerSpec(Protocol):
    """What the pipeline reads of a layer: a catalog's ``_core.LayerInfo``, or the same
    attributes of a tensor held in memory (:func:`spectrum_rs.scan_model`)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def tensor(self) -> str: ...
    @property
    def file(self) -> str: ...


#: How long the calling thread waits for the next finished layer before it looks again.
#: The workers compute in background threads, so Ctrl-C (which Python delivers to the main
#: thread) is acted on at once, not when the current matrix is done.
POLL_SECONDS = 0.1
#: Names a summary warning lists before it says how many more there are.
NAMED_IN_SUMMARY = 5

_PROBLEMS = {
    "empty": ("have no values (a zero-size shape)", "has no values (a zero-size shape)"),
    "nonfinite": ("hold NaN or Inf values", "holds NaN or Inf values"),
    "zeros": ("are all zeros (no spectrum)", "is all zeros (no spectrum)"),
}


class Problems:
    """What a scan found wrong with some of its matrices, told in one warning per kind at
    the end (:meth:`warn`) instead of one per matrix: a header can declare a million
    empty tensors. Thread-safe: every worker adds to the scan's one collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Dict[str, List[Tuple[str, str]]] = {}

    def add(self, kind: str, file: str, name: str) -> None:
        with self._lock:
            self._seen.setdefault(kind, []).append((file, name))

    def warn(self, stacklevel: int = 2) -> None:
        """One ``RuntimeWarning`` per kind of problem seen, naming the first matrices (and
        their files); then forgets them."""
        with self._lock:
            seen, self._seen = self._seen, {}
        for kind, where in seen.items():
            warnings.warn(_summary(kind, where), RuntimeWarning, stacklevel=stacklevel + 1)


def _summary(kind: str, where: List[Tuple[str, str]]) -> str:
    if kind.startswith("bound:"):
        dtype = kind.split(":", 1)[1]
        n = len(where)
        what = (
            f"{'1 layer' if n == 1 else f'{n} layers'} failed the precision bound for dtype={dtype!r} "
            f"(docs/method.md §2.9): computed by a float64 SVD instead"
        )
        return f"{what}: {_names(where, lambda name: name)}"
    many, one = _PROBLEMS[kind]
    if len(where) == 1:
        file, tensor = where[0]
        return f"{printable(file)}: tensor {tensor!r} {one}; its SNR is reported as NaN"
    return f"{len(where)} matrices {many}; their SNR is reported as NaN: {_names(where, repr)}"


def _names(where: List[Tuple[str, str]], show: Callable[[str], str]) -> str:
    """``file: a, b; file2: c, and 7 more``: the first few names, grouped by file."""
    groups: Dict[str, List[str]] = {}
    unique = list(dict.fromkeys(where))  # in the order the workers finished them: put in model order
    unique = [unique[i] for i in _core.natural_order([name for _, name in unique])]
    for file, name in unique[:NAMED_IN_SUMMARY]:
        groups.setdefault(file, []).append(printable(show(name)))
    text = "; ".join(f"{printable(file)}: {', '.join(names)}" for file, names in groups.items())
    more = len(unique) - sum(len(names) for names in groups.values())
    return f"{text}, and {more} more" if more > 0 else text


def measure(
    worker: Worker, info: LayerSpec, matrix: Any, no_noise: str, problems: Optional[Problems] = None
) -> LayerResult:
    """The numbers (docs/method.md §2) of one layer whose matrix is already on the worker's
    device. A matrix without a spectrum (empty, all zeros, NaN or Inf) gets NaN, and a
    forced ``dtype`` whose Gram matrix failed the precision bound is computed again by an
    SVD: both are added to ``problems`` (told at the end of the scan), or warned about
    here when there is no collector."""
    rows, cols = info.rows, info.cols
    s = worker.singular_values(matrix)
    if getattr(worker, "forced_fallback", False):
        _tell(problems, f"bound:{worker.dtype}", info.file, info.name)
    record = LayerResult(
        name=info.name, type=info.type, snr=math.nan, shape=(rows, cols), dtype=info.dtype, tensor=info.tensor
    )
    if s is None:
        _tell(problems, "nonfinite", info.file, info.tensor)
        return record
    snr, sigma, thr, smax, n_signal = _core.spectrum_stats(
        np.ascontiguousarray(s, dtype=np.float64), rows, cols, no_noise == "inf"
    )
    record.snr, record.sigma, record.threshold = snr, sigma, thr
    record.max_singular_value, record.n_signal = smax, n_signal
    if math.isnan(snr):
        _tell(problems, "empty" if rows * cols == 0 else "zeros", info.file, info.tensor)
    return record


def _tell(problems: Optional[Problems], kind: str, file: str, name: str) -> None:
    if problems is not None:
        problems.add(kind, file, name)
    else:
        one = Problems()
        one.add(kind, file, name)
        one.warn(stacklevel=4)


class _Done:
    """A worker's last word: it ran out of layers (``error`` None) or failed."""

    __slots__ = ("error",)

    def __init__(self, error: Optional[BaseException] = None) -> None:
        self.error = error


_END = object()


def _run_one(
    worker: Worker,
    next_item: Callable[[], Optional[Tuple[int, Any, str]]],
    layers: Sequence[LayerSpec],
    no_noise: str,
    on_record: OnRecord,
    stop: threading.Event,
    problems: Problems,
) -> None:
    """One worker's loop, in its own thread. A feeder thread takes the next layer off the
    stream and uploads it while this thread computes the current one (a GPU's copy engine
    then works while its cores compute); ``worker.slots`` bounds the layers a worker holds
    at once: two on a GPU, one on the CPU, where nothing overlaps and a layer taken early
    could wait behind a long one while another worker idles."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    slots = threading.Semaphore(worker.slots)
    halt = threading.Event()

    def feed() -> None:
        try:
            while True:
                while not slots.acquire(timeout=POLL_SECONDS):
                    if halt.is_set():
                        return
                if halt.is_set():
                    return
                item = next_item()
                if item is None:
                    handoff.put(_END)
                    return
                index, array, stored = item
                info = layers[index]
                handoff.put((index, worker.to_matrix(array, stored, info.rows, info.cols)))
                del item, array
        except BaseException as e:  # handed to the computing thread
            handoff.put(e)

    feeder = threading.Thread(target=feed, name=f"spectrum-feed-{worker.device}", daemon=True)
    feeder.start()
    try:
        while not stop.is_set():
            try:
                got = handoff.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if got is _END:
                break
            if isinstance(got, BaseException):
                raise got
            index, matrix = got
            del got
            record = measure(worker, layers[index], matrix, no_noise, problems)
            del matrix
            release_freed()
            slots.release()
            on_record(index, record)
    finally:
        halt.set()
        while feeder.is_alive():  # let a feeder blocked on a full hand-off finish
            try:
                handoff.get_nowait()
            except queue.Empty:
                pass
            feeder.join(0.05)


#: Worker threads that may still be computing (an interrupted scan returns at once and
#: leaves its matrix in flight to finish). At interpreter exit they are waited for: a BLAS
#: call still running when the process tore down OpenBLAS crashed it (SIGSEGV after a
#: caught ScanInterrupted, about once in five).
_LIVE: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


@atexit.register
def _wait_for_workers_at_exit() -> None:
    for t in list(_LIVE):
        if t.is_alive() and t is not threading.current_thread():
            t.join()


def run(
    stream: Any, workers: Sequence[Worker], layers: Sequence[LayerSpec], no_noise: str, on_record: OnRecord
) -> None:
    """Consumes ``stream`` with ``workers`` until it ends; re-raises the first error.

    Every worker computes in a background (daemon) thread; this thread waits for finished
    layers in steps of :data:`POLL_SECONDS` and hands each to ``on_record`` itself, so the
    callback (checkpoint, progress, a user's function) runs in the caller's thread, one
    layer at a time. On an error, or Ctrl-C here, the workers are told to stop and this
    returns at once: a matrix still being computed is abandoned (its thread ends when it
    is done, and its result is dropped), and the stream is fed no more. What the scan
    found wrong with its matrices is warned about once per kind, at the end
    (:class:`Problems`)."""
    stop = threading.Event()
    take = threading.Lock()
    finished: queue.Queue[Any] = queue.Queue()
    problems = Problems()

    def next_item() -> Optional[Tuple[int, Any, str]]:
        with take:
            if stop.is_set():
                return None
            return next(stream, None)

    def body(worker: Worker) -> None:
        try:
            _run_one(worker, next_item, layers, no_noise, lambda i, r: finished.put((i, r)), stop, problems)
        except BaseException as e:  # handed to the calling thread
            stop.set()
            finished.put(_Done(e))
        else:
            finished.put(_Done())

    threads = [threading.Thread(target=body, args=(w,), name=f"spectrum-{w.device}", daemon=True) for w in workers]
    _LIVE.update(threads)
    try:
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            try:
                got = finished.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if isinstance(got, _Done):
                if got.error is not None:
                    raise got.error
                running -= 1
            else:
                on_record(*got)
    finally:
        stop.set()
        problems.warn(stacklevel=4)
