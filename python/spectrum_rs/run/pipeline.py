"""Drives the layer stream through the SVD workers: one worker in this thread, or one
thread per device pulling from the shared stream. Each worker's feeder thread uploads
the next layer while the current one is computed, and each finished layer is handed to
a callback (checkpoint, progress) as soon as its statistics are known."""

from __future__ import annotations

import math
import queue
import threading
import warnings
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .. import _core
from ..compute.base import Worker
from ..compute.memory import release_freed
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


def measure(worker: Worker, info: LayerSpec, matrix: Any, no_noise: str) -> LayerResult:
    """The numbers (docs/method.md §2) of one layer whose matrix is already on the worker's device."""
    rows, cols = info.rows, info.cols
    s = worker.singular_values(matrix)
    record = LayerResult(
        name=info.name, type=info.type, snr=math.nan, shape=(rows, cols), dtype=info.dtype, tensor=info.tensor
    )
    if s is None:
        warnings.warn(
            f"{info.file}: tensor {info.tensor!r} holds NaN or Inf values; its SNR is reported as NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return record
    snr, sigma, thr, smax, n_signal = _core.spectrum_stats(
        np.ascontiguousarray(s, dtype=np.float64), rows, cols, no_noise == "inf"
    )
    record.snr, record.sigma, record.threshold = snr, sigma, thr
    record.max_singular_value, record.n_signal = smax, n_signal
    if math.isnan(snr):
        warnings.warn(
            f"{info.file}: tensor {info.tensor!r} is all zeros (no spectrum); its SNR is reported as NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return record


_END = object()


def _run_one(
    worker: Worker,
    next_item: Callable[[], Optional[Tuple[int, Any, str]]],
    layers: Sequence[LayerSpec],
    no_noise: str,
    on_record: OnRecord,
    stop: Optional[threading.Event] = None,
) -> None:
    """One worker's loop. A feeder thread takes the next layer off the stream and uploads
    it while this thread computes the current one (a GPU's copy engine then works while
    its cores compute); ``worker.slots`` bounds the layers a worker holds at once: two on
    a GPU, one on the CPU, where nothing overlaps and a layer taken early could wait
    behind a long one while another worker idles."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    slots = threading.Semaphore(worker.slots)
    halt = threading.Event()

    def feed() -> None:
        try:
            while True:
                while not slots.acquire(timeout=0.1):
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
        while not (stop is not None and stop.is_set()):
            try:
                got = handoff.get(timeout=0.1)
            except queue.Empty:
                continue
            if got is _END:
                break
            if isinstance(got, BaseException):
                raise got
            index, matrix = got
            del got
            record = measure(worker, layers[index], matrix, no_noise)
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


def run(
    stream: Any, workers: Sequence[Worker], layers: Sequence[LayerSpec], no_noise: str, on_record: OnRecord
) -> None:
    """Consumes ``stream`` with ``workers`` until it ends; re-raises the first error."""
    if len(workers) == 1:
        _run_one(workers[0], lambda: next(stream, None), layers, no_noise, on_record)
        return
    take, report = threading.Lock(), threading.Lock()
    stop = threading.Event()
    errors: List[BaseException] = []

    def next_item() -> Optional[Tuple[int, Any, str]]:
        if stop.is_set():
            return None
        with take:
            return next(stream, None)

    def record(index: int, rec: LayerResult) -> None:
        with report:
            on_record(index, rec)

    def body(worker: Worker) -> None:
        try:
            _run_one(worker, next_item, layers, no_noise, record, stop)
        except BaseException as e:  # handed to the main thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=body, args=(w,), name=f"spectrum-{w.device}", daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]
