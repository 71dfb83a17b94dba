"""The catalog and the stream: which files and tensors make up the model, layer order,
selection by type/name/glob, stacked experts, FP8 with block scales, the prefetch
window, and the raw stream of ``spectrum_rs._core.Catalog``."""

from __future__ import annotations

import fnmatch
import math
import re
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import (
    cast,
    file_order,
    llama_shard_plan,
    llama_tensors,
    raw_safetensors,
    write_file,
    write_index,
    write_sharded,
    write_single,
)
from helpers.oracle import (
    as_f64,
    assert_snrs_match,
    layer_name,
    noisy_low_rank,
    oracle_for,
    oracle_selection,
    oracle_snr,
    same_number,
    spec_type,
)
from spectrum_rs import SpectrumError, _core


def _names(res):
    return [layer.name for layer in res]


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def twelve_layers():
    """A 12-layer tiny Llama (so that layers.2 / layers.10 ordering matters), BF16."""
    return cast(
        llama_tensors(seed=5, n_layers=12, hidden=32, kv=8, inter=48, vocab=40, zero=None, outliers=(), tie_pair=None),
        "BF16",
    )


@pytest.fixture(scope="module")
def twelve_single(tmp_path_factory, twelve_layers):
    return write_single(tmp_path_factory.mktemp("twelve_single"), twelve_layers)


@pytest.fixture(scope="module")
def twelve_sharded(tmp_path_factory, twelve_layers):
    return write_sharded(
        tmp_path_factory.mktemp("twelve_sharded"), twelve_layers, llama_shard_plan(list(twelve_layers), 3), 3
    )


def test_stray_consolidated_file_beside_indexed_shards_is_not_scanned(tmp_path, twelve_layers):
    folder = write_sharded(tmp_path, twelve_layers, llama_shard_plan(list(twelve_layers), 3), 3)
    # A consolidated copy with other values and an extra tensor, as some repos ship.
    stray = {k: torch.zeros_like(v) for k, v in twelve_layers.items()}
    stray["extra.weight"] = torch.randn(8, 8)
    write_single(folder, stray, file_name="consolidated.safetensors")
    files = [Path(f).name for f, _, _ in _core.Catalog([str(folder)]).files()]
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    res = spectrum_rs.scan(folder)
    records = oracle_for(twelve_layers)
    assert_snrs_match(res, {n: s for n, _, s in records})


def test_stray_consolidated_file_beside_single_file_is_not_scanned(tmp_path):
    t = {"a.weight": torch.randn(16, 24), "b.weight": torch.randn(24, 16)}
    write_single(tmp_path, t)
    write_single(tmp_path, {"c.weight": torch.randn(8, 8)}, file_name="consolidated.safetensors")
    res = spectrum_rs.scan(tmp_path)
    assert _names(res) == ["a", "b"]


def test_tensor_in_a_shard_but_not_in_the_index_is_not_scanned(tmp_path, twelve_layers):
    t = dict(twelve_layers)
    folder = write_sharded(tmp_path, t, llama_shard_plan(list(t), 3), 3)
    # Rewrite shard 1 with an extra tensor the index does not name.
    from safetensors.torch import load_file

    shard = folder / "model-00001-of-00003.safetensors"
    data = load_file(str(shard))
    data["model.layers.0.extra_proj.weight"] = torch.randn(8, 8)
    write_file(shard, data)
    res = spectrum_rs.scan(folder)
    assert "model.layers.0.extra_proj" not in _names(res)
    assert len(res) == len(oracle_for(t))


@pytest.mark.parametrize("how", ["folder", "index_file", "file", "file_list"])
def test_ways_to_name_a_model(tmp_path, twelve_layers, how):
    expected = {n: s for n, _, s in oracle_for(twelve_layers)}
    if how in ("folder", "index_file"):
        folder = write_sharded(tmp_path, twelve_layers, llama_shard_plan(list(twelve_layers), 3), 3)
        arg = folder if how == "folder" else folder / "model.safetensors.index.json"
    elif how == "file":
        arg = write_single(tmp_path, twelve_layers, file_name="weights.safetensors") / "weights.safetensors"
    else:
        half = len(twelve_layers) // 2
        items = list(twelve_layers.items())
        write_single(tmp_path, dict(items[:half]), file_name="part-b.safetensors")
        write_single(tmp_path, dict(items[half:]), file_name="part-a.safetensors")
        arg = [tmp_path / "part-b.safetensors", tmp_path / "part-a.safetensors"]
    assert_snrs_match(spectrum_rs.scan(arg), expected)


def test_folder_of_unindexed_safetensors_files(tmp_path, twelve_layers):
    items = list(twelve_layers.items())
    write_single(tmp_path, dict(items[::2]), file_name="x-1.safetensors")
    write_single(tmp_path, dict(items[1::2]), file_name="x-2.safetensors")
    assert_snrs_match(spectrum_rs.scan(tmp_path), {n: s for n, _, s in oracle_for(twelve_layers)})


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_layer_order_is_model_order(request, layout, twelve_layers):
    folder = request.getfixturevalue(f"twelve_{layout}")
    res = spectrum_rs.scan(folder)
    names = _names(res)
    assert names.index("model.layers.2.self_attn.q_proj") < names.index("model.layers.10.self_attn.q_proj")
    idx = [int(m.group(1)) for m in (re.match(r"model\.layers\.(\d+)\.", n) for n in names) if m]
    assert idx == sorted(idx) and idx[0] == 0 and idx[-1] == 11
    for kind in ("self_attn.q_proj", "mlp.down_proj"):
        inside = [n for n in names if spec_type(n) == kind]
        assert inside == [f"model.layers.{i}.{kind}" for i in range(12)]
        # The results JSON keeps model order inside a type too.
        assert [n for n in res.to_dict() if res.to_dict()[n]["type"] == kind] == inside
    cat_names = [lay.name for lay in _core.Catalog([str(folder)]).layers()]
    assert [n for n in cat_names if n in names] == names


def test_natural_order_helper():
    names = ["model.layers.10.a", "model.layers.2.a", "lm_head", "model.layers.1.b", "model.layers.1.a"]
    order = _core.natural_order(names)
    assert [names[i] for i in order] == [
        "lm_head",
        "model.layers.1.a",
        "model.layers.1.b",
        "model.layers.2.a",
        "model.layers.10.a",
    ]


# --------------------------------------------------------------------------- selection


def _expected_names(tensors, types=(), exclude=(), include_1d=False):
    def hit(p, name):
        kind = spec_type(name)
        return p in (kind, name) or fnmatch.fnmatchcase(kind, p) or fnmatch.fnmatchcase(name, p)

    out = []
    for tname, t in tensors.items():
        name = layer_name(tname)
        if t.dim() < 2 and not include_1d:
            continue
        if types and not any(hit(p, name) for p in types):
            continue
        if any(hit(p, name) for p in exclude):
            continue
        out.append(name)
    return sorted(out)


SELECTIONS = [
    dict(types=["self_attn.q_proj"]),
    dict(types=["self_attn.q_proj", "mlp.down_proj"]),
    dict(types=["self_attn.*"]),
    dict(types=["*_proj"]),
    dict(types=["model.layers.1.*"]),
    dict(types=["model.layers.1?.*"]),
    dict(types=["model.layers.3.mlp.up_proj"]),
    dict(types=["lm_head", "model.embed_tokens"]),
    dict(exclude=["mlp.*"]),
    dict(exclude=["self_attn.k_proj", "model.embed_tokens", "lm_head"]),
    dict(types=["self_attn.*"], exclude=["*.v_proj", "model.layers.0.*"]),
    dict(types=["*norm*"], include_1d=True),
    dict(exclude=["*_proj"], include_1d=True),
]


@pytest.mark.parametrize("sel", SELECTIONS, ids=lambda s: repr(s))
def test_types_and_exclude(twelve_single, twelve_layers, sel):
    expected = _expected_names(
        twelve_layers, sel.get("types", ()), sel.get("exclude", ()), sel.get("include_1d", False)
    )
    assert expected, "the case selects something"
    res = spectrum_rs.scan(twelve_single, **sel)
    assert sorted(_names(res)) == expected
    full = {n: s for n, _, s in oracle_for(twelve_layers, include_1d=True)}
    assert_snrs_match(res, {n: full[n] for n in expected})
    cat = _core.Catalog([str(twelve_single)])
    chosen = cat.select(sel.get("types", []), sel.get("exclude", []), sel.get("include_1d", False))
    assert sorted(cat.layers()[i].name for i in chosen) == expected


def test_types_as_comma_separated_string(twelve_single, twelve_layers):
    res = spectrum_rs.scan(twelve_single, types="self_attn.q_proj, mlp.down_proj")
    assert sorted(_names(res)) == _expected_names(twelve_layers, ["self_attn.q_proj", "mlp.down_proj"])


def test_selection_inside_filtered_scan_matches_oracle(twelve_single, twelve_layers):
    records = [r for r in oracle_for(twelve_layers) if r[1].startswith("self_attn.")]
    res = spectrum_rs.scan(twelve_single, types=["self_attn.*"])
    for pct in (25, 50):
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


def test_type_matching_no_layer_is_an_error(twelve_single):
    with pytest.raises(SpectrumError, match="no layer matches"):
        spectrum_rs.scan(twelve_single, types=["q_proj"])  # a type is matched whole
    with pytest.raises(SpectrumError, match="no layer matches"):
        spectrum_rs.scan(twelve_single, types=["input_layernorm"])  # 1-D needs include_1d


def test_layer_type_rule():
    assert _core.layer_type("model.layers.3.self_attn.q_proj") == "self_attn.q_proj"
    assert _core.layer_type("model.layers.0.mlp.experts.7.down_proj") == "mlp.experts.7.down_proj"
    assert _core.layer_type("lm_head") == "lm_head"
    assert _core.layer_type("model.embed_tokens") == "model.embed_tokens"
    for name in ("encoder.layer.11.attention.output.dense", "transformer.h.0.attn.c_attn", "a.b.c"):
        assert _core.layer_type(name) == spec_type(name)


# --------------------------------------------------------------------------- experts


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    rng = np.random.default_rng(21)
    gate_up = np.stack([noisy_low_rank(rng, 48, 64, 1.0 + e, rank=2) for e in range(4)])
    down = np.stack([noisy_low_rank(rng, 64, 24, 3.0 - 0.5 * e, rank=1) for e in range(4)])
    t = {
        "model.layers.0.mlp.router.weight": torch.from_numpy(rng.standard_normal((4, 64))).to(torch.bfloat16),
        # Fused layouts store experts without the .weight suffix, or with it.
        "model.layers.0.mlp.experts.gate_up_proj": torch.from_numpy(gate_up).to(torch.bfloat16),
        "model.layers.0.mlp.experts.down_proj.weight": torch.from_numpy(down).float(),
        "model.layers.1.mlp.experts.gate_up_proj": torch.from_numpy(gate_up[::-1].copy()).to(torch.bfloat16),
    }
    return write_single(tmp_path_factory.mktemp("moe"), t), t


def test_stacked_experts_become_one_layer_each(moe_model):
    folder, t = moe_model
    expected = {"model.layers.0.mlp.router": oracle_snr(t["model.layers.0.mlp.router.weight"])}
    for tname, w in t.items():
        if w.dim() == 3:
            for e in range(w.shape[0]):
                expected[f"{layer_name(tname)}.{e}"] = oracle_snr(w[e])
    res = spectrum_rs.scan(folder)
    assert_snrs_match(res, expected)
    for layer in res:
        assert layer.type == spec_type(layer.name)
    assert res["model.layers.0.mlp.experts.gate_up_proj.3"].shape == (48, 64)
    assert res["model.layers.0.mlp.experts.down_proj.2"].shape == (64, 24)
    cat = _core.Catalog([str(folder)])
    experts = {lay.name: lay.expert for lay in cat.layers()}
    assert experts["model.layers.0.mlp.experts.down_proj.3"] == 3
    assert experts["model.layers.0.mlp.router"] is None
    # Experts of one fused tensor are ranked against the same expert of other layers.
    records = [(n, spec_type(n), s) for n, s in expected.items()]  # model order
    for pct in (50, 100):
        assert res.selected_by_type(pct) == oracle_selection(records, pct)


def test_expert_yaml_lines_name_the_fused_parameter_once(moe_model):
    folder, _ = moe_model
    res = spectrum_rs.scan(folder)
    yaml_text = res.save(folder.parent / "out", 100)["yaml"].read_text()
    lines = yaml_text.splitlines()
    # Every expert is selected at 100 %, but a trainer can only unfreeze the fused tensor.
    assert lines.count("- model.layers.0.mlp.experts.gate_up_proj") == 1
    assert lines.count("- model.layers.0.mlp.experts.down_proj") == 1
    assert not any(line.startswith("- model.layers.0.mlp.experts.gate_up_proj.") for line in lines)
    strict = res.save(folder.parent / "strict", 100, strict=True)["yaml"].read_text().splitlines()
    assert "- ^model\\.layers\\.0\\.mlp\\.experts\\.gate_up_proj$" in strict
    assert "- ^model\\.layers\\.0\\.mlp\\.experts\\.down_proj\\." in strict


def test_three_dimensional_convolutions_are_one_matrix(tmp_path):
    """Mamba's conv1d [d, 1, k] is a (d, k) matrix, like a 4-D conv is (out, in*kh*kw):
    not d one-row 'experts'."""
    g = torch.Generator().manual_seed(8)
    conv = torch.randn(12, 1, 4, generator=g)
    stem = torch.randn(8, 3, 2, 2, generator=g)
    write_single(tmp_path, {"backbone.layers.0.mixer.conv1d.weight": conv, "encoder.conv.weight": stem})
    res = spectrum_rs.scan(tmp_path)
    assert [(r.name, r.shape) for r in res] == [("backbone.layers.0.mixer.conv1d", (12, 4)), ("encoder.conv", (8, 12))]
    assert_snrs_match(
        res,
        {
            "backbone.layers.0.mixer.conv1d": oracle_snr(conv.reshape(12, 4)),
            "encoder.conv": oracle_snr(stem.reshape(8, 12)),
        },
    )


def test_empty_experts_are_not_split(tmp_path):
    """A tiny header may declare millions of empty experts: one empty layer, no blow-up."""
    f = raw_safetensors(
        tmp_path / "model.safetensors",
        {
            "m.experts.w.weight": {"dtype": "BF16", "shape": [10**9, 0, 4], "data_offsets": [0, 0]},
            "m.q.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        },
        data=struct.pack("<4f", 1, 2, 3, 4),
    )
    names = [layer.name for layer in _core.Catalog([str(f)]).layers()]
    assert names == ["m.experts.w", "m.q"]


def test_encoder_comes_before_decoder_in_model_order(tmp_path):
    g = torch.Generator().manual_seed(9)
    t = {
        f"{part}.block.{i}.layer.0.SelfAttention.q.weight": torch.randn(8, 8, generator=g)
        for part in ("decoder", "encoder")
        for i in (0, 1)
    }
    write_single(tmp_path, t)
    assert [r.name for r in spectrum_rs.scan(tmp_path)] == [
        "encoder.block.0.layer.0.SelfAttention.q",
        "encoder.block.1.layer.0.SelfAttention.q",
        "decoder.block.0.layer.0.SelfAttention.q",
        "decoder.block.1.layer.0.SelfAttention.q",
    ]


def test_index_may_name_shards_in_a_subfolder(tmp_path):
    g = torch.Generator().manual_seed(10)
    write_file(tmp_path / "weights" / "part1.safetensors", {"a.0.w.weight": torch.randn(6, 4, generator=g)})
    write_file(tmp_path / "weights" / "part2.safetensors", {"a.1.w.weight": torch.randn(6, 4, generator=g)})
    write_index(tmp_path, {"a.0.w.weight": "weights/part1.safetensors", "a.1.w.weight": "weights/part2.safetensors"})
    assert [r.name for r in spectrum_rs.scan(tmp_path)] == ["a.0.w", "a.1.w"]


# --------------------------------------------------------------------------- FP8


def _fp8_with_block_scales(w: np.ndarray, block: int = 128):
    """DeepSeek-style FP8: e4m3 weight and a float32 ``weight_scale_inv`` per
    ``block x block`` tile (ragged at the edges); dequantised W = fp8 * scale."""
    rows, cols = w.shape
    sr, sc = math.ceil(rows / block), math.ceil(cols / block)
    scale = np.zeros((sr, sc), np.float32)
    q = np.zeros_like(w)
    for i in range(sr):
        for j in range(sc):
            tile = w[i * block : (i + 1) * block, j * block : (j + 1) * block]
            s = np.float32(np.abs(tile).max() / 448.0)
            scale[i, j] = s
            q[i * block : (i + 1) * block, j * block : (j + 1) * block] = tile / s
    return torch.from_numpy(q).to(torch.float8_e4m3fn), torch.from_numpy(scale)


def _dequant(fp8: torch.Tensor, scale: torch.Tensor, block: int = 128) -> np.ndarray:
    w = as_f64(fp8)
    s = as_f64(scale)
    rows, cols = w.shape
    ri = np.minimum(np.arange(rows) // block, s.shape[0] - 1)
    ci = np.minimum(np.arange(cols) // block, s.shape[1] - 1)
    return w * s[ri][:, ci]


def _fp8_model(tmp_path, shapes):
    rng = np.random.default_rng(31)
    t, expected = {}, {}
    for i, (r, c) in enumerate(shapes):
        # Tiles of very different magnitude, so a wrong tile/scale pairing shows.
        w = noisy_low_rank(rng, r, c, 2.0 + i, rank=2)
        w = w * np.where(np.arange(r)[:, None] < r // 2, 1.0, 8.0)
        q, s = _fp8_with_block_scales(w)
        name = f"model.layers.{i}.self_attn.o_proj"
        t[f"{name}.weight"] = q
        t[f"{name}.weight_scale_inv"] = s
        expected[name] = oracle_snr(_dequant(q, s))
        assert not same_number(oracle_snr(q), expected[name], 1e-3), "scales matter"
    bf = torch.from_numpy(noisy_low_rank(rng, 64, 128, 3.0)).to(torch.bfloat16)
    t["model.layers.0.mlp.up_proj.weight"] = bf
    expected["model.layers.0.mlp.up_proj"] = oracle_snr(bf)
    return write_single(tmp_path, t), expected


def test_fp8_block_scaled_weights_whole_blocks(tmp_path):
    folder, expected = _fp8_model(tmp_path, [(256, 384), (128, 256)])
    res = spectrum_rs.scan(folder)
    assert_snrs_match(res, expected)
    assert res["model.layers.0.self_attn.o_proj"].dtype == "F8_E4M3"
    scales = {lay.name: lay.scale for lay in _core.Catalog([str(folder)]).layers()}
    assert scales["model.layers.0.self_attn.o_proj"] == "model.layers.0.self_attn.o_proj.weight_scale_inv"
    assert "model.layers.0.self_attn.o_proj.weight_scale_inv" not in scales


def test_fp8_block_scaled_weights_ragged_edges(tmp_path):
    # DeepSeek-V3 shapes are not all multiples of 128 (kv_a_proj_with_mqa is 576 x 7168,
    # scales 5 x 56): the last tile is partial, every other tile is 128 wide.
    folder, expected = _fp8_model(tmp_path, [(200, 300), (320, 192)])
    assert_snrs_match(spectrum_rs.scan(folder), expected)


def test_fp8_scale_in_another_shard(tmp_path):
    folder, expected = _fp8_model(tmp_path / "single", [(256, 384), (200, 300)])
    from safetensors.torch import load_file

    t = load_file(str(folder / "model.safetensors"))
    plan = {k: (1 if k.endswith("_scale_inv") else 0) for k in t}
    sharded = write_sharded(tmp_path / "sharded", t, plan, 2)
    assert_snrs_match(spectrum_rs.scan(sharded), expected)
    assert_snrs_match(spectrum_rs.scan(sharded, window_bytes=1), expected)


def test_fp8_per_channel_scale_and_e5m2(tmp_path):
    rng = np.random.default_rng(41)
    w = noisy_low_rank(rng, 96, 64, 2.5)
    row_scale = (np.abs(w).max(axis=1, keepdims=True) / 448.0).astype(np.float32)
    q = torch.from_numpy(w / row_scale).to(torch.float8_e4m3fn)
    e5 = torch.from_numpy(noisy_low_rank(rng, 64, 96, 1.5) * 10).to(torch.float8_e5m2)
    t = {
        "a.weight": q,
        "a.weight_scale": torch.from_numpy(row_scale),
        "b.weight": e5,
    }
    write_single(tmp_path, t)
    expected = {"a": oracle_snr(as_f64(q) * row_scale.astype(np.float64)), "b": oracle_snr(e5)}
    assert_snrs_match(spectrum_rs.scan(tmp_path), expected)


def test_fp8_block_size_from_config(tmp_path):
    """A checkpoint quantised in 96-wide tiles says so in ``weight_block_size``; without
    that the 3 x 4 scales of a 200 x 300 weight would be read as other tiles."""
    rng = np.random.default_rng(43)
    w = noisy_low_rank(rng, 200, 300, 2.0, rank=2) * np.where(np.arange(200)[:, None] < 150, 1.0, 8.0)
    q, scale = _fp8_with_block_scales(w, block=96)
    assert tuple(scale.shape) == (3, 4)
    write_single(
        tmp_path,
        {"model.layers.0.mlp.down_proj.weight": q, "model.layers.0.mlp.down_proj.weight_scale_inv": scale},
        config={"quantization_config": {"quant_method": "fp8", "weight_block_size": [96, 96]}},
    )
    expected = {"model.layers.0.mlp.down_proj": oracle_snr(_dequant(q, scale, block=96))}
    assert_snrs_match(spectrum_rs.scan(tmp_path), expected)


def test_fp8_stacked_experts_take_their_slice_of_stacked_scales(tmp_path):
    rng = np.random.default_rng(44)
    qs, ss, expected = [], [], {}
    for e in range(3):
        w = noisy_low_rank(rng, 256, 128, 2.0 + 3 * e, rank=2) * (1 + 10 * e)
        q, s = _fp8_with_block_scales(w)
        qs.append(q.view(torch.uint8))
        ss.append(s)
        expected[f"model.layers.0.mlp.experts.down_proj.{e}"] = oracle_snr(_dequant(q, s))
    write_single(
        tmp_path,
        {
            "model.layers.0.mlp.experts.down_proj.weight": torch.stack(qs).view(torch.float8_e4m3fn),
            "model.layers.0.mlp.experts.down_proj.weight_scale_inv": torch.stack(ss),
        },
    )
    assert_snrs_match(spectrum_rs.scan(tmp_path), expected)


def test_fp8_stacked_scales_for_fewer_experts_are_an_error(tmp_path):
    q = torch.zeros(4, 16, 16).to(torch.float8_e4m3fn)
    write_single(tmp_path, {"m.experts.w.weight": q, "m.experts.w.weight_scale_inv": torch.ones(1, 1, 1)})
    with pytest.raises(spectrum_rs.SpectrumError, match="does not stack the 4 experts"):
        spectrum_rs.scan(tmp_path)


def test_fp8_scale_that_does_not_tile_the_weight_is_an_error(tmp_path):
    q = torch.zeros(10, 4).to(torch.float8_e4m3fn)
    f = write_single(tmp_path, {"a.weight": q, "a.weight_scale_inv": torch.ones(6, 1)}) / "model.safetensors"
    with pytest.raises(spectrum_rs.SpectrumError, match="does not tile") as e:
        spectrum_rs.scan(tmp_path)
    assert str(f) in str(e.value)


# --------------------------------------------------------------------------- window


def test_tiny_window_scans_everything(tmp_path, moe_model, twelve_single, twelve_layers):
    folder, expected = _fp8_model(tmp_path, [(256, 384)])
    for path in (folder, twelve_single, moe_model[0]):
        big = spectrum_rs.scan(path, window_bytes=1 << 30)
        tiny = spectrum_rs.scan(path, window_bytes=1)
        assert _names(tiny) == _names(big)
        assert [layer.snr for layer in tiny] == [layer.snr for layer in big]
    assert_snrs_match(spectrum_rs.scan(twelve_single, window_bytes=1), {n: s for n, _, s in oracle_for(twelve_layers)})
    assert_snrs_match(spectrum_rs.scan(folder, window_bytes=1), expected)


# --------------------------------------------------------------------------- stream


def _stored_as_f32(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float32).numpy()


@pytest.mark.parametrize("window", [1, 4096, 1 << 30])
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_stream_yields_each_requested_layer_once_in_file_order(request, layout, window, twelve_layers):
    folder = request.getfixturevalue(f"twelve_{layout}")
    cat = _core.Catalog([str(folder)])
    layers = cat.layers()
    wanted = cat.select([], [], True)
    assert len(wanted) == len(twelve_layers)
    got = []
    for index, array, dtype in cat.stream(wanted, window_bytes=window):
        info = layers[index]
        assert dtype == "F32"
        assert array.dtype == np.float32
        assert array.shape == (info.rows, info.cols)
        np.testing.assert_array_equal(array.reshape(-1), _stored_as_f32(twelve_layers[info.tensor]).reshape(-1))
        got.append(index)
    assert sorted(got) == sorted(wanted)
    # File order: by file (as the catalog lists them), then by byte offset.
    files = [Path(f) for f, _, _ in cat.files()]
    order = sorted(file_order(files), key=lambda x: (files.index(x[0]), x[1]))
    tensor_rank = {name: i for i, (_, _, name) in enumerate(order)}
    assert [tensor_rank[layers[i].tensor] for i in got] == sorted(tensor_rank[layers[i].tensor] for i in got)


def test_stream_subset_and_raw_bytes(twelve_single, twelve_layers):
    cat = _core.Catalog([str(twelve_single)])
    layers = cat.layers()
    subset = [i for i, lay in enumerate(layers) if lay.type in ("self_attn.k_proj", "mlp.up_proj")][::3]
    assert len(subset) >= 3
    seen = []
    for index, array, dtype in cat.stream(subset, window_bytes=1, raw=True):
        info = layers[index]
        assert dtype == "BF16"
        assert array.dtype == np.uint8 and array.ndim == 1
        stored = twelve_layers[info.tensor]
        assert array.tobytes() == stored.view(torch.uint8).numpy().tobytes()
        assert info.nbytes == len(array) == info.rows * info.cols * 2
        seen.append(index)
    assert sorted(seen) == sorted(subset)


def test_f64_always_streams_as_its_stored_bytes(tmp_path):
    # float32 would turn values beyond its range into inf or 0 before any worker saw them.
    w = torch.randn(8, 12, dtype=torch.float64) * 1e200
    write_single(tmp_path, {"a.weight": w})
    cat = _core.Catalog([str(tmp_path)])
    for raw in (True, False):
        [(index, array, dtype)] = list(cat.stream([0], raw=raw))
        assert dtype == "F64" and array.dtype == np.uint8
        np.testing.assert_array_equal(array.view("<f8").reshape(8, 12), w.numpy())


def test_stream_close_and_drop_midway_do_not_hang(twelve_single):
    cat = _core.Catalog([str(twelve_single)])
    wanted = cat.select([], [], False)
    done = threading.Event()

    def run():
        s = cat.stream(wanted, window_bytes=1)
        next(s)
        next(s)
        s.close()
        with pytest.raises(StopIteration):
            next(s)
        s2 = cat.stream(wanted, window_bytes=1)
        next(s2)
        del s2
        done.set()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(30)
    assert done.is_set(), "closing or dropping a stream midway hung"


def test_stream_rejects_bad_layer_index(twelve_single):
    cat = _core.Catalog([str(twelve_single)])
    with pytest.raises(SpectrumError, match="out of range"):
        cat.stream([10_000])


def test_catalog_layer_metadata(twelve_sharded, twelve_layers):
    cat = _core.Catalog([str(twelve_sharded)])
    names = cat.tensor_names()
    assert sorted(names) == sorted(twelve_layers)
    by_name = {lay.name: lay for lay in cat.layers()}
    k = by_name["model.layers.10.self_attn.k_proj"]
    assert (k.rows, k.cols) == (8, 32)
    assert k.type == "self_attn.k_proj"
    assert k.dtype == "BF16"
    assert k.tensor == "model.layers.10.self_attn.k_proj.weight"
    assert k.tensor_shape == (8, 32)
    assert k.nbytes == 8 * 32 * 2
    assert k.expert is None and k.scale is None
    assert Path(k.file).parent == twelve_sharded
    assert Path(k.file).name.startswith("model-0000")
    norm = by_name["model.norm"]
    assert (norm.rows, norm.cols) == (1, 32)
    files = cat.files()
    assert len(files) == 3
    assert all(size == Path(f).stat().st_size for f, size, _ in files)
    assert len({h for _, _, h in files}) == 3
