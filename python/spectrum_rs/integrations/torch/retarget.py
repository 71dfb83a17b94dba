"""Re-targeting during training: move the trainable set to a new scan's selection
inside an optimizer built over the candidates, reporting what entered and left."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ...errors import SpectrumError
from ...results import ScanResult
from .fit import apply_plan, count_parameters, listing, plan_training
from .freeze import optimizer_ids

log = logging.getLogger("spectrum_rs.integrations")


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
            lines.append(f"  entered: {listing(self.entered)}")
        if self.left:
            lines.append(f"  left: {listing(self.left)}")
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
    plan = plan_training(model, result, top_percent, embeddings, head)
    if not plan.train:
        raise SpectrumError(
            f"retarget: nothing would train (top_percent={plan.pct:g}, embeddings={embeddings}, head={head})"
        )
    held = optimizer_ids(optimizer)
    absent = [e.name for e in plan.tensors.unique if id(e.tensor) in plan.train and id(e.tensor) not in held]
    if absent:
        raise SpectrumError(
            f"retarget: {len(absent)} parameter(s) to train are not in the optimizer: {listing(absent)}; build the "
            f"optimizer over spectrum_rs.integrations.torch.candidate_parameters(model, result) (or all parameters) "
            f"before freezing, so that a layer can enter later"
        )
    tensors = plan.tensors
    before = {id(e.tensor) for e in tensors.unique if e.tensor.requires_grad}
    apply_plan(tensors, plan.train)
    after = set(plan.train)
    entered = [e.name for e in tensors.unique if id(e.tensor) in after - before]
    left = [e.name for e in tensors.unique if id(e.tensor) in before - after]
    report = RetargetReport(
        entered=entered,
        left=left,
        trainable=count_parameters(tensors, after),
        total=count_parameters(tensors),
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
