"""What trains: ``freeze`` (``requires_grad`` set so that exactly the selection, the
input embeddings and the head train, with a summary), and the candidates an optimizer
must hold for re-targeting (``candidate_parameters``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from ...errors import SpectrumError
from ...results import ScanResult
from .fit import TrainPlan, apply_plan, count_parameters, plan_training

log = logging.getLogger("spectrum_rs.integrations")


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


def summarize(plan: TrainPlan) -> FreezeSummary:
    tensors = plan.tensors
    names = [e.name for e in tensors.unique if id(e.tensor) in plan.train]
    emb_ids = {id(tensors.by_name[n].tensor) for n in plan.embedding_params + plan.head_params}
    embeddings = [e.name for e in tensors.unique if id(e.tensor) in plan.train and id(e.tensor) in emb_ids]
    return FreezeSummary(
        trainable=count_parameters(tensors, plan.train),
        total=count_parameters(tensors),
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
    plan = plan_training(model, result, top_percent, embeddings, head)
    if not plan.train:
        raise SpectrumError(
            f"freeze: nothing would train (top_percent={plan.pct:g} selects no layer of any type of "
            f"{result.model_name!r}, and embeddings={embeddings}, head={head}); raise top_percent or unfreeze "
            f"the embeddings"
        )
    apply_plan(plan.tensors, plan.train)
    summary = summarize(plan)
    log.info("%s", summary)
    return summary


def candidate_parameters(
    model: torch.nn.Module, result: ScanResult, *, embeddings: bool = True, head: bool = True
) -> List[torch.nn.Parameter]:
    """Every parameter a selection from ``result`` can ever train: each scanned matrix,
    and the embeddings and head when asked for; each once, in model order. Build the
    optimizer over these (or over all parameters) to :func:`retarget` later."""
    plan = plan_training(model, result, None, embeddings, head)
    return [e.tensor for e in plan.tensors.unique if id(e.tensor) in plan.candidates]


def optimizer_ids(optimizer: Any) -> Set[int]:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        raise TypeError(f"expected a torch optimizer (with param_groups), got {type(optimizer).__name__}")
    return {id(p) for g in groups for p in g["params"]}


def set_candidates(model: Any, result: ScanResult, embeddings: bool, head: bool) -> TrainPlan:
    """Makes exactly the candidates trainable (before an optimizer is built over the
    trainable parameters, as ``transformers.Trainer`` builds it)."""
    plan = plan_training(model, result, None, embeddings, head)
    apply_plan(plan.tensors, plan.candidates)
    return plan
