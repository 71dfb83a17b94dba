"""``scan()``: from a model path to a ``ScanResult``. Opens the catalog (Rust), streams
the chosen layers off disk (Rust thread), computes singular values (torch worker),
the statistics (Rust), and adds the tied head the config describes."""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Union

from . import _core
from ._core import SpectrumError
from .checkpoint import Checkpoint, identity
from .model_config import embedding_source, read_config, ties_embeddings
from .model_source import default_name, resolve_model
from .progress import Progress
from .results import LayerResult, ScanResult
from .singular_values import SingularValueWorker

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_WINDOW_BYTES = 2 << 30


def _as_list(x: Union[None, str, Iterable[str]]) -> List[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [p for p in (s.strip() for s in x.split(",")) if p]
    return [str(p) for p in x]


def _model_paths(model: Union[PathLike, Sequence[PathLike]], download: Optional[bool]) -> List[str]:
    if isinstance(model, (str, os.PathLike)):
        return [os.fspath(resolve_model(os.fspath(model), download=download))]
    paths = [os.fspath(p) for p in model]
    if not paths:
        raise SpectrumError("no model path given")
    return paths


def scan(
    model: Union[PathLike, Sequence[PathLike]],
    *,
    types: Union[None, str, Iterable[str]] = None,
    exclude: Union[None, str, Iterable[str]] = None,
    include_1d: bool = False,
    top_percent: float = 25.0,
    device: Any = "auto",
    method: str = "gram",
    dtype: str = "float64",
    no_noise: str = "one",
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    name: Optional[str] = None,
    progress: Union[bool, Callable[..., None]] = False,
    checkpoint: Union[None, str, "os.PathLike[str]"] = None,
    download: Optional[bool] = None,
) -> ScanResult:
    """Measures the signal-to-noise ratio of every weight matrix of a safetensors model.

    Args:
        model: a model folder (``model.safetensors`` or a sharded folder with its
            ``model.safetensors.index.json``), an index file, one ``.safetensors`` file,
            or a list of files; or a Hugging Face model id, found in the local cache.
        types: layer types, layer names or globs to scan (``"self_attn.*"``); all when None.
        exclude: types, names or globs to leave out.
        include_1d: also report 1-D tensors (norms) the way the reference does (SNR 1.0).
        top_percent: share of each type selected by ``ScanResult.select()`` (default 25).
        device: ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"``, ``"cuda:1"``...
        method: ``"gram"`` (eigenvalues of the Gram matrix, default) or ``"svd"``.
        dtype: ``"float64"`` (default; meets SPEC §2's 1e-4 bound even for matrices with
            strong outliers) or ``"float32"`` (faster, can miss that bound).
        no_noise: ``"one"`` (current reference: noise 1.0 when no value is below the
            threshold) or ``"inf"`` (older reference versions: SNR ``Infinity``).
        window_bytes: host bytes the reader may queue ahead of the worker.
        name: model name used in result file names (default: ``model`` as given).
        progress: show a progress bar on stderr, or a callable
            ``progress(done_layers, total_layers, done_bytes, total_bytes, layer_name)``.
        checkpoint: a file to append each finished layer to (fsynced); when it exists
            and was written for the same model files and settings, its layers are not
            computed again. A checkpoint of another model or settings is refused.
        download: for a model id missing from the Hugging Face cache: False never
            downloads; None and True download weights, index and config.json.
    """
    if no_noise not in ("one", "inf"):
        raise ValueError(f"no_noise must be 'one' or 'inf', got {no_noise!r}")
    if not (0 <= float(top_percent) <= 100):
        raise ValueError(f"top_percent must be between 0 and 100, got {top_percent}")
    paths = _model_paths(model, download)
    worker = SingularValueWorker(device=device, method=method, dtype=dtype)
    catalog = _core.Catalog(paths)
    layers = catalog.layers()
    chosen = catalog.select(_as_list(types), _as_list(exclude), include_1d)
    if not chosen:
        raise SpectrumError(f"{paths[0]}: no layer matches the requested types "
                            f"(types={_as_list(types) or 'all'}, exclude={_as_list(exclude)})")
    results = {}
    ck = None
    if checkpoint is not None:
        ck = Checkpoint(Path(checkpoint), identity(catalog.files()),
                        _numbers_settings(method, dtype, no_noise, [layers[i]["name"] for i in chosen]))
        done = ck.load()
        results = {i: done[layers[i]["name"]] for i in chosen if layers[i]["name"] in done}
        ck.open()
    todo = [i for i in chosen if i not in results]
    bar = Progress(progress, total_layers=len(chosen),
                   total_bytes=sum(layers[i]["nbytes"] for i in chosen),
                   done_layers=len(results), done_bytes=sum(layers[i]["nbytes"] for i in results))
    start = time.perf_counter()
    stream = catalog.stream(todo, window_bytes=max(int(window_bytes), 1), raw=worker.wants_raw)
    try:
        for index, array, stored in stream:
            info = layers[index]
            record = _measure(worker, info, array, stored, no_noise)
            del array
            if ck is not None:
                ck.add(record)
            results[index] = record
            bar.update(info["name"], info["nbytes"])
    finally:
        stream.close()
        bar.close()
        if ck is not None:
            ck.close()
    records = [results[i] for i in sorted(results)]
    _add_tied_head(records, paths, types, exclude)
    if name is not None:
        model_name = name
    elif isinstance(model, (str, os.PathLike)):
        model_name = default_name(os.fspath(model))
    else:
        model_name = os.path.commonpath(paths)
    settings = {
        "method": method, "dtype": dtype, "device": str(worker.device), "no_noise": no_noise,
        "include_1d": include_1d, "types": _as_list(types), "exclude": _as_list(exclude),
        "seconds": round(time.perf_counter() - start, 3),
        "resumed_layers": len(chosen) - len(todo), "model_path": paths[0] if len(paths) == 1 else paths,
    }
    return ScanResult(model_name=model_name, layers=records, top_percent=float(top_percent),
                      settings=settings)


def _numbers_settings(method: str, dtype: str, no_noise: str, names: List[str]) -> dict:
    """The settings that change a scan's numbers or its set of layers."""
    import hashlib

    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {"method": method, "dtype": dtype, "no_noise": no_noise, "layers": len(names),
            "layer_names_sha256": digest}


def _measure(worker: SingularValueWorker, info: dict, array: Any, stored: str, no_noise: str) -> LayerResult:
    rows, cols = info["rows"], info["cols"]
    w = worker.to_matrix(array, stored, rows, cols)
    s = worker.singular_values(w)
    record = LayerResult(name=info["name"], type=info["type"], snr=math.nan, shape=(rows, cols),
                         dtype=info["dtype"])
    if s is None:
        warnings.warn(f"{info['file']}: tensor {info['tensor']!r} holds NaN or Inf values; "
                      f"its SNR is reported as NaN", RuntimeWarning, stacklevel=3)
        return record
    import numpy as np

    snr, sigma, thr, smax, n_signal = _core.spectrum_stats(np.ascontiguousarray(s, dtype=np.float64),
                                                           rows, cols, no_noise == "inf")
    record.snr, record.sigma, record.threshold = snr, sigma, thr
    record.max_singular_value, record.n_signal = smax, n_signal
    if math.isnan(snr):
        warnings.warn(f"{info['file']}: tensor {info['tensor']!r} is all zeros (no spectrum); "
                      f"its SNR is reported as NaN", RuntimeWarning, stacklevel=3)
    return record


def _add_tied_head(records: List[LayerResult], paths: List[str], types: Any, exclude: Any) -> None:
    """A model with tied embeddings stores no ``lm_head.weight``; the reference still lists
    ``lm_head`` with the embedding's SNR (SPEC §1). So do we, marked as tied."""
    first = Path(paths[0])
    folder = first if first.is_dir() else first.parent
    if not ties_embeddings(read_config(folder)):
        return
    names = [r.name for r in records]
    if "lm_head" in names:
        return
    source = embedding_source(names)
    if source is None:
        return
    inc, exc = _as_list(types), _as_list(exclude)
    if inc and not any(_core.layer_matches(p, "lm_head", "lm_head") for p in inc):
        return
    if any(_core.layer_matches(p, "lm_head", "lm_head") for p in exc):
        return
    src = records[names.index(source)]
    records.append(LayerResult(name="lm_head", type="lm_head", snr=src.snr, shape=src.shape,
                               dtype=src.dtype, sigma=src.sigma, threshold=src.threshold,
                               max_singular_value=src.max_singular_value, n_signal=src.n_signal,
                               tied_to=source))
    order = _core.natural_order([r.name for r in records])
    records[:] = [records[i] for i in order]
