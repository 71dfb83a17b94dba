"""Fused ``gate_up_proj`` tensors split on request (``split_fused=True``,
docs/layouts.md "Fused projections"): gpt-oss ``[E, in, 2 out]`` interleaved (gate =
``[..., ::2]``), Llama-4 ``[E, in, 2 out]`` concatenated along the last axis, Qwen3-MoE
fused exports ``[E, 2 out, in]`` concatenated along the rows, Phi-3's dense
``mlp.gate_up_proj``, and gpt-oss MXFP4 blocks. By default a fused tensor is one matrix per
expert. Each family's assumption is checked against the real transformers module: the
expert's output computed from the split matrices the stream hands over equals the
module's own forward pass for a token routed to that expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import spectrum_rs
from helpers.models import write_config, write_single
from helpers.oracle import assert_snrs_match, noisy_low_rank, oracle_snr
from spectrum_rs import _core

transformers = pytest.importorskip("transformers")

E = 3


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.randn(p.shape, generator=g) * 0.1)
    return model


def _stream(folder, model_type, split=True):
    """name -> float32 matrix of every layer of the fused tensors, split or not."""
    cat = _core.Catalog([str(folder)], split_fused=split, model_type=model_type)
    layers = cat.layers()
    wanted = [x.index for x in layers if ".experts." in x.name or "gate_up" in x.tensor]
    return {layers[i].name: torch.from_numpy(a) for i, a, _ in cat.stream(wanted)}, layers


def test_gpt_oss_interleaved_halves_match_the_module(tmp_path):
    cfg = transformers.GptOssConfig(
        vocab_size=64, hidden_size=24, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=E, num_experts_per_tok=1, layer_types=["full_attention"],
    )  # fmt: skip
    model = _randomize(transformers.GptOssForCausalLM(cfg))
    model.save_pretrained(tmp_path)
    t = load_file(str(tmp_path / "model.safetensors"))
    assert tuple(t["model.layers.0.mlp.experts.gate_up_proj"].shape) == (E, 24, 32)  # [E, in, 2 out]
    got, layers = _stream(tmp_path, "gpt_oss")
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(1, 24, dtype=torch.float32)
    for e in range(E):
        gate, up = got[f"model.layers.0.mlp.experts.gate_proj.{e}"], got[f"model.layers.0.mlp.experts.up_proj.{e}"]
        assert tuple(gate.shape) == tuple(up.shape) == (24, 16)
        down = got[f"model.layers.0.mlp.experts.down_proj.{e}"]
        g, u = x @ gate, x @ up
        ours = ((u + 1) * g * torch.sigmoid(g * experts.alpha)) @ down
        theirs = experts(x, torch.tensor([[e]]), torch.ones(1, 1, dtype=torch.float32))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    kinds = {x.type for x in layers}
    assert {"mlp.experts.gate_proj.0", "mlp.experts.up_proj.2", "mlp.experts.down_proj.1"} <= kinds
    # Not split unless asked: one [in, 2 out] matrix per expert.
    whole, _ = _stream(tmp_path, "gpt_oss", split=False)
    assert tuple(whole["model.layers.0.mlp.experts.gate_up_proj.1"].shape) == (24, 32)


def test_llama4_concatenated_columns_match_the_module(tmp_path):
    cfg = transformers.Llama4TextConfig(
        vocab_size=64, hidden_size=24, intermediate_size=16, intermediate_size_mlp=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=E,
    )  # fmt: skip
    model = _randomize(transformers.Llama4ForCausalLM(cfg))
    model.save_pretrained(tmp_path)
    assert model.config.model_type == "llama4_text"
    got, _ = _stream(tmp_path, "llama4_text")
    experts = model.model.layers[0].feed_forward.experts
    x = torch.randn(E, 24, dtype=torch.float32)  # one token per expert, as the module takes them
    theirs = experts(x)
    for e in range(E):
        p = "model.layers.0.feed_forward.experts"
        gate, up, down = got[f"{p}.gate_proj.{e}"], got[f"{p}.up_proj.{e}"], got[f"{p}.down_proj.{e}"]
        ours = (torch.nn.functional.silu(x[e] @ gate) * (x[e] @ up)) @ down
        torch.testing.assert_close(ours, theirs[e], rtol=1e-5, atol=1e-6)


def _qwen3_fused_export(folder):
    """A Qwen3-MoE model saved in its in-memory (fused) names: gate_up_proj [E, 2 out, in]."""
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=64, hidden_size=24, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=E, num_experts_per_tok=1,
    )  # fmt: skip
    model = _randomize(transformers.Qwen3MoeForCausalLM(cfg))
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.float().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(folder / "model.safetensors"))
    write_config(folder, model.config.to_dict())
    return model, sd


def test_qwen3_fused_export_concatenated_rows_match_the_module(tmp_path):
    model, sd = _qwen3_fused_export(tmp_path)
    assert tuple(sd["model.layers.0.mlp.experts.gate_up_proj"].shape) == (E, 32, 24)
    got, _ = _stream(tmp_path, "qwen3_moe")
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(1, 24, dtype=torch.float32)
    for e in range(E):
        p = "model.layers.0.mlp.experts"
        gate, up, down = got[f"{p}.gate_proj.{e}"], got[f"{p}.up_proj.{e}"], got[f"{p}.down_proj.{e}"]
        assert tuple(gate.shape) == (16, 24)
        ours = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
        theirs = experts(x, torch.tensor([[e]]), torch.ones(1, 1, dtype=torch.float32))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_phi3_dense_gate_up_halves_are_the_rows(tmp_path):
    rng = np.random.default_rng(4)
    w = noisy_low_rank(rng, 64, 24, 2.0)
    write_single(
        tmp_path, {"model.layers.0.mlp.gate_up_proj.weight": torch.from_numpy(w)}, config={"model_type": "phi3"}
    )
    got, layers = _stream(tmp_path, "phi3")
    np.testing.assert_array_equal(got["model.layers.0.mlp.gate_proj"].numpy(), w[:32].astype(np.float32))
    np.testing.assert_array_equal(got["model.layers.0.mlp.up_proj"].numpy(), w[32:].astype(np.float32))
    assert {x.type for x in layers} == {"mlp.gate_proj", "mlp.up_proj"}
    assert {x.tensor for x in layers} == {"model.layers.0.mlp.gate_up_proj.weight"}


def test_mxfp4_gate_up_blocks_split_every_other_row(tmp_path):
    """gpt-oss MXFP4 blocks hold each expert as [2 out, in]: gate is rows ::2."""
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    g = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 256, (E, 32, 1, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(120, 130, (E, 32, 1), generator=g, dtype=torch.uint8)
    write_single(
        tmp_path,
        {
            "model.layers.0.mlp.experts.gate_up_proj_blocks": blocks,
            "model.layers.0.mlp.experts.gate_up_proj_scales": scales,
        },
    )
    got, _ = _stream(tmp_path, "gpt_oss")
    dense = mxfp4.convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, 2 out]
    for e in range(E):
        torch.testing.assert_close(got[f"model.layers.0.mlp.experts.gate_proj.{e}"], dense[e][:, ::2].T)
        torch.testing.assert_close(got[f"model.layers.0.mlp.experts.up_proj.{e}"], dense[e][:, 1::2].T)


def test_split_fused_scan_matches_the_oracle_on_each_half(tmp_path):
    _, sd = _qwen3_fused_export(tmp_path)
    res = spectrum_rs.scan(tmp_path, split_fused=True, types=["mlp.experts.*"])
    gu = sd["model.layers.0.mlp.experts.gate_up_proj"].double()
    expected = {}
    for e in range(E):
        expected[f"model.layers.0.mlp.experts.gate_proj.{e}"] = oracle_snr(gu[e][:16])
        expected[f"model.layers.0.mlp.experts.up_proj.{e}"] = oracle_snr(gu[e][16:])
        expected[f"model.layers.0.mlp.experts.down_proj.{e}"] = oracle_snr(
            sd["model.layers.0.mlp.experts.down_proj"][e]
        )
    assert_snrs_match(res, expected)


def _attention(tmp_path, model, model_type, heads):
    _randomize(model)
    model.save_pretrained(tmp_path)
    cat = _core.Catalog([str(tmp_path)], split_fused=True, model_type=model_type, attention_heads=heads)
    layers = cat.layers()
    got = {layers[i].name: a for i, a, _ in cat.stream([x.index for x in layers])}
    return got, load_file(str(tmp_path / "model.safetensors"))


def test_phi3_qkv_proj_splits_into_q_k_v_with_grouped_kv_heads(tmp_path):
    cfg = transformers.Phi3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0,
    )  # fmt: skip
    got, t = _attention(tmp_path, transformers.Phi3ForCausalLM(cfg), "phi3", (4, 2, 8))
    w = t["model.layers.0.self_attn.qkv_proj.weight"].numpy()
    assert w.shape == (64, 32)  # (4 + 2 x 2) heads x 8
    # Phi3Attention: q = qkv[..., :H d], k = the next KV d, v = the rest.
    np.testing.assert_array_equal(got["model.layers.0.self_attn.q_proj"], w[:32])
    np.testing.assert_array_equal(got["model.layers.0.self_attn.k_proj"], w[32:48])
    np.testing.assert_array_equal(got["model.layers.0.self_attn.v_proj"], w[48:])
    np.testing.assert_array_equal(
        got["model.layers.0.mlp.gate_proj"], t["model.layers.0.mlp.gate_up_proj.weight"].numpy()[:48]
    )


def test_gpt_neox_query_key_value_is_per_head(tmp_path):
    cfg = transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4
    )
    got, t = _attention(tmp_path, transformers.GPTNeoXForCausalLM(cfg), "gpt_neox", (4, 4, 8))
    w = t["gpt_neox.layers.0.attention.query_key_value.weight"].numpy().reshape(4, 3, 8, 32)
    # GPTNeoXAttention: view(..., -1, 3 d).chunk(3): per head, q | k | v.
    p = "gpt_neox.layers.0.attention.query_key_value"
    for i, part in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(got[f"{p}.{part}"], w[:, i].reshape(32, 32))


def test_gpt2_c_attn_splits_its_columns_in_thirds(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=4)
    got, t = _attention(tmp_path, transformers.GPT2LMHeadModel(cfg), "gpt2", (4, 4, 8))
    w = t["transformer.h.0.attn.c_attn.weight"].numpy()  # Conv1D [in, 3 out]
    for i, part in enumerate("qkv"):
        np.testing.assert_array_equal(got[f"transformer.h.0.attn.c_attn.{part}"], w[:, 32 * i : 32 * (i + 1)])


def _split_from_config(folder):
    """Every layer of the model, split as ``scan(split_fused=True)`` splits it: the family
    and the heads from its ``config.json`` (model/config.py), the bytes from the stream."""
    from spectrum_rs.model.config import attention_heads, model_type, read_config

    cfg = read_config(folder)
    cat = _core.Catalog(
        [str(folder)], split_fused=True, model_type=model_type(cfg), attention_heads=attention_heads(cfg)
    )
    layers = cat.layers()
    return {layers[i].name: a for i, a, _ in cat.stream([x.index for x in layers])}


def _as_rows(heads):
    """A module's ``[1, in, heads, d]`` projection of the identity: the weight rows."""
    x = heads[0]
    return x.reshape(x.shape[0], -1).T.detach().numpy()


@pytest.mark.parametrize(
    "flags, kv",
    [
        ({"new_decoder_architecture": True, "num_kv_heads": 2}, 2),  # Falcon-40B/180B: KV groups
        ({"multi_query": True}, 1),  # Falcon-7B: one key/value head
        ({"multi_query": False}, 4),  # the old per-head layout
    ],
    ids=["grouped", "multi-query", "per-head"],
)
def test_falcon_query_key_value_splits_as_the_module_reads_it(tmp_path, flags, kv):
    cfg = transformers.FalconConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, bias=False, **flags
    )
    model = _randomize(transformers.FalconForCausalLM(cfg))
    model.save_pretrained(tmp_path)
    got = _split_from_config(tmp_path)
    attn = model.transformer.h[0].self_attention
    with torch.no_grad():
        q, k, v = attn._split_heads(attn.query_key_value(torch.eye(32).unsqueeze(0)))
    g = 4 // kv
    if flags.get("new_decoder_architecture"):  # keys and values come repeated per query head
        k, v = k[:, :, ::g], v[:, :, ::g]
    p = "transformer.h.0.self_attention.query_key_value"
    np.testing.assert_array_equal(got[f"{p}.query"], _as_rows(q))
    np.testing.assert_array_equal(got[f"{p}.key"], _as_rows(k))
    np.testing.assert_array_equal(got[f"{p}.value"], _as_rows(v))
    assert got[f"{p}.key"].shape == (kv * 8, 32)


def test_mpt_wqkv_splits_in_thirds_as_the_module_reads_it(tmp_path):
    cfg = transformers.MptConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=1, expansion_ratio=2)
    model = _randomize(transformers.MptForCausalLM(cfg))
    model.save_pretrained(tmp_path)
    got = _split_from_config(tmp_path)
    attn = model.transformer.blocks[0].attn
    with torch.no_grad():
        parts = attn.Wqkv(torch.eye(32).unsqueeze(0)).chunk(3, dim=2)  # MptAttention.forward
    for name, part in zip("qkv", parts):
        np.testing.assert_array_equal(got[f"transformer.blocks.0.attn.Wqkv.{name}"], part[0].T.numpy())


def _hand_made(tmp_path, name, config):
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    write_single(tmp_path, {name: w}, config)
    return w.numpy(), _split_from_config(tmp_path)


def test_chatglm_query_key_value_is_q_then_k_then_v(tmp_path):
    """ChatGLM (remote code): ``mixed_x_layer.split([H d, G d, G d])`` with G the
    ``multi_query_group_num`` and d ``kv_channels``."""
    name = "transformer.encoder.layers.0.self_attention.query_key_value"
    config = {"model_type": "chatglm", "num_attention_heads": 4, "multi_query_attention": True,
              "multi_query_group_num": 2, "kv_channels": 8, "hidden_size": 32}  # fmt: skip
    w, got = _hand_made(tmp_path, f"{name}.weight", config)
    np.testing.assert_array_equal(got[f"{name}.query"], w[:32])
    np.testing.assert_array_equal(got[f"{name}.key"], w[32:48])
    np.testing.assert_array_equal(got[f"{name}.value"], w[48:])


def test_internlm2_wqkv_is_in_key_value_groups(tmp_path):
    """InternLM2 (remote code): ``rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + H/KV)``,
    queries ``[..., :H/KV, :]``, key ``[..., -2, :]``, value ``[..., -1, :]``."""
    name = "model.layers.0.attention.wqkv"
    config = {"model_type": "internlm2", "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}
    w, got = _hand_made(tmp_path, f"{name}.weight", config)
    groups = w.reshape(2, 4, 8, 32)  # (KV, H/KV + 2, d, in)
    np.testing.assert_array_equal(got[f"{name}.q"], groups[:, :2].reshape(32, 32))
    np.testing.assert_array_equal(got[f"{name}.k"], groups[:, 2].reshape(16, 32))
    np.testing.assert_array_equal(got[f"{name}.v"], groups[:, 3].reshape(16, 32))


def test_an_unknown_familys_qkv_stays_one_matrix_beside_a_split_one(tmp_path):
    """A vision ``qkv`` of no known family stays whole with ``split_fused``, and does not
    stop the split of the fused projections beside it (a ``gate_up_proj``)."""
    g = torch.Generator().manual_seed(5)
    t = {
        "vision_model.encoder.layers.0.attn.qkv.weight": torch.randn(96, 32, generator=g),
        "language_model.model.layers.0.mlp.gate_up_proj.weight": torch.randn(64, 32, generator=g),
    }
    write_single(tmp_path, t, {"model_type": "some_vlm", "num_attention_heads": 4, "hidden_size": 32})
    names = {x.name for x in spectrum_rs.scan(tmp_path, device="cpu", split_fused=True)}
    assert "vision_model.encoder.layers.0.attn.qkv" in names
    assert {f"language_model.model.layers.0.mlp.{p}_proj" for p in ("gate", "up")} <= names


def test_a_fused_attention_of_an_unknown_family_is_refused_only_when_split(tmp_path):
    name = "transformer.h.0.attn.query_key_value.weight"
    w = torch.randn(96, 32, generator=torch.Generator().manual_seed(4))
    write_single(tmp_path, {name: w}, {"model_type": "some_new_family", "num_attention_heads": 4, "hidden_size": 32})
    assert len(spectrum_rs.scan(tmp_path, device="cpu")) == 1  # whole, by default
    with pytest.raises(
        spectrum_rs.ModelFileError, match='how model type "some_new_family" lays out its heads is not known'
    ):
        spectrum_rs.scan(tmp_path, device="cpu", split_fused=True)


def test_qwen2_vl_vision_qkv_splits_in_thirds_as_the_module_reads_it(tmp_path):
    cfg = transformers.Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, num_heads=4, hidden_size=32, mlp_ratio=2, patch_size=2,
                           spatial_merge_size=1, temporal_patch_size=1, in_channels=3),
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = _randomize(transformers.Qwen2VLForConditionalGeneration(cfg))
    model.save_pretrained(tmp_path)
    got = _split_from_config(tmp_path)
    (stem,) = [n[: -len(".q")] for n in got if n.endswith("blocks.0.attn.qkv.q")]
    attn = model.model.visual.blocks[0].attn
    with torch.no_grad():
        # VisionAttention.forward: qkv(x).reshape(seq, 3, heads, -1): q | k | v in thirds (bias 0).
        parts = attn.qkv(torch.eye(32)).reshape(32, 3, -1).unbind(1)
    for name, part in zip("qkv", parts):
        np.testing.assert_array_equal(got[f"{stem}.{name}"], part.T.numpy())


def test_dbrx_wqkv_splits_with_grouped_kv_heads_as_the_module_reads_it(tmp_path):
    cfg = transformers.DbrxConfig(
        d_model=32, n_heads=4, n_layers=1, max_seq_len=32, vocab_size=64,
        attn_config=dict(kv_n_heads=2, rope_theta=10000.0),
        ffn_config=dict(ffn_hidden_size=16, moe_num_experts=3, moe_top_k=1),
    )  # fmt: skip
    model = _randomize(transformers.DbrxForCausalLM(cfg))
    model.save_pretrained(tmp_path)
    got = _split_from_config(tmp_path)
    attn = model.transformer.blocks[0].norm_attn_norm.attn
    with torch.no_grad():
        # DbrxAttention.forward: Wqkv(x).split([hidden, KV d, KV d]).
        parts = attn.Wqkv(torch.eye(32)).split([32, 16, 16], dim=1)
    for name, part in zip("qkv", parts):
        np.testing.assert_array_equal(got[f"transformer.blocks.0.norm_attn_norm.attn.Wqkv.{name}"], part.T.numpy())
