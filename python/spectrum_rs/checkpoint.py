"""The resume checkpoint of a scan: one JSON line per finished layer, appended and
fsynced as soon as it is computed, behind a first line that records the model's identity
(file names, sizes, header hashes) and the settings that change numbers. A rerun with the
same model and settings picks the finished layers up; anything else is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ._core import SpectrumError
from .results import LayerResult

FORMAT = "spectrum-rs-checkpoint/1"


def identity(files: List[Tuple[str, int, int]]) -> List[List[Any]]:
    """The model as the checkpoint remembers it: (file name, size, header hash) per file."""
    return [[os.path.basename(p), size, format(h, "016x")] for p, size, h in files]


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
            lines = self.path.read_text(encoding="utf-8").split("\n")
        except OSError as e:
            raise SpectrumError(f"{self.path}: cannot read checkpoint ({e})") from None
        try:
            head = json.loads(lines[0])
        except ValueError:
            raise SpectrumError(f"{self.path}: not a spectrum-rs checkpoint; delete it or scan with --no-resume") from None
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
            if not line:
                continue
            try:
                d = json.loads(line)
                if d.get("shape") is not None:
                    d["shape"] = tuple(d["shape"])
                rec = LayerResult(**d)
            except (ValueError, TypeError):
                break  # a line cut short by a kill: everything before it is good
            done[rec.name] = rec
            good += len(line) + 1
        # Drop a torn tail so that appends start on a clean line.
        if good < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return done

    def open(self) -> None:
        """Opens for appending, writing the head line when the file is new."""
        fresh = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if fresh:
            self._write(self.head)

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


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)
    return f"{old!r} then, {new!r} now"
