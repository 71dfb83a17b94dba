"""Orientation (docs/layouts.md "Orientation"): GPT-2's ``Conv1D`` weights
(``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) are stored ``in x out``,
the transpose of a ``Linear``. A matrix and its transpose have the same singular values
and the same aspect ratio β = min/max, so every statistic (σ, threshold, signal count,
SNR) is the same either way: the test shows it on a real GPT-2 built from a tiny config,
with the fused ``c_attn`` scanned as one ``in x 3 out`` matrix."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import spectrum_rs
from helpers.oracle import assert_snrs_match, oracle_stats, same_number

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    cfg = transformers.GPT2Config(vocab_size=80, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return folder, load_file(str(folder / "model.safetensors"))


def test_conv1d_weights_are_scanned_as_stored_and_transpose_invariant(gpt2):
    folder, t = gpt2
    res = spectrum_rs.scan(folder)
    w = t["transformer.h.0.attn.c_attn.weight"]
    assert tuple(w.shape) == (48, 144)  # [in, 3 out]
    layer = res["transformer.h.0.attn.c_attn"]
    assert (layer.type, layer.shape) == ("attn.c_attn", (48, 144))
    expected = {}
    for name, w in t.items():
        if not name.endswith(".weight") or w.dim() < 2:
            continue
        stored, transposed = oracle_stats(w), oracle_stats(w.T)
        for key in ("snr", "sigma", "threshold", "n_signal"):
            assert same_number(float(stored[key]), float(transposed[key]), 1e-9), (name, key)
        expected[name[: -len(".weight")]] = stored["snr"]
        got = res[name[: -len(".weight")]]
        assert same_number(got.sigma, float(stored["sigma"]))
        assert same_number(got.threshold, float(stored["threshold"]))
        assert got.n_signal == stored["n_signal"]
    # The head is tied to the token embedding (GPT-2 stores no lm_head).
    expected["lm_head"] = expected["transformer.wte"]
    assert_snrs_match(res, expected)
    assert {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"} <= {x.type for x in res}
