"""Weights far from unit scale, and forced Gram precisions. Finite weights scaled by 1e19
overflow a float32 Gram matrix and by 1e-22 or less underflow it; the workers scale such a
matrix by a power of two (exact) and scale the singular values back, so that the reported
SNR is the float64 answer on the stored matrix (docs/method.md §2.7: the reported value is
``r / S[0]``, which scales as ``1/c``), on the CPU (numpy) and with torch. A forced
``dtype`` whose Gram matrix fails the precision bound of docs/method.md §2.9 is computed by a
float64 SVD instead, with one summary warning per scan. Real safetensors files, the float64
oracle of tests/helpers/oracle.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import write_single
from helpers.oracle import noisy_low_rank, oracle_snr, outlier_matrix, singular_value_stats
from spectrum_rs.compute.numpy_worker import NumpyWorker
from spectrum_rs.compute.torch_worker import TorchWorker

NAME = "model.layers.0.mlp.up_proj"
#: The float32 Gram route's own accuracy on these benign matrices, measured 6e-8 at most
#: (float64 routes: 1e-15); the scaling must not cost more.
REL = 1e-6


def base_matrix(seed: int = 0, rows: int = 96, cols: int = 64) -> np.ndarray:
    return noisy_low_rank(np.random.default_rng(seed), rows, cols, 4.0, rank=3)


def scan_one(folder, **kw):
    """The SNR of the one layer, and the RuntimeWarnings the scan gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = spectrum_rs.scan(folder, **kw)
    return res[NAME].snr, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


ROUTES = [{}, {"dtype": "float32"}, {"dtype": "float64"}, {"method": "svd"}]


@pytest.mark.parametrize("scale", [1e19, 1e-22, 1e-25])
def test_weights_far_from_unit_scale_give_the_float64_answer(tmp_path, scale):
    stored = torch.from_numpy(base_matrix() * scale).float()
    assert torch.isfinite(stored).all() and (stored != 0).float().mean() > 0.99  # finite, not underflowed
    folder = write_single(tmp_path, {NAME + ".weight": stored})
    expected = oracle_snr(stored)
    assert math.isfinite(expected)
    for kw in ROUTES:
        snr, messages = scan_one(folder, **kw)
        assert abs(snr - expected) <= REL * abs(expected), (kw, snr, expected)
        assert not messages, (kw, messages)  # no false "NaN or Inf" or "all zeros"


def test_power_of_two_scales_give_exactly_scaled_snrs(tmp_path):
    """2^64, 2^-73 and 2^-83 (about 1e19, 1e-22, 1e-25) times one float32 matrix: scaled
    back to the same matrix, they give SNRs that are exactly 2^-k times one another, and
    the unscaled matrix's to the float32 Gram's precision."""
    w = torch.from_numpy(base_matrix(1)).float()
    plain, _ = scan_one(write_single(tmp_path / "plain", {NAME + ".weight": w}))
    scaled = {}
    for k in (64, -73, -83):
        stored = torch.ldexp(w, torch.tensor(k))  # exact: a power of two, all in float32's normal range
        assert torch.equal(torch.ldexp(stored, torch.tensor(-k)), w)
        snr, messages = scan_one(write_single(tmp_path / f"k{k}", {NAME + ".weight": stored}))
        assert not messages
        scaled[k] = math.ldexp(snr, k)  # the reported value scales as 1/c
    assert len(set(scaled.values())) == 1, scaled
    assert abs(scaled[64] - plain) <= REL * plain


@pytest.mark.parametrize("scale", [1e19, 1e-22, 1e-25, 1e200, 1e-200])
def test_the_torch_worker_scales_the_same_way(scale):
    """Float32 weights at 1e19..1e-25, and float64 weights beyond float32's range, through
    the torch worker (on torch's CPU device, as on a GPU) and the numpy worker."""
    w = base_matrix(2, rows=80, cols=120) * scale
    dtype = torch.float64 if scale in (1e200, 1e-200) else torch.float32
    t = torch.from_numpy(w).to(dtype)
    expected = oracle_snr(t)
    for worker in (TorchWorker(device="cpu"), TorchWorker(device="cpu", dtype="float64"), NumpyWorker()):
        s = worker.singular_values(t if isinstance(worker, TorchWorker) else t.numpy())
        assert s is not None
        got = singular_value_stats(s, *t.shape)["snr"]
        assert abs(got - expected) <= REL * abs(expected), (worker, got, expected)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_float64_bytes_beyond_float32_range_give_the_float64_answer(scale):
    """An F64 tensor's stored bytes, as a raw-F64 stream would deliver them: the CPU worker
    keeps them in float64 and scales them before the float32 Gram matrix."""
    w = base_matrix(3) * scale
    worker = NumpyWorker()
    raw = np.frombuffer(w.astype("<f8").tobytes(), dtype=np.uint8)
    s = worker.singular_values(worker.to_matrix(raw, "F64", *w.shape))
    assert s is not None
    expected = oracle_snr(w)
    assert abs(singular_value_stats(s, *w.shape)["snr"] - expected) <= REL * abs(expected)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_a_float64_model_beyond_float32_range_scans_to_the_float64_answer(tmp_path, scale):
    stored = torch.from_numpy(base_matrix(4) * scale)  # F64
    folder = write_single(tmp_path, {NAME + ".weight": stored})
    snr, messages = scan_one(folder)
    expected = oracle_snr(stored)
    assert abs(snr - expected) <= REL * abs(expected) and not messages, (snr, expected, messages)


def test_nan_inf_and_zero_matrices_are_still_told_apart():
    worker = NumpyWorker()
    w = base_matrix(5).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        v = w.copy()
        v[3, 7] = bad
        assert worker.singular_values(v) is None
    assert not worker.singular_values(np.zeros((6, 4), np.float32)).any()
    tiny = np.full((6, 4), 1e-45, np.float32)  # the smallest subnormal: not zero
    s = worker.singular_values(tiny)
    assert s is not None and s.max() > 0


def rank_one() -> torch.Tensor:
    rng = np.random.default_rng(7)
    return torch.from_numpy(np.outer(rng.standard_normal(256), rng.standard_normal(256))).float()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_forced_dtype_that_fails_the_bound_is_computed_by_svd_and_told(tmp_path, dtype):
    """A rank-1 256 x 256 matrix stored in float32: its other singular values are rounding,
    which a Gram matrix of either precision buries (the issue's forced float64 gave about
    half the true SNR). A forced dtype checks the same bound as ``auto`` and takes a float64
    SVD where it fails, saying so once per scan."""
    w = rank_one()
    folder = write_single(tmp_path, {NAME + ".weight": w, "model.layers.1.mlp.up_proj.weight": w.clone()})
    gram_only = NumpyWorker(dtype=dtype).gram_eigenvalues(w.numpy(), np.dtype(dtype))
    expected = oracle_snr(w)
    missed = singular_value_stats(np.sqrt(np.clip(gram_only, 0, None)), 256, 256)["snr"]
    assert abs(missed - expected) > 1e-2 * expected, "the Gram matrix alone misses the bound here"
    torch_worker = TorchWorker(device="cpu", dtype=dtype)  # the GPU worker's route, on torch's CPU
    s = torch_worker.singular_values(w)
    assert torch_worker.forced_fallback
    assert abs(singular_value_stats(s, 256, 256)["snr"] - expected) <= 1e-4 * expected
    snr, messages = scan_one(folder, dtype=dtype)
    assert abs(snr - expected) <= 1e-4 * expected
    assert messages == [
        f"2 layers failed the precision bound for dtype={dtype!r} (docs/method.md §2.9): computed by a float64 "
        f"SVD instead: {folder / 'model.safetensors'}: model.layers.0.mlp.up_proj, model.layers.1.mlp.up_proj"
    ]


def test_a_forced_dtype_that_passes_the_bound_keeps_its_gram_matrix(tmp_path):
    """Where the bound holds, a forced dtype computes what it always did: the Gram matrix
    in that precision, bit for bit, and says nothing."""
    rng = np.random.default_rng(8)
    w = torch.from_numpy(rng.standard_normal((128, 96)) * 0.02).float()
    folder = write_single(tmp_path, {NAME + ".weight": w})
    for dtype in ("float32", "float64"):
        lam = NumpyWorker(dtype=dtype).gram_eigenvalues(w.numpy().T.copy().T, np.dtype(dtype))
        by_hand = singular_value_stats(np.sqrt(np.clip(lam, 0, None)), 128, 96)["snr"]
        snr, messages = scan_one(folder, dtype=dtype)
        assert not messages
        assert abs(snr - by_hand) <= 1e-12 * by_hand
    # An outlier matrix fails the float32 bound but passes the float64 one.
    o = torch.from_numpy(outlier_matrix(rng, 96, 96)).float()
    snr64, messages = scan_one(write_single(tmp_path / "o", {NAME + ".weight": o}), dtype="float64")
    assert not messages and abs(snr64 - oracle_snr(o)) <= 1e-4 * oracle_snr(o)
