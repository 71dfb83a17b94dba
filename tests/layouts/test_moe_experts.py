"""Per-expert and stacked mixture-of-experts layouts and their types (docs/layouts.md
"Mixture of experts"): Mixtral (``block_sparse_moe.experts.E.w1/w2/w3``, router
``block_sparse_moe.gate``), Qwen2-MoE (``mlp.experts.E.{gate,up,down}_proj``,
``mlp.shared_expert``, ``mlp.shared_expert_gate``, ``mlp.gate``) and DeepSeek-V3
(``mlp.shared_experts``, dense first layers), each a real transformers model built from a
tiny config and saved with ``save_pretrained``. By default every expert index is a type of
its own, as in the reference; ``group_experts=True`` gives one type per projection
(``mlp.experts.*.down_proj``), so that selection ranks the experts of a projection against
each other, for per-expert and stacked (``mlp.experts.gate_up_proj.*``) layouts alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import spectrum_rs
from helpers.models import write_single
from helpers.oracle import assert_snrs_match, noisy_low_rank, oracle_for, oracle_selection, spec_type
from spectrum_rs import _core

transformers = pytest.importorskip("transformers")


def _save(model, folder):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    cfg = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    return _save(transformers.MixtralForCausalLM(cfg), tmp_path_factory.mktemp("mixtral"))


@pytest.fixture(scope="module")
def qwen2_moe(tmp_path_factory):
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=6, num_experts_per_tok=2,
    )  # fmt: skip
    return _save(transformers.Qwen2MoeForCausalLM(cfg), tmp_path_factory.mktemp("qwen2_moe"))


@pytest.fixture(scope="module")
def deepseek_v3(tmp_path_factory):
    cfg = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
        first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8,
    )  # fmt: skip
    return _save(transformers.DeepseekV3ForCausalLM(cfg), tmp_path_factory.mktemp("deepseek_v3"))


def _tensors(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "fixture, expert_type, router",
    [
        ("mixtral", "block_sparse_moe.experts.3.w2", "model.layers.1.block_sparse_moe.gate"),
        ("qwen2_moe", "mlp.experts.5.down_proj", "model.layers.1.mlp.gate"),
        ("deepseek_v3", "mlp.experts.3.down_proj", "model.layers.1.mlp.gate"),
    ],
)
def test_per_expert_layouts_scan_like_the_reference(request, fixture, expert_type, router):
    folder = request.getfixturevalue(fixture)
    t = _tensors(folder)
    records = oracle_for(t)
    res = spectrum_rs.scan(folder)
    assert_snrs_match(res, {n: s for n, _, s in records})
    assert {x.name: x.type for x in res} == {n: k for n, k, _ in records}
    assert expert_type in {x.type for x in res}
    assert res[router].type == spec_type(router)
    for pct in (25, 50):
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


def test_shared_experts_and_dense_layers_keep_their_own_types(deepseek_v3, qwen2_moe):
    deepseek = {x.type for x in _core.Catalog([str(deepseek_v3)], group_experts=True).layers()}
    assert {"mlp.shared_experts.down_proj", "mlp.experts.*.down_proj", "mlp.down_proj", "mlp.gate"} <= deepseek
    qwen = {x.type for x in _core.Catalog([str(qwen2_moe)], group_experts=True).layers()}
    assert {"mlp.shared_expert.down_proj", "mlp.shared_expert_gate", "mlp.experts.*.down_proj"} <= qwen


def _types(folder, **kw):
    return {x.type for x in _core.Catalog([str(folder)], **kw).layers() if len(x.tensor_shape) >= 2}


def test_number_of_types_for_a_qwen2_moe_config(qwen2_moe):
    """docs/layouts.md: q, k, v, o, the router, three shared-expert projections, the shared
    expert gate, 3 per expert, and the embedding and head: 11 + 3 E types by default,
    14 with group_experts, whatever E (Qwen2-57B-A14B, E = 64: 203 and 14)."""
    e = 6
    assert len(_types(qwen2_moe)) == 11 + 3 * e
    grouped = _types(qwen2_moe, group_experts=True)
    assert len(grouped) == 14
    assert {"mlp.experts.*.gate_proj", "mlp.experts.*.up_proj", "mlp.experts.*.down_proj"} <= grouped


def _grouped_records(t):
    out = []
    for name, kind, snr in oracle_for(t):
        parts = kind.split(".")
        kind = ".".join("*" if i and parts[i - 1] == "experts" and p.isdigit() else p for i, p in enumerate(parts))
        out.append((name, kind, snr))
    return out


@pytest.mark.parametrize("fixture", ["mixtral", "qwen2_moe"])
def test_group_experts_ranks_experts_of_a_projection_together(request, fixture):
    folder = request.getfixturevalue(fixture)
    records = _grouped_records(_tensors(folder))
    res = spectrum_rs.scan(folder, group_experts=True)
    assert {x.name: x.type for x in res} == {n: k for n, k, _ in records}
    for pct in (25, 50):
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """A fused export: `mlp.experts.gate_up_proj` / `down_proj` `[E, out, in]`."""
    rng = np.random.default_rng(13)
    t = {
        f"model.layers.{i}.mlp.experts.{p}": torch.from_numpy(
            np.stack([noisy_low_rank(rng, *shape, 1.0 + 0.7 * ((e * 5 + i) % 7)) for e in range(4)])
        ).bfloat16()
        for i in range(2)
        for p, shape in (("gate_up_proj", (32, 16)), ("down_proj", (16, 16)))
    }
    return write_single(tmp_path_factory.mktemp("stacked"), t), t


def test_stacked_experts_group_into_one_type_per_tensor_name(stacked):
    folder, _ = stacked
    default = _types(folder)
    assert "mlp.experts.gate_up_proj.3" in default and len(default) == 8
    assert _types(folder, group_experts=True) == {"mlp.experts.gate_up_proj.*", "mlp.experts.down_proj.*"}


def test_group_experts_on_stacked_experts_selects_across_experts_and_layers(stacked):
    folder, t = stacked
    records = []
    for tname, w in t.items():
        for e in range(w.shape[0]):
            name = f"{tname}.{e}"
            records.append((name, spec_type(name).rsplit(".", 1)[0] + ".*", oracle_for({f"{name}.weight": w[e]})[0][2]))
    records = [records[i] for i in _core.natural_order([r[0] for r in records])]
    res = spectrum_rs.scan(folder, group_experts=True)
    assert res.selected_by_type(25) == oracle_selection(records, 25)
