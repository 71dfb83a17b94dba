"""spectrum-rs: Spectrum layer selection for large language models.

Measures the signal-to-noise ratio of every weight matrix of a safetensors model with
random matrix theory (Marchenko-Pastur), streaming one tensor at a time, and says which
layers to train::

    import spectrum_rs
    result = spectrum_rs.scan("path/to/model")
    result.select(25)          # names of the layers to unfreeze
    result.save(".")           # model_snr_results/*.json, *.yaml
"""

from ._core import SpectrumError
from .results import LayerResult, ScanResult
from .scan import ScanInterrupted, scan

__version__ = "0.1.0"
__all__ = ["scan", "ScanResult", "LayerResult", "ScanInterrupted", "SpectrumError", "__version__"]
