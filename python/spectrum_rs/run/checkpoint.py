"""The resume checkpoint of a scan: one JSON line per finished layer, appended and
fsynced as soon as it is computed, behind a first line that records the model's identity
(file names, sizes, modification times, header hashes) and the settings that change
numbers. A rerun with the same model and settings picks the finished layers up; anything
else is refused. Also where a scan's checkpoint lives (:func:`checkpoint_path`) and how many
layers one holds (:func:`finished_layers`), for the CLI's messages (docs/method.md §4)."""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Union

from ..errors import CheckpointBusyError, CheckpointMismatchError, SpectrumError
from ..io.reference_files import RESULTS_DIR, output_error, slug
from ..io.text import printable
from ..results import LayerResult

try:
    import fcntl
except ImportError:  # not POSIX: checkpoints are not locked
    fcntl = None  # type: ignore[assignment]

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


#: How long a scan waits for another scan (another process, or another thread) that is
#: using the same checkpoint before it refuses (:class:`CheckpointBusyError`).
LOCK_WAIT_SECONDS = 30.0
_LOCK_POLL_SECONDS = 0.1


class Checkpoint:
    """An append-only record of finished layers for one model and one set of settings.

    One scan uses a checkpoint at a time: :meth:`load` (or :meth:`open`) takes an exclusive
    lock (``flock``) on the file, which :meth:`close` releases. A second scan of the same
    checkpoint, in another process or thread, waits for it (saying so once), then resumes
    from the layers the first finished; after :data:`LOCK_WAIT_SECONDS` it refuses with
    :class:`CheckpointBusyError` instead. The head line is written in place under the lock
    (a file without a whole first line holds nothing yet), so there is no temporary file
    for two scans to race on."""

    def __init__(self, path: Path, model: List[List[Any]], settings: Dict[str, Any]) -> None:
        self.path = Path(path)
        self.head = {"format": FORMAT, "model": model, "settings": settings}
        self._file: Optional[BinaryIO] = None

    def load(self) -> Dict[str, LayerResult]:
        """The layers already finished, by name; empty when there is no checkpoint. Takes
        the checkpoint's lock (it creates an empty file when there is none). Refuses a
        checkpoint of another model or other settings, and then releases the lock."""
        f = self._lock()
        try:
            return self._load(f)
        except BaseException:
            self.close()
            raise

    def _load(self, f: BinaryIO) -> Dict[str, LayerResult]:
        try:
            f.seek(0)
            raw = f.read()
        except OSError as e:
            raise SpectrumError(f"{self._shown}: cannot read checkpoint ({e})", path=str(self.path)) from None
        # Only lines that end in a newline were written whole; a kill can leave a last
        # line without one, which may even parse, and is dropped.
        complete = raw[: raw.rfind(b"\n") + 1]
        if not complete:
            self._truncate(f, 0)  # new, or killed while writing the head: nothing was computed
            return {}
        lines = complete.split(b"\n")[:-1]
        try:
            head = json.loads(lines[0])
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise CheckpointMismatchError(
                f"{self._shown}: not a spectrum-rs checkpoint; delete it or scan with --no-resume", path=str(self.path)
            )
        if head.get("model") != self.head["model"]:
            raise CheckpointMismatchError(
                f"{self._shown}: checkpoint was written for other model files "
                f"({_diff(head.get('model'), self.head['model'])}); refusing to mix "
                f"results: delete it or scan with --no-resume",
                path=str(self.path),
            )
        if head.get("settings") != self.head["settings"]:
            raise CheckpointMismatchError(
                f"{self._shown}: checkpoint was written with other settings "
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
            self._truncate(f, good)
        return done

    def open(self) -> None:
        """Opens for appending (taking the lock, unless :meth:`load` took it). A checkpoint
        without a whole head line gets one."""
        f = self._lock()
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0 or not self._has_head(f):
                self._truncate(f, 0)
                self._append(json.dumps(self.head) + "\n")
        except BaseException:
            self.close()
            raise

    def add(self, record: LayerResult) -> None:
        self._write(record.to_dict())

    def _write(self, obj: Dict[str, Any]) -> None:
        assert self._file is not None
        self._append(json.dumps(obj) + "\n")

    def _append(self, line: str) -> None:
        assert self._file is not None
        try:
            self._file.write(line.encode("utf-8"))  # the file is in append mode
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise output_error(self.path, e) from None

    def close(self) -> None:
        """Closes the file, which releases the lock."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError:
                pass

    def remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @property
    def _shown(self) -> str:
        return printable(str(self.path))

    def _has_head(self, f: BinaryIO) -> bool:
        f.seek(0)
        first = f.readline()
        f.seek(0, os.SEEK_END)
        return first.endswith(b"\n")

    def _truncate(self, f: BinaryIO, size: int) -> None:
        try:
            f.flush()
            os.ftruncate(f.fileno(), size)
        except OSError as e:
            raise output_error(self.path, e) from None

    def _lock(self) -> BinaryIO:
        """The checkpoint file, opened (created when missing) and locked by this object.
        Waits for a scan that holds the lock, up to :data:`LOCK_WAIT_SECONDS`."""
        if self._file is not None:
            return self._file
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(self.path, e) from None
        deadline: Optional[float] = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as e:
                raise output_error(self.path, e) from None
            f = os.fdopen(fd, "r+b")
            try:
                while not _try_lock(f):
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + LOCK_WAIT_SECONDS
                        warnings.warn(
                            f"{self._shown}: another scan is using this checkpoint; waiting up to "
                            f"{LOCK_WAIT_SECONDS:g} s for it to finish (this scan then takes up its layers)",
                            RuntimeWarning,
                            stacklevel=5,
                        )
                    elif now >= deadline:
                        raise CheckpointBusyError(
                            f"{self._shown}: another scan is using this checkpoint (it has not finished "
                            f"after {LOCK_WAIT_SECONDS:g} s); wait for it, or give this scan another "
                            f"output folder or name",
                            path=str(self.path),
                        )
                    time.sleep(_LOCK_POLL_SECONDS)
                # The scan that held the lock may have removed the file (the CLI does once
                # the result files are written) or replaced it: then lock the new one.
                if _same_file(f, self.path):
                    self._file = f
                    return f
            except BaseException:
                f.close()
                raise
            f.close()


def _try_lock(f: BinaryIO) -> bool:
    """Takes the exclusive lock on ``f`` if no one holds it (locks are per open file: a
    second ``Checkpoint`` of the same path in this process waits like another process)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return True  # a file system without locks (some network mounts): go on unlocked
        raise
    return True


def _same_file(f: BinaryIO, path: Path) -> bool:
    try:
        here, there = os.fstat(f.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


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
