"""The options a scan takes, typed and checked in one place: the ``Literal`` types of
``method``, ``dtype``, ``no_noise`` and ``device``, and the checks of every value a user
passes (``top_percent``, patterns). The API, the CLI, the workers and the result files all
call these, so one option is validated by one rule, with one message."""

from __future__ import annotations

import math
from typing import Any, Iterable, List, Literal, Sequence, Union

Method = Literal["gram", "svd"]
Dtype = Literal["auto", "float32", "float64"]
NoNoise = Literal["one", "inf"]
#: Which layers share a type: the reference's (``"type"``) or, in addition, their stack.
GroupBy = Literal["type", "stack"]
#: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or a list of them.
DeviceSpec = Union[str, Any, Sequence[Union[str, Any]]]

METHODS = ("gram", "svd")
DTYPES = ("auto", "float32", "float64")
NO_NOISE = ("one", "inf")
GROUP_BY = ("type", "stack")
#: Host bytes the reader may queue ahead of the workers: peak RSS rose 81 % from `small` to
#: its 8x-layers copy with a 2 GiB window, 9.6 % with 128 MiB, at the same speed
#: (benches/results/cpu-2026-11-28.md).
DEFAULT_WINDOW_BYTES = 128 << 20
#: What ``top_percent`` means when nobody says: the paper's and the reference's default.
DEFAULT_TOP_PERCENT = 25.0


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``, else a ``ValueError`` that lists them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return str(value)


def check_method_dtype(method: str, dtype: str) -> None:
    """Raises ``ValueError`` for a method or dtype no worker knows."""
    check_choice("method", method, METHODS)
    check_choice("dtype", dtype, DTYPES)


def check_top_percent(value: object) -> float:
    """``top_percent`` as a float in [0, 100]. The reference tool takes a percent (25), some
    training tools a fraction (0.25): a value is never reinterpreted, and the message says
    which is expected."""
    if isinstance(value, bool):
        raise ValueError(f"top_percent must be a number of percent between 0 and 100, got {value!r}")
    try:
        pct = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"top_percent must be a number of percent between 0 and 100, got {value!r}") from None
    if math.isnan(pct) or not 0 <= pct <= 100:
        raise ValueError(f"top_percent must be between 0 and 100 (a percent, e.g. 25 for a quarter), got {value!r}")
    return pct


def as_list(x: Union[None, str, Iterable[str]]) -> List[str]:
    """Patterns as a list: None is none, a string is comma-separated, else each item."""
    if x is None:
        return []
    if isinstance(x, str):
        return [p for p in (s.strip() for s in x.split(",")) if p]
    return [str(p) for p in x]
