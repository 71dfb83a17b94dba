"""The result of a scan: one ``LayerResult`` per layer and the ``ScanResult`` that holds
them, ranks them per type (through the Rust core) and selects the layers to train."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from . import _core


@dataclass
class LayerResult:
    """The numbers of one weight matrix. Fields other than name, type and snr are
    ``None`` for results loaded from a reference results file."""

    name: str
    type: str
    snr: float
    shape: Optional[Tuple[int, int]] = None
    dtype: Optional[str] = None
    sigma: Optional[float] = None
    threshold: Optional[float] = None
    max_singular_value: Optional[float] = None
    n_signal: Optional[int] = None
    #: For a tied ``lm_head``: the embedding layer whose numbers it repeats.
    tied_to: Optional[str] = None
    #: The stored tensor the matrix comes from (a fused expert tensor for ``<layer>.<e>``).
    tensor: Optional[str] = None

    @property
    def parameter(self) -> str:
        """The model parameter a trainer unfreezes for this layer: ``<name>.weight``, or
        the whole fused tensor for one expert of it."""
        if self.tensor is None or self.tied_to is not None:
            return f"{self.name}.weight"
        return self.tensor

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if d["shape"] is not None:
            d["shape"] = list(d["shape"])
        return d


@dataclass
class ScanResult:
    """Every scanned layer, in model order, with the scan's settings."""

    model_name: str
    layers: List[LayerResult]
    top_percent: float = 25.0
    settings: Dict[str, Any] = field(default_factory=dict)
    #: The model's embedding and head layers, scanned or not (set by ``scan``).
    embeddings: Optional[List[str]] = None

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __repr__(self) -> str:
        return (f"ScanResult(model_name={self.model_name!r}, layers={len(self.layers)}, "
                f"types={len(self.types)}, top_percent={self.top_percent})")

    @property
    def types(self) -> List[str]:
        """Layer types, sorted."""
        return sorted({layer.type for layer in self.layers})

    def ranked(self) -> Dict[str, List[LayerResult]]:
        """Per type (sorted), the layers by SNR, highest first (ties in model order, NaN last)."""
        types = [layer.type for layer in self.layers]
        snrs = [_float(layer.snr) for layer in self.layers]
        return {t: [self.layers[i] for i in idx] for t, idx in _core.rank_by_type(types, snrs)}

    def selected_by_type(self, top_percent: Optional[float] = None) -> Dict[str, List[str]]:
        """Per type, the names of its top ``top_percent`` layers by SNR (SPEC §3)."""
        pct = self.top_percent if top_percent is None else float(top_percent)
        _check_percent(pct)
        types = [layer.type for layer in self.layers]
        snrs = [_float(layer.snr) for layer in self.layers]
        keep = _core.select_top(types, snrs, pct)  # the reference's int(count * pct / 100)
        return {t: [self.layers[i].name for i in idx if keep[i]] for t, idx in _core.rank_by_type(types, snrs)}

    def select(self, top_percent: Optional[float] = None) -> List[str]:
        """Names of the layers to train: the top ``top_percent`` of each type, grouped by
        type (sorted) and ordered by SNR inside a type."""
        return [name for names in self.selected_by_type(top_percent).values() for name in names]

    def embedding_layers(self) -> List[str]:
        """Names of the input embedding and output head layers the model really has: from
        the model itself after a scan, from the layers listed for a loaded results file."""
        if self.embeddings is not None:
            return list(self.embeddings)
        return embedding_names(layer.name for layer in self.layers)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        """The reference results shape: ``{layer: {"snr": float, "type": str}}``, grouped by
        type (sorted) with layers in model order inside a type."""
        out: Dict[str, Dict[str, Any]] = {}
        for t in self.types:
            for layer in self.layers:
                if layer.type == t:
                    out[layer.name] = {"snr": _float(layer.snr), "type": t}
        return out

    def save(self, out_dir: Union[str, Path] = ".", top_percent: Optional[float] = None,
             name: Optional[str] = None, **yaml_options: Any) -> Dict[str, Path]:
        """Writes the three reference files under ``out_dir/model_snr_results/``; see
        :func:`spectrum_rs.result_files.write_all`."""
        from .result_files import write_all

        return write_all(self, out_dir, top_percent=top_percent, name=name, **yaml_options)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ScanResult":
        """Reads a results JSON written by this tool or the reference tool, in either the
        flat or the sorted shape."""
        from .result_files import load

        return load(path)


_EMBEDDING_MARKERS = ("embed", "wte", "wpe", "lm_head")


def embedding_names(names: Iterable[str]) -> List[str]:
    """The embedding and head layers among ``names``: the last part names an embedding
    (``embed_tokens``, ``word_embeddings``, ``wte``...) or the layer is ``lm_head``."""
    out = []
    for name in names:
        last = name.split(".")[-1]
        if name == "lm_head" or any(m in last for m in _EMBEDDING_MARKERS):
            out.append(name)
    return out


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _check_percent(pct: float) -> None:
    if not (0 <= pct <= 100):
        raise ValueError(f"top_percent must be between 0 and 100, got {pct}")
