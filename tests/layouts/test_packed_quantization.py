"""Integer-packed checkpoints are refused, never skipped and never scanned as integers
(docs/layouts.md "Packed integer formats"): GPTQ, AWQ, bitsandbytes LLM.int8() and 4-bit
(NF4), compressed-tensors pack-quantized, and plain int8 weights. Each model is written in
its format's exact tensor names, dtypes and shapes (AutoGPTQ, AutoAWQ, bitsandbytes and
compressed-tensors serializations) with its ``config.json`` ``quantization_config``, beside
an unquantized embedding and head: the scan must fail with an ``UnsupportedLayoutError``
naming the file, the tensor and the format and suggesting the unquantized base model,
rather than report the embedding alone as if it were the model."""

from __future__ import annotations

import re
from typing import Callable, Dict

import pytest
import torch

import spectrum_rs
from helpers.models import write_single
from spectrum_rs import _core
from spectrum_rs.errors import UnsupportedLayoutError

HIDDEN, INTER, GROUP = 64, 128, 32
PROJ = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}


def _ints(shape, dtype, high=2**31 - 1):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randint(-high - 1 if dtype != torch.uint8 else 0, high, shape, generator=g, dtype=torch.int64).to(
        dtype
    )


def gptq(m: str, out: int, inp: int) -> Dict[str, torch.Tensor]:
    """AutoGPTQ 4-bit: qweight int32 [in/8, out], qzeros [in/g, out/8], scales f16, g_idx."""
    return {
        f"{m}.qweight": _ints((inp // 8, out), torch.int32),
        f"{m}.qzeros": _ints((inp // GROUP, out // 8), torch.int32),
        f"{m}.scales": torch.rand(inp // GROUP, out).half(),
        f"{m}.g_idx": torch.arange(inp, dtype=torch.int32) // GROUP,
    }


def awq(m: str, out: int, inp: int) -> Dict[str, torch.Tensor]:
    """AutoAWQ GEMM 4-bit: qweight int32 [in, out/8], qzeros [in/g, out/8], scales f16."""
    return {
        f"{m}.qweight": _ints((inp, out // 8), torch.int32),
        f"{m}.qzeros": _ints((inp // GROUP, out // 8), torch.int32),
        f"{m}.scales": torch.rand(inp // GROUP, out).half(),
    }


def bnb_int8(m: str, out: int, inp: int) -> Dict[str, torch.Tensor]:
    """bitsandbytes LLM.int8(): weight int8 [out, in], SCB f32 [out], weight_format."""
    return {
        f"{m}.weight": _ints((out, inp), torch.int8, 127),
        f"{m}.SCB": torch.rand(out) * 100,
        f"{m}.weight_format": torch.tensor(0, dtype=torch.uint8),
    }


def bnb_nf4(m: str, out: int, inp: int) -> Dict[str, torch.Tensor]:
    """bitsandbytes 4-bit: weight uint8 [out*in/2, 1] and its quant state."""
    n = out * inp
    return {
        f"{m}.weight": _ints((n // 2, 1), torch.uint8, 255),
        f"{m}.weight.absmax": torch.rand(n // 64),
        f"{m}.weight.quant_map": torch.linspace(-1, 1, 16),
        f"{m}.weight.quant_state.bitsandbytes__nf4": _ints((64,), torch.uint8, 255),
    }


def compressed_packed(m: str, out: int, inp: int) -> Dict[str, torch.Tensor]:
    """compressed-tensors pack-quantized (int4 in int32): weight_packed, scale, shape."""
    return {
        f"{m}.weight_packed": _ints((out, inp // 8), torch.int32),
        f"{m}.weight_scale": torch.rand(out, inp // GROUP).bfloat16(),
        f"{m}.weight_shape": torch.tensor([out, inp], dtype=torch.int64),
    }


def int8_w8a8(m: str, out: int, inp: int) -> Dict[str, torch.Tensor]:
    """compressed-tensors int-quantized (W8A8): weight int8 [out, in], weight_scale [out, 1]."""
    return {f"{m}.weight": _ints((out, inp), torch.int8, 127), f"{m}.weight_scale": torch.rand(out, 1)}


FORMATS = {
    # format writer, quantization_config, the format as the message names it
    "gptq": (gptq, {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False}, "GPTQ"),
    # Without g_idx, the names alone cannot tell AWQ from GPTQ: the config's quant_method can.
    "awq": (awq, {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm"}, "AWQ"),
    "bnb_int8": (bnb_int8, {"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes LLM.int8()"),
    "bnb_nf4": (
        bnb_nf4,
        {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
        "bitsandbytes 4-bit (NF4)",
    ),
    "compressed_packed": (
        compressed_packed,
        {"quant_method": "compressed-tensors", "format": "pack-quantized"},
        "compressed-tensors packed",
    ),
    "int8": (int8_w8a8, {"quant_method": "compressed-tensors", "format": "int-quantized"}, "int8 (compressed-tensors)"),
}


def _model(tmp_path, writer: Callable[..., Dict[str, torch.Tensor]], qconfig: dict):
    t: Dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(96, HIDDEN).half()}
    for i in range(2):
        for proj, (out, inp) in PROJ.items():
            t.update(writer(f"model.layers.{i}.{proj}", out, inp))
        t[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(HIDDEN).half()
    t["model.norm.weight"] = torch.ones(HIDDEN).half()
    t["lm_head.weight"] = torch.randn(96, HIDDEN).half()
    config = {"model_type": "llama", "hidden_size": HIDDEN, "quantization_config": qconfig}
    return write_single(tmp_path, t, config=config)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_packed_formats_are_refused_naming_the_format(tmp_path, fmt):
    writer, qconfig, name = FORMATS[fmt]
    folder = _model(tmp_path, writer, qconfig)
    f = folder / "model.safetensors"
    with pytest.raises(UnsupportedLayoutError) as err:
        spectrum_rs.scan(folder)
    msg = str(err.value)
    assert err.value.path == str(f)
    assert msg.startswith(f'{f}: tensor "model.layers.0.')
    # The format from the tensor names; refined by the config's quant_method where scan()
    # passes it to the catalog (AWQ rather than "AWQ or GPTQ", "int8 (compressed-tensors)").
    plain = {"AWQ": "AWQ or GPTQ", "int8 (compressed-tensors)": "int8"}.get(name, name)
    assert f" holds {name} quantized weights (" in msg or f" holds {plain} quantized weights (" in msg, msg
    assert "scan the unquantized base model this checkpoint was made from instead" in msg
    # Every quantized module is listed as a layer (nothing silently left out) ...
    names = {x.name for x in _core.Catalog([str(folder)]).layers()}
    assert {f"model.layers.{i}.{p}" for i in range(2) for p in PROJ} <= names
    # ... and leaving the quantized types out explicitly scans the rest.
    res = spectrum_rs.scan(folder, exclude=list(PROJ))
    assert sorted(x.name for x in res) == ["lm_head", "model.embed_tokens"]


def test_gptq_refusal_names_the_first_module_in_model_order(tmp_path):
    writer, qconfig, _ = FORMATS["gptq"]
    folder = _model(tmp_path, writer, qconfig)
    with pytest.raises(UnsupportedLayoutError) as err:
        spectrum_rs.scan(folder, types=["mlp.down_proj"])
    assert 'tensor "model.layers.0.mlp.down_proj.qweight" (I32) holds GPTQ quantized weights' in str(err.value)
    assert 'exclude its type "mlp.down_proj"' in str(err.value)


@pytest.mark.parametrize("fmt", ["awq", "int8"])
def test_the_configs_quant_method_names_the_format(tmp_path, fmt):
    writer, qconfig, name = FORMATS[fmt]
    folder = _model(tmp_path, writer, qconfig)
    cat = _core.Catalog([str(folder)], quant_method=qconfig["quant_method"])
    with pytest.raises(UnsupportedLayoutError, match=rf" holds {re.escape(name)} quantized weights \("):
        cat.select()
