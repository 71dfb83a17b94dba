"""The exceptions of spectrum-rs. Every problem with the input (a model file, a results
file, a checkpoint, an option) is a :class:`SpectrumError`, a ``ValueError`` whose message
names the file and the problem; subclasses say which kind, so callers can catch one kind.
The Rust core raises these same classes (it imports this module when it reports an error).
A failure that is not the input's fault (a reader thread that died) is an
:class:`InternalError` instead. All of them pickle with their attributes, so they cross
``multiprocessing`` boundaries intact."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Type


def _rebuild(cls: Type[BaseException], args: Tuple[Any, ...], state: Dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class SpectrumError(ValueError):
    """A model, results or checkpoint file cannot be scanned or read, or an option is
    wrong. ``path`` is the file concerned, when there is one."""

    def __init__(self, message: str, *, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ModelFileError(SpectrumError):
    """A model file (weights, index, config) is missing, unreadable or malformed: ``path``
    names it."""


class UnsupportedLayoutError(SpectrumError):
    """The model's files are readable, but hold a layout or format that cannot be scanned
    (for example packed integer weights); the message names the format."""


class CheckpointMismatchError(SpectrumError):
    """A resume checkpoint belongs to other model files or other settings (or is not a
    checkpoint at all): ``path`` names it; delete it or scan with ``--no-resume``."""


class CheckpointBusyError(CheckpointMismatchError):
    """Another scan is using the checkpoint (it holds its lock) and did not finish in time:
    ``path`` names the checkpoint."""


class ResultsFileError(SpectrumError):
    """A results file cannot be read back: ``path`` names it."""


class ScanMismatchError(SpectrumError):
    """A scan does not fit the model it is applied to (training integrations): scanned
    layers the model lacks (``missing_in_model``), weight matrices of the model the scan
    lacks (``missing_in_scan``), or shapes that differ (``shape_mismatches``).
    ``fused_in_memory``: the model's stacked experts tensor when the scan has per-expert
    layers the model holds fused (a checkpoint scan of a model transformers 5 fused on
    loading), else None."""

    def __init__(
        self,
        message: str,
        *,
        missing_in_model: Sequence[str] = (),
        missing_in_scan: Sequence[str] = (),
        shape_mismatches: Sequence[str] = (),
        fused_in_memory: Optional[str] = None,
        path: Optional[str] = None,
    ) -> None:
        super().__init__(message, path=path)
        self.missing_in_model = list(missing_in_model)
        self.missing_in_scan = list(missing_in_scan)
        self.shape_mismatches = list(shape_mismatches)
        self.fused_in_memory = fused_in_memory


class InternalError(RuntimeError):
    """A failure inside spectrum-rs that the input did not cause (the reader thread died,
    a worker broke an invariant). Please report it."""

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


__all__ = [
    "SpectrumError",
    "ModelFileError",
    "UnsupportedLayoutError",
    "CheckpointMismatchError",
    "CheckpointBusyError",
    "ResultsFileError",
    "ScanMismatchError",
    "InternalError",
]
