"""The independent float64 oracle of docs/method.md §1-§3, and the random matrices the tests feed it.

It deliberately shares no code with the package: singular values come from
``numpy.linalg.svd(compute_uv=False)`` in float64 on the matrix decoded from the stored
dtype by torch, and the layer names and types, the statistics and the selection are
written out here by hand. The tests hold every SNR of the package to it (``REL_TOL``
relative) and every selection to be identical; the benchmarks (``benches/oracle.py``)
report their accuracy against the very same code.

Needs numpy only: a torch tensor is decoded with torch when one is passed, but torch is
never imported here (the benchmarks import this in processes that must not load it)."""

from __future__ import annotations

import math
import re
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np

REL_TOL = 1e-4


# --------------------------------------------------------------------------- docs/method.md §1


def layer_name(tensor_name: str) -> str:
    """The layer a tensor belongs to: its name without ``.weight``."""
    return tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name


def spec_type(layer: str) -> str:
    """docs/method.md §1 type rule: what follows the first all-digit part of the name (the whole
    name when there is none)."""
    parts = layer.split(".")
    for i, p in enumerate(parts):
        if re.fullmatch(r"[0-9]+", p):
            return ".".join(parts[i + 1 :])
    return layer


# --------------------------------------------------------------------------- docs/method.md §2


def as_f64(t) -> np.ndarray:
    """The stored values, exactly, as float64 numpy (torch decodes bf16/f16/fp8)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def singular_value_stats(s, n: int, m: int, no_noise: str = "one") -> Dict[str, object]:
    """docs/method.md §2 from the singular values ``s`` (any order) of an ``n x m`` matrix, by hand:
    IQR sigma, Marchenko-Pastur threshold, signal over noise over the largest value.
    ``no_noise``: what a matrix without noise values gets, noise 1.0 (``"one"``, the
    current reference) or an infinite SNR (``"inf"``, older reference files). NaN for no
    values, non-finite values or an all-zero spectrum."""
    s = np.sort(as_f64(s).reshape(-1))[::-1]
    out = {"snr": math.nan, "no_noise": False, "s0": math.nan}
    if s.size == 0 or not np.isfinite(s).all():
        return out
    out["s0"] = float(s[0])
    if s[0] == 0:
        return out
    q25, q75 = np.quantile(s, [0.25, 0.75], method="linear")
    sigma = (q75 - q25) / 1.349
    beta = min(n, m) / max(n, m)
    threshold = sigma * (1 + math.sqrt(beta))
    out.update(sigma=float(sigma), threshold=float(threshold), n_signal=int((s > threshold).sum()))
    signal = float(s[s > threshold].sum())
    noise_values = s[s <= threshold]
    if noise_values.size == 0:
        out["no_noise"] = True
        if no_noise == "inf":
            out["snr"] = math.inf
            return out
        noise = 1.0
    else:
        noise = float(noise_values.sum())
        if noise == 0:
            out["snr"] = math.inf
            return out
    out["snr"] = signal / noise / float(s[0])
    return out


def snr_from_singular_values(s, n: int, m: int, no_noise: str = "one") -> float:
    return singular_value_stats(s, n, m, no_noise)["snr"]


def oracle_stats(w, no_noise: str = "one") -> Dict[str, object]:
    """docs/method.md §2 for one matrix (1-D tensors are 1 x N), float64 svd, by hand."""
    w = as_f64(w)
    if w.ndim == 1:
        w = w[None, :]
    assert w.ndim == 2
    n, m = w.shape
    if not np.isfinite(w).all():
        return {"snr": math.nan, "no_noise": False, "s0": math.nan}
    return singular_value_stats(np.linalg.svd(w, compute_uv=False), n, m, no_noise)


def oracle_snr(w, no_noise: str = "one") -> float:
    return oracle_stats(w, no_noise)["snr"]


def oracle_for(
    tensors, no_noise: str = "one", include_1d: bool = False, tied_head: bool = False
) -> List[Tuple[str, str, float]]:
    """(name, type, snr) in model order for every scanned layer (a ``*.weight`` of 2 or
    more dimensions, 1-D too when asked) of ``tensors`` (a dict, as stored), plus the tied
    ``lm_head`` after the norm when asked."""
    records = []
    for tname, t in tensors.items():
        if not tname.endswith(".weight"):
            continue  # buffers such as BERT's position_ids are not layers (docs/method.md §1)
        if len(t.shape) < 2 and not include_1d:
            continue
        name = layer_name(tname)
        records.append((name, spec_type(name), oracle_snr(t, no_noise)))
    if tied_head:
        emb = [r for r in records if r[0].endswith("embed_tokens")][0]
        records.append(("lm_head", "lm_head", emb[2]))
    return records


# --------------------------------------------------------------------------- docs/method.md §3


def oracle_selection(records: Sequence[Tuple[str, str, float]], top_percent: float) -> Dict[str, List[str]]:
    """docs/method.md §3: records are (name, type, snr) in model order. Per type (sorted), stable
    sort by SNR descending with NaN last, keep int(count * pct / 100)."""
    groups: Dict[str, List[Tuple[str, float]]] = {}
    for name, kind, snr in records:
        groups.setdefault(kind, []).append((name, snr))
    out = {}
    for kind in sorted(groups):
        items = groups[kind]
        ranked = sorted(items, key=lambda x: (1, 0.0) if math.isnan(x[1]) else (0, -x[1]))
        out[kind] = [name for name, _ in ranked[: int(len(items) * top_percent / 100)]]
    return out


# --------------------------------------------------------------------------- comparisons


def same_number(a: float, b: float, rel: float = REL_TOL) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return math.isfinite(a) and abs(a - b) <= rel * abs(b)


def assert_snrs_match(result, expected: Dict[str, float], rel: float = REL_TOL) -> None:
    """Every layer of ``expected`` is in ``result`` with a matching SNR, and nothing else."""
    got = {layer.name: layer.snr for layer in result}
    assert sorted(got) == sorted(expected)
    bad = [(n, got[n], expected[n]) for n in expected if not same_number(got[n], expected[n], rel)]
    assert not bad, f"SNR differs from the float64 oracle beyond {rel}: {bad}"


def assert_no_near_ties(records: Sequence[Tuple[str, str, float]], gap: float = 1e-3) -> None:
    """Fixture sanity: within a type, distinct finite SNRs are at least ``gap`` apart
    (relative) unless exactly equal, so the selection must be identical, not just
    identical up to the tie tolerance of docs/method.md §3."""
    groups: Dict[str, List[float]] = {}
    for _, kind, snr in records:
        if math.isfinite(snr):
            groups.setdefault(kind, []).append(snr)
    for kind, v in groups.items():
        v = sorted(v)
        for a, b in zip(v, v[1:]):
            assert a == b or (b - a) > gap * abs(b), f"fixture has near-tied SNRs in {kind}: {a} {b}"


# --------------------------------------------------------------------------- matrices


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal(n)
    return v / np.linalg.norm(v)


def noisy_low_rank(
    rng: np.random.Generator, rows: int, cols: int, strength: float, rank: int = 2, noise: float = 0.02
) -> np.ndarray:
    """Gaussian noise plus a rank-``rank`` component whose singular values are
    ``strength`` times the bulk's median singular value."""
    g = rng.standard_normal((rows, cols)) * noise
    bulk = noise * math.sqrt(max(rows, cols))
    w = g
    for k in range(rank):
        w = w + strength * bulk / (k + 1) * np.outer(_unit(rng, rows), _unit(rng, cols))
    return w


def outlier_matrix(rng: np.random.Generator, rows: int, cols: int, factor: float = 1000.0) -> np.ndarray:
    """Noise plus a rank-1 outlier whose singular value is ``factor`` times the bulk's
    median singular value (the case where float32 Gram eigenvalues lose the bulk)."""
    g = rng.standard_normal((rows, cols)) * 0.02
    bulk = float(np.median(np.linalg.svd(g, compute_uv=False)))
    return g + factor * bulk * np.outer(_unit(rng, rows), _unit(rng, cols))
