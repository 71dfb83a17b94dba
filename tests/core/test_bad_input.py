"""Broken models: each is a clean ``spectrum_rs.SpectrumError`` (a ValueError) whose
message names the offending file. The broken files are written byte by byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import raw_safetensors, write_sharded, write_single
from spectrum_rs import SpectrumError, _core


def f32_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).standard_normal(n).astype("<f4").tobytes()


def expect_error(path, target: Path, *words: str, **scan_kw) -> str:
    """Both the catalog and scan() fail with SpectrumError naming ``target``."""
    with pytest.raises(SpectrumError) as err:
        spectrum_rs.scan(path, **scan_kw)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(target) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def good_header(shape=(4, 4), dtype="F32", name="model.layers.0.mlp.up_proj.weight"):
    size = int(np.prod(shape)) * {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
    return {name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, size]}}, size


def test_spectrum_error_is_a_value_error():
    assert issubclass(SpectrumError, ValueError)
    assert issubclass(spectrum_rs.ModelFileError, SpectrumError) and spectrum_rs.SpectrumError is SpectrumError


def test_missing_path(tmp_path):
    p = tmp_path / "no_such_model"
    expect_error(p, p, "no such file")
    with pytest.raises(SpectrumError, match="no_such_model"):
        _core.Catalog([str(p)])


def test_missing_file_in_a_list(tmp_path):
    good = write_single(tmp_path, {"a.weight": torch.ones(4, 4)}) / "model.safetensors"
    missing = tmp_path / "other.safetensors"
    expect_error([good, missing], missing)


def test_empty_folder(tmp_path):
    expect_error(tmp_path, tmp_path, "no .safetensors")


def test_folder_without_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 64)
    expect_error(tmp_path, tmp_path, "no .safetensors")


def test_truncated_file(tmp_path):
    header, size = good_header((8, 8))
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(64)[: size - 10])
    expect_error(tmp_path, path, "truncated")


def test_truncated_saved_file(tmp_path):
    path = write_single(tmp_path, {"a.weight": torch.randn(16, 16)}) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    expect_error(tmp_path, path)


def test_file_shorter_than_header_length_field(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    expect_error(path, path, "too short")


def test_header_length_larger_than_file(tmp_path):
    header, size = good_header()
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(16), header_len=10_000)
    expect_error(tmp_path, path, "header length")


def test_header_length_absurd(tmp_path):
    path = raw_safetensors(tmp_path / "model.safetensors", b"{}", header_len=2**63)
    expect_error(tmp_path, path, "header length")


def test_header_not_json(tmp_path):
    path = raw_safetensors(tmp_path / "model.safetensors", b"this is not json at all!", f32_bytes(4))
    expect_error(tmp_path, path, "JSON")


def test_header_not_utf8(tmp_path):
    path = raw_safetensors(tmp_path / "model.safetensors", b'{"\xff\xfe": 1}')
    expect_error(tmp_path, path, "UTF-8")


def test_header_json_of_wrong_structure(tmp_path):
    path = raw_safetensors(tmp_path / "model.safetensors", b"[1, 2, 3]")
    expect_error(tmp_path, path)


def test_offsets_out_of_range(tmp_path):
    # Consistent shape and offsets, but the data section is shorter than they say.
    header = {"w.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}}
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(16))
    expect_error(tmp_path, path)


def test_offsets_past_second_tensor(tmp_path):
    header = {
        "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [1000, 1016]},
    }
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(8))
    expect_error(tmp_path, path, "b.weight")


def test_overlapping_offsets(tmp_path):
    header = {
        "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]},
    }
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(6))
    expect_error(tmp_path, path, "overlapping")


def test_shape_times_dtype_does_not_match_byte_range(tmp_path):
    header = {"w.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(4))
    expect_error(tmp_path, path, "shape")


def test_dtype_size_mismatch(tmp_path):
    # 4x4 BF16 is 32 bytes, not 64.
    header = {"w.weight": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 64]}}
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(16))
    expect_error(tmp_path, path)


def test_unknown_dtype_string(tmp_path):
    header = {"w.weight": {"dtype": "F12", "shape": [2, 2], "data_offsets": [0, 16]}}
    path = raw_safetensors(tmp_path / "model.safetensors", header, f32_bytes(4))
    expect_error(tmp_path, path, "F12")


def test_known_but_unscannable_dtype(tmp_path):
    header = {"w.weight": {"dtype": "I32", "shape": [2, 2], "data_offsets": [0, 16]}}
    path = raw_safetensors(tmp_path / "model.safetensors", header, b"\x01" * 16)
    expect_error(tmp_path, path, "I32", "w.weight")
    # Leaving it out by type makes the rest scannable (here: nothing left).
    with pytest.raises(SpectrumError, match="no layer matches"):
        spectrum_rs.scan(tmp_path, exclude=["w"])


def _sharded(tmp_path):
    t = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 8) for i in range(4)}
    plan = {k: i % 2 for i, k in enumerate(t)}
    return write_sharded(tmp_path, t, plan, 2)


def test_index_names_a_missing_shard(tmp_path):
    folder = _sharded(tmp_path)
    missing = folder / "model-00002-of-00002.safetensors"
    missing.unlink()
    msg = expect_error(folder, missing, "missing")
    assert "model.safetensors.index.json" in msg


def test_index_entry_whose_shard_lacks_the_tensor(tmp_path):
    folder = _sharded(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    expect_error(folder, index_path, "model.layers.9.mlp.up_proj.weight", "model-00001-of-00002.safetensors")


def test_index_entry_pointing_to_the_wrong_shard(tmp_path):
    folder = _sharded(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    # layers.0 lives in shard 1; the index says shard 2.
    index["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    expect_error(folder, index_path, "model.layers.0.mlp.up_proj.weight")


def test_index_not_json(tmp_path):
    folder = _sharded(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text("{ nope")
    expect_error(folder, index_path, "JSON")


def test_index_without_weight_map(tmp_path):
    folder = _sharded(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text('{"metadata": {}}')
    expect_error(folder, index_path, "weight_map")


def test_broken_shard_is_named(tmp_path):
    folder = _sharded(tmp_path)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    expect_error(folder, shard)


def test_same_tensor_in_two_files(tmp_path):
    a = write_single(tmp_path / "a", {"x.weight": torch.ones(4, 4)}) / "model.safetensors"
    b = write_single(tmp_path / "b", {"x.weight": torch.ones(4, 4)}) / "model.safetensors"
    expect_error([a, b], b, "x.weight")


def test_bad_fp8_scale_shape(tmp_path):
    w = (torch.randn(64, 64) * 0.1).to(torch.float8_e4m3fn)
    path = write_single(tmp_path, {"l.weight": w, "l.weight_scale_inv": torch.ones(128, 1)})
    expect_error(path, path / "model.safetensors", "scale")


def test_no_rust_panic_on_empty_tensor(tmp_path):
    """Zero-sized matrices have no spectrum: NaN (with a warning), never a crash."""
    header = {"w.weight": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}}
    raw_safetensors(tmp_path / "model.safetensors", header)
    with pytest.warns(RuntimeWarning, match="w.weight"):
        res = spectrum_rs.scan(tmp_path)
    assert len(res) == 1 and np.isnan(res["w"].snr)
