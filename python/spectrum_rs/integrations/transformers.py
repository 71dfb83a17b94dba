"""Spectrum inside ``transformers.Trainer``: :class:`SpectrumCallback` freezes the model to
a scan's selection before the Trainer builds its optimizer and, with ``rescan_every``,
rescans the model during training and moves training to the new selection.

When things happen in ``Trainer`` (transformers 4.40 to 5.x, read from its source):
``on_init_end`` is the last step of ``Trainer.__init__``; ``train()`` then builds the
optimizer over the parameters that have ``requires_grad`` at that moment
(``create_optimizer`` in ``_prepare_for_training``; under FSDP1 right after wrapping the
model), and only after that calls ``on_train_begin``. So freezing must happen in
``on_init_end``: ``on_train_begin`` is too late for the optimizer to leave parameters out.

The design of re-targeting (docs/training.md explains it at length):

* ``rescan_every=None`` (a fixed selection): ``on_init_end`` freezes to the selection, so
  the optimizer holds (and allocates state for) the selected parameters only.
* ``rescan_every="epoch"`` or ``N`` (steps): ``on_init_end`` makes the *candidates*
  trainable (every scanned matrix plus the embeddings and head), so the optimizer is built
  over all of them; ``on_train_begin`` (the optimizer exists now) freezes down to the
  selection. A frozen parameter keeps ``requires_grad=False`` and ``grad=None``, which
  torch optimizers skip entirely (no update, no weight decay) while keeping its state.
  After each rescan :func:`~spectrum_rs.integrations.torch.retarget` flips
  ``requires_grad``: a layer frozen at optimizer creation can start training later, and a
  layer that leaves keeps its optimizer state (moments, step count). Optimizer state is
  allocated lazily, at a parameter's first step, so a candidate that never trains costs no
  optimizer memory. The learning-rate scheduler is untouched (no param group is added).

Each rescan is logged: an entry in ``state.log_history`` (saved in ``trainer_state.json``)
with ``spectrum/entered``, ``spectrum/left`` (layer names), ``spectrum/trainable_share`` and
``spectrum/snr_drift/<type>`` (mean relative SNR change per type), a log line through the
``spectrum_rs.integrations`` logger, and :attr:`SpectrumCallback.history`.

This module imports transformers; ``import spectrum_rs`` does not.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Union

from transformers import TrainerCallback

from ..errors import SpectrumError
from ..options import check_top_percent
from ..results import ScanResult
from . import torch as spectrum_torch
from .torch.fit import listing, plan_training
from .torch.freeze import optimizer_ids, set_candidates

__all__ = ["SpectrumCallback"]

log = logging.getLogger("spectrum_rs.integrations")

#: The settings of a scan that a rescan repeats (from ``ScanResult.settings``).
_RESCAN_SETTINGS = ("types", "exclude", "include_1d", "method", "dtype", "no_noise")


class SpectrumCallback(TrainerCallback):
    """Trains the layers a scan selects inside a ``transformers.Trainer``.

    Args:
        result: the scan to train by; None scans the model in ``on_init_end`` with
            :func:`~spectrum_rs.integrations.torch.scan_model`.
        top_percent: share of each layer type to train (default ``result.top_percent``,
            25 unless the scan said otherwise).
        rescan_every: None (a fixed selection), ``"epoch"`` (rescan after each epoch but
            the last) or a number of optimizer steps.
        embeddings, head: also train the input embeddings / the output head (default,
            as the reference Spectrum does).
        scan_kwargs: options for every scan this callback runs (``types``, ``exclude``,
            ``device``, ...); by default a rescan repeats the settings of ``result``.

    ``history`` holds the :class:`~spectrum_rs.integrations.torch.RetargetReport` of each
    rescan, ``summary`` the :class:`~spectrum_rs.integrations.torch.FreezeSummary` of the
    first freeze, ``result`` the scan in force.

    Fails closed: a scan that does not fit the model raises
    :class:`~spectrum_rs.integrations.torch.ScanMismatchError` in ``Trainer(...)``; an
    optimizer (one passed to the Trainer, or built after something else froze the model)
    that lacks a parameter the selection needs raises in ``on_train_begin``; re-targeting
    under DeepSpeed, or under DDP without ``ddp_find_unused_parameters=True``, is refused.
    """

    def __init__(
        self,
        result: Optional[ScanResult] = None,
        top_percent: Optional[float] = None,
        rescan_every: Union[None, str, int] = None,
        *,
        embeddings: bool = True,
        head: bool = True,
        scan_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if result is not None and not isinstance(result, ScanResult):
            raise TypeError(f"result must be a spectrum_rs.ScanResult or None, got {type(result).__name__}")
        if rescan_every is not None and rescan_every != "epoch":
            if isinstance(rescan_every, bool) or not isinstance(rescan_every, int) or rescan_every < 1:
                raise ValueError(
                    f"rescan_every must be None, 'epoch' or a positive number of steps, got {rescan_every!r}"
                )
        self.top_percent = None if top_percent is None else check_top_percent(top_percent)
        self.rescan_every = rescan_every
        self.embeddings = embeddings
        self.head = head
        self.scan_kwargs: Dict[str, Any] = dict(scan_kwargs or {})
        self.result = result
        self.summary: Optional[spectrum_torch.FreezeSummary] = None
        self.history: List[spectrum_torch.RetargetReport] = []

    @property
    def dynamic(self) -> bool:
        return self.rescan_every is not None

    def _pct(self) -> float:
        assert self.result is not None
        return self.top_percent if self.top_percent is not None else self.result.top_percent

    # -- Trainer events -----------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise SpectrumError("SpectrumCallback: the Trainer passed no model to on_init_end")
        if self.dynamic:
            _check_dynamic_allowed(args)
        if self.result is None:
            self.result = spectrum_torch.scan_model(model, **self._scan_options(first=True))
        if self.dynamic:
            # The optimizer is built over what requires grad: make that every candidate.
            set_candidates(model, self.result, self.embeddings, self.head)
        else:
            self.summary = spectrum_torch.freeze(
                model, self.result, self._pct(), embeddings=self.embeddings, head=self.head
            )
        if getattr(args, "gradient_checkpointing", False) and not self.embeddings:
            # Reentrant checkpointing passes no gradient through a block whose inputs do
            # not require grad: with frozen input embeddings nothing before the head
            # would train. transformers' own fix (what PEFT uses) makes them require it.
            enable = getattr(model, "enable_input_require_grads", None)
            if callable(enable):
                enable()

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if model is None or optimizer is None:
            raise SpectrumError("SpectrumCallback: the Trainer passed no model or optimizer to on_train_begin")
        assert self.result is not None
        plan = plan_training(model, self.result, self._pct(), self.embeddings, self.head)
        needed = plan.candidates if self.dynamic else plan.train
        held = optimizer_ids(optimizer)
        absent = [e.name for e in plan.tensors.unique if id(e.tensor) in needed and id(e.tensor) not in held]
        if absent:
            what = "candidate" if self.dynamic else "selected"
            raise SpectrumError(
                f"SpectrumCallback: {len(absent)} {what} parameter(s) are not in the Trainer's optimizer: "
                f"{listing(absent)}. The optimizer holds what requires grad when Trainer.train() "
                f"builds it: do not freeze the model yourself before, and pass no optimizer of your own unless it "
                f"holds {'every candidate (candidate_parameters)' if self.dynamic else 'the selected parameters'}"
            )
        self.summary = spectrum_torch.freeze(
            model, self.result, self._pct(), embeddings=self.embeddings, head=self.head
        )
        state.log_history.append(
            {
                "spectrum/trainable_share": self.summary.share,
                "spectrum/trainable_parameters": self.summary.trainable,
                "spectrum/selected": [n for names in plan.selected.values() for n in names],
                "step": state.global_step,
            }
        )

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        every = self.rescan_every
        if isinstance(every, int) and state.global_step % every == 0 and not _finished(state):
            self._rescan(state, model, optimizer)

    def on_epoch_end(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if self.rescan_every == "epoch" and not _finished(state):
            self._rescan(state, model, optimizer)

    # -- Rescans ------------------------------------------------------------------------

    def _scan_options(self, first: bool = False) -> Dict[str, Any]:
        opts: Dict[str, Any] = {}
        if not first and self.result is not None:
            settings = self.result.settings or {}
            opts = {k: settings[k] for k in _RESCAN_SETTINGS if k in settings}
            opts["top_percent"] = self.result.top_percent
            if self.result.model_name:
                opts["name"] = self.result.model_name
        opts.update(self.scan_kwargs)
        return opts

    def _rescan(self, state: Any, model: Any, optimizer: Any) -> None:
        if model is None or optimizer is None:
            raise SpectrumError("SpectrumCallback: the Trainer passed no model or optimizer to re-target")
        previous = self.result
        new = spectrum_torch.scan_model(model, **self._scan_options())
        report = spectrum_torch.retarget(
            model, optimizer, new, self._pct(), embeddings=self.embeddings, head=self.head, previous=previous
        )
        self.result = new
        self.history.append(report)
        entry = report.log_entry()
        entry["spectrum/rescan"] = len(self.history)
        entry["step"] = state.global_step
        if state.epoch is not None:
            entry["epoch"] = state.epoch
        state.log_history.append(entry)
        log.info("step %s: %s", state.global_step, report)


def _finished(state: Any) -> bool:
    """True at the last step (a rescan then would change nothing that trains)."""
    max_steps = getattr(state, "max_steps", 0) or 0
    return max_steps > 0 and state.global_step >= max_steps


def _check_dynamic_allowed(args: Any) -> None:
    """Re-targeting needs every candidate in the optimizer and gradients that may be
    absent: refuse the setups where that does not hold (rather than train wrongly)."""
    if getattr(args, "deepspeed", None):
        raise SpectrumError(
            "SpectrumCallback(rescan_every=...) is not supported under DeepSpeed: ZeRO partitions gradients and "
            "optimizer state when the engine is built, and a parameter whose requires_grad changes later is not "
            "skipped the way torch optimizers skip it. Use rescan_every=None (a fixed selection) with DeepSpeed"
        )
    world = int(getattr(args, "world_size", 1) or 1)
    fsdp = getattr(args, "fsdp", None)
    if world > 1 and not fsdp and getattr(args, "ddp_find_unused_parameters", None) is not True:
        raise SpectrumError(
            "SpectrumCallback(rescan_every=...) under DDP needs ddp_find_unused_parameters=True in TrainingArguments: "
            "DDP is built while every candidate requires grad, and the frozen ones then produce no gradient"
        )
