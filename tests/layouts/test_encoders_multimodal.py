"""Encoders, encoder-decoders and multimodal stacks (docs/layouts.md "Encoders" and
"Multimodal"), each a real transformers model built from a tiny config: BERT and ALBERT
(no ``model.`` prefix; ALBERT's one shared layer group), T5 (``encoder.block.N`` before
``decoder.block.N``), Whisper (``model.encoder``/``model.decoder`` and its 3-D ``conv1``
kernels, one matrix each), a checkpoint without ``config.json``, CLIP's older
``vision_model``/``text_model`` stacks and the ``model.vision_tower``/
``model.language_model`` names of current multimodal checkpoints, with the tied head found
through ``text_config``. By default types are the reference's, so the stacks share them;
``group_by="stack"`` keeps each stack's layers in types of their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import spectrum_rs
from helpers.models import write_single
from helpers.oracle import assert_snrs_match, layer_name, noisy_low_rank, oracle_for, oracle_snr, spec_type
from spectrum_rs import _core

transformers = pytest.importorskip("transformers")


def _save(model, folder):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return folder, load_file(str(folder / "model.safetensors"))


def _matrices(t):
    """The oracle's (name -> snr) of every 2-D+ ``*.weight``, higher ranks as (out, rest)."""
    return {
        layer_name(n): oracle_snr(w.reshape(w.shape[0], -1))
        for n, w in t.items()
        if n.endswith(".weight") and w.dim() >= 2
    }


def test_bert_without_model_prefix(tmp_path):
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    folder, t = _save(transformers.BertModel(cfg), tmp_path)
    assert "encoder.layer.1.attention.output.dense.weight" in t
    res = spectrum_rs.scan(folder, exclude=["lm_head"])
    assert_snrs_match(res, _matrices(t))
    assert res["encoder.layer.1.attention.output.dense"].type == "attention.output.dense"
    assert res["encoder.layer.1.output.dense"].type == "output.dense"  # exact types (docs/method.md §1.10)


def test_albert_shared_layer_group_is_scanned_once(tmp_path):
    cfg = transformers.AlbertConfig(
        vocab_size=50,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    folder, t = _save(transformers.AlbertModel(cfg), tmp_path)
    res = spectrum_rs.scan(folder, exclude=["lm_head"])
    assert_snrs_match(res, _matrices(t))
    # Four layers share one group: its matrices are layers once, typed after the group index.
    q = res["encoder.albert_layer_groups.0.albert_layers.0.attention.query"]
    assert q.type == "albert_layers.0.attention.query"
    assert res["encoder.embedding_hidden_mapping_in"].shape == (32, 16)


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    cfg = transformers.T5Config(
        vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    return _save(transformers.T5ForConditionalGeneration(cfg), tmp_path_factory.mktemp("t5"))


def test_t5_encoder_before_decoder_and_shared_types(t5):
    folder, t = t5
    res = spectrum_rs.scan(folder, exclude=["lm_head"])  # the tied head: the next test
    names = [x.name for x in res]
    assert names.index("encoder.block.1.layer.1.DenseReluDense.wo") < names.index(
        "decoder.block.0.layer.0.SelfAttention.q"
    )
    assert_snrs_match(res, _matrices(t))
    # By default (the reference's types) encoder and decoder attention share a type ...
    q = {x.name for x in res if x.type == "layer.0.SelfAttention.q"}
    assert q == {f"{s}.block.{i}.layer.0.SelfAttention.q" for s in ("encoder", "decoder") for i in (0, 1)}
    # ... and the sub-layer index stays in the type even with group_experts.
    grouped = {x.type for x in _core.Catalog([str(folder)], group_experts=True).layers()}
    assert "layer.1.DenseReluDense.wi" in grouped and "layer.2.DenseReluDense.wi" in grouped


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_head_tied_to_shared_is_reported_and_trained(tmp_path, t5, family):
    """T5 and BART files hold one ``shared`` token embedding (``shared.weight``,
    ``model.shared.weight``) that encoder, decoder and the tied head use: it is the
    model's embedding (the YAML unfreezes it) and the source of the tied ``lm_head``
    (docs/method.md §1.6, §1.7)."""
    if family == "t5":
        folder, t = t5
        shared = "shared"
    else:
        cfg = transformers.BartConfig(
            vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=32,
        )  # fmt: skip
        folder, t = _save(transformers.BartForConditionalGeneration(cfg), tmp_path)
        shared = "model.shared"
    assert f"{shared}.weight" in t and "lm_head.weight" not in t  # what transformers saves
    res = spectrum_rs.scan(folder)
    head = res["lm_head"]
    assert head.tied_to == shared and head.snr == res[shared].snr
    assert {shared, "lm_head"} <= set(res.embedding_layers())
    yaml_lines = res.unfrozen_yaml(25).splitlines()
    assert f"- ^{shared}.weight$" in yaml_lines and "- ^lm_head.weight$" in yaml_lines


def test_t5_group_by_stack_keeps_encoder_and_decoder_apart(t5):
    folder, _ = t5
    kinds = {x.name: x.type for x in _core.Catalog([str(folder)], group_by="stack").layers()}
    assert kinds["encoder.block.1.layer.0.SelfAttention.q"] == "encoder.block.*.layer.0.SelfAttention.q"
    assert kinds["decoder.block.0.layer.0.SelfAttention.q"] == "decoder.block.*.layer.0.SelfAttention.q"
    assert kinds["shared"] == "shared"


def test_whisper_convolutions_and_no_config_json(tmp_path):
    cfg = transformers.WhisperConfig(
        vocab_size=60, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8, max_source_positions=16,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    folder, t = _save(transformers.WhisperForConditionalGeneration(cfg), tmp_path)
    assert tuple(t["model.encoder.conv1.weight"].shape) == (32, 8, 3)
    (folder / "config.json").unlink()
    res = spectrum_rs.scan(folder)
    # Without config.json there is no tie to report: exactly the stored matrices.
    assert_snrs_match(res, _matrices(t))
    assert res["model.encoder.conv1"].shape == (32, 24)
    assert res["model.decoder.layers.0.encoder_attn.k_proj"].type == "encoder_attn.k_proj"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=8),
    )  # fmt: skip
    return _save(transformers.CLIPModel(cfg), tmp_path_factory.mktemp("clip"))


def test_clip_vision_and_text_stacks_share_types_by_default(clip):
    folder, t = clip
    res = spectrum_rs.scan(folder, exclude=["lm_head"])
    assert_snrs_match(res, _matrices(t))
    q = {x.name for x in res if x.type == "self_attn.q_proj"}
    assert q == {f"{s}.encoder.layers.{i}.self_attn.q_proj" for s in ("vision_model", "text_model") for i in (0, 1)}
    kinds = {x.type for x in _core.Catalog([str(folder)], group_by="stack").layers()}
    assert {"vision_model.encoder.layers.*.self_attn.q_proj", "text_model.encoder.layers.*.self_attn.q_proj"} <= kinds
    assert "self_attn.q_proj" not in kinds


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    """`model.vision_tower...layers.N`, `model.language_model.layers.N`, tied through text_config."""
    rng = np.random.default_rng(17)
    t = {"model.language_model.embed_tokens.weight": noisy_low_rank(rng, 96, 32, 3.0)}
    for i in range(4):
        for stack in ("model.vision_tower.encoder.layers", "model.language_model.layers"):
            for proj in ("self_attn.q_proj", "mlp.down_proj"):
                t[f"{stack}.{i}.{proj}.weight"] = noisy_low_rank(rng, 32, 32, 1.0 + ((i * 3 + len(stack)) % 5))
    t["model.multi_modal_projector.linear_1.weight"] = noisy_low_rank(rng, 32, 32, 2.0)
    t = {k: torch.from_numpy(v).float() for k, v in t.items()}
    config = {
        "model_type": "llava",
        "text_config": {"model_type": "llama", "tie_word_embeddings": True},
        "vision_config": {},
    }
    return write_single(tmp_path_factory.mktemp("multimodal"), t, config=config), t


def test_multimodal_default_types_and_tied_head_through_text_config(multimodal):
    folder, t = multimodal
    res = spectrum_rs.scan(folder)
    expected = _matrices(t)
    expected["lm_head"] = expected["model.language_model.embed_tokens"]
    assert_snrs_match(res, expected)
    assert res["lm_head"].tied_to == "model.language_model.embed_tokens"
    assert {x.name for x in res if x.type == "self_attn.q_proj"} == {
        f"{s}.{i}.self_attn.q_proj"
        for s in ("model.vision_tower.encoder.layers", "model.language_model.layers")
        for i in range(4)
    }


def _stack_records(t):
    out = []
    for name, kind, snr in oracle_for(t):
        parts = name.split(".")
        first = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        out.append((name, kind if first is None else ".".join(parts[:first] + ["*", kind]), snr))
    return out


def test_group_by_stack_selects_within_each_stack(multimodal):
    from helpers.oracle import oracle_selection

    folder, t = multimodal
    records = _stack_records(t)
    res = spectrum_rs.scan(folder, group_by="stack")
    assert {x.name: x.type for x in res if x.name != "lm_head"} == {n: k for n, k, _ in records}
    assert res["model.language_model.layers.2.mlp.down_proj"].type == "model.language_model.layers.*.mlp.down_proj"
    selected = res.selected_by_type(50)
    expected = oracle_selection(records, 50)
    assert {k: v for k, v in selected.items() if k != "lm_head"} == expected
    assert spec_type("model.language_model.layers.2.mlp.down_proj") == "mlp.down_proj"
