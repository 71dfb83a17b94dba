"""The benchmarks' float64 oracle of docs/method.md §1-§3: the SNR of a matrix from its singular
values (IQR sigma, Marchenko-Pastur threshold, signal / noise / largest value), the layer
type rule and the per-type selection, plus the benches' own ways of comparing figures.

The reference maths (docs/method.md §2) itself is **not** here: it is ``tests/helpers/oracle.py``, re-exported.
That direction, and not the other, because the test suite is where the oracle is held to
account (every CI run compares the package with it, to 1e-4), so the figures the
benchmarks publish are measured against exactly what the tests check; the tests in turn
never depend on benches/ (optional, with packages of their own). That module needs numpy
only and never imports torch, so bench_cpu.py may use it in the processes whose point is
that torch is never loaded (it still imports this module lazily, after its timed imports).

Not here on purpose: ``benches/baseline.py``'s torch statistics. They are the reference
pipeline's own code, reproduced as it is, and are compared *with* this oracle.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.oracle import (  # noqa: E402
    layer_name,
    oracle_selection,
    singular_value_stats,
    snr_from_singular_values,
    spec_type,
)

__all__ = [
    "layer_name",
    "spec_type",
    "singular_value_stats",
    "snr_from_singular_values",
    "snr_from_eigenvalues",
    "oracle_selection",
    "natural_key",
    "selection",
    "rel_err",
]


def snr_from_eigenvalues(lam: Any, n: int, m: int) -> float:
    """The SNR from the eigenvalues of a Gram matrix (clamped at 0, square-rooted)."""
    import numpy as np

    return snr_from_singular_values(np.sqrt(np.clip(np.asarray(lam, dtype=np.float64), 0, None)), n, m)


def natural_key(name: str) -> List[Any]:
    """Model order of the synthetic models' layer names: numbers compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def selection(snrs: Dict[str, float], top_percent: float = 25.0) -> set:
    """docs/method.md §3 for SNRs keyed by layer name: the names the oracle's per-type selection
    keeps, with model order taken as ``natural_key`` order."""
    names = sorted(snrs, key=natural_key)
    chosen = oracle_selection([(n, spec_type(n), snrs[n]) for n in names], top_percent)
    return {n for kept in chosen.values() for n in kept}


def rel_err(a: Optional[float], ref: Optional[float]) -> Optional[float]:
    """|a - ref| / |ref|; None when either is missing or NaN, 0 when equal (infinities too)."""
    if a is None or ref is None or math.isnan(ref) or math.isnan(a):
        return None
    if ref == a:
        return 0.0
    return abs(a - ref) / abs(ref) if ref != 0 else math.inf
