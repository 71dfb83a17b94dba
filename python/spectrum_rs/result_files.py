"""The three result files other tools read (SPEC §4): the results JSON that Axolotl's
Spectrum plugin loads, the per-type sorted JSON and the ``unfrozen_parameters`` YAML;
and loading results files back, in both shapes the reference tool ever wrote. Files are
written atomically: a reader never sees half a file."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ._core import SpectrumError, layer_type
from .results import LayerResult, ScanResult

RESULTS_DIR = "model_snr_results"


def slug(model_name: str) -> str:
    """The file-name form of a model name or path, as the reference tool makes it."""
    return model_name.replace("/", "-").replace("_", "-")


def file_names(model_name: str, top_percent: float) -> Dict[str, str]:
    s = slug(model_name)
    pct = _percent_text(top_percent)
    return {
        "results": f"snr_results_{s}.json",
        "sorted": f"snr_results_{s}_sorted.json",
        "yaml": f"snr_results_{s}_unfrozenparameters_{pct}percent.yaml",
    }


def _percent_text(pct: float) -> str:
    pct = float(pct)
    return str(int(pct)) if pct.is_integer() else str(pct)


def atomic_write(path: Union[str, Path], text: str) -> Path:
    """Writes ``text`` to a temporary file beside ``path``, flushes it to disk and renames
    it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); results are for other tools and users to
        # read, so give it the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def results_json(result: ScanResult) -> str:
    return json.dumps(result.to_dict(), indent=4)


def sorted_json(result: ScanResult) -> str:
    ranked = result.ranked()
    return json.dumps({t: {layer.name: float(layer.snr) for layer in layers}
                       for t, layers in ranked.items()}, indent=4)


def unfrozen_yaml(result: ScanResult, top_percent: Optional[float] = None, *,
                  embeddings: bool = True, strict: bool = False) -> str:
    """The ``unfrozen_parameters`` YAML. ``embeddings``: list the model's embedding and
    head weights first (anchored regexes), as the reference does. ``strict``: write every
    line as an escaped, anchored regex instead of the reference's bare layer names, whose
    unescaped dots match any character."""
    lines = ["unfrozen_parameters:"]
    if embeddings:
        names = result.embedding_layers()
        # The head first, then the embeddings in model order, as the reference lists them.
        for name in sorted(names, key=lambda n: n != "lm_head"):
            weight = f"{name}.weight"
            lines.append(f"- ^{re.escape(weight) if strict else weight}$")
    by_name = {layer.name: layer for layer in result}
    written = set()
    for t, names in result.selected_by_type(top_percent).items():
        lines.append(f"# {t} layers")
        for name in names:
            line = _parameter_line(by_name[name], strict)
            # Experts of one fused tensor share its parameter: list it once.
            if line not in written:
                written.add(line)
                lines.append(line)
    return "\n".join(lines) + "\n"


def _parameter_line(layer: LayerResult, strict: bool) -> str:
    """A layer's YAML line: the module name (the reference's form, a prefix regex for
    Axolotl), or the fused tensor's name for one of its experts; escaped and anchored in
    strict mode."""
    param = layer.parameter
    module = param[: -len(".weight")] if param.endswith(".weight") else None
    if strict:
        return f"- ^{re.escape(module)}\\." if module is not None else f"- ^{re.escape(param)}$"
    return f"- {module if module is not None else param}"


def write_all(result: ScanResult, out_dir: Union[str, Path] = ".", *,
              top_percent: Optional[float] = None, name: Optional[str] = None,
              embeddings: bool = True, strict: bool = False) -> Dict[str, Path]:
    """Writes ``model_snr_results/snr_results_{slug}.json``, its ``_sorted.json`` and the
    ``_unfrozenparameters_{P}percent.yaml`` under ``out_dir``. Returns their paths."""
    pct = result.top_percent if top_percent is None else float(top_percent)
    names = file_names(name or result.model_name, pct)
    folder = Path(out_dir) / RESULTS_DIR
    return {
        "results": atomic_write(folder / names["results"], results_json(result)),
        "sorted": atomic_write(folder / names["sorted"], sorted_json(result)),
        "yaml": atomic_write(folder / names["yaml"],
                             unfrozen_yaml(result, pct, embeddings=embeddings, strict=strict)),
    }


_SHAPES = ('expected either the results shape {layer: {"snr": number, "type": string}} '
           "or the sorted shape {type: {layer: number}}")


def _number(x: Any) -> Optional[float]:
    """An SNR from JSON: a number (``NaN``/``Infinity`` included), or ``null`` for NaN;
    None for anything else, a number too large for a float included."""
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:
        return None


def load(path: Union[str, Path]) -> ScanResult:
    """Reads a results JSON (ours or the reference tool's, ``Infinity``/``NaN`` included)
    in the flat results shape or the sorted shape."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpectrumError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpectrumError(f"{path}: cannot read results file ({e})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, numbers too long, nesting too deep
        raise SpectrumError(f"{path}: results file is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not data:
        raise SpectrumError(f"{path}: not a Spectrum results file: {_SHAPES}; "
                            f"found {'an empty object' if data == {} else type(data).__name__}")
    layers = []
    first = next(iter(data.values()))
    if isinstance(first, dict) and "snr" in first:
        for name, v in data.items():
            snr = _number(v["snr"]) if isinstance(v, dict) and "snr" in v else None
            if snr is None:
                raise SpectrumError(f"{path}: entry {name!r} has no numeric \"snr\" "
                                    f"(file is in the results shape, {_SHAPES})")
            kind = v.get("type")
            layers.append(LayerResult(name=name, type=kind if isinstance(kind, str) else layer_type(name),
                                      snr=snr))
    elif isinstance(first, dict):
        for kind, members in data.items():
            if not isinstance(members, dict):
                raise SpectrumError(f"{path}: type {kind!r} does not map layer names to numbers "
                                    f"(file is in the sorted shape, {_SHAPES})")
            for name, v in members.items():
                snr = _number(v)
                if snr is None:
                    raise SpectrumError(f"{path}: layer {name!r} of type {kind!r} has no numeric SNR "
                                        f"(file is in the sorted shape, {_SHAPES})")
                layers.append(LayerResult(name=name, type=kind, snr=snr))
    else:
        raise SpectrumError(f"{path}: not a Spectrum results file: {_SHAPES}")
    from ._core import natural_order

    layers = [layers[i] for i in natural_order([layer.name for layer in layers])]
    stem = path.stem
    model = stem[len("snr_results_"):] if stem.startswith("snr_results_") else stem
    if model.endswith("_sorted"):
        model = model[: -len("_sorted")]
    return ScanResult(model_name=model, layers=layers, settings={"loaded_from": str(path)})
