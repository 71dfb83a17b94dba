"""The resume checkpoint of a scan: one JSON line per finished layer, appended and
fsynced as soon as it is computed, behind a first line that records the model's identity
(file names, sizes, modification times, header hashes) and the settings that change
numbers. A rerun with the same model and settings picks the finished layers up; anything
else is refused. Also where a scan's checkpoint lives (:func:`checkpoint_path`) and how many
layers one holds (:func:`finished_layers`), for the CLI's messages (docs/method.md §4)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple, Union

from ..errors import CheckpointMismatchError, SpectrumError
from ..io.reference_files import RESULTS_DIR, slug
from ..results import LayerResult

FORMAT = "spectrum-rs-checkpoint/1"


def checkpoint_path(out_dir: Union[str, os.PathLike[str]], model_name: str) -> Path:
    """Where the CLI keeps a scan's checkpoint: beside the result files it will write,
    ``{out_dir}/model_snr_results/snr_results_{slug}.checkpoint.jsonl``."""
    return Path(out_dir) / RESULTS_DIR / f"snr_results_{slug(model_name)}.checkpoint.jsonl"


def rank_path(path: Union[str, os.PathLike[str]], rank: int, world: int) -> Path:
    """The checkpoint of one rank of a distributed scan: each rank keeps its own share."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank{rank}-of-{world}")


def finished_layers(path: Union[str, os.PathLike[str]]) -> int:
    """How many finished layers the checkpoint at ``path`` holds (0 when there is none)."""
    try:
        with open(path, "rb") as f:
            lines = [line for line in f.read().split(b"\n") if line.strip()]
    except OSError:
        return 0
    return sum(1 for line in lines[1:] if _record(line) is not None)


def identity(files: List[Tuple[str, int, int]]) -> List[List[Any]]:
    """The model as the checkpoint remembers it: (file name, size, modification time,
    header hash) per file. The time catches weights saved again over the same layout."""
    return [[os.path.basename(p), size, os.stat(p).st_mtime_ns, format(h, "016x")] for p, size, h in files]


class Checkpoint:
    """An append-only record of finished layers for one model and one set of settings."""

    def __init__(self, path: Path, model: List[List[Any]], settings: Dict[str, Any]) -> None:
        self.path = Path(path)
        self.head = {"format": FORMAT, "model": model, "settings": settings}
        self._file: Optional[TextIO] = None

    def load(self) -> Dict[str, LayerResult]:
        """The layers already finished, by name; empty when there is no checkpoint. Refuses
        a checkpoint of another model or other settings."""
        if not self.path.exists():
            return {}
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise SpectrumError(f"{self.path}: cannot read checkpoint ({e})", path=str(self.path)) from None
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
            raise CheckpointMismatchError(
                f"{self.path}: not a spectrum-rs checkpoint; delete it or scan with --no-resume", path=str(self.path)
            )
        if head.get("model") != self.head["model"]:
            raise CheckpointMismatchError(
                f"{self.path}: checkpoint was written for other model files "
                f"({_diff(head.get('model'), self.head['model'])}); refusing to mix "
                f"results: delete it or scan with --no-resume",
                path=str(self.path),
            )
        if head.get("settings") != self.head["settings"]:
            raise CheckpointMismatchError(
                f"{self.path}: checkpoint was written with other settings "
                f"({_diff(head.get('settings'), self.head['settings'])}); refusing to "
                f"mix results: rerun with the same settings, delete it, or scan with "
                f"--no-resume",
                path=str(self.path),
            )
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
