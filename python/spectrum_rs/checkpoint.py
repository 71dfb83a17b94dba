"""The resume checkpoint of a scan: one JSON line per finished layer, appended and
fsynced as soon as it is computed, behind a first line that records the model's identity
(file names, sizes, modification times, header hashes) and the settings that change
numbers. A rerun with the
same model and settings picks the finished layers up; anything else is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._core import SpectrumError
from .results import LayerResult

FORMAT = "spectrum-rs-checkpoint/1"


def identity(files: List[Tuple[str, int, int]]) -> List[List[Any]]:
    """The model as the checkpoint remembers it: (file name, size, modification time,
    header hash) per file. The time catches weights saved again over the same layout."""
    return [[os.path.basename(p), size, os.stat(p).st_mtime_ns, format(h, "016x")] for p, size, h in files]


class Checkpoint:
    """An append-only record of finished layers for one model and one set of settings."""

    def __init__(self, path: Path, model: List[List[Any]], settings: Dict[str, Any]) -> None:
        self.path = Path(path)
        self.head = {"format": FORMAT, "model": model, "settings": settings}
        self._file = None

    def load(self) -> Dict[str, LayerResult]:
        """The layers already finished, by name; empty when there is no checkpoint. Refuses
        a checkpoint of another model or other settings."""
        if not self.path.exists():
            return {}
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise SpectrumError(f"{self.path}: cannot read checkpoint ({e})") from None
        # Only lines that end in a newline were written whole; a kill can leave a last
        # line without one, which may even parse, and is dropped.
        complete = raw[: raw.rfind(b"\n") + 1]
        if not complete:
            self.path.unlink()  # killed while writing the head: nothing was computed
            return {}
        lines = complete.split(b"\n")[:-1]
        try:
            head = json.loads(lines[0])
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise SpectrumError(f"{self.path}: not a spectrum-rs checkpoint; delete it or scan with --no-resume")
        if head.get("model") != self.head["model"]:
            raise SpectrumError(f"{self.path}: checkpoint was written for other model files "
                                f"({_diff(head.get('model'), self.head['model'])}); refusing to mix results: "
                                f"delete it or scan with --no-resume")
        if head.get("settings") != self.head["settings"]:
            raise SpectrumError(f"{self.path}: checkpoint was written with other settings "
                                f"({_diff(head.get('settings'), self.head['settings'])}); refusing to mix "
                                f"results: rerun with the same settings, delete it, or scan with --no-resume")
        done: Dict[str, LayerResult] = {}
        good = len(lines[0]) + 1
        for line in lines[1:]:
            rec = _record(line)
            if rec is None:
                break  # damaged: keep everything before it, compute the rest again
            done[rec.name] = rec
            good += len(line) + 1
        if good < len(raw):
            # Drop the damaged or torn tail so that appends start on a clean line.
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return done

    def open(self) -> None:
        """Opens for appending. A new checkpoint gets its head line written whole (a
        temporary file renamed into place), so no kill leaves a file without one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.head) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def add(self, record: LayerResult) -> None:
        self._write(record.to_dict())

    def _write(self, obj: Dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _record(line: bytes) -> Optional[LayerResult]:
    """One finished layer from its checkpoint line, or None when the line is damaged."""
    try:
        d = json.loads(line)
        if not isinstance(d, dict):
            return None
        if d.get("shape") is not None:
            d["shape"] = tuple(d["shape"])
        return LayerResult(**d)
    except (ValueError, TypeError, RecursionError):
        return None


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)
    return f"{old!r} then, {new!r} now"
