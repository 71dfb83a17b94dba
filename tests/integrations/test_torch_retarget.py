"""retarget() in a custom training loop: an optimizer built over the candidates, a stale
selection first, then a rescan; a layer that enters really trains from then on, a layer
that leaves stops (and keeps its optimizer state)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models

from spectrum_rs import SpectrumError
from spectrum_rs.integrations.torch import (
    RetargetReport,
    candidate_parameters,
    freeze,
    retarget,
    scan_model,
)


def params_of(result, pct):
    by_name = {lay.name: lay for lay in result.layers}
    return {by_name[n].parameter for n in result.select(pct)}


def test_retarget_in_a_custom_loop(llama4):
    model = llama4
    real = scan_model(model)
    stale = tiny_models.inverted(real)  # selects the lowest-SNR layer of each type
    candidates = candidate_parameters(model, real)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in candidates} == {lay.parameter for lay in real.layers}  # + embeddings and head
    opt = torch.optim.AdamW(candidates, lr=1e-2, weight_decay=0.1)
    freeze(model, stale, 25)
    first = params_of(stale, 25)
    s0 = tiny_models.snapshot(model)
    tiny_models.train_steps(model, opt, steps=2)
    s1 = tiny_models.snapshot(model)
    assert tiny_models.changed(s0, s1) == first | {"model.embed_tokens.weight", "lm_head.weight"}

    new = scan_model(model)
    report = retarget(model, opt, new, 25, previous=stale)
    assert isinstance(report, RetargetReport) and report.changed
    second = params_of(new, 25)
    entered, left = second - first, first - second
    assert entered and left
    assert set(report.entered) == entered and set(report.left) == left
    assert set(report.entered_layers) == set(new.select(25)) - set(stale.select(25))
    assert set(report.drift) == set(new.types)
    entry = report.log_entry()
    assert entry["spectrum/entered"] == report.entered_layers and 0 < entry["spectrum/trainable_share"] < 1
    left_param = dict(model.named_parameters())[sorted(left)[0]]
    state_before = {k: v.clone() for k, v in opt.state[left_param].items()}
    assert tiny_models.trainable(model) == second | {"model.embed_tokens.weight", "lm_head.weight"}

    tiny_models.train_steps(model, opt, steps=2, seed=10)
    s2 = tiny_models.snapshot(model)
    moved = tiny_models.changed(s1, s2)
    assert entered <= moved  # frozen at optimizer creation, trains now
    assert not (left & moved)  # stopped: no step, no weight decay
    assert moved == second | {"model.embed_tokens.weight", "lm_head.weight"}
    # The optimizer state of a layer that left is kept as it was.
    assert all(torch.equal(v, opt.state[left_param][k]) for k, v in state_before.items())
    # Frozen-for-ever layers never moved.
    never = set(s0) - first - second - {"model.embed_tokens.weight", "lm_head.weight"}
    assert not (never & tiny_models.changed(s0, s2))


def test_retarget_refuses_an_optimizer_without_the_new_layers(llama4):
    model = llama4
    real = scan_model(model)
    stale = tiny_models.inverted(real)
    freeze(model, stale, 25)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)  # the selection only
    flags = tiny_models.trainable(model)
    with pytest.raises(SpectrumError, match="not in the optimizer"):
        retarget(model, opt, real, 25)
    assert tiny_models.trainable(model) == flags  # nothing changed
