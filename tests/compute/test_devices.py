"""The workers' device paths: raw stored bytes converted by torch (what a GPU worker
receives) give the same singular values as the Rust decoding; the torch worker (run on
torch's CPU device here) agrees with a float64 SVD; a CPU scan never imports torch; and
on machines with CUDA the GPU scan agrees with the oracle, on one GPU and on all of them.
The CUDA tests skip with a reason where torch sees no GPU."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import cast, llama_tensors, write_single
from helpers.oracle import assert_snrs_match, oracle_for
from spectrum_rs import _core
from spectrum_rs.compute.torch_worker import TorchWorker

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device on this machine")
needs_two = pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    stored = cast(llama_tensors(seed=21, n_layers=3, hidden=64, kv=16, inter=96, vocab=128), "BF16")
    folder = write_single(tmp_path_factory.mktemp("dev"), stored)
    expected = {name: snr for name, _, snr in oracle_for(stored)}
    return folder, expected


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_raw_bytes_converted_by_torch_match_rust_decoding(tmp_path, dtype):
    g = torch.Generator().manual_seed(1)
    stored = {"a.0.w.weight": torch.randn(24, 40, generator=g), "a.1.w.weight": torch.randn(40, 24, generator=g)}
    write_single(tmp_path, cast(stored, dtype))
    cat = _core.Catalog([str(tmp_path)])
    layers = cat.layers()
    worker = TorchWorker("cpu", dtype="float64")
    decoded = {
        i: worker.singular_values(worker.to_matrix(a, s, layers[i].rows, layers[i].cols))
        for i, a, s in cat.stream([0, 1], raw=False)
    }
    raw = list(cat.stream([0, 1], raw=True))
    assert [s for _, _, s in raw] == [dtype, dtype]
    assert all(a.dtype == np.uint8 and a.ndim == 1 for _, a, _ in raw)
    for i, a, s in raw:
        values = worker.singular_values(worker.to_matrix(a, s, layers[i].rows, layers[i].cols))
        np.testing.assert_array_equal(np.sort(values), np.sort(decoded[i]))


@pytest.mark.parametrize("dtype", ["auto", "float32", "float64"])
def test_torch_worker_agrees_with_a_float64_svd(dtype):
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(48, 80, generator=g)
    tall = torch.randn(90, 40, generator=g)
    tall[:, 0] *= 50  # an outlier column
    worker = TorchWorker("cpu", dtype=dtype)
    for w in (wide, tall):
        got = np.sort(worker.singular_values(worker.to_matrix(w.numpy(), "F32", *w.shape)))
        want = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False))
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * want[-1])
    svd = TorchWorker("cpu", method="svd").singular_values(torch.randn(30, 20, generator=g))
    assert svd.shape == (20,) and svd.dtype == np.float64
    nan = torch.randn(20, 10, generator=g)
    nan[3, 4] = float("nan")
    assert worker.singular_values(nan) is None


def test_a_cpu_scan_never_imports_torch(bf16_model, tmp_path):
    folder, expected = bf16_model
    script = (
        "import sys, json, spectrum_rs\n"
        f"res = spectrum_rs.scan({str(folder)!r}, device='cpu')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps({r.name: r.snr for r in res}))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert set(got) == set(expected)
    for name, snr in expected.items():
        assert got[name] == pytest.approx(snr, rel=1e-4, nan_ok=True)


@needs_cuda
def test_gpu_scan_matches_the_oracle(bf16_model):
    folder, expected = bf16_model
    res = spectrum_rs.scan(folder, device="cuda:0")
    assert res.settings["device"] == "cuda:0"
    assert_snrs_match(res, expected)
    assert_snrs_match(spectrum_rs.scan(folder, device="cuda:0", method="svd"), expected)


@needs_cuda
def test_auto_device_is_the_gpu(bf16_model):
    folder, _ = bf16_model
    assert spectrum_rs.scan(folder).settings["device"] == "cuda:0"


@needs_two
def test_every_gpu_works_on_one_stream(bf16_model):
    folder, expected = bf16_model
    res = spectrum_rs.scan(folder, device="cuda", window_bytes=1)
    assert res.settings["device"].split(", ") == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert_snrs_match(res, expected)
    some = spectrum_rs.scan(folder, device=["cuda:0", "cuda:1"])
    assert some.settings["device"] == "cuda:0, cuda:1"
    assert_snrs_match(some, expected)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(bf16_model):
    if CUDA:
        pytest.skip("this machine has a GPU")
    folder, _ = bf16_model
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            spectrum_rs.scan(folder, device=device)
