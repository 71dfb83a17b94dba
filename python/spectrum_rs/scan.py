"""``scan()``: from a model path to a ``ScanResult``. Opens the catalog (Rust), picks this
process's layers, streams them off disk (Rust thread) through the pipeline of SVD workers
(numpy on the CPU, torch on GPUs) and statistics (Rust), keeps the checkpoint, and adds
the tied head the config describes."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from . import _core, distributed, pipeline
from ._core import SpectrumError
from .checkpoint import Checkpoint, identity
from .model_config import embedding_source, fp8_scale_block, read_config, ties_embeddings
from .model_source import default_name, resolve_model
from .progress import Progress
from .results import LayerResult, ScanResult, embedding_names
from .singular_values import Worker, limit_blas_threads, make_workers, plan_workers

PathLike = Union[str, "os.PathLike[str]"]
# Read-ahead of 128 MiB: peak RSS rose 81 % from `small` to its 8x-layers copy with a
# 2 GiB window, 9.6 % with 128 MiB, at the same speed (benches/results/cpu-2026-11-28.md).
DEFAULT_WINDOW_BYTES = 128 << 20


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
    dtype: str = "auto",
    no_noise: str = "one",
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    name: Optional[str] = None,
    progress: Union[bool, Callable[..., None]] = False,
    checkpoint: Union[None, str, "os.PathLike[str]"] = None,
    download: Optional[bool] = None,
    distributed_scan: bool = False,
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
        device: ``"auto"`` (the first GPU when torch sees one, else the CPU, where numpy
            computes and torch is not imported), ``"cpu"``,
            ``"cuda"`` (every visible GPU, one worker each), ``"cuda:1"``, or a list such as
            ``["cuda:0", "cuda:2"]``. Under ``torchrun``, ``"auto"`` is the rank's own GPU.
        method: ``"gram"`` (eigenvalues of the Gram matrix, default) or ``"svd"``.
        dtype: precision of the Gram matrix (its eigenvalues are always computed in
            float64). ``"auto"`` (default): float32, formed again in float64 for a matrix
            where an a-posteriori bound says float32 rounding could move the SNR by 5e-5
            or more (SPEC §2 allows 1e-4); ``"float32"`` or ``"float64"`` force one
            (float32 alone misses the bound on matrices with strong outliers or many zero
            singular values).
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
        distributed_scan: True to spread the scan over the ``torch.distributed`` process
            group that is up (``torchrun``): every rank must call ``scan`` with the same
            arguments; each scans a cost-balanced share and every rank returns the whole,
            identical result. An error on any rank is raised on all of them.
    """
    if no_noise not in ("one", "inf"):
        raise ValueError(f"no_noise must be 'one' or 'inf', got {no_noise!r}")
    if not (0 <= float(top_percent) <= 100):
        raise ValueError(f"top_percent must be between 0 and 100, got {top_percent}")
    paths = _model_paths(model, download)
    rank_world = distributed.active() if distributed_scan else None
    devices, threads = plan_workers(distributed.local_device(device) if rank_world else device)
    workers = make_workers(devices, method, dtype)
    config = read_config(_model_folder(paths))
    catalog = _core.Catalog(paths, scale_block=fp8_scale_block(config))
    layers = catalog.layers()
    chosen = catalog.select(_as_list(types), _as_list(exclude), include_1d)
    # A tied head has no tensor of its own: its numbers are the embedding's, which is
    # scanned for it even when the embedding's own type was not asked for.
    tied_source = _tied_head_source(config, layers, types, exclude)
    hidden = set()
    if tied_source is not None and tied_source not in chosen:
        hidden.add(tied_source)
        chosen = sorted(chosen + [tied_source])
    if not chosen:
        raise SpectrumError(f"{paths[0]}: no layer matches the requested types "
                            f"(types={_as_list(types) or 'all'}, exclude={_as_list(exclude)})")
    mine = chosen
    if rank_world is not None:
        rank, world = rank_world
        costs = [(i, distributed.layer_cost(layers[i]["rows"], layers[i]["cols"])) for i in chosen]
        mine = distributed.shares(costs, world)[rank]
        if checkpoint is not None:
            checkpoint = f"{os.fspath(checkpoint)}.rank{rank}-of-{world}"
    ck = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        ck = Checkpoint(checkpoint, identity(catalog.files()),
                        _numbers_settings(method, dtype, no_noise, [layers[i]["name"] for i in mine]))
    if name is not None:
        model_name = name
    elif isinstance(model, (str, os.PathLike)):
        model_name = default_name(os.fspath(model))
    else:
        model_name = os.path.commonpath(paths)
    start = time.perf_counter()
    results: Dict[int, LayerResult] = {}
    resumed = [0]

    def result(records_by_index: Dict[int, LayerResult]) -> ScanResult:
        records = [records_by_index[i] for i in sorted(records_by_index) if i not in hidden]
        if tied_source is not None and tied_source in records_by_index:
            src = records_by_index[tied_source]
            records.append(dataclasses.replace(src, name="lm_head", type="lm_head", tied_to=src.name))
            records = [records[i] for i in _core.natural_order([r.name for r in records])]
        settings = {
            "method": method, "dtype": dtype, "device": _describe(workers),
            "no_noise": no_noise, "include_1d": include_1d, "types": _as_list(types),
            "exclude": _as_list(exclude), "seconds": round(time.perf_counter() - start, 3),
            "resumed_layers": resumed[0], "processes": rank_world[1] if rank_world else 1,
            "checkpoint": os.fspath(checkpoint) if checkpoint is not None else None,
            "model_path": paths[0] if len(paths) == 1 else paths,
        }
        embeddings = embedding_names(layer["name"] for layer in layers)
        if tied_source is not None:
            embeddings.append("lm_head")
        return ScanResult(model_name=model_name, layers=records, top_percent=float(top_percent),
                          settings=settings, embeddings=embeddings)

    show = progress if rank_world is None or rank_world[0] == 0 else False
    error: Optional[Exception] = None
    try:
        with limit_blas_threads(threads):
            resumed[0] = _scan_share(catalog, layers, mine, workers, no_noise, window_bytes, show, ck, results)
    except KeyboardInterrupt:
        # Nothing computed is lost: the layers finished so far travel with the exception
        # (and are in the checkpoint, when there is one).
        raise ScanInterrupted(result(dict(results))) from None
    except Exception as e:
        if rank_world is None:
            raise
        error = e  # every rank must reach the gather, or the others wait for ever
    if rank_world is not None:
        results = distributed.gather(results, error)
    return result(results)


def _scan_share(catalog: Any, layers: List[dict], mine: List[int], workers: List[Worker],
                no_noise: str, window_bytes: int, progress: Any, ck: Optional[Checkpoint],
                results: Dict[int, LayerResult]) -> int:
    """Scans this process's layers into ``results``, skipping those the checkpoint holds;
    returns how many came from the checkpoint."""
    if ck is not None:
        done = ck.load()
        results.update({i: done[layers[i]["name"]] for i in mine if layers[i]["name"] in done})
        ck.open()
    try:
        todo = [i for i in mine if i not in results]
        bar = Progress(progress, total_layers=len(mine), total_bytes=sum(layers[i]["nbytes"] for i in mine),
                       done_layers=len(results), done_bytes=sum(layers[i]["nbytes"] for i in results))

        def finished(index: int, record: LayerResult) -> None:
            if ck is not None:
                ck.add(record)
            results[index] = record
            bar.update(record.name, layers[index]["nbytes"])

        try:
            stream = catalog.stream(todo, window_bytes=max(int(window_bytes), 1),
                                    raw=all(w.wants_raw for w in workers))
            try:
                pipeline.run(stream, workers, layers, no_noise, finished)
            finally:
                stream.close()
        finally:
            bar.close()
    finally:
        if ck is not None:
            ck.close()
    return len(mine) - len(todo)


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C during a scan. ``partial`` holds every layer finished before it."""

    def __init__(self, partial: ScanResult) -> None:
        super().__init__(f"scan interrupted after {len(partial)} of the requested layers")
        self.partial = partial


def _describe(workers: List[Worker]) -> str:
    """``cuda:0, cuda:1`` or ``cpu x2`` (two single-threaded CPU workers)."""
    names = [str(w.device) for w in workers]
    if len(names) > 1 and len(set(names)) == 1:
        return f"{names[0]} x{len(names)}"
    return ", ".join(names)


def _numbers_settings(method: str, dtype: str, no_noise: str, names: List[str]) -> dict:
    """The settings that change a scan's numbers or its set of layers."""
    import hashlib

    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {"method": method, "dtype": dtype, "no_noise": no_noise, "layers": len(names),
            "layer_names_sha256": digest}


def _model_folder(paths: List[str]) -> Path:
    first = Path(paths[0])
    return first if first.is_dir() else first.parent


def _tied_head_source(config: dict, layers: List[dict], types: Any, exclude: Any) -> Optional[int]:
    """With tied embeddings (``config.json``) the file holds no ``lm_head.weight``; the
    reference still lists ``lm_head`` with the embedding's SNR (SPEC §1). Returns the index
    of the embedding layer to report it from, or None when there is no tied head to
    report (no tie, a real head, no embedding, or ``lm_head`` not selected)."""
    if not ties_embeddings(config):
        return None
    names = [layer["name"] for layer in layers]
    if "lm_head" in names:
        return None
    source = embedding_source(names)
    if source is None:
        return None
    inc, exc = _as_list(types), _as_list(exclude)
    if inc and not any(_core.layer_matches(p, "lm_head", "lm_head") for p in inc):
        return None
    if any(_core.layer_matches(p, "lm_head", "lm_head") for p in exc):
        return None
    return names.index(source)
