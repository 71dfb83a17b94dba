"""LoRA on the layers a scan selects: ``target_modules`` with the exact module names, and
optionally a ``rank_pattern`` that gives layers with a higher SNR a higher rank.

PEFT matches a *list* of ``target_modules`` against each module name ``key`` by
``key == target or key.endswith("." + target)`` (peft ``check_target_module_exists``), and
``rank_pattern`` keys by ``re.match(rf"(.*\\.)?({pattern})$", key)``
(``get_pattern_key``). The names here are full module names (the layer names of the
scan), and the ``rank_pattern`` keys are those names regex-escaped, so each matches
exactly its own module (or the same module under a wrapper prefix, such as
``language_model.``), never a module whose name merely contains it.

This module imports peft (in :func:`peft_config`); ``import spectrum_rs`` does not.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional

from ..errors import SpectrumError
from ..options import check_top_percent
from ..results import LayerResult, ScanResult

__all__ = ["peft_target_modules", "peft_config", "snr_rank_pattern"]


def _selected(result: ScanResult, top_percent: Optional[float]) -> Dict[str, List[LayerResult]]:
    """Per type, the selected layers by SNR (highest first), with a fused expert refused."""
    if not isinstance(result, ScanResult):
        raise TypeError(f"expected a spectrum_rs.ScanResult, got {type(result).__name__}")
    pct = check_top_percent(result.top_percent if top_percent is None else top_percent)
    by_name = {layer.name: layer for layer in result.layers}
    out: Dict[str, List[LayerResult]] = {}
    fused: List[str] = []
    for t, names in result.selected_by_type(pct).items():
        layers = [by_name[n] for n in names]
        for layer in layers:
            if layer.parameter != f"{layer.name}.weight":
                fused.append(f"{layer.name} (in {layer.parameter})")
        if layers:
            out[t] = layers
    if fused:
        shown = ", ".join(fused[:10]) + (f", ... ({len(fused) - 10} more)" if len(fused) > 10 else "")
        raise SpectrumError(
            f"LoRA cannot target {len(fused)} selected expert layer(s) of fused expert tensors: {shown}. A fused "
            f"[E, out, in] tensor is one parameter, not a module, so PEFT has no module to wrap; scan with "
            f"exclude=[<their types>] for LoRA, or train them fully with spectrum_rs.integrations.torch.freeze()"
        )
    if not out:
        raise SpectrumError(
            f"top_percent={pct:g} selects no layer of any type of {result.model_name!r}: LoRA would "
            f"target nothing; raise top_percent"
        )
    return out


def peft_target_modules(result: ScanResult, top_percent: Optional[float] = None) -> List[str]:
    """The full module names of the layers ``result`` selects (top ``top_percent`` of each
    type, default ``result.top_percent``), grouped by type and by SNR inside a type: a
    ``target_modules`` list that wraps exactly these modules.

    Raises :class:`~spectrum_rs.SpectrumError` when the selection is empty or holds an
    expert of a fused expert tensor (a parameter, not a module)."""
    return [layer.name for layers in _selected(result, top_percent).values() for layer in layers]


def snr_rank_pattern(
    result: ScanResult,
    top_percent: Optional[float] = None,
    *,
    r: int = 8,
    min_factor: float = 0.5,
    max_factor: float = 2.0,
) -> Dict[str, int]:
    """Per selected module (regex-escaped full name), its LoRA rank::

        r_i = max(1, round(r * min_factor * (max_factor / min_factor) ** q_i))
        q_i = 1 - i / (k - 1)     (0.5 when k = 1)

    where the module has the i-th highest SNR (i = 0 for the highest) of the k selected
    layers of its type: from ``r * max_factor`` for the best layer of a type down to
    ``r * min_factor`` for the last one selected, ``r`` in the geometric middle."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    for label, v in (("min_factor", min_factor), ("max_factor", max_factor)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive number, got {v!r}")
    if min_factor > max_factor:
        raise ValueError(f"min_factor ({min_factor}) must not exceed max_factor ({max_factor})")
    out: Dict[str, int] = {}
    for layers in _selected(result, top_percent).values():
        k = len(layers)
        for i, layer in enumerate(layers):
            q = 0.5 if k == 1 else 1.0 - i / (k - 1)
            out[re.escape(layer.name)] = max(1, int(round(r * min_factor * (max_factor / min_factor) ** q)))
    return out


def peft_config(
    result: ScanResult,
    top_percent: Optional[float] = None,
    *,
    rank_pattern: bool = False,
    r: int = 8,
    min_factor: float = 0.5,
    max_factor: float = 2.0,
    keep_scaling: bool = True,
    **lora_kwargs: Any,
) -> Any:
    """A ``peft.LoraConfig`` whose ``target_modules`` are exactly the selected modules
    (:func:`peft_target_modules`).

    ``rank_pattern=True``: each module gets the rank of :func:`snr_rank_pattern` (higher SNR
    within its type, higher rank) and, with ``keep_scaling``, an ``alpha_pattern`` entry
    ``lora_alpha * r_i / r`` so that every module keeps the scaling ``lora_alpha / r`` of
    the base rank (a higher rank then adds capacity, not a larger update). Other keyword
    arguments go to ``LoraConfig`` (``lora_alpha``, ``lora_dropout``, ``task_type``, ...);
    ``target_modules`` may not be among them.
    """
    from peft import LoraConfig

    if "target_modules" in lora_kwargs:
        raise TypeError("peft_config sets target_modules itself (the selected modules); do not pass it")
    targets = peft_target_modules(result, top_percent)
    if rank_pattern:
        ranks = snr_rank_pattern(result, top_percent, r=r, min_factor=min_factor, max_factor=max_factor)
        lora_kwargs["rank_pattern"] = ranks
        if keep_scaling:
            if "alpha_pattern" in lora_kwargs:
                raise TypeError(
                    "peft_config(rank_pattern=True, keep_scaling=True) sets alpha_pattern itself; pass "
                    "keep_scaling=False to give your own"
                )
            default_alpha = LoraConfig.__dataclass_fields__["lora_alpha"].default
            alpha = float(lora_kwargs.get("lora_alpha", default_alpha))
            lora_kwargs["alpha_pattern"] = {k: alpha * v / r for k, v in ranks.items()}
    return LoraConfig(r=r, target_modules=targets, **lora_kwargs)
