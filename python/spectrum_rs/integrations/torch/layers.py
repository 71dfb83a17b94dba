"""The catalog's rule for tensors held in memory: which parameters are layers, their
names, shapes and types (``rust/layout``, through ``_core.layer_type``), and which the
scan's ``types`` / ``exclude`` choose."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional, Tuple

from ... import _core
from .tensors import SCANNABLE, TORCH_DTYPE_NAMES


@dataclasses.dataclass
class TensorLayer:
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
        and (dtype in SCANNABLE or dtype in TORCH_DTYPE_NAMES)
        and "experts" in name.split(".")
        and math.prod(shape) > 0
    )


def layer_name_of(tensor_name: str) -> Optional[str]:
    """The layer a tensor named so would be (``x.weight`` -> ``x``; a fused expert tensor
    may lack the suffix), judged by its name only."""
    if tensor_name.endswith(".weight"):
        return tensor_name[: -len(".weight")]
    return None


def layers_of(
    name: str, shape: Tuple[int, ...], dtype: Any, source: str, group_experts: bool = False, group_by: str = "type"
) -> List[TensorLayer]:
    """The layers of one tensor by the catalog's rule (rust/layout/mod.rs ``build_layers``):
    ``<name>.weight`` -> ``<name>``; 1-D -> 1 x n; 3-D stacked experts -> E layers
    ``<layer>.<e>``; higher ranks -> (out, everything else). Types come from the catalog's
    own rule (``_core.layer_type``, rust/layout/kinds.rs), with its grouping options."""
    weight = name.endswith(".weight")
    experts = _is_experts(name, shape, dtype)
    if not (weight or experts) or len(shape) == 0:
        return []
    layer = name[: -len(".weight")] if weight else name
    code = TORCH_DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))

    def spec(lname: str, rows: int, cols: int, expert: Optional[int]) -> TensorLayer:
        return TensorLayer(
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


def is_requested(types: List[str], exclude: List[str], name: str, kind: str) -> bool:
    if types and not any(_core.layer_matches(p, name, kind) for p in types):
        return False
    return not any(_core.layer_matches(p, name, kind) for p in exclude)
