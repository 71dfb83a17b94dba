"""The exception classes: which kind each input problem raises, the file it names
(``.path``), and that every one of them survives pickling (``multiprocessing``)."""

import json
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

import spectrum_rs
from spectrum_rs import (
    CheckpointMismatchError,
    InternalError,
    ModelFileError,
    ResultsFileError,
    SpectrumError,
    UnsupportedLayoutError,
)


def test_the_classes_form_one_family_of_value_errors():
    for cls in (ModelFileError, UnsupportedLayoutError, CheckpointMismatchError, ResultsFileError):
        assert issubclass(cls, SpectrumError) and issubclass(cls, ValueError)
    # Not the input's fault: not a ValueError a caller would take for bad input.
    assert issubclass(InternalError, RuntimeError) and not issubclass(InternalError, ValueError)


def test_a_missing_model_is_a_model_file_error_with_its_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ModelFileError) as info:
        spectrum_rs.scan(str(missing))
    assert info.value.path == str(missing)
    assert str(missing) in str(info.value)


def test_a_truncated_header_raised_by_the_core_names_the_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes((1000).to_bytes(8, "little") + b"{")
    with pytest.raises(ModelFileError) as info:
        spectrum_rs.scan(str(bad))
    assert info.value.path == str(bad)


def test_an_undecodable_weight_is_an_unsupported_layout(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": np.ones((4, 8), np.int8)}, str(f))
    with pytest.raises(UnsupportedLayoutError) as info:
        spectrum_rs.scan(str(f))
    assert info.value.path == str(f)
    assert "I8" in str(info.value)


def test_a_checkpoint_of_other_settings_is_a_checkpoint_mismatch(tmp_path):
    f = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file({"model.layers.0.mlp.up_proj.weight": rng.standard_normal((16, 8)).astype(np.float32)}, str(f))
    ck = tmp_path / "ck.jsonl"
    spectrum_rs.scan(str(f), checkpoint=ck)
    with pytest.raises(CheckpointMismatchError) as info:
        spectrum_rs.scan(str(f), checkpoint=ck, dtype="float64")
    assert info.value.path == str(ck)


def test_a_bad_results_file_is_a_results_file_error(tmp_path):
    p = tmp_path / "snr_results_x.json"
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(ResultsFileError) as info:
        spectrum_rs.ScanResult.load(p)
    assert info.value.path == str(p)


@pytest.mark.parametrize(
    "error",
    [
        SpectrumError("plain"),
        ModelFileError("/m/model.safetensors: truncated", path="/m/model.safetensors"),
        UnsupportedLayoutError("/m/x.safetensors: tensor 'w': dtype I8 cannot be decoded", path="/m/x.safetensors"),
        CheckpointMismatchError("/o/ck.jsonl: other settings", path="/o/ck.jsonl"),
        ResultsFileError("/o/r.json: not JSON", path="/o/r.json"),
        InternalError("the reader thread stopped"),
    ],
)
def test_every_error_pickles_with_its_message_and_path(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert getattr(back, "path", None) == getattr(error, "path", None)
    assert type(back).__module__ == "spectrum_rs.errors"


def test_an_error_raised_by_the_core_pickles(tmp_path):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(ModelFileError) as info:
        spectrum_rs._core.Catalog([str(missing)])
    back = pickle.loads(pickle.dumps(info.value))
    assert isinstance(back, ModelFileError) and back.path == info.value.path
