"""snr_param_groups(): the learning rate grows with the layer's SNR rank within its type,
by the documented formula; frozen parameters are left out, unscanned ones get factor 1."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models

from spectrum_rs.integrations.torch import freeze, scan_model, snr_param_groups

LR = 1e-3


def lr_by_name(groups):
    out = {}
    for g in groups:
        for name in g["spectrum_parameters"]:
            out[name] = g["lr"]
    return out


def test_rank_factors_follow_the_formula(llama4):
    result = scan_model(llama4)
    lrs = lr_by_name(snr_param_groups(llama4, result, LR))
    assert set(lrs) == {n for n, _ in llama4.named_parameters()}  # nothing frozen yet
    for _t, layers in result.ranked().items():
        n = len(layers)
        for i, layer in enumerate(layers):
            q = 0.5 if n == 1 else 1 - i / (n - 1)
            assert lrs[layer.parameter] == pytest.approx(LR * 0.5 * 4**q), layer.name
    ranked = result.ranked()["mlp.down_proj"]
    assert lrs[ranked[0].parameter] == pytest.approx(2 * LR) and lrs[ranked[-1].parameter] == pytest.approx(0.5 * LR)
    assert lrs["model.norm.weight"] == LR and lrs["model.layers.0.input_layernorm.weight"] == LR  # not scanned
    assert lrs["model.embed_tokens.weight"] == pytest.approx(LR)  # one layer of its type: the middle


def test_frozen_parameters_are_left_out_and_groups_train(llama4):
    result = scan_model(llama4)
    freeze(llama4, result, 50)
    groups = snr_param_groups(llama4, result, LR, top_percent=50, weight_decay=0.1)
    names = set(lr_by_name(groups))
    assert names == tiny_models.trainable(llama4)
    # Among the 2 selected of each type: the better gets max_factor, the other min_factor.
    for _t, sel in result.selected_by_type(50).items():
        if len(sel) == 2:
            lrs = lr_by_name(groups)
            assert lrs[f"{sel[0]}.weight"] == pytest.approx(2 * LR) and lrs[f"{sel[1]}.weight"] == pytest.approx(
                0.5 * LR
            )
    assert all(g["weight_decay"] == (0.1 if all(p.dim() >= 2 for p in g["params"]) else 0.0) for g in groups)
    opt = torch.optim.AdamW(groups, lr=LR)
    before = tiny_models.snapshot(llama4)
    tiny_models.train_steps(llama4, opt, steps=1)
    assert tiny_models.changed(before, tiny_models.snapshot(llama4)) == names


def test_snr_scale_and_bounds(llama4):
    result = scan_model(llama4)
    lrs = lr_by_name(snr_param_groups(llama4, result, 1.0, scale="snr", min_factor=1.0, max_factor=3.0))
    for layers in result.ranked().values():
        if len(layers) > 1:
            factors = [lrs[lay.parameter] for lay in layers]
            assert factors == sorted(factors, reverse=True)
            assert factors[0] == pytest.approx(3.0) and factors[-1] == pytest.approx(1.0)
            lo, hi = layers[-1].snr, layers[0].snr
            mid = layers[1]
            assert lrs[mid.parameter] == pytest.approx(3.0 ** ((mid.snr - lo) / (hi - lo)))
    for bad in ({"min_factor": 0}, {"min_factor": 3, "max_factor": 2}, {"scale": "linear"}, {"max_factor": math.inf}):
        with pytest.raises(ValueError):
            snr_param_groups(llama4, result, 1.0, **bad)
