"""spectrum-rs: Spectrum layer selection for large language models.

Measures the signal-to-noise ratio of every weight matrix of a safetensors model with
random matrix theory (Marchenko-Pastur), streaming one tensor at a time, and says which
layers to train::

    import spectrum_rs
    result = spectrum_rs.scan("path/to/model")
    result.select(25)          # names of the layers to unfreeze
    result.save(".")           # model_snr_results/*.json, *.yaml
"""

from ._core import __version__
from .errors import (
    CheckpointMismatchError,
    InternalError,
    ModelFileError,
    ResultsFileError,
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
    "ResultsFileError",
    "InternalError",
    "__version__",
]
