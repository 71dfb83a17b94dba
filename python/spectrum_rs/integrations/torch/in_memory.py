"""``scan_model``: the SNR of every weight matrix of a model held in memory (a module
or a state dict), with ``scan()``'s workers and statistics: CPU parameters on its CPU
workers, GPU ones on the torch worker of their device, sharded ones gathered one at a
time, the ranks of a sharded model splitting the work."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch

from ... import _core
from ...errors import SpectrumError, UnsupportedLayoutError
from ...model.config import ties_embeddings
from ...model.layouts import HEAD, embedding_names, input_embedding
from ...options import (
    DEFAULT_TOP_PERCENT,
    GROUP_BY,
    NO_NOISE,
    GroupBy,
    as_list,
    check_choice,
    check_method_dtype,
    check_top_percent,
)
from ...results import LayerResult, ScanResult
from ...run.pipeline import Problems
from .layers import TensorLayer, is_requested, layer_name_of, layers_of
from .tensors import SCANNABLE, Entry, Tensors, gather_units, gathered


def _config_dict(config: Any) -> Dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        try:
            d = to_dict()
            if isinstance(d, dict):
                return d
        except Exception:  # a config that cannot describe itself changes nothing but the tie
            pass
    tie = getattr(config, "tie_word_embeddings", None)
    return {"tie_word_embeddings": tie} if isinstance(tie, bool) else {}


def scan_model(
    model_or_state_dict: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
    *,
    types: Union[None, str, Iterable[str]] = None,
    exclude: Union[None, str, Iterable[str]] = None,
    include_1d: bool = False,
    group_experts: bool = False,
    group_by: GroupBy = "type",
    top_percent: float = DEFAULT_TOP_PERCENT,
    dtype: str = "auto",
    method: str = "gram",
    no_noise: str = "one",
    progress: Any = False,
    name: Optional[str] = None,
    device: str = "auto",
    config: Any = None,
    distributed: Optional[bool] = None,
) -> ScanResult:
    """Measures the SNR of every weight matrix of an in-memory model, one matrix at a time.

    The numbers are those of :func:`spectrum_rs.scan` on the same weights saved with
    ``save_pretrained``: the same layer names and types (the catalog's rule:
    ``<name>.weight`` -> layer ``<name>``; 1-D tensors skipped unless ``include_1d``;
    a stacked-experts tensor ``[E, out, in]`` -> E layers ``<layer>.<e>``), the same
    workers and statistics, and a tied ``lm_head`` reported as a copy of the input
    embedding with ``tied_to`` set.

    Args:
        model_or_state_dict: a ``torch.nn.Module`` (also under DDP, ``torch.compile``,
            FSDP1 with ``use_orig_params=True``, FSDP2 ``fully_shard``, DeepSpeed ZeRO-3)
            or a state dict (``{name: tensor}``, DTensors included).
        types, exclude, include_1d, group_experts, group_by, top_percent, dtype, method,
            no_noise, name: as for :func:`spectrum_rs.scan`. ``name`` defaults to the config's ``_name_or_path``.
        progress: a progress bar on stderr (True) or a callable
            ``progress(done_layers, total_layers, done_bytes, total_bytes, layer_name)``.
        device: ``"auto"``: each matrix is computed where it lives (a GPU tensor on its
            own GPU with the torch worker, a CPU tensor with the numpy worker);
            ``"cpu"``: every matrix is copied to the CPU, one at a time.
        config: the model config (a dict or a ``PretrainedConfig``) that says whether the
            head is tied; default ``model.config``. Needed for a state dict only.
        distributed: with sharded parameters (FSDP, ZeRO-3) every rank must call
            ``scan_model`` (gathering is a collective); by default the ranks then split
            the computation and exchange the results (``all_gather_object``), so every
            rank returns the same result. True forces that split for an unsharded model
            too (every rank must call), False makes every rank compute every layer.

    Each tensor is detached; a sharded one is gathered alone (FSDP2/DTensor:
    ``full_tensor()``; ZeRO-3: ``GatheredParameters([p])``; FSDP1: its unit's
    ``summon_full_params(recurse=False)``), converted to float32 on the CPU (or kept on
    its GPU) and freed before the next one.
    """
    check_choice("no_noise", no_noise, NO_NOISE)
    check_choice("group_by", group_by, GROUP_BY)
    check_method_dtype(method, dtype)
    check_choice("device", device, ("auto", "cpu"))
    pct = check_top_percent(top_percent)
    want_types, want_exclude = as_list(types), as_list(exclude)
    start = time.perf_counter()
    tensors = Tensors(model_or_state_dict)
    module = tensors.module
    source = type(module).__name__ if module is not None else "state_dict"
    cfg = _config_dict(config if config is not None else getattr(module, "config", None))
    rank, world = _share(tensors, distributed)

    names = [e.name for e in tensors.unique]
    # Layer names known without gathering (for the embeddings list and the tied head).
    name_layers = [n for n in (layer_name_of(x) for x in names) if n is not None]
    tied_source = _tied_source(tensors, cfg, name_layers, want_types, want_exclude)
    hidden: Set[str] = set()

    def chosen(spec: TensorLayer) -> bool:
        if spec.name == tied_source:
            if not ((spec.ndim >= 2 or include_1d) and is_requested(want_types, want_exclude, spec.name, spec.type)):
                hidden.add(spec.name)
            return True
        return (spec.ndim >= 2 or include_1d) and is_requested(want_types, want_exclude, spec.name, spec.type)

    # Plan what can be planned without gathering (everything but FSDP1 units without
    # shape records): the layers to compute and their bytes, for progress.
    plan: List[Tuple[List[Entry], Optional[List[List[TensorLayer]]]]] = []
    total_layers = total_bytes = 0
    for group in gather_units(tensors):
        if all(e.shape is not None for e in group):
            per_entry = [
                [s for s in layers_of(e.name, e.shape or (), e.dtype, source, group_experts, group_by) if chosen(s)]
                for e in group
            ]
            if not any(per_entry):
                continue
            for e, ss in zip(group, per_entry):
                _check_scannable(e, ss)
                total_layers += len(ss)
                total_bytes += sum(s.rows * s.cols for s in ss) * _itemsize(e.dtype)
            plan.append((group, per_entry))
        else:
            if any(layer_name_of(e.name) is not None or "experts" in e.name.split(".") for e in group):
                total_layers += sum(1 for e in group if layer_name_of(e.name) is not None)
                plan.append((group, None))
    bar = _progress(progress if rank == 0 else False, total_layers, total_bytes)
    records: Dict[str, LayerResult] = {}
    workers: Dict[str, Any] = {}
    problems = Problems()  # one warning per kind for the whole scan, not one per layer
    local = _local_cpu_items(plan, device) if world == 1 else None
    try:
        if local is not None:
            workers = {_measure_on_cpu_workers(local, method, dtype, no_noise, records, bar): None}
        else:
            counter = 0
            with torch.no_grad():
                for group, planned in plan:
                    with gathered(group) as fulls:
                        for i, (e, full) in enumerate(zip(group, fulls)):
                            if planned is not None:
                                layer_specs = planned[i]
                            else:
                                layer_specs = [
                                    s
                                    for s in layers_of(
                                        e.name, tuple(full.shape), full.dtype, source, group_experts, group_by
                                    )
                                    if chosen(s)
                                ]
                                _check_scannable(e, layer_specs)
                            for s in layer_specs:
                                owner = counter % world
                                counter += 1
                                if owner == rank:
                                    records[s.name] = _measure(
                                        full, s, device, method, dtype, no_noise, workers, problems
                                    )
                                bar.update(s.name, s.rows * s.cols * _itemsize(e.dtype))
                            del full
                        del fulls
    finally:
        bar.close()
        problems.warn(stacklevel=3)
    if world > 1:
        records = _all_gather_records(records)
    return _assemble(
        records,
        tied_source,
        hidden,
        name_layers,
        model_name=_model_name(name, module, cfg),
        top_percent=pct,
        settings={
            "method": method,
            "dtype": dtype,
            "device": _describe(workers),
            "no_noise": no_noise,
            "include_1d": include_1d,
            "group_experts": group_experts,
            "group_by": group_by,
            "types": want_types,
            "exclude": want_exclude,
            "seconds": round(time.perf_counter() - start, 3),
            "processes": world,
            "source": "state_dict" if module is None else "module",
            "model_class": source,
        },
    )


def _share(tensors: Tensors, distributed: Optional[bool]) -> Tuple[int, int]:
    """(rank, world) of the computation split: (0, 1) when this process computes all."""
    dist = torch.distributed
    up = dist.is_available() and dist.is_initialized()
    if distributed is True and not up:
        raise SpectrumError("scan_model(distributed=True) needs an initialized torch.distributed process group")
    if distributed is False or not up:
        return 0, 1
    if distributed is None and not tensors.distributed():
        return 0, 1
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _all_gather_records(records: Dict[str, LayerResult]) -> Dict[str, LayerResult]:
    dist = torch.distributed
    parts: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    merged: Dict[str, LayerResult] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def _tied_source(
    tensors: Tensors, cfg: Dict[str, Any], name_layers: List[str], types: List[str], exclude: List[str]
) -> Optional[str]:
    """The input embedding layer a tied ``lm_head`` repeats, or None (scan.py
    ``_tied_head_source``): the head is tied when ``lm_head.weight`` is the same tensor as
    the input embedding's (same object or storage) or when the config ties them and the
    model has no head tensor of its own."""
    head_weight = f"{HEAD}.weight"
    if HEAD in name_layers:
        return None  # a head of its own (not an alias: aliases are not in unique names)
    aliased = head_weight in tensors.aliases
    if not aliased and not ties_embeddings(cfg):
        return None
    source = input_embedding(name_layers)
    if source is None:
        return None
    if aliased and tensors.aliases[head_weight] != f"{source}.weight":
        return None  # tied to something that is not the input embedding
    if types and not any(_core.layer_matches(p, HEAD, HEAD) for p in types):
        return None
    if any(_core.layer_matches(p, HEAD, HEAD) for p in exclude):
        return None
    return source


def _check_scannable(e: Entry, specs: List[TensorLayer]) -> None:
    if not specs:
        return
    t = e.tensor
    if getattr(t, "device", None) is not None and t.device.type == "meta":
        raise UnsupportedLayoutError(
            f"parameter {e.name!r} is on the meta device (not materialized): load the weights before scanning"
        )
    if e.dtype not in SCANNABLE:
        raise UnsupportedLayoutError(
            f"parameter {e.name!r} has dtype {str(e.dtype).replace('torch.', '')}, which scan_model cannot scan "
            f"(supported: float32, float16, bfloat16, float64; quantized and FP8 weights: scan the checkpoint files "
            f"with spectrum_rs.scan()); exclude it with its type {specs[0].type!r}"
        )


def _itemsize(dtype: Any) -> int:
    try:
        return int(torch.empty((), dtype=dtype).element_size())
    except (TypeError, RuntimeError):
        return 1


def _matrix(full: torch.Tensor, s: TensorLayer) -> torch.Tensor:
    """The ``rows x cols`` matrix of layer ``s`` in its (gathered) tensor: one expert of a
    stacked tensor, or the whole tensor."""
    return (full[s.expert] if s.expert is not None else full).reshape(s.rows, s.cols)


def _float32_copy(m: torch.Tensor) -> Any:
    """``m`` as a float32 numpy array on the CPU, always a copy: a view would share (and
    pin the size of) the model's storage, which FSDP frees and resizes after a gather."""
    return m.to(device="cpu", dtype=torch.float32, copy=True).contiguous().numpy()


def _measure(
    full: torch.Tensor,
    s: TensorLayer,
    device: str,
    method: str,
    dtype: str,
    no_noise: str,
    workers: Dict[str, Any],
    problems: Problems,
) -> LayerResult:
    from ...run.pipeline import measure

    m = _matrix(full, s)
    if device == "auto" and m.device.type == "cuda":
        key = str(m.device)
        if key not in workers:
            from ...compute.torch_worker import TorchWorker

            workers[key] = TorchWorker(device=m.device, method=method, dtype=dtype)
        return measure(workers[key], s, m, no_noise, problems)
    if "cpu" not in workers:
        from ...compute.numpy_worker import NumpyWorker

        workers["cpu"] = NumpyWorker(method=method, dtype=dtype)
    worker = workers["cpu"]
    array = _float32_copy(m)
    record = measure(worker, s, worker.to_matrix(array, "F32", s.rows, s.cols), no_noise, problems)
    del array
    return record


def _local_cpu_items(
    plan: Sequence[Tuple[List[Entry], Optional[List[List[TensorLayer]]]]], device: str
) -> Optional[List[Tuple[Entry, TensorLayer]]]:
    """The layers to compute, when every one is a plain tensor (nothing to gather) that
    is computed on the CPU: then the CPU workers of :func:`spectrum_rs.scan` take them
    (:func:`_measure_on_cpu_workers`). None otherwise (sharded parameters, whose gathers
    are collectives every rank makes in one order; or tensors on a GPU)."""
    items: List[Tuple[Entry, TensorLayer]] = []
    for group, planned in plan:
        if planned is None:
            return None
        for e, specs in zip(group, planned):
            if not specs:
                continue
            if e.kind != "plain" or (device == "auto" and e.tensor.device.type == "cuda"):
                return None
            items += [(e, s) for s in specs]
    return items


def _measure_on_cpu_workers(
    items: List[Tuple[Entry, TensorLayer]],
    method: str,
    dtype: str,
    no_noise: str,
    records: Dict[str, LayerResult],
    bar: Any,
) -> str:
    """Computes ``items`` as a CPU scan of files does: one single-threaded worker per BLAS
    thread pulling from one stream (:mod:`..run.pipeline`), so the numbers are those of
    :func:`spectrum_rs.scan` bit for bit whatever the process's BLAS threads, and several
    cores work at once (SmolLM2-135M: 2.8 s, against 5.2 s for one worker with two BLAS
    threads per matrix; benches/results/scan-model-2026-12-01.md). Each tensor is copied
    to float32 in a worker's feeder thread, one layer ahead at most. Returns the workers'
    description (``cpu x2``)."""
    from ...compute.devices import limit_blas_threads, make_workers, plan_workers
    from ...run import pipeline

    devices, threads = plan_workers("cpu")
    cpu_workers = make_workers(devices, method, dtype)
    specs = [s for _, s in items]

    def stream() -> Iterator[Tuple[int, Any, str]]:
        for index, (e, s) in enumerate(items):
            yield index, _float32_copy(_matrix(e.tensor.detach(), s)), "F32"

    def finished(index: int, record: LayerResult) -> None:
        s = specs[index]
        records[s.name] = record
        bar.update(s.name, s.rows * s.cols * _itemsize(items[index][0].dtype))

    with limit_blas_threads(threads):
        pipeline.run(stream(), cpu_workers, specs, no_noise, finished)
    return f"cpu x{len(cpu_workers)}" if len(cpu_workers) > 1 else "cpu"


def _describe(workers: Dict[str, Any]) -> str:
    return ", ".join(sorted(workers)) or "none"


def _progress(progress: Any, total_layers: int, total_bytes: int) -> Any:
    from ...run.progress import Progress

    return Progress(progress, total_layers=total_layers, total_bytes=total_bytes)


def _model_name(name: Optional[str], module: Optional[torch.nn.Module], cfg: Dict[str, Any]) -> str:
    if name:
        return name
    path = cfg.get("_name_or_path")
    if isinstance(path, str) and path:
        return path
    return type(module).__name__ if module is not None else "state_dict"


def _assemble(
    records: Dict[str, LayerResult],
    tied_source: Optional[str],
    hidden: Set[str],
    name_layers: List[str],
    *,
    model_name: str,
    top_percent: float,
    settings: Dict[str, Any],
) -> ScanResult:
    """The records in model order, a tied head added as a copy (scan.py ``_assemble``)."""
    layers = [r for n, r in records.items() if n not in hidden]
    if tied_source is not None and tied_source in records:
        src = records[tied_source]
        layers.append(dataclasses.replace(src, name=HEAD, type=HEAD, tied_to=src.name))
    layers = [layers[i] for i in _core.natural_order([r.name for r in layers])]
    ordered = [name_layers[i] for i in _core.natural_order(name_layers)]
    embeddings = embedding_names(ordered)
    if tied_source is not None:
        embeddings.append(HEAD)
    return ScanResult(
        model_name=model_name, layers=layers, top_percent=top_percent, settings=settings, embeddings=embeddings
    )
