"""Optimizer parameter groups whose learning rate grows with the layer's SNR rank
(or SNR) within its type."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from ...errors import ScanMismatchError, SpectrumError
from ...options import (
    check_choice,
    check_top_percent,
)
from ...results import ScanResult
from .fit import bind_results, listing
from .tensors import Tensors


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
    tensors = Tensors(model, module_required=True)
    result = bind_results(tensors, result)
    missing = [
        f"{layer.name} (parameter {layer.parameter})"
        for layer in result.layers
        if layer.parameter not in tensors.by_name
    ]
    if missing:
        raise ScanMismatchError(
            f"the scan of {result.model_name!r} does not fit this model: {len(missing)} scanned "
            f"layer(s) missing from the model: {listing(missing)}",
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
