"""How exact a Gram matrix formed in float32 (or float64) is: the per-eigenvalue error model,
calibrated on real layer shapes, and the a-posteriori bound on the SNR that decides when a
worker must form the Gram matrix again in float64, or take an SVD (docs/method.md §2)."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .. import _core

#: With ``dtype="auto"``, each eigenvalue ``λ`` of a float32 Gram matrix is taken to be off
#: by up to ``FLOAT32_RELATIVE_ERROR * λ + max(FLOAT32_ABSOLUTE_ERROR * λmax, 2 * n)``,
#: where ``n`` is the most negative eigenvalue computed (a Gram matrix has none: its
#: size shows how far rounding spread the zero eigenvalues of a rank-deficient matrix).
#: The SNR is computed again from a float64 Gram matrix unless that perturbation moves it
#: by less than ``AUTO_MAX_ERROR`` (docs/method.md §2 allows 1e-4: half of it is kept as margin).
#: Measured on 80 matrices of 256..32000 x 1024..4096 with eight kinds of spectrum
#: (``python benches/calibrate_gram.py``, benches/results/gram-float32-error.md): large
#: eigenvalues moved by up to 6.6e-7 of their own value (heavy-tailed columns, whose long
#: sums of squares round the most), the bulk of a full-rank matrix by up to 1.6e-8 of the
#: largest, and the zero eigenvalues of rank-deficient ones (up to 1.2e-7 of the largest)
#: by no more than the most negative one. With this model 1 of all-MiniLM-L6-v2's 40
#: matrices takes the float64 route (5 with a uniform 1.5e-7 of the largest, 32 with 6e-7).
FLOAT32_RELATIVE_ERROR = 1.5e-6
FLOAT32_ABSOLUTE_ERROR = 4e-8
NEGATIVE_EVIDENCE = 2.0
#: The same for a float64 Gram matrix, scaled by the ratio of the two precisions. When
#: even that could move the SNR (most singular values zero or nearly: squaring them in the
#: Gram matrix buries them in rounding), ``"auto"`` takes a float64 SVD of the matrix.
PRECISION_RATIO = 2.0**-29
AUTO_MAX_ERROR = 5e-5


def snr_error_bound(
    lam: np.ndarray,
    rows: int,
    cols: int,
    relative: float = FLOAT32_RELATIVE_ERROR,
    absolute: float = FLOAT32_ABSOLUTE_ERROR,
) -> float:
    """How far the SNR can move if every Gram eigenvalue ``λ`` of ``lam`` (ascending) is off
    by up to ``relative * λ + absolute * λmax``: the relative spread of signal, noise and
    largest singular value over the perturbed spectra, or ``inf`` when a value could fall
    on either side of the threshold (then counting, not rounding, decides the SNR)."""
    top = float(lam[-1]) if lam.size else 0.0
    if not top > 0:
        return 0.0  # no spectrum: NaN whatever the precision
    delta = relative * np.abs(lam) + absolute * top
    mid = np.sqrt(np.clip(lam, 0, None))
    lo = np.sqrt(np.clip(lam - delta, 0, None))
    hi = np.sqrt(np.clip(lam + delta, 0, None))
    stats = [_core.spectrum_stats(np.ascontiguousarray(x), rows, cols) for x in (lo, mid, hi)]
    thresholds = [st[2] for st in stats]
    t_min, t_max = min(thresholds), max(thresholds)
    if np.any(~((lo > t_max) | (hi <= t_min))):
        return math.inf
    k = stats[1][4]  # signal values: the k largest
    n = lam.size

    def spread(a: float, b: float) -> float:
        return b / a if a > 0 else (1.0 if b == 0 else math.inf)

    signal = spread(lo[n - k :].sum(), hi[n - k :].sum()) if k else 1.0
    noise = spread(lo[: n - k].sum(), hi[: n - k].sum()) if k < n else 1.0
    return signal * noise * spread(lo[-1], hi[-1]) - 1.0


def gram_suffices(lam: np.ndarray, rows: int, cols: int, gram_dtype: str) -> bool:
    """Whether the eigenvalues ``lam`` of a Gram matrix formed in ``gram_dtype``
    (``"float32"`` or ``"float64"``) give the SNR within ``AUTO_MAX_ERROR``."""
    lam = np.asarray(lam, dtype=np.float64)
    return snr_error_bound(lam, rows, cols, *gram_error_model(lam, gram_dtype)) <= AUTO_MAX_ERROR


def gram_error_model(lam: np.ndarray, gram_dtype: str) -> Tuple[float, float]:
    """``(relative, absolute)`` for :func:`snr_error_bound`: how far rounding a Gram matrix
    to ``gram_dtype`` may have moved its eigenvalues ``lam`` (ascending)."""
    scale = 1.0 if gram_dtype == "float32" else PRECISION_RATIO
    top = float(lam[-1]) if lam.size else 0.0
    negative = max(0.0, -float(lam[0])) / top if lam.size and top > 0 else 0.0
    return FLOAT32_RELATIVE_ERROR * scale, max(FLOAT32_ABSOLUTE_ERROR * scale, NEGATIVE_EVIDENCE * negative)
