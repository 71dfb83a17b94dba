"""The three result files other tools read (docs/method.md §4): the results JSON that
Axolotl's Spectrum plugin loads, the per-type sorted JSON and the ``unfrozen_parameters``
YAML; and parsing results files back, in both shapes the reference tool ever wrote. This
module knows the formats only: it takes and gives plain data (names, types, numbers), and
:class:`spectrum_rs.ScanResult` decides what goes in. Files are written atomically: a
reader never sees half a file."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .._core import layer_type, natural_order
from ..errors import ResultsFileError, SpectrumError
from .text import name_regex, printable, yaml_scalar

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
    it over ``path``. A failure raises :class:`SpectrumError` saying in our words what is
    wrong and naming the path (:func:`output_error`), and leaves neither the temporary
    file nor a partial ``path`` behind; a file already at ``path`` is kept as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from None
    try:
        # mkstemp makes the file private (0600); results are for other tools and users to
        # read, so give it the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise output_error(path, e) from None
        raise
    return path


def output_error(path: Union[str, Path], error: OSError) -> SpectrumError:
    """The :class:`SpectrumError` for an ``OSError`` met while writing ``path``: what is
    wrong in our words, with the path, instead of ``[Errno 28] No space left on device``."""
    path = Path(path)
    shown = printable(str(path))
    code = error.errno
    if code in (errno.ENOTDIR, errno.EEXIST) or (code == errno.ENOENT and _blocking_file(path) is not None):
        blocker = _blocking_file(path)
        if blocker is not None:
            what = f"{printable(str(blocker))} is a file, not a folder"
        else:
            what = "a part of the path is not a folder"
        message = f"cannot write {shown}: {what}"
    elif code == errno.EISDIR:
        message = f"cannot write {shown}: it is a folder"
    elif code == errno.ENOSPC:
        message = f"no space left on device while writing {shown}"
    elif code == errno.EDQUOT:
        message = f"disk quota exceeded while writing {shown}"
    elif code == errno.EFBIG:
        message = (
            f"cannot write {shown}: the file would exceed the largest file size this process or file system allows"
        )
    elif code in (errno.EACCES, errno.EPERM):
        message = f"permission denied: cannot write {shown} (is {printable(str(path.parent))} writable by this user?)"
    elif code == errno.EROFS:
        message = f"cannot write {shown}: the file system is read-only"
    elif code == errno.ENAMETOOLONG:
        message = f"cannot write {shown}: the file name is too long"
    else:
        message = f"cannot write {shown}: {error.strerror or error}"
    return SpectrumError(message, path=str(path))


def _blocking_file(path: Path) -> Optional[Path]:
    """The nearest folder of ``path`` that exists and is not a folder (a file where a
    folder should be), or None."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def results_text(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The results JSON: ``{layer: {"snr": float, "type": str}}`` as given."""
    return json.dumps(entries, indent=4)


def sorted_text(ranked: Mapping[str, Sequence[Tuple[str, float]]]) -> str:
    """The sorted JSON: ``{type: {layer: snr}}`` with each type's layers as given."""
    return json.dumps({t: {name: float(snr) for name, snr in layers} for t, layers in ranked.items()}, indent=4)


def yaml_text(head: Sequence[str], sections: Mapping[str, Sequence[str]], *, strict: bool = False) -> str:
    """The ``unfrozen_parameters`` YAML: the ``head`` parameters (embedding and head
    weights, as anchored regexes), then one ``# {type} layers`` section per type with the
    parameters to train; a type with none selected gets no section. ``strict``: every line
    an escaped, anchored regex instead of the reference's bare module names, whose
    unescaped dots match any character.

    Names and types come from files anyone can write: every line is built so that it adds
    no other line whatever the name holds. Control characters are written as regex escapes
    in the parameter lines (which still match the real parameter) and as backslash escapes
    in the comments, other regex metacharacters than ``.`` are escaped, and a line YAML
    would not read back as the same string is double-quoted (:mod:`.text`). Ordinary names
    are written as the reference writes them."""
    lines = ["unfrozen_parameters:"]
    for weight in head:
        lines.append(_item(f"^{name_regex(weight, strict)}$"))
    written = set()
    for t, params in sections.items():
        section = []
        for param in params:
            line = _parameter_line(param, strict)
            # Experts of one fused tensor share its parameter: list it once.
            if line not in written:
                written.add(line)
                section.append(line)
        if section:
            lines.append(f"# {printable(t)} layers")
            lines.extend(section)
    return "\n".join(lines) + "\n"


def _item(regex: str) -> str:
    return f"- {yaml_scalar(regex)}"


def _parameter_line(param: str, strict: bool) -> str:
    """A layer's YAML line: the module name (the reference's form, a prefix regex for
    Axolotl), or the fused tensor's name for one of its experts; escaped and anchored in
    strict mode."""
    module = param[: -len(".weight")] if param.endswith(".weight") else None
    if strict:
        return _item(f"^{name_regex(module, True)}\\." if module is not None else f"^{name_regex(param, True)}$")
    return _item(name_regex(module if module is not None else param, False))


def write_files(
    out_dir: Union[str, Path], model_name: str, top_percent: float, results: str, sorted_: str, yaml: str
) -> Dict[str, Path]:
    """Writes the three files under ``out_dir/model_snr_results/``; returns their paths."""
    names = file_names(model_name, top_percent)
    folder = Path(out_dir) / RESULTS_DIR
    return {
        "results": atomic_write(folder / names["results"], results),
        "sorted": atomic_write(folder / names["sorted"], sorted_),
        "yaml": atomic_write(folder / names["yaml"], yaml),
    }


_SHAPES = (
    'expected either the results shape {layer: {"snr": number, "type": string}} '
    "or the sorted shape {type: {layer: number}}"
)


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


def parse(path: Union[str, Path]) -> Tuple[str, List[Tuple[str, str, float]]]:
    """Reads a results JSON (ours or the reference tool's, ``Infinity``/``NaN`` included)
    in the flat results shape or the sorted shape: the model name its file name gives, and
    ``(layer, type, snr)`` per layer in model order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such results file", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"{path}: cannot read results file ({e})", path=str(path)) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, numbers too long, nesting too deep
        raise ResultsFileError(
            f"{path}: results file is not valid JSON ({type(e).__name__}: {e})", path=str(path)
        ) from None
    if not isinstance(data, dict) or not data:
        raise ResultsFileError(
            f"{path}: not a Spectrum results file: {_SHAPES}; "
            f"found {'an empty object' if data == {} else type(data).__name__}",
            path=str(path),
        )
    layers = []
    first = next(iter(data.values()))
    if isinstance(first, dict) and "snr" in first:
        for name, v in data.items():
            snr = _number(v["snr"]) if isinstance(v, dict) and "snr" in v else None
            if snr is None:
                raise ResultsFileError(
                    f'{path}: entry {name!r} has no numeric "snr" (file is in the results shape, {_SHAPES})',
                    path=str(path),
                )
            kind = v.get("type")
            layers.append((name, kind if isinstance(kind, str) else layer_type(name), snr))
    elif isinstance(first, dict):
        for kind, members in data.items():
            if not isinstance(members, dict):
                raise ResultsFileError(
                    f"{path}: type {kind!r} does not map layer names to numbers "
                    f"(file is in the sorted shape, {_SHAPES})",
                    path=str(path),
                )
            for name, v in members.items():
                snr = _number(v)
                if snr is None:
                    raise ResultsFileError(
                        f"{path}: layer {name!r} of type {kind!r} has no numeric SNR "
                        f"(file is in the sorted shape, {_SHAPES})",
                        path=str(path),
                    )
                layers.append((name, kind, snr))
    else:
        raise ResultsFileError(f"{path}: not a Spectrum results file: {_SHAPES}", path=str(path))
    layers = [layers[i] for i in natural_order([layer[0] for layer in layers])]
    stem = path.stem
    model = stem[len("snr_results_") :] if stem.startswith("snr_results_") else stem
    if model.endswith("_sorted"):
        model = model[: -len("_sorted")]
    return model, layers
