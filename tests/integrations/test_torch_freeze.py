"""freeze(): exactly the selected parameters (and the embeddings and head, when asked) train
through real AdamW steps; everything else stays bitwise unchanged; a scan that does not
fit the model, or a selection that trains nothing, raises and changes nothing."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models

import spectrum_rs
from spectrum_rs import SpectrumError
from spectrum_rs.integrations.torch import FreezeSummary, ScanMismatchError, freeze, scan_model

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def selected_parameters(result, pct):
    by_name = {lay.name: lay for lay in result.layers}
    return {by_name[n].parameter for n in result.select(pct)}


def test_freeze_trains_exactly_the_selection(llama4):
    result = scan_model(llama4)
    expected = selected_parameters(result, 25) | {EMB, HEAD}
    assert len(expected) == 7 + 2  # one of four layers of each of the 7 decoder types
    summary = freeze(llama4, result, 25)
    assert isinstance(summary, FreezeSummary)
    assert tiny_models.trainable(llama4) == expected
    assert set(summary.parameters) == expected
    total = sum(p.numel() for p in llama4.parameters())
    assert summary.total == total
    assert summary.trainable == sum(p.numel() for n, p in llama4.named_parameters() if n in expected)
    assert summary.share == pytest.approx(summary.trainable / total)
    assert summary.layers_by_type["mlp.down_proj"] == (1, 4) and summary.layers_by_type["lm_head"] == (0, 1)
    text = str(summary)
    assert "mlp.down_proj" in text and "1/4" in text and f"{summary.trainable:,}" in text

    before = tiny_models.snapshot(llama4)
    opt = torch.optim.AdamW(llama4.parameters(), lr=1e-2, weight_decay=0.1)  # frozen ones too: skipped
    tiny_models.train_steps(llama4, opt, steps=3)
    assert tiny_models.changed(before, tiny_models.snapshot(llama4)) == expected


def test_freeze_without_embeddings_and_head(llama4):
    result = scan_model(llama4)
    freeze(llama4, result, 50, embeddings=False, head=False)
    assert tiny_models.trainable(llama4) == selected_parameters(result, 50)
    freeze(llama4, result, 50, embeddings=False, head=True)
    assert tiny_models.trainable(llama4) == selected_parameters(result, 50) | {HEAD}


def test_tied_embeddings(llama4_tied):
    model = llama4_tied
    assert model.lm_head.weight is model.model.embed_tokens.weight
    result = scan_model(model)
    summary = freeze(model, result, 25, embeddings=False, head=True)  # the head is the embedding's tensor
    assert EMB in tiny_models.trainable(model)
    assert summary.tied == f"{HEAD} is tied to {EMB}"
    assert summary.embeddings == [EMB]
    summary = freeze(model, result, 25, embeddings=False, head=False)
    assert EMB not in tiny_models.trainable(model)
    summary = freeze(model, result, 25)
    before = tiny_models.snapshot(model)
    tiny_models.train_steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2), steps=2)
    assert tiny_models.changed(before, tiny_models.snapshot(model)) == selected_parameters(result, 25) | {EMB}
    assert summary.trainable == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)


def assert_untouched(model):
    assert all(p.requires_grad for p in model.parameters())


def test_mismatched_scans_raise_and_change_nothing():
    four, two = tiny_models.llama(n_layers=4), tiny_models.llama(n_layers=2)
    with pytest.raises(ScanMismatchError) as e:
        freeze(two, scan_model(four), 25)
    assert "model.layers.3.mlp.down_proj" in " ".join(e.value.missing_in_model)
    assert "missing from the model" in str(e.value)
    assert_untouched(two)
    with pytest.raises(ScanMismatchError) as e:
        freeze(four, scan_model(two), 25)
    assert "model.layers.2.self_attn.q_proj" in e.value.missing_in_scan
    assert_untouched(four)
    wider = tiny_models.llama(n_layers=4, intermediate_size=96)
    with pytest.raises(ScanMismatchError) as e:
        freeze(wider, scan_model(four), 25)
    assert any(
        m.startswith("model.layers.0.mlp.up_proj: scanned (128, 64), model (96, 64)") for m in e.value.shape_mismatches
    )
    assert_untouched(wider)
    assert isinstance(e.value, spectrum_rs.SpectrumError)
    again = pickle.loads(pickle.dumps(e.value))  # crosses process boundaries intact
    assert type(again) is ScanMismatchError and again.shape_mismatches == e.value.shape_mismatches


def test_a_scan_of_some_types_fits(llama4):
    result = scan_model(llama4, types=["mlp.*"])
    freeze(llama4, result, 25, embeddings=False, head=False)
    assert {n.split(".")[-2] for n in tiny_models.trainable(llama4)} == {"down_proj", "gate_proj", "up_proj"}


def test_nothing_to_train_raises(llama4):
    result = scan_model(llama4)
    with pytest.raises(SpectrumError, match="nothing would train"):
        freeze(llama4, result, 0, embeddings=False, head=False)
    assert_untouched(llama4)


def test_results_file_fits_the_model(llama4, tmp_path):
    """A results file has names, types and SNRs only (no shapes, no scan settings)."""
    result = scan_model(llama4)
    loaded = spectrum_rs.ScanResult.load(result.save(tmp_path, name="tiny")["results"])
    freeze(llama4, loaded, 25)
    assert tiny_models.trainable(llama4) == selected_parameters(result, 25) | {EMB, HEAD}


def test_matching_is_exact_never_by_substring():
    """Selecting ``blocks.1.proj`` trains neither ``blocks.11.proj`` nor the bias."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(12))
    for _i, b in enumerate(model.blocks):
        b.proj = torch.nn.Linear(8, 8)
    scanned = scan_model(model)
    # blocks.1 gets the highest SNR of its type (the test is about matching names).
    result = dataclasses.replace(
        scanned,
        layers=[
            dataclasses.replace(lay, snr=9.0 if lay.name == "blocks.1.proj" else lay.snr) for lay in scanned.layers
        ],
    )
    assert result.select(10) == ["blocks.1.proj"]
    freeze(model, result, 10)
    assert tiny_models.trainable(model) == {"blocks.1.proj.weight"}


def test_fused_experts_train_whole():
    """One selected expert of a fused [E, out, in] tensor trains the whole tensor."""
    from test_torch_scan_model import Experts

    torch.manual_seed(0)
    model = Experts(n_layers=2, experts=4)
    result = scan_model(model)
    summary = freeze(model, result, 50, embeddings=False, head=False)
    chosen = set(result.select(50))
    by_tensor = {}
    for layer in result.layers:
        by_tensor.setdefault(layer.parameter, []).append(layer.name in chosen)
    assert tiny_models.trainable(model) == {p for p, sel in by_tensor.items() if any(sel)}
    partial = sorted(p for p, sel in by_tensor.items() if any(sel) and not all(sel))
    assert sorted(s.split(" ")[0] for s in summary.partial_fused) == partial
