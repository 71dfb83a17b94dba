"""What a safetensors header can make a scan do (issue 11, docs/layouts.md "Caps"): every
product of header numbers is checked (a shape that wraps a 64-bit product is a
``ModelFileError`` naming the file and the tensor, not numpy's reshape error), a stacked
tensor of degenerate 1 x 1 "experts" is one matrix, and the layers one tensor
(``max_experts``, default 65,536) and the whole model (``max_layers``, default 4,000,000)
may become are capped, with the caps raised explicitly through ``_core.Catalog``."""

from __future__ import annotations

import numpy as np
import pytest

import spectrum_rs
from helpers.models import raw_safetensors
from spectrum_rs import _core
from spectrum_rs.errors import ModelFileError


@pytest.mark.parametrize("shape", [[0, 3**30, 3**30], [0, 2**31, 2**31]])
def test_shapes_whose_products_wrap_are_a_file_error_naming_file_and_tensor(tmp_path, shape):
    f = raw_safetensors(
        tmp_path / "model.safetensors",
        {
            "model.layers.0.mlp.up_proj.weight": {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]},
            "model.layers.0.mlp.down_proj.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        },
        data=np.arange(4, dtype="<f4").tobytes(),
    )
    for call in (lambda: _core.Catalog([str(tmp_path)]), lambda: spectrum_rs.scan(tmp_path)):
        with pytest.raises(ModelFileError) as err:
            call()
        assert err.value.path == str(f)
        assert str(err.value) == (
            f'{f}: tensor "model.layers.0.mlp.up_proj.weight" of shape {shape} is too large to scan: '
            "its dimensions overflow when multiplied"
        )


def test_a_million_one_byte_experts_are_one_matrix(tmp_path):
    """The 1 MB file of issue 11 that took 260 s: [1e6, 1, 1] F8 'experts' are not split."""
    n = 1_000_000
    raw_safetensors(
        tmp_path / "model.safetensors",
        {"model.layers.0.mlp.experts.w.weight": {"dtype": "F8_E4M3", "shape": [n, 1, 1], "data_offsets": [0, n]}},
        data=bytes([0x38]) * n,  # 1.0
    )
    layers = _core.Catalog([str(tmp_path)]).layers()
    assert [(x.name, x.rows, x.cols, x.expert) for x in layers] == [("model.layers.0.mlp.experts.w", n, 1, None)]
    res = spectrum_rs.scan(tmp_path)
    assert res["model.layers.0.mlp.experts.w"].shape == (n, 1)


def _experts_file(tmp_path, e: int):
    return raw_safetensors(
        tmp_path / "model.safetensors",
        {"model.layers.0.mlp.experts.down_proj": {"dtype": "F8_E4M3", "shape": [e, 2, 2], "data_offsets": [0, 4 * e]}},
        data=bytes(4 * e),
    )


def test_stacked_experts_above_the_cap_are_refused_until_it_is_raised(tmp_path):
    f = _experts_file(tmp_path, 70_000)
    with pytest.raises(ModelFileError) as err:
        spectrum_rs.scan(tmp_path)
    assert err.value.path == str(f)
    assert str(err.value) == (
        f'{f}: tensor "model.layers.0.mlp.experts.down_proj" of shape [70000, 2, 2] declares 70000 stacked '
        "experts, more than the limit of 65536 per tensor (raise it with max_experts)"
    )
    assert len(_core.Catalog([str(tmp_path)], max_experts=70_000).layers()) == 70_000


def test_the_total_number_of_layers_is_capped(tmp_path):
    f = _experts_file(tmp_path, 64)
    assert len(_core.Catalog([str(tmp_path)]).layers()) == 64
    with pytest.raises(ModelFileError) as err:
        _core.Catalog([str(tmp_path)], max_layers=63)
    assert err.value.path == str(f)
    assert "the model has more than 63 layers" in str(err.value)
    assert "raise the limit with max_layers" in str(err.value)
    assert len(_core.Catalog([str(tmp_path)], max_layers=64).layers()) == 64
