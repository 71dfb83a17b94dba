"""peft_config(): get_peft_model wraps exactly the selected modules, with the SNR-ranked
ranks when asked; fused experts and empty selections are refused."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("peft")

from peft import get_peft_model

from spectrum_rs import LayerResult, ScanResult, SpectrumError
from spectrum_rs.integrations.peft import peft_config, peft_target_modules, snr_rank_pattern
from spectrum_rs.integrations.torch import scan_model


def wrapped(model):
    """Module names (relative to the base model) that got LoRA weights, with their rank."""
    out = {}
    prefix = "base_model.model."
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            out[name[len(prefix) :]] = module.r["default"]
    return out


def test_exactly_the_selected_modules_are_wrapped(llama4):
    result = scan_model(llama4)
    targets = peft_target_modules(result, 50)
    assert targets == result.select(50)
    assert len(targets) == 7 * 2  # two of four layers of each decoder type; none of embed/head
    model = get_peft_model(llama4, peft_config(result, 50, r=4, lora_alpha=8))
    assert set(wrapped(model)) == set(targets)
    assert set(wrapped(model).values()) == {4}
    assert all(n.startswith("base_model.model.") for n, p in model.named_parameters() if "lora_" in n)


def test_rank_pattern_gives_higher_snr_higher_rank(llama4):
    result = scan_model(llama4)
    model = get_peft_model(llama4, peft_config(result, 50, rank_pattern=True, r=8, lora_alpha=16))
    ranks = wrapped(model)
    assert set(ranks) == set(result.select(50))
    for _t, names in result.selected_by_type(50).items():
        if not names:
            continue  # embed_tokens and lm_head: one layer each, 50 % of one is none
        best, second = names  # by SNR, highest first
        assert (ranks[best], ranks[second]) == (16, 4)  # r * 2 and r * 0.5
    for _name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(getattr(module, "scaling", None), dict) and module.scaling:
            assert module.scaling["default"] == pytest.approx(16 / 8)  # keep_scaling: alpha_i / r_i = alpha / r
    pattern = snr_rank_pattern(result, 100, r=8)
    first = result.ranked()["mlp.up_proj"]
    assert [pattern[lay.name.replace(".", r"\.")] for lay in first] == [16, 10, 6, 4]  # 8 * 0.5 * 4 ** (1, 2/3, 1/3, 0)


def test_fused_experts_and_empty_selections_are_refused():
    layers = [
        LayerResult(
            name=f"model.layers.{i}.mlp.experts.gate_up_proj.0",
            type="mlp.experts.gate_up_proj.0",
            snr=float(i + 1),
            shape=(8, 4),
            tensor=f"model.layers.{i}.mlp.experts.gate_up_proj",
        )
        for i in range(4)
    ]
    fused = ScanResult(model_name="moe", layers=layers)
    with pytest.raises(SpectrumError, match="fused expert"):
        peft_target_modules(fused, 50)
    plain = dataclasses.replace(fused, layers=[dataclasses.replace(lay, tensor=None) for lay in layers])
    assert peft_target_modules(plain, 50) == [f"model.layers.{i}.mlp.experts.gate_up_proj.0" for i in (3, 2)]
    with pytest.raises(SpectrumError, match="target nothing"):
        peft_target_modules(plain, 10)
    with pytest.raises(TypeError):
        peft_config(plain, 50, target_modules=["x"])
