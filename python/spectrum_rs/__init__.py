"""spectrum-rs: Spectrum layer selection for large language models.

Measures the signal-to-noise ratio of every weight matrix of a safetensors model with
random matrix theory (Marchenko-Pastur), streaming one tensor at a time, and says which
layers to train::

    import spectrum_rs
    result = spectrum_rs.scan("path/to/model")
    result.select(25)          # names of the layers to unfreeze
    result.save(".")           # model_snr_results/*.json, *.yaml

The training integrations (``spectrum_rs.integrations``: ``scan_model``, ``freeze``,
``retarget``, ``SpectrumCallback``, PEFT and Axolotl) import torch and transformers, so
they are loaded on first use: ``import spectrum_rs`` stays light.
"""

from typing import Any

from ._core import __version__
from .errors import (
    CheckpointBusyError,
    CheckpointMismatchError,
    InternalError,
    ModelFileError,
    ResultsFileError,
    ScanMismatchError,
    SpectrumError,
    UnsupportedLayoutError,
)
from .results import LayerResult, ScanResult
from .scan import ScanInterrupted, scan

__all__ = [
    "scan",
    "ScanResult",
    "LayerResult",
    "ScanInterrupted",
    "SpectrumError",
    "ModelFileError",
    "UnsupportedLayoutError",
    "CheckpointMismatchError",
    "CheckpointBusyError",
    "ResultsFileError",
    "ScanMismatchError",
    "InternalError",
    "__version__",
]

# Training integrations are imported on first use: they import torch / transformers.
_LAZY = {
    "scan_model": "spectrum_rs.integrations.torch",
    "freeze": "spectrum_rs.integrations.torch",
    "retarget": "spectrum_rs.integrations.torch",
    "snr_param_groups": "spectrum_rs.integrations.torch",
    "peft_config": "spectrum_rs.integrations.peft",
    "peft_target_modules": "spectrum_rs.integrations.peft",
    "SpectrumCallback": "spectrum_rs.integrations.transformers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectrum_rs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
