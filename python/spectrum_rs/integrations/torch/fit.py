"""Fitting a scan to a model: every scanned layer's parameter found (a results file's
fused experts bound to the model's stacked tensors), what the scan lacks, shapes
compared, and the plan of what trains: the selected parameters, the input embeddings and
the head. Fails closed (``ScanMismatchError``)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from ...errors import ScanMismatchError
from ...model.layouts import HEAD, is_embedding
from ...options import (
    as_list,
    check_top_percent,
)
from ...results import LayerResult, ScanResult
from .layers import is_requested, layer_name_of, layers_of
from .tensors import Entry, Tensors

_SHOW = 10


def listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


@dataclasses.dataclass
class TrainPlan:
    tensors: Tensors
    pct: float
    #: id(tensor) -> entry, for every tensor that trains.
    train: Dict[int, Entry]
    #: id(tensor) -> entry: every scanned matrix and (when asked) embeddings and head.
    candidates: Dict[int, Entry]
    selected: Dict[str, List[str]]
    layers_per_type: Dict[str, int]
    embedding_params: List[str]
    head_params: List[str]
    tied: Optional[str]
    partial_fused: List[str]


def bind_results(tensors: Tensors, result: ScanResult) -> ScanResult:
    """``result`` with the stored tensor of each layer a results file left unnamed (it
    holds names and SNRs only) found in the model where ``<name>.weight`` is not: one
    expert ``<tensor>.<e>`` of a stacked ``[E, out, in]`` parameter (``e < E``), as an
    in-memory scan of a fused-experts model names them. The same object when nothing
    needs it."""
    changed = {}
    for i, layer in enumerate(result.layers):
        if layer.tensor is not None or layer.tied_to is not None or f"{layer.name}.weight" in tensors.by_name:
            continue
        stem, _, expert = layer.name.rpartition(".")
        entry = tensors.by_name.get(stem)
        if expert.isdigit() and entry is not None and entry.shape is not None and len(entry.shape) == 3:
            if int(expert) < entry.shape[0]:
                changed[i] = dataclasses.replace(layer, tensor=stem)
    if not changed:
        return result
    layers = [changed.get(i, layer) for i, layer in enumerate(result.layers)]
    return dataclasses.replace(result, layers=layers)


def _layer_shape(entry: Entry, layer: LayerResult) -> Optional[Tuple[int, int]]:
    """The (rows, cols) the scan would have measured for ``layer`` on this tensor."""
    s = entry.shape
    if s is None or len(s) == 0:
        return None
    if layer.tied_to is None and layer.parameter != f"{layer.name}.weight" and len(s) == 3:
        return s[1], s[2]
    if len(s) == 1:
        return 1, s[0]
    return s[0], int(math.prod(s[1:]))


def _fused_in_memory(tensors: Tensors, missing: Sequence[str]) -> Optional[str]:
    """A stacked ``[E, out, in]`` experts parameter of the model (with its shape) when the
    scan has per-expert layers the model lacks (``<prefix>.experts.3.gate_proj`` against
    ``<prefix>.experts.gate_up_proj``; transformers 5 also renames Mixtral's
    ``block_sparse_moe.experts.3.w1`` to ``mlp.experts.gate_up_proj``), or None. The one
    under the same prefix is named when there is one."""
    prefixes: Set[str] = set()
    for name in missing:
        parts = name.split(".")
        prefixes.update(
            ".".join(parts[:i]) for i in range(1, len(parts) - 1) if parts[i - 1] == "experts" and parts[i].isdigit()
        )
    if not prefixes:
        return None
    stacked = [
        e for e in tensors.unique if e.shape is not None and len(e.shape) == 3 and "experts" in e.name.split(".")
    ]
    same = [e for e in stacked if e.name.rsplit(".", 1)[0] in prefixes]
    found = same or stacked
    return f"{found[0].name}, shape {list(found[0].shape or ())}" if found else None


def _check_fit(tensors: Tensors, result: ScanResult) -> None:
    """Raises :class:`ScanMismatchError` when ``result`` is not a scan of this model."""
    missing_model: List[str] = []
    absent: List[str] = []  # the names of those layers
    shapes: List[str] = []
    for layer in result.layers:
        entry = tensors.by_name.get(layer.parameter)
        if entry is None:
            missing_model.append(f"{layer.name} (parameter {layer.parameter})")
            absent.append(layer.name)
            continue
        if layer.shape is not None:
            got = _layer_shape(entry, layer)
            if got is not None and tuple(got) != tuple(layer.shape):
                shapes.append(f"{layer.name}: scanned {tuple(layer.shape)}, model {got}")
        if layer.tied_to is None and layer.parameter != f"{layer.name}.weight" and entry.shape is not None:
            expert = layer.name.rsplit(".", 1)[-1]
            if not expert.isdigit() or len(entry.shape) != 3 or int(expert) >= entry.shape[0]:
                shapes.append(f"{layer.name}: no such expert in {layer.parameter} of shape {entry.shape}")
    settings = result.settings or {}
    has_filter = "types" in settings and "exclude" in settings
    types, exclude = as_list(settings.get("types")), as_list(settings.get("exclude"))
    include_1d = bool(settings.get("include_1d"))
    # The types the scan gave (scan()'s settings record its grouping; a results file's do not).
    grouping = bool(settings.get("group_experts"))
    group_by = str(settings.get("group_by") or "type")
    scanned = {layer.name for layer in result.layers}
    scanned_types = set(result.types)
    missing_scan: List[str] = []
    unscanned: Set[str] = set()
    for e in tensors.unique:
        if e.shape is None:
            continue
        for s in layers_of(e.name, e.shape, e.dtype, "", grouping, group_by):
            if s.name in scanned:
                continue
            if has_filter:
                expected = (s.ndim >= 2 or include_1d) and is_requested(types, exclude, s.name, s.type)
            else:
                expected = s.type in scanned_types
            if expected:
                missing_scan.append(s.name)
            elif not has_filter and s.ndim >= 2 and not is_embedding(s.name):
                unscanned.add(s.type)
    if missing_model or missing_scan or shapes:
        parts = []
        if missing_model:
            parts.append(f"{len(missing_model)} scanned layer(s) missing from the model: {listing(missing_model)}")
        if missing_scan:
            parts.append(
                f"{len(missing_scan)} weight matrix(es) of the model missing from the scan: {listing(missing_scan)}"
            )
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {listing(shapes)}")
        fused = _fused_in_memory(tensors, absent)
        hint = (
            f"; the model holds its experts fused in memory ({fused}: transformers 5 fuses them when it loads a "
            f"checkpoint that stores one matrix per expert), so a scan of the files cannot name its parameters: "
            f"scan the model in memory with spectrum_rs.integrations.torch.scan_model(model) (group_experts=True "
            f"ranks the experts of a projection together)"
            if fused
            else "; scan this model with spectrum_rs.integrations.torch.scan_model(model)"
        )
        raise ScanMismatchError(
            f"the scan of {result.model_name!r} does not fit this model ({'; '.join(parts)}){hint}",
            missing_in_model=missing_model,
            missing_in_scan=missing_scan,
            shape_mismatches=shapes,
            fused_in_memory=fused,
        )
    if unscanned:
        warnings.warn(
            f"the scan of {result.model_name!r} has no layers of type(s) {listing(sorted(unscanned))}: "
            f"they stay frozen",
            UserWarning,
            stacklevel=4,
        )


def _embedding_entries(tensors: Tensors) -> Tuple[List[Entry], List[Entry]]:
    """(input embeddings, head) of the model: the layers the naming rule calls embeddings
    (model/layouts.py, the rule of the results YAML) and ``lm_head``, with a transformers
    model's own ``get_input_embeddings()`` / ``get_output_embeddings()`` weights."""
    emb: Dict[int, Entry] = {}
    head: Dict[int, Entry] = {}
    for name, entry in tensors.by_name.items():
        layer = layer_name_of(name)
        if layer is None or not is_embedding(layer):
            continue
        (head if layer == HEAD else emb)[id(entry.tensor)] = entry
    module = tensors.module
    for getter, into in (("get_output_embeddings", head), ("get_input_embeddings", emb)):
        fn = getattr(module, getter, None)
        if not callable(fn):
            continue
        try:
            mod = fn()
        except Exception:  # not every model implements both
            continue
        weight = getattr(mod, "weight", None)
        if isinstance(weight, torch.Tensor):
            for entry in tensors.unique:
                if entry.tensor is weight:
                    into[id(weight)] = entry
    for key in list(emb):
        if key in head and not _is_input_embedding(tensors, key):
            del emb[key]  # an output head the naming rule also calls an embedding (``embed_out``)
    return list(emb.values()), list(head.values())


def _is_input_embedding(tensors: Tensors, key: int) -> bool:
    module = tensors.module
    fn = getattr(module, "get_input_embeddings", None)
    try:
        weight = getattr(fn(), "weight", None) if callable(fn) else None
    except Exception:
        weight = None
    if weight is not None:
        return id(weight) == key
    names = [n for n, e in tensors.by_name.items() if id(e.tensor) == key]
    return any(layer_name_of(n) != HEAD for n in names)


def plan_training(
    model: Any, result: ScanResult, top_percent: Optional[float], embeddings: bool, head: bool
) -> TrainPlan:
    if not isinstance(result, ScanResult):
        raise TypeError(f"expected a spectrum_rs.ScanResult, got {type(result).__name__}")
    pct = check_top_percent(result.top_percent if top_percent is None else top_percent)
    tensors = model if isinstance(model, Tensors) else Tensors(model, module_required=True)
    result = bind_results(tensors, result)
    _check_fit(tensors, result)
    selected = result.selected_by_type(pct)
    by_name = {layer.name: layer for layer in result.layers}
    train: Dict[int, Entry] = {}
    candidates: Dict[int, Entry] = {}
    experts: Dict[str, Tuple[int, int]] = {}
    for layer in result.layers:
        entry = tensors.by_name[layer.parameter]
        candidates[id(entry.tensor)] = entry
        if layer.parameter != f"{layer.name}.weight" and layer.tied_to is None:
            done, total = experts.get(layer.parameter, (0, 0))
            experts[layer.parameter] = (done, total + 1)
    for names in selected.values():
        for n in names:
            layer = by_name[n]
            entry = tensors.by_name[layer.parameter]
            train[id(entry.tensor)] = entry
            if layer.parameter in experts:
                done, total = experts[layer.parameter]
                experts[layer.parameter] = (done + 1, total)
    emb, hd = _embedding_entries(tensors)
    for entries, wanted in ((emb, embeddings), (hd, head)):
        if wanted:
            for e in entries:
                train[id(e.tensor)] = e
                candidates[id(e.tensor)] = e
    tied = None
    for a, first in tensors.aliases.items():
        if layer_name_of(a) == HEAD:
            tied = f"{a} is tied to {first}"
    layers_per_type = {t: 0 for t in result.types}
    for layer in result.layers:
        layers_per_type[layer.type] += 1
    partial = [f"{p} ({d} of {t} experts selected)" for p, (d, t) in experts.items() if 0 < d < t]
    return TrainPlan(
        tensors=tensors,
        pct=pct,
        train=train,
        candidates=candidates,
        selected=selected,
        layers_per_type=layers_per_type,
        embedding_params=_names_of(tensors, emb),
        head_params=_names_of(tensors, hd),
        tied=tied,
        partial_fused=partial,
    )


def _names_of(tensors: Tensors, entries: Iterable[Entry]) -> List[str]:
    return [e.name for e in entries]


def apply_plan(tensors: Tensors, train: Mapping[int, Entry]) -> None:
    """``requires_grad`` True for exactly ``train``; every other tensor frozen, its
    gradient dropped (torch optimizers skip a parameter whose ``grad`` is None, weight
    decay included)."""
    for e in tensors.unique:
        t = e.tensor
        want = id(t) in train
        if t.requires_grad != want:
            t.requires_grad_(want)
        if not want and t.grad is not None:
            t.grad = None


def count_parameters(tensors: Tensors, keys: Optional[Iterable[int]] = None) -> int:
    wanted = None if keys is None else set(keys)
    n = 0
    for e in tensors.unique:
        if wanted is None or id(e.tensor) in wanted:
            n += _numel(e)
    return n


def _numel(e: Entry) -> int:
    if e.numel is not None:
        return e.numel
    return int(e.tensor.numel())
