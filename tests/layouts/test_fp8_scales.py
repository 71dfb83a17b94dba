"""FP8 weights with per-tensor and per-channel scales (docs/layouts.md "FP8"): the
compressed-tensors and FBGEMM layouts, ``weight`` in F8_E4M3 or F8_E5M2 beside a
``weight_scale`` that is a scalar (``[]``), ``[1]``, ``[out]`` or ``[out, 1]`` in F32,
BF16 or F16, are dequantized (``W = q * scale``) before the SVD; stacked FP8 experts take
their slice of ``[E, out, 1]`` scales, and a per-expert scale of any other shape is refused
rather than read as row blocks. Each test quantizes a float32 matrix itself and holds the
SNR to the oracle on the matrix it dequantizes by hand. (Block scales, ``weight_scale_inv``
128 x 128, are tested in ``tests/core/test_catalog.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import write_single
from helpers.oracle import as_f64, assert_snrs_match, noisy_low_rank, oracle_snr, same_number
from spectrum_rs.errors import UnsupportedLayoutError

FP8 = {"F8_E4M3": (torch.float8_e4m3fn, 448.0), "F8_E5M2": (torch.float8_e5m2, 57344.0)}
SCALE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def quantize(w: np.ndarray, fp8: str, scale_shape, scale_dtype: str):
    """(fp8 weight, scale tensor of ``scale_shape``, the float64 matrix they stand for):
    per-tensor when the scale has one value, else one scale per output row."""
    dtype, fmax = FP8[fp8]
    per_row = int(np.prod(scale_shape)) != 1
    amax = np.abs(w).max(axis=1, keepdims=True) if per_row else np.abs(w).max()
    scale = torch.from_numpy(np.asarray(amax / fmax, np.float32)).to(SCALE_DTYPES[scale_dtype]).reshape(scale_shape)
    s = as_f64(scale).reshape(-1, 1) if per_row else float(as_f64(scale).reshape(()))
    q = torch.from_numpy(w / s).to(dtype)
    return q, scale, as_f64(q) * s


CASES = [
    # (fp8 dtype, scale shape, scale dtype): compressed-tensors "tensor" and "channel"
    # strategies, FBGEMM's [out, 1], and E5M2.
    ("F8_E4M3", (), "F32"),
    ("F8_E4M3", (1,), "BF16"),
    ("F8_E4M3", ("out",), "F32"),
    ("F8_E4M3", ("out", 1), "BF16"),
    ("F8_E4M3", ("out", 1), "F16"),
    ("F8_E5M2", ("out", 1), "F32"),
    ("F8_E5M2", (), "F32"),
]


@pytest.mark.parametrize("fp8, shape, scale_dtype", CASES)
def test_fp8_weight_scale_per_tensor_and_per_channel(tmp_path, fp8, shape, scale_dtype):
    rng = np.random.default_rng(len(shape) * 10 + len(fp8))
    t, expected = {}, {}
    for i, (rows, cols) in enumerate([(96, 64), (48, 160)]):
        # Rows of very different magnitude, so that a per-row scale read wrongly shows.
        w = noisy_low_rank(rng, rows, cols, 2.0 + i, rank=2) * np.exp2(rng.integers(-6, 7, size=(rows, 1)))
        scale_shape = tuple(rows if d == "out" else d for d in shape)
        q, scale, dequantized = quantize(w, fp8, scale_shape, scale_dtype)
        name = f"model.layers.{i}.self_attn.o_proj"
        t[f"{name}.weight"] = q
        t[f"{name}.weight_scale"] = scale
        t[f"{name}.input_scale"] = torch.tensor(1.0)
        expected[name] = oracle_snr(dequantized)
        if scale.numel() > 1:
            assert not same_number(oracle_snr(q), expected[name], 1e-3), "the scales matter"
    config = {
        "model_type": "llama",
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
        },
    }
    res = spectrum_rs.scan(write_single(tmp_path, t, config=config))
    assert_snrs_match(res, expected)
    assert res["model.layers.0.self_attn.o_proj"].dtype == fp8


def test_fp8_stacked_experts_with_per_channel_scales(tmp_path):
    rng = np.random.default_rng(5)
    qs, ss, expected = [], [], {}
    for e in range(3):
        w = noisy_low_rank(rng, 32, 48, 1.5 + e, rank=2) * np.exp2(rng.integers(-5, 6, size=(32, 1)))
        q, scale, dequantized = quantize(w, "F8_E4M3", (32, 1), "F32")
        qs.append(q.view(torch.uint8))
        ss.append(scale)
        expected[f"model.layers.0.mlp.experts.down_proj.{e}"] = oracle_snr(dequantized)
    write_single(
        tmp_path,
        {
            "model.layers.0.mlp.experts.down_proj": torch.stack(qs).view(torch.float8_e4m3fn),
            "model.layers.0.mlp.experts.down_proj_scale": torch.stack(ss),
        },
    )
    assert_snrs_match(spectrum_rs.scan(tmp_path), expected)


def test_fp8_stacked_experts_with_one_scale_each_are_refused(tmp_path):
    """``[E]`` scales beside ``[E, out, in]`` experts would read as row blocks: refused."""
    q = torch.zeros(2, 256, 16).to(torch.float8_e4m3fn)
    write_single(tmp_path, {"m.experts.w.weight": q, "m.experts.w.weight_scale": torch.ones(2)})
    with pytest.raises(UnsupportedLayoutError, match=r"does not stack the 2 experts"):
        spectrum_rs.scan(tmp_path)
