"""Spectrum inside a torch training run: scan the model in memory, freeze everything but
the selected layers, re-target during training, and give the optimizer SNR-ranked
learning rates.

* :func:`scan_model` scans an ``nn.Module`` (CPU or GPU parameters; FSDP1 with
  ``use_orig_params=True``, FSDP2 ``fully_shard``, DeepSpeed ZeRO-3) or a state dict, one
  matrix at a time, with the same workers and statistics as :func:`spectrum_rs.scan`, so
  it gives the same numbers as a scan of the same weights saved with ``save_pretrained``.
* :func:`freeze` sets ``requires_grad`` so that exactly the selected parameters (plus the
  input embeddings and the head, when asked) train, after checking that the scan fits
  the model.
* :func:`retarget` moves training to a new selection (after a rescan) inside an
  optimizer built over :func:`candidate_parameters`; :func:`snr_param_groups` builds
  optimizer parameter groups whose learning rate grows with the layer's SNR rank.

Layers are matched to parameters by :attr:`spectrum_rs.LayerResult.parameter`, the exact
parameter name (one expert ``<layer>.<e>`` of a fused ``[E, out, in]`` tensor is that
whole tensor), never by a substring. Everything fails closed: a scan that does not fit
raises :class:`ScanMismatchError`, a selection that would train nothing raises
:class:`~spectrum_rs.SpectrumError`.

This module imports torch (it is the torch integration); ``import spectrum_rs`` does not
import it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from .. import _core
from ..errors import ScanMismatchError, SpectrumError, UnsupportedLayoutError
from ..model.config import ties_embeddings
from ..model.layouts import HEAD, embedding_names, input_embedding, is_embedding
from ..options import (
    DEFAULT_TOP_PERCENT,
    GROUP_BY,
    NO_NOISE,
    GroupBy,
    as_list,
    check_choice,
    check_method_dtype,
    check_top_percent,
)
from ..results import LayerResult, ScanResult
from ..run.pipeline import Problems

__all__ = [
    "scan_model",
    "freeze",
    "retarget",
    "candidate_parameters",
    "snr_param_groups",
    "FreezeSummary",
    "RetargetReport",
    "ScanMismatchError",
]

log = logging.getLogger("spectrum_rs.integrations")


# --------------------------------------------------------------------------------------
# The model's tensors: names, global shapes, and how to gather each one
# --------------------------------------------------------------------------------------

_WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
_TORCH_DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
}
for _name, _code in (
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
):
    if hasattr(torch, _name):
        _TORCH_DTYPE_NAMES[getattr(torch, _name)] = _code
_SCANNABLE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _clean(name: str) -> str:
    """A parameter name without the parts wrappers insert (FSDP1, activation
    checkpointing, ``torch.compile``): the name the model's files use."""
    parts = name.split(".")
    if not any(p in _WRAPPER_PARTS for p in parts):
        return name
    return ".".join(p for p in parts if p not in _WRAPPER_PARTS)


def _unwrap(model: Any) -> Any:
    """The module under DDP / DataParallel / a DeepSpeed engine / ``torch.compile``
    (their ``module.`` / ``_orig_mod.`` prefixes are not in the model's files). FSDP1
    wrappers stay (their units are needed to gather); their name parts are cleaned."""
    for _ in range(16):
        cls = type(model).__name__
        inner = getattr(model, "module", None)
        if cls in ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine", "PipelineEngine") and isinstance(
            inner, torch.nn.Module
        ):
            model = inner
            continue
        orig = getattr(model, "_orig_mod", None)
        if isinstance(orig, torch.nn.Module) and cls == "OptimizedModule":
            model = orig
            continue
        break
    return model


def _dtensor_type() -> Optional[Any]:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def _fsdp1_type() -> Optional[Any]:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


@dataclasses.dataclass
class _Entry:
    """One tensor of the model as the model holds it (not gathered)."""

    name: str  # clean name (the one in the model's files)
    tensor: Any  # the parameter / state-dict tensor itself
    kind: str  # "plain", "dtensor", "zero3" or "fsdp1"
    shape: Optional[Tuple[int, ...]]  # global shape; None when only a gather tells (FSDP1)
    dtype: Any
    unit: Any = None  # FSDP1: the unit whose summon_full_params gathers it
    module: Any = None  # FSDP1: the module holding it ...
    attr: str = ""  # ... under this attribute

    @property
    def numel(self) -> Optional[int]:
        if self.shape is not None:
            return int(math.prod(self.shape))
        return None


def _kind_and_shape(t: Any, dtensor: Any) -> Tuple[str, Optional[Tuple[int, ...]]]:
    if hasattr(t, "ds_id") and hasattr(t, "ds_shape"):  # DeepSpeed ZeRO-3 partitioned parameter
        return "zero3", tuple(int(s) for s in t.ds_shape)
    if dtensor is not None and isinstance(t, dtensor):  # FSDP2 / tensor parallel
        return "dtensor", tuple(int(s) for s in t.shape)
    return "plain", tuple(int(s) for s in t.shape)


class _Tensors:
    """The tensors of a module or state dict, in model order: ``unique`` (each tensor
    once, as the first name that holds it) and ``aliases`` (another name -> the first
    name of the same tensor: tied weights)."""

    def __init__(self, obj: Any, *, module_required: bool = False) -> None:
        self.fsdp1 = False
        dtensor = _dtensor_type()
        if isinstance(obj, torch.nn.Module):
            self.module: Optional[torch.nn.Module] = _unwrap(obj)
            named = self._module_entries(self.module, dtensor)
        elif isinstance(obj, Mapping):
            if module_required:
                raise TypeError("this function needs the model (a torch.nn.Module), not a state dict")
            self.module = None
            named = []
            for k, v in obj.items():
                if isinstance(v, torch.Tensor):
                    kind, shape = _kind_and_shape(v, dtensor)
                    named.append(_Entry(name=_clean(str(k)), tensor=v, kind=kind, shape=shape, dtype=v.dtype))
        else:
            raise TypeError(f"expected a torch.nn.Module or a state dict, got {type(obj).__name__}")
        self.unique: List[_Entry] = []
        self.aliases: Dict[str, str] = {}
        self.by_name: Dict[str, _Entry] = {}
        seen: Dict[Any, str] = {}
        for e in named:
            if e.name in self.by_name:
                continue
            keys = [("id", id(e.tensor))]
            storage = _storage_key(e) if self.module is None else None
            if storage is not None:
                keys.append(storage)
            first = next((seen[k] for k in keys if k in seen), None)
            self.by_name[e.name] = self.by_name[first] if first is not None else e
            if first is not None:
                self.aliases[e.name] = first
                continue
            for k in keys:
                seen[k] = e.name
            self.unique.append(e)

    def _module_entries(self, module: torch.nn.Module, dtensor: Optional[type]) -> List[_Entry]:
        fsdp = _fsdp1_type()
        if fsdp is not None and any(isinstance(m, fsdp) for m in module.modules()):
            self.fsdp1 = True
            return _fsdp1_entries(module, fsdp)
        out = []
        for name, p in module.named_parameters(remove_duplicate=False):
            kind, shape = _kind_and_shape(p, dtensor)
            out.append(_Entry(name=_clean(name), tensor=p, kind=kind, shape=shape, dtype=p.dtype))
        return out

    def distributed(self) -> bool:
        """Whether gathering a tensor is a collective (sharded parameters)."""
        return self.fsdp1 or any(e.kind in ("dtensor", "zero3") for e in self.unique)


def _storage_key(e: _Entry) -> Optional[Tuple[Any, ...]]:
    """Identifies a plain tensor's memory (two state-dict entries that share it are tied)."""
    t = e.tensor
    if e.kind != "plain" or t.device.type == "meta" or t.numel() == 0:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return ("storage", str(t.device), ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _fsdp1_entries(root: torch.nn.Module, fsdp: type) -> List[_Entry]:
    """Every original parameter under FSDP1 (``use_orig_params=True``), with the unit whose
    ``summon_full_params(recurse=False)`` gathers it, and its global shape when the unit's
    flat parameter records it."""
    out: List[_Entry] = []

    def unit_shapes(unit: Any) -> Dict[str, Tuple[int, ...]]:
        flat = getattr(getattr(unit, "_handle", None), "flat_param", None)
        fqns, shapes = getattr(flat, "_fqns", None), getattr(flat, "_shapes", None)
        if not fqns or shapes is None or len(fqns) != len(shapes):
            return {}
        return {_clean(f): tuple(int(s) for s in shp) for f, shp in zip(fqns, shapes)}

    def visit(
        mod: torch.nn.Module, prefix: str, unit: Any, unit_prefix: str, shapes: Dict[str, Tuple[int, ...]]
    ) -> None:
        if isinstance(mod, fsdp):
            if not getattr(mod, "_use_orig_params", False):
                raise UnsupportedLayoutError(
                    "FSDP (FullyShardedDataParallel) with use_orig_params=False keeps flat parameters that have "
                    "no layer names: wrap the model with use_orig_params=True (or use FSDP2 fully_shard)"
                )
            unit, unit_prefix, shapes = mod, prefix, unit_shapes(mod)
        for attr, p in mod._parameters.items():
            if p is None or type(p).__name__ == "FlatParameter":
                continue
            name = _clean(prefix + attr)
            local = _clean(prefix + attr)[len(_clean(unit_prefix)) :] if unit is not None else name
            out.append(
                _Entry(
                    name=name,
                    tensor=p,
                    kind="fsdp1" if unit is not None else "plain",
                    shape=shapes.get(local) if unit is not None else tuple(p.shape),
                    dtype=p.dtype,
                    unit=unit,
                    module=mod,
                    attr=attr,
                )
            )
        for cname, child in mod._modules.items():
            if child is not None:
                visit(child, f"{prefix}{cname}.", unit, unit_prefix, shapes)

    visit(root, "", None, "", {})
    return out


@contextmanager
def _gathered(entries: Sequence[_Entry]) -> Iterator[List[Any]]:
    """The full tensors of ``entries`` (one plain entry, one sharded parameter, or the
    entries of one FSDP1 unit), valid inside the block. Sharded ones are gathered here and
    freed on exit: a collective every rank must enter in the same order."""
    kinds = {e.kind for e in entries}
    if kinds == {"fsdp1"}:
        fsdp: Any = _fsdp1_type()
        assert fsdp is not None
        with fsdp.summon_full_params(entries[0].unit, recurse=False, writeback=False):
            yield [e.module._parameters[e.attr].detach() for e in entries]
        return
    assert len(entries) == 1
    e = entries[0]
    if e.kind == "zero3":
        import deepspeed  # the model is a ZeRO-3 model: deepspeed is there

        with deepspeed.zero.GatheredParameters([e.tensor], modifier_rank=None):
            yield [e.tensor.data]
        return
    if e.kind == "dtensor":
        full = e.tensor.detach().full_tensor()
        try:
            yield [full]
        finally:
            del full
        return
    yield [e.tensor.detach()]


def _groups(tensors: _Tensors) -> List[List[_Entry]]:
    """The gather units in model order: one per FSDP1 unit (all its own parameters at
    once, as FSDP1 gathers them), else one per tensor."""
    groups: List[List[_Entry]] = []
    by_unit: Dict[int, List[_Entry]] = {}
    for e in tensors.unique:
        if e.kind == "fsdp1":
            key = id(e.unit)
            if key not in by_unit:
                by_unit[key] = []
                groups.append(by_unit[key])
            by_unit[key].append(e)
        else:
            groups.append([e])
    return groups


# --------------------------------------------------------------------------------------
# The catalog's rule: tensors -> layers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Spec:
    """One layer of a tensor, with the fields ``pipeline.measure`` reads."""

    name: str
    type: str
    rows: int
    cols: int
    dtype: str
    tensor: str
    file: str
    expert: Optional[int]
    ndim: int


def _is_experts(name: str, shape: Tuple[int, ...], dtype: Any) -> bool:
    return (
        len(shape) == 3
        and (dtype in _SCANNABLE or dtype in _TORCH_DTYPE_NAMES)
        and "experts" in name.split(".")
        and math.prod(shape) > 0
    )


def _layer_name(tensor_name: str) -> Optional[str]:
    """The layer a tensor named so would be (``x.weight`` -> ``x``; a fused expert tensor
    may lack the suffix), judged by its name only."""
    if tensor_name.endswith(".weight"):
        return tensor_name[: -len(".weight")]
    return None


def _specs(
    name: str, shape: Tuple[int, ...], dtype: Any, source: str, group_experts: bool = False, group_by: str = "type"
) -> List[_Spec]:
    """The layers of one tensor by the catalog's rule (rust/layout/mod.rs ``build_layers``):
    ``<name>.weight`` -> ``<name>``; 1-D -> 1 x n; 3-D stacked experts -> E layers
    ``<layer>.<e>``; higher ranks -> (out, everything else). Types come from the catalog's
    own rule (``_core.layer_type``, rust/layout/kinds.rs), with its grouping options."""
    weight = name.endswith(".weight")
    experts = _is_experts(name, shape, dtype)
    if not (weight or experts) or len(shape) == 0:
        return []
    layer = name[: -len(".weight")] if weight else name
    code = _TORCH_DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))

    def spec(lname: str, rows: int, cols: int, expert: Optional[int]) -> _Spec:
        return _Spec(
            name=lname,
            type=_core.layer_type(lname, stacked=expert is not None, group_experts=group_experts, group_by=group_by),
            rows=rows,
            cols=cols,
            dtype=code,
            tensor=name,
            file=source,
            expert=expert,
            ndim=len(shape),
        )

    if len(shape) == 1:
        return [spec(layer, 1, shape[0], None)]
    if len(shape) == 2:
        return [spec(layer, shape[0], shape[1], None)]
    if len(shape) == 3 and experts:
        return [spec(f"{layer}.{e}", shape[1], shape[2], e) for e in range(shape[0])]
    return [spec(layer, shape[0], int(math.prod(shape[1:])), None)]


def _requested(types: List[str], exclude: List[str], name: str, kind: str) -> bool:
    if types and not any(_core.layer_matches(p, name, kind) for p in types):
        return False
    return not any(_core.layer_matches(p, name, kind) for p in exclude)


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


# --------------------------------------------------------------------------------------
# scan_model
# --------------------------------------------------------------------------------------


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
    tensors = _Tensors(model_or_state_dict)
    module = tensors.module
    source = type(module).__name__ if module is not None else "state_dict"
    cfg = _config_dict(config if config is not None else getattr(module, "config", None))
    rank, world = _share(tensors, distributed)

    names = [e.name for e in tensors.unique]
    # Layer names known without gathering (for the embeddings list and the tied head).
    name_layers = [n for n in (_layer_name(x) for x in names) if n is not None]
    tied_source = _tied_source(tensors, cfg, name_layers, want_types, want_exclude)
    hidden: Set[str] = set()

    def chosen(spec: _Spec) -> bool:
        if spec.name == tied_source:
            if not ((spec.ndim >= 2 or include_1d) and _requested(want_types, want_exclude, spec.name, spec.type)):
                hidden.add(spec.name)
            return True
        return (spec.ndim >= 2 or include_1d) and _requested(want_types, want_exclude, spec.name, spec.type)

    # Plan what can be planned without gathering (everything but FSDP1 units without
    # shape records): the layers to compute and their bytes, for progress.
    plan: List[Tuple[List[_Entry], Optional[List[List[_Spec]]]]] = []
    total_layers = total_bytes = 0
    for group in _groups(tensors):
        if all(e.shape is not None for e in group):
            per_entry = [
                [s for s in _specs(e.name, e.shape or (), e.dtype, source, group_experts, group_by) if chosen(s)]
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
            if any(_layer_name(e.name) is not None or "experts" in e.name.split(".") for e in group):
                total_layers += sum(1 for e in group if _layer_name(e.name) is not None)
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
                    with _gathered(group) as fulls:
                        for i, (e, full) in enumerate(zip(group, fulls)):
                            if planned is not None:
                                layer_specs = planned[i]
                            else:
                                layer_specs = [
                                    s
                                    for s in _specs(
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


def _share(tensors: _Tensors, distributed: Optional[bool]) -> Tuple[int, int]:
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
    tensors: _Tensors, cfg: Dict[str, Any], name_layers: List[str], types: List[str], exclude: List[str]
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


def _check_scannable(e: _Entry, specs: List[_Spec]) -> None:
    if not specs:
        return
    t = e.tensor
    if getattr(t, "device", None) is not None and t.device.type == "meta":
        raise UnsupportedLayoutError(
            f"parameter {e.name!r} is on the meta device (not materialized): load the weights before scanning"
        )
    if e.dtype not in _SCANNABLE:
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


def _measure(
    full: torch.Tensor,
    s: _Spec,
    device: str,
    method: str,
    dtype: str,
    no_noise: str,
    workers: Dict[str, Any],
    problems: Problems,
) -> LayerResult:
    from ..run.pipeline import measure

    m = full[s.expert] if s.expert is not None else full
    m = m.reshape(s.rows, s.cols)
    if device == "auto" and m.device.type == "cuda":
        key = str(m.device)
        if key not in workers:
            from ..compute.torch_worker import TorchWorker

            workers[key] = TorchWorker(device=m.device, method=method, dtype=dtype)
        return measure(workers[key], s, m, no_noise, problems)
    if "cpu" not in workers:
        from ..compute.numpy_worker import NumpyWorker

        workers["cpu"] = NumpyWorker(method=method, dtype=dtype)
    worker = workers["cpu"]
    # Always a copy: a numpy view would share (and pin the size of) the model's storage,
    # which FSDP frees and resizes after a gather.
    array = m.to(device="cpu", dtype=torch.float32, copy=True).contiguous().numpy()
    record = measure(worker, s, worker.to_matrix(array, "F32", s.rows, s.cols), no_noise, problems)
    del array
    return record


def _local_cpu_items(
    plan: Sequence[Tuple[List[_Entry], Optional[List[List[_Spec]]]]], device: str
) -> Optional[List[Tuple[_Entry, _Spec]]]:
    """The layers to compute, when every one is a plain tensor (nothing to gather) that
    is computed on the CPU: then the CPU workers of :func:`spectrum_rs.scan` take them
    (:func:`_measure_on_cpu_workers`). None otherwise (sharded parameters, whose gathers
    are collectives every rank makes in one order; or tensors on a GPU)."""
    items: List[Tuple[_Entry, _Spec]] = []
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
    items: List[Tuple[_Entry, _Spec]],
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
    from ..compute.devices import limit_blas_threads, make_workers, plan_workers
    from ..run import pipeline

    devices, threads = plan_workers("cpu")
    cpu_workers = make_workers(devices, method, dtype)
    specs = [s for _, s in items]

    def stream() -> Iterator[Tuple[int, Any, str]]:
        for index, (e, s) in enumerate(items):
            full = e.tensor.detach()
            m = full[s.expert] if s.expert is not None else full
            # Always a copy: a numpy view would share the model's storage.
            yield index, m.to(device="cpu", dtype=torch.float32, copy=True).contiguous().numpy(), "F32"

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
    from ..run.progress import Progress

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


# --------------------------------------------------------------------------------------
# Fitting a scan to a model, and what trains
# --------------------------------------------------------------------------------------

_SHOW = 10


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


@dataclasses.dataclass
class _Plan:
    tensors: _Tensors
    pct: float
    #: id(tensor) -> entry, for every tensor that trains.
    train: Dict[int, _Entry]
    #: id(tensor) -> entry: every scanned matrix and (when asked) embeddings and head.
    candidates: Dict[int, _Entry]
    selected: Dict[str, List[str]]
    layers_per_type: Dict[str, int]
    embedding_params: List[str]
    head_params: List[str]
    tied: Optional[str]
    partial_fused: List[str]


def _bound(tensors: _Tensors, result: ScanResult) -> ScanResult:
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


def _layer_shape(entry: _Entry, layer: LayerResult) -> Optional[Tuple[int, int]]:
    """The (rows, cols) the scan would have measured for ``layer`` on this tensor."""
    s = entry.shape
    if s is None or len(s) == 0:
        return None
    if layer.tied_to is None and layer.parameter != f"{layer.name}.weight" and len(s) == 3:
        return s[1], s[2]
    if len(s) == 1:
        return 1, s[0]
    return s[0], int(math.prod(s[1:]))


def _fused_in_memory(tensors: _Tensors, missing: Sequence[str]) -> Optional[str]:
    """A stacked ``[E, out, in]`` parameter of the model (with its shape) where the scan
    has per-expert layers the model lacks (``<prefix>.experts.3.gate_proj`` against
    ``<prefix>.experts.gate_up_proj``), or None."""
    prefixes: Set[str] = set()
    for name in missing:
        parts = name.split(".")
        prefixes.update(
            ".".join(parts[:i]) for i in range(1, len(parts) - 1) if parts[i - 1] == "experts" and parts[i].isdigit()
        )
    for e in tensors.unique:
        if e.shape is not None and len(e.shape) == 3 and e.name.rsplit(".", 1)[0] in prefixes:
            return f"{e.name}, shape {list(e.shape)}"
    return None


def _check_fit(tensors: _Tensors, result: ScanResult) -> None:
    """Raises :class:`ScanMismatchError` when ``result`` is not a scan of this model."""
    missing_model: List[str] = []
    shapes: List[str] = []
    for layer in result.layers:
        entry = tensors.by_name.get(layer.parameter)
        if entry is None:
            missing_model.append(f"{layer.name} (parameter {layer.parameter})")
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
        for s in _specs(e.name, e.shape, e.dtype, "", grouping, group_by):
            if s.name in scanned:
                continue
            if has_filter:
                expected = (s.ndim >= 2 or include_1d) and _requested(types, exclude, s.name, s.type)
            else:
                expected = s.type in scanned_types
            if expected:
                missing_scan.append(s.name)
            elif not has_filter and s.ndim >= 2 and not is_embedding(s.name):
                unscanned.add(s.type)
    if missing_model or missing_scan or shapes:
        parts = []
        if missing_model:
            parts.append(f"{len(missing_model)} scanned layer(s) missing from the model: {_listing(missing_model)}")
        if missing_scan:
            parts.append(
                f"{len(missing_scan)} weight matrix(es) of the model missing from the scan: {_listing(missing_scan)}"
            )
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
        fused = _fused_in_memory(
            tensors, [layer.name for layer in result.layers if layer.parameter not in tensors.by_name]
        )
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
        )
    if unscanned:
        warnings.warn(
            f"the scan of {result.model_name!r} has no layers of type(s) {_listing(sorted(unscanned))}: "
            f"they stay frozen",
            UserWarning,
            stacklevel=4,
        )


def _embedding_entries(tensors: _Tensors) -> Tuple[List[_Entry], List[_Entry]]:
    """(input embeddings, head) of the model: the layers the naming rule calls embeddings
    (model/layouts.py, the rule of the results YAML) and ``lm_head``, with a transformers
    model's own ``get_input_embeddings()`` / ``get_output_embeddings()`` weights."""
    emb: Dict[int, _Entry] = {}
    head: Dict[int, _Entry] = {}
    for name, entry in tensors.by_name.items():
        layer = _layer_name(name)
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


def _is_input_embedding(tensors: _Tensors, key: int) -> bool:
    module = tensors.module
    fn = getattr(module, "get_input_embeddings", None)
    try:
        weight = getattr(fn(), "weight", None) if callable(fn) else None
    except Exception:
        weight = None
    if weight is not None:
        return id(weight) == key
    names = [n for n, e in tensors.by_name.items() if id(e.tensor) == key]
    return any(_layer_name(n) != HEAD for n in names)


def _plan(model: Any, result: ScanResult, top_percent: Optional[float], embeddings: bool, head: bool) -> _Plan:
    if not isinstance(result, ScanResult):
        raise TypeError(f"expected a spectrum_rs.ScanResult, got {type(result).__name__}")
    pct = check_top_percent(result.top_percent if top_percent is None else top_percent)
    tensors = model if isinstance(model, _Tensors) else _Tensors(model, module_required=True)
    result = _bound(tensors, result)
    _check_fit(tensors, result)
    selected = result.selected_by_type(pct)
    by_name = {layer.name: layer for layer in result.layers}
    train: Dict[int, _Entry] = {}
    candidates: Dict[int, _Entry] = {}
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
        if _layer_name(a) == HEAD:
            tied = f"{a} is tied to {first}"
    layers_per_type = {t: 0 for t in result.types}
    for layer in result.layers:
        layers_per_type[layer.type] += 1
    partial = [f"{p} ({d} of {t} experts selected)" for p, (d, t) in experts.items() if 0 < d < t]
    return _Plan(
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


def _names_of(tensors: _Tensors, entries: Iterable[_Entry]) -> List[str]:
    return [e.name for e in entries]


def _apply(tensors: _Tensors, train: Mapping[int, _Entry]) -> None:
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


def _count(tensors: _Tensors, keys: Optional[Iterable[int]] = None) -> int:
    wanted = None if keys is None else set(keys)
    n = 0
    for e in tensors.unique:
        if wanted is None or id(e.tensor) in wanted:
            n += _numel(e)
    return n


def _numel(e: _Entry) -> int:
    if e.numel is not None:
        return e.numel
    return int(e.tensor.numel())


@dataclasses.dataclass
class FreezeSummary:
    """What :func:`freeze` left trainable. ``str()`` prints a short table."""

    trainable: int
    total: int
    top_percent: float
    #: Per layer type: (layers selected, layers scanned).
    layers_by_type: Dict[str, Tuple[int, int]]
    #: Names of the parameters that train, in model order.
    parameters: List[str]
    #: Embedding and head parameters that train (also in ``parameters``).
    embeddings: List[str]
    #: ``"lm_head.weight is tied to model.embed_tokens.weight"`` when the head is tied.
    tied: Optional[str] = None
    #: Fused expert tensors that train whole although only some of their experts were selected.
    partial_fused: List[str] = dataclasses.field(default_factory=list)

    @property
    def share(self) -> float:
        """Trainable share of the parameters (0..1)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        lines = [
            f"Spectrum: {self.trainable:,} of {self.total:,} parameters train ({100 * self.share:.2f} %), "
            f"top {self.top_percent:g} % of each layer type"
        ]
        width = max([len(t) for t in self.layers_by_type] + [len("layer type")])
        lines.append(f"  {'layer type':<{width}}  train/layers")
        for t, (sel, n) in self.layers_by_type.items():
            lines.append(f"  {t:<{width}}  {sel:>5}/{n}")
        if self.embeddings:
            lines.append(
                f"  embeddings and head: {', '.join(self.embeddings)}" + (f" ({self.tied})" if self.tied else "")
            )
        for p in self.partial_fused:
            lines.append(f"  fused tensor trains whole: {p}")
        return "\n".join(lines)


def _summary(plan: _Plan) -> FreezeSummary:
    tensors = plan.tensors
    names = [e.name for e in tensors.unique if id(e.tensor) in plan.train]
    emb_ids = {id(tensors.by_name[n].tensor) for n in plan.embedding_params + plan.head_params}
    embeddings = [e.name for e in tensors.unique if id(e.tensor) in plan.train and id(e.tensor) in emb_ids]
    return FreezeSummary(
        trainable=_count(tensors, plan.train),
        total=_count(tensors),
        top_percent=plan.pct,
        layers_by_type={t: (len(plan.selected.get(t, [])), n) for t, n in plan.layers_per_type.items()},
        parameters=names,
        embeddings=embeddings,
        tied=plan.tied,
        partial_fused=plan.partial_fused,
    )


def freeze(
    model: torch.nn.Module,
    result: ScanResult,
    top_percent: Optional[float] = None,
    *,
    embeddings: bool = True,
    head: bool = True,
) -> FreezeSummary:
    """Sets ``requires_grad`` so that exactly the layers ``result`` selects train, plus
    the input embeddings (``embeddings``) and the output head (``head``; a tied head is
    the embedding's tensor, which then trains when either is asked for). Every other
    parameter, norms and biases included, is frozen and its gradient dropped.

    ``top_percent``: share of each layer type to train (default: ``result.top_percent``,
    25 unless the scan said otherwise). One selected expert of a fused expert tensor
    trains the whole tensor (``FreezeSummary.partial_fused`` names such tensors).

    Nothing is changed when the call fails: a scan that does not fit the model (scanned
    layers the model lacks, model weight matrices of a scanned type the scan lacks, other
    shapes) raises :class:`ScanMismatchError`; a selection that trains nothing raises
    :class:`~spectrum_rs.SpectrumError`.
    """
    plan = _plan(model, result, top_percent, embeddings, head)
    if not plan.train:
        raise SpectrumError(
            f"freeze: nothing would train (top_percent={plan.pct:g} selects no layer of any type of "
            f"{result.model_name!r}, and embeddings={embeddings}, head={head}); raise top_percent or unfreeze "
            f"the embeddings"
        )
    _apply(plan.tensors, plan.train)
    summary = _summary(plan)
    log.info("%s", summary)
    return summary


def candidate_parameters(
    model: torch.nn.Module, result: ScanResult, *, embeddings: bool = True, head: bool = True
) -> List[torch.nn.Parameter]:
    """Every parameter a selection from ``result`` can ever train: each scanned matrix,
    and the embeddings and head when asked for; each once, in model order. Build the
    optimizer over these (or over all parameters) to :func:`retarget` later."""
    plan = _plan(model, result, None, embeddings, head)
    return [e.tensor for e in plan.tensors.unique if id(e.tensor) in plan.candidates]


def _optimizer_ids(optimizer: Any) -> Set[int]:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        raise TypeError(f"expected a torch optimizer (with param_groups), got {type(optimizer).__name__}")
    return {id(p) for g in groups for p in g["params"]}


def _set_candidates(model: Any, result: ScanResult, embeddings: bool, head: bool) -> _Plan:
    """Makes exactly the candidates trainable (before an optimizer is built over the
    trainable parameters, as ``transformers.Trainer`` builds it)."""
    plan = _plan(model, result, None, embeddings, head)
    _apply(plan.tensors, plan.candidates)
    return plan


# --------------------------------------------------------------------------------------
# Re-targeting
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class RetargetReport:
    """What a :func:`retarget` changed."""

    #: Parameters that train now and did not before / trained before and are frozen now.
    entered: List[str]
    left: List[str]
    trainable: int
    total: int
    top_percent: float
    #: The new selection: per type, the layer names.
    selected: Dict[str, List[str]]
    #: Layers newly selected / no longer selected, against ``previous`` (when given).
    entered_layers: List[str] = dataclasses.field(default_factory=list)
    left_layers: List[str] = dataclasses.field(default_factory=list)
    #: Per type, the mean relative SNR change ``(new - old) / |old|`` against ``previous``.
    drift: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def changed(self) -> bool:
        return bool(self.entered or self.left)

    def log_entry(self, prefix: str = "spectrum/") -> Dict[str, Any]:
        """A JSON-able dict for a trainer's log history."""
        out: Dict[str, Any] = {
            f"{prefix}entered": list(self.entered_layers or self.entered),
            f"{prefix}left": list(self.left_layers or self.left),
            f"{prefix}entered_parameters": list(self.entered),
            f"{prefix}left_parameters": list(self.left),
            f"{prefix}trainable_share": self.share,
            f"{prefix}trainable_parameters": self.trainable,
        }
        for t, d in self.drift.items():
            out[f"{prefix}snr_drift/{t}"] = d
        return out

    def __str__(self) -> str:
        head = (
            f"Spectrum re-target: {len(self.entered)} parameter(s) entered, {len(self.left)} left; "
            f"{self.trainable:,} of {self.total:,} train ({100 * self.share:.2f} %)"
        )
        lines = [head]
        if self.entered:
            lines.append(f"  entered: {_listing(self.entered)}")
        if self.left:
            lines.append(f"  left: {_listing(self.left)}")
        if self.drift:
            lines.append("  SNR drift per type: " + ", ".join(f"{t} {d:+.2%}" for t, d in self.drift.items()))
        return "\n".join(lines)


def _drift(previous: ScanResult, result: ScanResult) -> Dict[str, float]:
    old = {layer.name: layer.snr for layer in previous.layers}
    sums: Dict[str, List[float]] = {}
    for layer in result.layers:
        o = old.get(layer.name)
        if o is None or not math.isfinite(o) or o == 0 or layer.snr is None or not math.isfinite(layer.snr):
            continue
        sums.setdefault(layer.type, []).append((layer.snr - o) / abs(o))
    return {t: float(np.mean(v)) for t, v in sorted(sums.items())}


def retarget(
    model: torch.nn.Module,
    optimizer: Any,
    result: ScanResult,
    top_percent: Optional[float] = None,
    *,
    embeddings: bool = True,
    head: bool = True,
    previous: Optional[ScanResult] = None,
) -> RetargetReport:
    """Moves training to the selection of ``result`` (a new scan of ``model``): the newly
    selected parameters start training, the others stop.

    The optimizer must already hold every parameter that trains now (build it over
    :func:`candidate_parameters`, or over all parameters, before the first
    :func:`freeze`): a parameter it lacks raises :class:`~spectrum_rs.SpectrumError` and
    nothing changes. Stopping is ``requires_grad=False`` and ``grad=None``: torch
    optimizers skip such a parameter entirely (no step, no weight decay) and keep its
    state (moments, step count), which it resumes from if it enters again.

    Call it between steps (after ``optimizer.step()`` / ``zero_grad()``, before the next
    forward). ``previous``: the scan the current selection came from, for the report's
    entered/left layers and per-type SNR drift.
    """
    plan = _plan(model, result, top_percent, embeddings, head)
    if not plan.train:
        raise SpectrumError(
            f"retarget: nothing would train (top_percent={plan.pct:g}, embeddings={embeddings}, head={head})"
        )
    held = _optimizer_ids(optimizer)
    absent = [e.name for e in plan.tensors.unique if id(e.tensor) in plan.train and id(e.tensor) not in held]
    if absent:
        raise SpectrumError(
            f"retarget: {len(absent)} parameter(s) to train are not in the optimizer: {_listing(absent)}; build the "
            f"optimizer over spectrum_rs.integrations.torch.candidate_parameters(model, result) (or all parameters) "
            f"before freezing, so that a layer can enter later"
        )
    tensors = plan.tensors
    before = {id(e.tensor) for e in tensors.unique if e.tensor.requires_grad}
    _apply(tensors, plan.train)
    after = set(plan.train)
    entered = [e.name for e in tensors.unique if id(e.tensor) in after - before]
    left = [e.name for e in tensors.unique if id(e.tensor) in before - after]
    report = RetargetReport(
        entered=entered,
        left=left,
        trainable=_count(tensors, after),
        total=_count(tensors),
        top_percent=plan.pct,
        selected=plan.selected,
    )
    if previous is not None:
        old = set(previous.select(plan.pct))
        new = set(result.select(plan.pct))
        order = [layer.name for layer in result.layers]
        report.entered_layers = [n for n in order if n in new - old]
        report.left_layers = [layer.name for layer in previous.layers if layer.name in old - new]
        report.drift = _drift(previous, result)
    log.info("%s", report)
    return report


# --------------------------------------------------------------------------------------
# Learning rates by SNR rank
# --------------------------------------------------------------------------------------


def _factors(result: ScanResult, top_percent: Optional[float], scale: str, lo: float, hi: float) -> Dict[str, float]:
    """Layer name -> learning-rate factor (see :func:`snr_param_groups`)."""
    selected = result.selected_by_type(top_percent) if top_percent is not None else None
    out: Dict[str, float] = {}
    for t, layers in result.ranked().items():
        pop = layers if selected is None else [layer for layer in layers if layer.name in set(selected.get(t, []))]
        n = len(pop)
        finite = [float(layer.snr) for layer in pop if layer.snr is not None and math.isfinite(layer.snr)]
        s_lo, s_hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        for pos, layer in enumerate(pop):
            if scale == "rank":
                q = 0.5 if n == 1 else 1.0 - pos / (n - 1)
            else:
                snr = layer.snr
                if snr is None or not math.isfinite(snr):
                    q = 0.0
                elif s_hi > s_lo:
                    q = (float(snr) - s_lo) / (s_hi - s_lo)
                else:
                    q = 0.5
            out[layer.name] = lo * (hi / lo) ** q
        for layer in layers:
            out.setdefault(layer.name, lo)
    return out


def snr_param_groups(
    model: torch.nn.Module,
    result: ScanResult,
    lr: float,
    *,
    scale: str = "rank",
    min_factor: float = 0.5,
    max_factor: float = 2.0,
    top_percent: Optional[float] = None,
    weight_decay: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups whose learning rate grows with the layer's SNR within
    its type: ``torch.optim.AdamW(snr_param_groups(model, result, 1e-5))``.

    Each scanned layer gets ``lr * factor`` with::

        factor = min_factor * (max_factor / min_factor) ** q

    a geometric interpolation, where ``q`` in [0, 1] is the layer's standing within its
    type: ``scale="rank"``: ``q = 1 - i / (n - 1)`` for the i-th highest SNR of the n
    layers (0.5 when n = 1); ``scale="snr"``: ``q = (snr - min) / (max - min)`` over the
    type (0.5 when all are equal). A NaN SNR gets ``q = 0``. With the defaults (0.5, 2.0)
    the best layer of a type gets 2x the base rate, the worst 0.5x, the median 1x.
    ``top_percent``: rank only among the type's selected layers (the others get
    ``min_factor``); default None: among all its scanned layers. A fused expert tensor
    gets the highest factor of its experts; parameters the scan does not cover (norms,
    biases) get factor 1. Frozen parameters (``requires_grad`` False) are left out.

    ``weight_decay``: when given, 1-D parameters (norms, biases) get a group with weight
    decay 0 and the others this decay; default: no ``weight_decay`` key (the optimizer's).
    Each group carries ``spectrum_factor`` and ``spectrum_parameters`` (names).
    """
    check_choice("scale", scale, ("rank", "snr"))
    for label, v in (("min_factor", min_factor), ("max_factor", max_factor)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive number, got {v!r}")
    if min_factor > max_factor:
        raise ValueError(f"min_factor ({min_factor}) must not exceed max_factor ({max_factor})")
    if top_percent is not None:
        top_percent = check_top_percent(top_percent)
    tensors = _Tensors(model, module_required=True)
    result = _bound(tensors, result)
    missing = [
        f"{layer.name} (parameter {layer.parameter})"
        for layer in result.layers
        if layer.parameter not in tensors.by_name
    ]
    if missing:
        raise ScanMismatchError(
            f"the scan of {result.model_name!r} does not fit this model: {len(missing)} scanned "
            f"layer(s) missing from the model: {_listing(missing)}",
            missing_in_model=missing,
        )
    factors = _factors(result, top_percent, scale, float(min_factor), float(max_factor))
    per_tensor: Dict[int, float] = {}
    for layer in result.layers:
        key = id(tensors.by_name[layer.parameter].tensor)
        per_tensor[key] = max(per_tensor.get(key, 0.0), factors[layer.name])
    groups: Dict[Tuple[float, Optional[float]], Dict[str, Any]] = {}
    for e in tensors.unique:
        if not e.tensor.requires_grad:
            continue
        f = per_tensor.get(id(e.tensor), 1.0)
        decay = None
        if weight_decay is not None:
            ndim = len(e.shape) if e.shape is not None else e.tensor.dim()
            decay = 0.0 if ndim < 2 else float(weight_decay)
        g = groups.get((f, decay))
        if g is None:
            g = {"params": [], "lr": lr * f, "spectrum_factor": f, "spectrum_parameters": []}
            if decay is not None:
                g["weight_decay"] = decay
            groups[(f, decay)] = g
        g["params"].append(e.tensor)
        g["spectrum_parameters"].append(e.name)
    if not groups:
        raise SpectrumError(
            "snr_param_groups: no parameter of the model requires grad (freeze first with a selection "
            "that trains something)"
        )
    return sorted(groups.values(), key=lambda g: -g["spectrum_factor"])
