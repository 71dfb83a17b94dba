"""``scan()``: from a model path to a ``ScanResult``, in four steps: *resolve* the model's
files, *plan* the work (the catalog's layers, the requested ones, this process's share,
the workers, the checkpoint), *stream* the layers off disk (a Rust thread) through the SVD
workers and the statistics (:mod:`.run.pipeline`), and *assemble* the result, with the tied
head the config describes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from . import _core
from .compute.base import Worker
from .compute.devices import limit_blas_threads, make_workers, plan_workers
from .errors import SpectrumError
from .model.config import attention_heads, fp8_scale_block, model_type, quant_method, read_config
from .model.layouts import HEAD, embedding_names, tied_head_source
from .model.source import default_name, resolve_model
from .options import (
    DEFAULT_TOP_PERCENT,
    DEFAULT_WINDOW_BYTES,
    GROUP_BY,
    NO_NOISE,
    DeviceSpec,
    Dtype,
    GroupBy,
    Method,
    NoNoise,
    as_list,
    check_choice,
    check_method_dtype,
    check_top_percent,
)
from .results import LayerResult, ScanResult
from .run import distributed, pipeline
from .run.checkpoint import Checkpoint, identity, rank_path
from .run.progress import Progress
from .run.schedule import largest_first, read_order

PathLike = Union[str, "os.PathLike[str]"]


def scan(
    model: Union[PathLike, Sequence[PathLike]],
    *,
    types: Union[None, str, Iterable[str]] = None,
    exclude: Union[None, str, Iterable[str]] = None,
    include_1d: bool = False,
    group_experts: bool = False,
    group_by: GroupBy = "type",
    split_fused: bool = False,
    max_experts: Optional[int] = None,
    max_layers: Optional[int] = None,
    top_percent: float = DEFAULT_TOP_PERCENT,
    device: DeviceSpec = "auto",
    method: Method = "gram",
    dtype: Dtype = "auto",
    no_noise: NoNoise = "one",
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    name: Optional[str] = None,
    progress: Union[bool, Callable[..., None]] = False,
    checkpoint: Optional[PathLike] = None,
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
        group_experts: one type for all experts of a projection (``mlp.experts.*.down_proj``,
            ``mlp.experts.gate_up_proj.*``), so that selection ranks experts against each
            other; default: one type per expert index, as the reference (docs/layouts.md).
        group_by: ``"type"`` (the reference's types) or ``"stack"`` (the stack is part of
            the type: ``model.vision_tower.encoder.layers.*.self_attn.q_proj`` apart from
            ``model.language_model.layers.*.self_attn.q_proj``, encoder apart from decoder).
        split_fused: scan each half of a fused ``gate_up_proj`` as a layer of its own
            (``gate_proj``, ``up_proj``), and each of query, key and value of a fused
            attention (``qkv_proj``, ``c_attn``, ``query_key_value``, ``wqkv``, ``Wqkv``,
            a Qwen-VL vision ``qkv``), laid out as the
            family (``config.json``'s ``model_type`` and heads) does it
            (docs/layouts.md); default: one matrix.
        max_experts: the most layers one stacked-experts tensor may become (default 65,536).
        max_layers: the most layers a model may have (default 4,000,000).
        top_percent: share of each type selected by ``ScanResult.select()`` (default 25).
        device: ``"auto"`` (the first GPU when torch sees one, else the CPU, where numpy
            computes and torch is not imported), ``"cpu"``,
            ``"cuda"`` (every visible GPU, one worker each), ``"cuda:1"``, or a list such as
            ``["cuda:0", "cuda:2"]`` (one worker each). ``"cpu"`` runs one single-threaded
            worker per BLAS thread; CPU workers in a list run on one thread each too, so
            every plan gives the same numbers. Under ``torchrun``, ``"auto"`` is the
            rank's own GPU.
        method: ``"gram"`` (eigenvalues of the Gram matrix, default) or ``"svd"``.
        dtype: precision of the Gram matrix (its eigenvalues are always computed in
            float64). ``"auto"`` (default): float32, formed again in float64 for a matrix
            where an a-posteriori bound says float32 rounding could move the SNR by 5e-5
            or more (docs/method.md §2 asks for 1e-4); ``"float32"`` or ``"float64"`` force
            one (float32 alone misses the bound on matrices with strong outliers or many
            zero singular values).
        no_noise: ``"one"`` (current reference: noise 1.0 when no value is below the
            threshold) or ``"inf"`` (older reference versions: SNR ``Infinity``).
        window_bytes: host bytes the reader may queue ahead of the worker.
        name: model name used in result file names. Default: a Hugging Face id as given; for
            a local folder, the Hub id its ``config.json`` records (``_name_or_path``) or
            else the folder's name. Axolotl finds the results file by the name it trains.
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

    Raises:
        SpectrumError: (a ``ValueError``) for every problem with the input, naming the file;
            its subclasses ``ModelFileError``, ``UnsupportedLayoutError`` and
            ``CheckpointMismatchError`` say which kind.
        ScanInterrupted: on Ctrl-C, carrying the layers finished so far.
    """
    check_choice("no_noise", no_noise, NO_NOISE)
    check_choice("group_by", group_by, GROUP_BY)
    check_method_dtype(method, dtype)
    request = _Request(
        types=as_list(types),
        exclude=as_list(exclude),
        include_1d=include_1d,
        group_experts=bool(group_experts),
        group_by=group_by,
        split_fused=bool(split_fused),
        max_experts=max_experts,
        max_layers=max_layers,
        top_percent=check_top_percent(top_percent),
        method=method,
        dtype=dtype,
        no_noise=no_noise,
    )
    paths = _resolve(model, download)
    plan = _plan(paths, request, device, checkpoint, distributed_scan)
    model_name = name if name is not None else _default_name(model, paths)
    start = time.perf_counter()
    results: Dict[int, LayerResult] = {}
    resumed = 0
    error: Optional[Exception] = None
    try:
        resumed = _resume(plan, results)
        show = progress if plan.rank_world is None or plan.rank_world[0] == 0 else False
        _stream(plan, results, request.no_noise, window_bytes, show)
    except KeyboardInterrupt:
        # Nothing computed is lost: the layers finished so far travel with the exception
        # (and are in the checkpoint, when there is one).
        raise ScanInterrupted(_assemble(plan, request, dict(results), model_name, start, resumed)) from None
    except Exception as e:
        if plan.rank_world is None:
            raise
        error = e  # every rank must reach the gather, or the others wait for ever
    if plan.rank_world is not None:
        results = distributed.gather(results, error)
    return _assemble(plan, request, results, model_name, start, resumed)


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C during a scan. ``partial`` holds every layer finished before it."""

    def __init__(self, partial: ScanResult) -> None:
        super().__init__(f"scan interrupted after {len(partial)} of the requested layers")
        self.partial = partial


@dataclasses.dataclass(frozen=True)
class _Request:
    """What the caller asked for, checked."""

    types: List[str]
    exclude: List[str]
    include_1d: bool
    group_experts: bool
    group_by: str
    split_fused: bool
    max_experts: Optional[int]
    max_layers: Optional[int]
    top_percent: float
    method: str
    dtype: str
    no_noise: str


@dataclasses.dataclass
class _Plan:
    """The work of one process: every layer of the model, the indices it scans (``mine``,
    a share of ``chosen`` under torchrun), the workers, and the checkpoint."""

    paths: List[str]
    catalog: _core.Catalog
    layers: List[_core.LayerInfo]
    mine: List[int]
    #: A tied head has no tensor of its own: its numbers are the embedding's (this index),
    #: scanned for it even when the embedding's own type was not asked for (then ``hidden``).
    tied_source: Optional[int]
    hidden: Set[int]
    workers: List[Worker]
    threads: Optional[int]
    rank_world: Optional[Tuple[int, int]]
    checkpoint: Optional[Checkpoint]


def _resolve(model: Union[PathLike, Sequence[PathLike]], download: Optional[bool]) -> List[str]:
    """Step 1: the model's files (a folder, an index, files, or a cached hub id)."""
    if isinstance(model, (str, os.PathLike)):
        return [os.fspath(resolve_model(os.fspath(model), download=download))]
    paths = [os.fspath(p) for p in model]
    if not paths:
        raise SpectrumError("no model path given")
    return paths


def _plan(
    paths: List[str], request: _Request, device: Any, checkpoint: Optional[PathLike], distributed_scan: bool
) -> _Plan:
    """Step 2: open the catalog, pick the layers to scan and this process's share, make the
    workers, and open (not yet read) the checkpoint."""
    rank_world = distributed.active() if distributed_scan else None
    devices, threads = plan_workers(distributed.local_device(device) if rank_world else device)
    workers = make_workers(devices, request.method, request.dtype)
    config = read_config(_model_folder(paths))
    caps = {
        k: v for k, v in (("max_experts", request.max_experts), ("max_layers", request.max_layers)) if v is not None
    }
    catalog = _core.Catalog(
        paths,
        scale_block=fp8_scale_block(config),
        group_experts=request.group_experts,
        group_by=request.group_by,
        split_fused=request.split_fused,
        model_type=model_type(config),
        quant_method=quant_method(config),
        attention_heads=attention_heads(config),
        **caps,
    )
    layers = catalog.layers()
    chosen = catalog.select(request.types, request.exclude, request.include_1d)
    tied_source = tied_head_source(config, [layer.name for layer in layers], request.types, request.exclude)
    hidden = set()
    if tied_source is not None and tied_source not in chosen:
        hidden.add(tied_source)
        chosen = sorted(chosen + [tied_source])
    if not chosen:
        raise SpectrumError(
            f"{paths[0]}: no layer matches the requested types "
            f"(types={request.types or 'all'}, exclude={request.exclude})"
        )
    mine = chosen
    if rank_world is not None:
        rank, world = rank_world
        costs = [(i, distributed.layer_cost(layers[i].rows, layers[i].cols)) for i in chosen]
        mine = distributed.shares(costs, world)[rank]
        if checkpoint is not None:
            checkpoint = rank_path(checkpoint, rank, world)
    ck = None
    if checkpoint is not None:
        ck = Checkpoint(
            Path(checkpoint), identity(catalog.files()), _numbers_settings(request, [layers[i].name for i in mine])
        )
    return _Plan(
        paths=paths,
        catalog=catalog,
        layers=layers,
        mine=mine,
        tied_source=tied_source,
        hidden=hidden,
        workers=workers,
        threads=threads,
        rank_world=rank_world,
        checkpoint=ck,
    )


def _resume(plan: _Plan, results: Dict[int, LayerResult]) -> int:
    """Puts the layers the checkpoint already holds into ``results``; returns how many."""
    if plan.checkpoint is None:
        return 0
    done = plan.checkpoint.load()
    names = {plan.layers[i].name: i for i in plan.mine}
    # Types follow the options of this scan (group_experts, group_by), not those of the
    # scan that wrote the checkpoint: they change no number.
    results.update(
        {names[n]: dataclasses.replace(rec, type=plan.layers[names[n]].type) for n, rec in done.items() if n in names}
    )
    return len(results)


def _stream(plan: _Plan, results: Dict[int, LayerResult], no_noise: str, window_bytes: int, progress: Any) -> None:
    """Step 3: streams this process's layers that ``results`` lacks through the workers,
    adding each finished one to ``results`` (and the checkpoint) as soon as it is known."""
    layers, mine, ck = plan.layers, plan.mine, plan.checkpoint
    todo = [i for i in mine if i not in results]
    bar = Progress(
        progress,
        total_layers=len(mine),
        total_bytes=sum(layers[i].nbytes for i in mine),
        done_layers=len(results),
        done_bytes=sum(layers[i].nbytes for i in results),
    )

    def finished(index: int, record: LayerResult) -> None:
        if ck is not None:
            ck.add(record)
        results[index] = record
        bar.update(record.name, layers[index].nbytes)

    if ck is not None:
        ck.open()
    try:
        with limit_blas_threads(plan.threads):
            order, file_order = _schedule(plan, todo)
            stream = plan.catalog.stream(
                order,
                window_bytes=max(int(window_bytes), 1),
                raw=all(w.wants_raw for w in plan.workers),
                file_order=file_order,
            )
            try:
                pipeline.run(stream, plan.workers, layers, no_noise, finished)
            finally:
                stream.close()
    finally:
        bar.close()
        if ck is not None:
            ck.close()


def _schedule(plan: _Plan, todo: List[int]) -> Tuple[List[int], bool]:
    """The order to read and compute the layers in (:mod:`.run.schedule`), and whether it
    is the files' order."""
    devices = [str(w.device) for w in plan.workers]
    layers = plan.layers
    return read_order(todo, lambda i: (layers[i].rows, layers[i].cols), devices), not largest_first(devices)


def _assemble(
    plan: _Plan,
    request: _Request,
    records_by_index: Dict[int, LayerResult],
    model_name: str,
    start: float,
    resumed: int,
) -> ScanResult:
    """Step 4: the records in model order, the tied head added as a copy of its source."""
    records = [records_by_index[i] for i in sorted(records_by_index) if i not in plan.hidden]
    if plan.tied_source is not None and plan.tied_source in records_by_index:
        src = records_by_index[plan.tied_source]
        records.append(dataclasses.replace(src, name=HEAD, type=HEAD, tied_to=src.name))
        records = [records[i] for i in _core.natural_order([r.name for r in records])]
    settings = {
        "method": request.method,
        "dtype": request.dtype,
        "device": _describe(plan.workers),
        "no_noise": request.no_noise,
        "include_1d": request.include_1d,
        "group_experts": request.group_experts,
        "group_by": request.group_by,
        "split_fused": request.split_fused,
        "types": request.types,
        "exclude": request.exclude,
        "seconds": round(time.perf_counter() - start, 3),
        "resumed_layers": resumed,
        "processes": plan.rank_world[1] if plan.rank_world else 1,
        "checkpoint": os.fspath(plan.checkpoint.path) if plan.checkpoint is not None else None,
        "model_path": plan.paths[0] if len(plan.paths) == 1 else plan.paths,
    }
    embeddings = embedding_names(layer.name for layer in plan.layers)
    if plan.tied_source is not None:
        embeddings.append(HEAD)
    return ScanResult(
        model_name=model_name, layers=records, top_percent=request.top_percent, settings=settings, embeddings=embeddings
    )


def _default_name(model: Union[PathLike, Sequence[PathLike]], paths: List[str]) -> str:
    if isinstance(model, (str, os.PathLike)):
        return default_name(os.fspath(model))
    return os.path.commonpath(paths)


def _describe(workers: List[Worker]) -> str:
    """``cuda:0, cuda:1`` or ``cpu x2`` (two single-threaded CPU workers)."""
    names = [str(w.device) for w in workers]
    if len(names) > 1 and len(set(names)) == 1:
        return f"{names[0]} x{len(names)}"
    return ", ".join(names)


def _numbers_settings(request: _Request, names: List[str]) -> Dict[str, Any]:
    """The settings that change a scan's numbers or its set of layers (the checkpoint
    refuses to mix results of other settings)."""
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {
        "method": request.method,
        "dtype": request.dtype,
        "no_noise": request.no_noise,
        "layers": len(names),
        "layer_names_sha256": digest,
    }


def _model_folder(paths: List[str]) -> Path:
    first = Path(paths[0])
    return first if first.is_dir() else first.parent
