"""The worker's device paths: raw stored bytes converted by torch (what a GPU worker
receives) give the same singular values as the Rust decoding, and on machines with CUDA
the GPU scan agrees with the oracle, on one GPU and on all of them. The CUDA tests skip
with a reason where torch sees no GPU."""

import numpy as np
import pytest
import torch

import spectrum_rs
from spectrum_rs import _core
from spectrum_rs.singular_values import SingularValueWorker

from conftest import assert_snrs_match, cast, llama_tensors, oracle_for, write_single

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
    worker = SingularValueWorker("cpu", dtype="float64")
    decoded = {i: worker.singular_values(worker.to_matrix(a, s, layers[i]["rows"], layers[i]["cols"]))
               for i, a, s in cat.stream([0, 1], raw=False)}
    raw = list(cat.stream([0, 1], raw=True))
    assert [s for _, _, s in raw] == [dtype, dtype]
    assert all(a.dtype == np.uint8 and a.ndim == 1 for _, a, _ in raw)
    for i, a, s in raw:
        values = worker.singular_values(worker.to_matrix(a, s, layers[i]["rows"], layers[i]["cols"]))
        np.testing.assert_array_equal(np.sort(values), np.sort(decoded[i]))


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
