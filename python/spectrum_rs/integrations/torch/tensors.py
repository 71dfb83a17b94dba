"""The model's tensors for the torch integration: parameter names (wrappers
stripped), global shapes of sharded parameters (FSDP1, FSDP2/DTensor, DeepSpeed ZeRO-3),
shared storage (tied weights), and how to gather each one for a moment."""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ...errors import UnsupportedLayoutError

_WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
TORCH_DTYPE_NAMES = {
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
        TORCH_DTYPE_NAMES[getattr(torch, _name)] = _code
SCANNABLE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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
class Entry:
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


class Tensors:
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
                    named.append(Entry(name=_clean(str(k)), tensor=v, kind=kind, shape=shape, dtype=v.dtype))
        else:
            raise TypeError(f"expected a torch.nn.Module or a state dict, got {type(obj).__name__}")
        self.unique: List[Entry] = []
        self.aliases: Dict[str, str] = {}
        self.by_name: Dict[str, Entry] = {}
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

    def _module_entries(self, module: torch.nn.Module, dtensor: Optional[type]) -> List[Entry]:
        fsdp = _fsdp1_type()
        if fsdp is not None and any(isinstance(m, fsdp) for m in module.modules()):
            self.fsdp1 = True
            return _fsdp1_entries(module, fsdp)
        out = []
        for name, p in module.named_parameters(remove_duplicate=False):
            kind, shape = _kind_and_shape(p, dtensor)
            out.append(Entry(name=_clean(name), tensor=p, kind=kind, shape=shape, dtype=p.dtype))
        return out

    def distributed(self) -> bool:
        """Whether gathering a tensor is a collective (sharded parameters)."""
        return self.fsdp1 or any(e.kind in ("dtensor", "zero3") for e in self.unique)


def _storage_key(e: Entry) -> Optional[Tuple[Any, ...]]:
    """Identifies a plain tensor's memory (two state-dict entries that share it are tied)."""
    t = e.tensor
    if e.kind != "plain" or t.device.type == "meta" or t.numel() == 0:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return ("storage", str(t.device), ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _fsdp1_entries(root: torch.nn.Module, fsdp: type) -> List[Entry]:
    """Every original parameter under FSDP1 (``use_orig_params=True``), with the unit whose
    ``summon_full_params(recurse=False)`` gathers it, and its global shape when the unit's
    flat parameter records it."""
    out: List[Entry] = []

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
                Entry(
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
def gathered(entries: Sequence[Entry]) -> Iterator[List[Any]]:
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


def gather_units(tensors: Tensors) -> List[List[Entry]]:
    """The gather units in model order: one per FSDP1 unit (all its own parameters at
    once, as FSDP1 gathers them), else one per tensor."""
    groups: List[List[Entry]] = []
    by_unit: Dict[int, List[Entry]] = {}
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
