"""The result of a scan: one ``LayerResult`` per layer and the ``ScanResult`` that holds
them, ranks them per type (through the Rust core), selects the layers to train, and saves
itself as (or loads itself from) the reference tool's files (:mod:`.io.reference_files`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from . import _core
from .io import reference_files
from .model.layouts import HEAD, embedding_names
from .options import check_top_percent


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
        the whole fused tensor for one expert of it (or one half of a split fused tensor)."""
        if self.tensor is None or self.tied_to is not None:
            return f"{self.name}.weight"
        # MXFP4 experts: the trainer sees the dequantized `...gate_up_proj`, not its blocks.
        return self.tensor[: -len("_blocks")] if self.tensor.endswith("_blocks") else self.tensor

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
        return (
            f"ScanResult(model_name={self.model_name!r}, layers={len(self.layers)}, "
            f"types={len(self.types)}, top_percent={self.top_percent})"
        )

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
        """Per type, the names of its top ``top_percent`` layers by SNR (docs/method.md §3)."""
        pct = check_top_percent(self.top_percent if top_percent is None else top_percent)
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

    def unfrozen_yaml(
        self, top_percent: Optional[float] = None, *, embeddings: bool = True, strict: bool = False
    ) -> str:
        """The ``unfrozen_parameters`` YAML (docs/method.md §4). ``embeddings``: list the
        model's embedding and head weights first (anchored regexes), as the reference does.
        ``strict``: every line an escaped, anchored regex."""
        head: List[str] = []
        if embeddings:
            # The head first, then the embeddings in model order, as the reference lists them.
            head = [f"{name}.weight" for name in sorted(self.embedding_layers(), key=lambda n: n != HEAD)]
        by_name = {layer.name: layer for layer in self.layers}
        sections = {t: [by_name[n].parameter for n in names] for t, names in self.selected_by_type(top_percent).items()}
        return reference_files.yaml_text(head, sections, strict=strict)

    def save(
        self,
        out_dir: Union[str, Path] = ".",
        top_percent: Optional[float] = None,
        name: Optional[str] = None,
        *,
        embeddings: bool = True,
        strict: bool = False,
    ) -> Dict[str, Path]:
        """Writes the three reference files under ``out_dir/model_snr_results/``:
        ``snr_results_{slug}.json``, its ``_sorted.json`` and the
        ``_unfrozenparameters_{P}percent.yaml``. Returns their paths by kind
        (``results``, ``sorted``, ``yaml``)."""
        pct = check_top_percent(self.top_percent if top_percent is None else top_percent)
        ranked = {t: [(layer.name, _float(layer.snr)) for layer in layers] for t, layers in self.ranked().items()}
        return reference_files.write_files(
            out_dir,
            name or self.model_name,
            pct,
            results=reference_files.results_text(self.to_dict()),
            sorted_=reference_files.sorted_text(ranked),
            yaml=self.unfrozen_yaml(pct, embeddings=embeddings, strict=strict),
        )

    @classmethod
    def load(cls, path: Union[str, Path]) -> ScanResult:
        """Reads a results JSON written by this tool or the reference tool, in either the
        flat or the sorted shape."""
        model, entries = reference_files.parse(path)
        layers = [LayerResult(name=name, type=kind, snr=snr) for name, kind, snr in entries]
        return cls(model_name=model, layers=layers, settings={"loaded_from": str(path)})


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)
