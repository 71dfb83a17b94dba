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

This package imports torch (it is the torch integration); ``import spectrum_rs`` does not
import it. Where each part lives: ``tensors`` (the model's parameters and how to gather them),
``layers`` (the catalog's rule: which are layers, their names and types), ``in_memory``
(``scan_model``), ``fit`` (a scan matched to the model's parameters, and the plan of what
trains), ``freeze``, ``retarget``, ``param_groups``.
"""

from __future__ import annotations

from ...errors import ScanMismatchError
from .freeze import FreezeSummary, candidate_parameters, freeze
from .in_memory import scan_model
from .param_groups import snr_param_groups
from .retarget import RetargetReport, retarget

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
