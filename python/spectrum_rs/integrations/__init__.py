"""Training with a scan: the layers a :class:`~spectrum_rs.ScanResult` selects, applied to a
model inside the training framework that trains it.

=========================  ==============================================================
module                     what it holds (it imports its host library, nothing else does)
=========================  ==============================================================
:mod:`.torch`              :func:`scan_model` (a scan of an in-memory model or state dict),
                           :func:`freeze`, :func:`retarget`, :func:`snr_param_groups`,
                           :func:`candidate_parameters`, :class:`FreezeSummary`,
                           :class:`RetargetReport`, :class:`ScanMismatchError`
:mod:`.peft`               :func:`peft_target_modules`, :func:`peft_config` (LoRA on the
                           selected modules, optionally with an SNR-ranked ``rank_pattern``)
:mod:`.transformers`       :class:`SpectrumCallback` (a ``transformers.TrainerCallback``)
:mod:`.axolotl`            :class:`SpectrumPlugin` (an Axolotl plugin:
                           ``spectrum_rs.integrations.axolotl.SpectrumPlugin``)
=========================  ==============================================================

Every name is also reachable from here (``from spectrum_rs.integrations import freeze``);
each is imported on first use, so ``import spectrum_rs`` and ``import
spectrum_rs.integrations`` import neither torch nor any training library. docs/training.md
shows one runnable example per host and explains the design.

Every integration matches layers to parameters by ``LayerResult.parameter`` (the exact
parameter name, never a substring) and fails closed: a scan that does not fit the model,
a selection that would train nothing, or a re-targeting that the optimizer cannot follow
raises :class:`~spectrum_rs.SpectrumError` (a subclass of it) instead of training
everything, or nothing, by accident.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List

#: Public name -> the integration module that defines it.
_LAZY: Dict[str, str] = {
    "scan_model": "torch",
    "freeze": "torch",
    "retarget": "torch",
    "snr_param_groups": "torch",
    "candidate_parameters": "torch",
    "FreezeSummary": "torch",
    "RetargetReport": "torch",
    "ScanMismatchError": "torch",
    "peft_target_modules": "peft",
    "peft_config": "peft",
    "SpectrumCallback": "transformers",
    "SpectrumPlugin": "axolotl",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
