"""MXFP4 checkpoints (gpt-oss, docs/layouts.md "MXFP4"): ``*_blocks`` uint8
``[E, out, G, 16]`` (FP4 E2M1 values, two a byte, low nibble first) and ``*_scales`` uint8
``[E, out, G]`` (E8M0, ``2^(s - 127)`` per 32 values) are dequantized and scanned as one
layer per expert, named as the dequantized model names them
(``model.layers.0.mlp.experts.gate_up_proj.3``). The test quantizes float32 matrices
itself (numpy, the OCP MX rule), writes a tiny gpt-oss-shaped checkpoint with its exact
tensor names and ``config.json``, and holds every SNR to the oracle on the matrix it
dequantizes by hand; the streamed values are also compared with transformers' own
dequantization (``integrations/mxfp4.py``), which fixes the layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import write_single
from helpers.oracle import assert_snrs_match, noisy_low_rank, oracle_snr, same_number
from spectrum_rs import _core

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
E, HIDDEN, INTER = 4, 64, 64  # hidden = 2 blocks of 32


def quantize_mxfp4(w: np.ndarray):
    """``[..., out, in]`` float -> (blocks uint8 [..., out, in/32, 16], scales uint8
    [..., out, in/32]): per block of 32 values a power-of-two scale
    ``2^(floor(log2 max|w|) - 2)`` (OCP MX v1.0 §6.3: the largest E2M1 exponent is 2), each
    value the nearest E2M1 code (clamped to ±6)."""
    *lead, out, inp = w.shape
    b = w.reshape(*lead, out, inp // 32, 32)
    amax = np.abs(b).max(axis=-1)
    exp = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2, -127)
    scales = np.clip(exp + 127, 0, 254).astype(np.uint8)
    x = b / np.exp2(scales.astype(np.float64) - 127)[..., None]
    codes = np.abs(x[..., None] - E2M1).argmin(axis=-1).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, scales


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float64 matrices ``[..., out, 32 G]`` the blocks and scales stand for."""
    lo, hi = E2M1[blocks & 0x0F], E2M1[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """Two gpt-oss layers: BF16 attention, router and biases, MXFP4 experts."""
    rng = np.random.default_rng(71)
    t, dequantized = {}, {}
    for i in range(2):
        p = f"model.layers.{i}"
        for proj, (o, n) in {
            "q_proj": (64, HIDDEN),
            "k_proj": (16, HIDDEN),
            "v_proj": (16, HIDDEN),
            "o_proj": (HIDDEN, 64),
        }.items():
            t[f"{p}.self_attn.{proj}.weight"] = torch.from_numpy(noisy_low_rank(rng, o, n, 2.0 + i)).bfloat16()
            t[f"{p}.self_attn.{proj}.bias"] = torch.zeros(o).bfloat16()
        t[f"{p}.self_attn.sinks"] = torch.zeros(4).bfloat16()
        t[f"{p}.mlp.router.weight"] = torch.from_numpy(noisy_low_rank(rng, E, HIDDEN, 1.0)).bfloat16()
        t[f"{p}.mlp.router.bias"] = torch.zeros(E).bfloat16()
        for proj, (o, n) in {"gate_up_proj": (2 * INTER, HIDDEN), "down_proj": (HIDDEN, INTER)}.items():
            # Experts of very different strengths and scales, rows of different magnitude.
            w = np.stack([noisy_low_rank(rng, o, n, 1.0 + 1.5 * e, rank=2) * 4.0**e for e in range(E)])
            w = w * np.exp2(rng.integers(-3, 4, size=(1, o, 1)))
            blocks, scales = quantize_mxfp4(w)
            t[f"{p}.mlp.experts.{proj}_blocks"] = torch.from_numpy(blocks)
            t[f"{p}.mlp.experts.{proj}_scales"] = torch.from_numpy(scales)
            t[f"{p}.mlp.experts.{proj}_bias"] = torch.zeros(E, o).bfloat16()
            dequantized[f"{p}.mlp.experts.{proj}"] = dequantize_mxfp4(blocks, scales)
        t[f"{p}.input_layernorm.weight"] = torch.ones(HIDDEN).bfloat16()
    t["model.embed_tokens.weight"] = torch.from_numpy(noisy_low_rank(rng, 128, HIDDEN, 3.0)).bfloat16()
    t["lm_head.weight"] = torch.from_numpy(noisy_low_rank(rng, 128, HIDDEN, 2.0)).bfloat16()
    config = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_local_experts": E,
        "num_hidden_layers": 2,
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
        },
        "tie_word_embeddings": False,
    }
    return write_single(tmp_path_factory.mktemp("gpt_oss"), t, config=config), t, dequantized


def test_mxfp4_experts_are_dequantized_and_scanned_one_layer_each(gpt_oss):
    folder, t, dequantized = gpt_oss
    expected = {}
    for name, w in t.items():
        if name.endswith(".weight") and w.dim() == 2:
            expected[name[: -len(".weight")]] = oracle_snr(w)
    for stem, w in dequantized.items():
        for e in range(E):
            expected[f"{stem}.{e}"] = oracle_snr(w[e])
            # The scales matter: the SNR of the raw codes differs.
            blocks = t[f"{stem}_blocks"].numpy()[e]
            codes = dequantize_mxfp4(blocks, np.full(blocks.shape[:-1], 127, np.uint8))
            assert not same_number(oracle_snr(codes), expected[f"{stem}.{e}"], 1e-3)
    res = spectrum_rs.scan(folder)
    assert_snrs_match(res, expected)
    layer = res["model.layers.1.mlp.experts.gate_up_proj.3"]
    assert (layer.type, layer.shape, layer.dtype) == ("mlp.experts.gate_up_proj.3", (2 * INTER, HIDDEN), "F4")
    info = {x.name: x for x in _core.Catalog([str(folder)]).layers()}
    g = info["model.layers.1.mlp.experts.gate_up_proj.3"]
    assert (g.tensor, g.expert, g.scale) == (
        "model.layers.1.mlp.experts.gate_up_proj_blocks",
        3,
        "model.layers.1.mlp.experts.gate_up_proj_scales",
    )
    # One expert's share of the blocks and of the scales, not the whole tensors.
    assert g.nbytes == 2 * INTER * (HIDDEN // 32) * 17
    assert not any(n.endswith(("_scales", "_blocks", "_bias")) for n in info)


def test_streamed_values_equal_transformers_dequantization(gpt_oss):
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    folder, t, dequantized = gpt_oss
    cat = _core.Catalog([str(folder)])
    layers = cat.layers()
    wanted = [x.index for x in layers if x.tensor.endswith("_blocks")]
    got = {}
    for index, array, dtype in cat.stream(wanted):
        assert dtype == "F32"
        got[layers[index].name] = array
    for stem in dequantized:
        # transformers: [E, out, G, 16] -> [E, in, out] (each expert transposed).
        theirs = mxfp4.convert_moe_packed_tensors(t[f"{stem}_blocks"], t[f"{stem}_scales"], dtype=torch.float32)
        assert tuple(theirs.shape) == (E, dequantized[stem].shape[2], dequantized[stem].shape[1])
        for e in range(E):
            np.testing.assert_array_equal(got[f"{stem}.{e}"], theirs[e].numpy().T)
            np.testing.assert_array_equal(got[f"{stem}.{e}"], dequantized[stem][e].astype(np.float32))


def test_mxfp4_quantizer_of_the_test_is_close_to_its_input():
    """Fixture sanity: the test's quantizer keeps each value within half an E2M1 step."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 64))
    back = dequantize_mxfp4(*quantize_mxfp4(w))
    assert np.abs(back - w).max() <= np.abs(w).max() / 4 + 1e-12
    assert math.isclose(np.corrcoef(back.ravel(), w.ravel())[0, 1], 1.0, abs_tol=0.03)
