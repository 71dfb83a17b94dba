"""Hostile names and hostile counts: tensor names that carry line breaks, Unicode line
separators, control and bidirectional characters or regex metacharacters reach every file
and line we write (the unfrozen-parameters YAML, plain and strict, the JSON files, the
checkpoint, progress lines, warnings) without adding a line or a pattern, whether they come
from a model file or from a results file; a type with no layer selected gets no YAML
section; and a model of many empty or all-zero weights gives one warning per kind, not one
per tensor. Every test writes a real safetensors file (any UTF-8 key is allowed) or a real
results file."""

from __future__ import annotations

import io
import json
import math
import re
import warnings

import pytest
import torch
import yaml

import spectrum_rs
from helpers.models import raw_safetensors, write_single
from spectrum_rs import LayerResult, ScanResult
from spectrum_rs.io.text import name_regex, printable, unsafe, yaml_scalar
from spectrum_rs.run.progress import Progress

INJECTION = "model.layers.0.x\n- ^.*$\n# .weight"  # the name: its type is "x\n- ^.*$\n# "
# Every kind of character a reader may take for structure, and regex metacharacters.
HOSTILE = [
    INJECTION,
    "model.layers.1.y\u2028- ^.*$\u2029.weight",  # Unicode line and paragraph separators
    "model.layers.2.z\x85- ^.*$\r- ^.*$\x0b\x0c\x1b[2J\x7f.weight",  # NEL, CR, VT, FF, ESC, DEL
    "model.layers.3.w|.*.weight",  # alternation: would match every parameter
    "model.layers.4.v\u202e\u200b\ufeff.weight",  # bidi override, zero-width space, BOM
    "model.layers.5.a: b #c.weight",  # YAML mapping and comment syntax
    "model.layers.6.true.weight",
]
EVERYTHING = "^.*$"


def hostile_model(folder):
    g = torch.Generator().manual_seed(7)
    t = {"model.embed_tokens.weight": torch.randn(40, 16, generator=g)}
    for i, name in enumerate(HOSTILE):
        t[name] = torch.randn(16 + i, 16, generator=g)
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(16, 16, generator=g)
    t["lm_head.weight"] = torch.randn(40, 16, generator=g)
    return write_single(folder, t), t


def parameters_matched(entries, parameters):
    """The parameters a trainer unfreezes: Axolotl matches each entry as a regex at the
    start of a parameter name."""
    return {p for p in parameters if any(re.match(e, p) for e in entries)}


@pytest.mark.parametrize("strict", [False, True])
def test_hostile_tensor_names_add_no_yaml_line(tmp_path, strict):
    folder, tensors = hostile_model(tmp_path / "model")
    res = spectrum_rs.scan(folder)
    assert {layer.name + ".weight" for layer in res} == set(tensors)  # every name scanned as it is
    text = res.save(tmp_path / "out", top_percent=100, strict=strict)["yaml"].read_text(encoding="utf-8")
    assert all(ch.isprintable() for ch in text.replace("\n", "")), "only printable characters and newlines"
    entries = yaml.safe_load(text)["unfrozen_parameters"]
    assert all(isinstance(e, str) for e in entries)
    assert not any(EVERYTHING in e for e in entries), entries
    # One line per parameter (the head and embedding twice at 100 %: their anchored lines
    # first, as the reference writes them), each matching exactly one of the model's.
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(entries) == len(lines) == len(tensors) + 2
    for e in entries:
        matched = parameters_matched([e], tensors)
        assert len(matched) == 1, (e, matched)
    assert parameters_matched(entries, tensors) == set(tensors)
    assert not parameters_matched(entries, ["model.layers.9.mlp.down_proj.weight", "anything"])
    # The comments carry the hostile types escaped, on one line each.
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) == len({layer.type for layer in res})
    assert "# x\\x0a- ^.*$\\x0a#  layers" in comments


def test_ordinary_names_are_written_as_the_reference_writes_them():
    name = "model.layers.10.self_attn.q_proj"
    assert yaml_scalar(name_regex(name, strict=False)) == name
    assert yaml_scalar(name_regex(name, strict=True)) == re.escape(name)
    assert printable(name) is name
    for word in ("true", "Null", "yes", "3.5e2", "-x", "[a]", "a b"):
        assert yaml.safe_load(f"- {yaml_scalar(word)}") == [word]


def test_every_unsafe_character_is_escaped_and_still_matches():
    chars = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\ufeff"]
    chars.append("\U000e0001")  # a tag character (Cf) above the BMP
    for ch in chars:
        assert unsafe(ch), repr(ch)
        name = f"a{ch}b"
        for strict in (False, True):
            regex = name_regex(name, strict)
            assert regex.isprintable() and re.fullmatch(regex, name), (repr(ch), regex)
            assert yaml.safe_load(f"- {yaml_scalar(regex)}") == [regex]
        assert printable(name).isprintable()
    assert not unsafe(" ") and not unsafe("é") and not unsafe("层")


def test_a_results_file_with_hostile_names_writes_safe_files(tmp_path):
    """A results file is a second source of names: loaded, then saved and selected."""
    data = {name[: -len(".weight")]: {"snr": 1.0 + i, "type": "t\n- ^.*$"} for i, name in enumerate(HOSTILE)}
    src = tmp_path / "snr_results_evil.json"
    src.write_text(json.dumps(data), encoding="utf-8")
    res = ScanResult.load(src)
    paths = res.save(tmp_path / "out", top_percent=100)
    entries = yaml.safe_load(paths["yaml"].read_text(encoding="utf-8"))["unfrozen_parameters"]
    assert not any(EVERYTHING in e for e in entries)
    assert parameters_matched(entries, HOSTILE) == set(HOSTILE)
    assert len(entries) == len(HOSTILE)
    # The JSON files escape every such character (json.dumps) and read back the same names.
    for kind in ("results", "sorted"):
        raw = paths[kind].read_text(encoding="utf-8")
        assert raw.isascii() and all(ch.isprintable() for ch in raw.replace("\n", ""))
    again = ScanResult.load(paths["results"])
    assert sorted(layer.name for layer in again) == sorted(data)
    assert {layer.type for layer in again} == {"t\n- ^.*$"}


def test_checkpoint_progress_and_warnings_stay_one_line_per_record(tmp_path):
    g = torch.Generator().manual_seed(8)
    t = {INJECTION: torch.zeros(8, 8), HOSTILE[1]: torch.randn(8, 8, generator=g), HOSTILE[2]: torch.zeros(4, 4)}
    folder = write_single(tmp_path / "m", t)
    ck = tmp_path / "ck.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = spectrum_rs.scan(folder, checkpoint=ck)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "2 matrices are all zeros" in messages[0], messages
    assert messages[0].isprintable(), messages[0]
    assert repr(INJECTION) in messages[0]  # named, as repr() writes it
    lines = ck.read_bytes().split(b"\n")
    assert len(lines) == 1 + len(t) + 1 and lines[-1] == b""  # head, one line per layer
    assert spectrum_rs.scan(folder, checkpoint=ck).settings["resumed_layers"] == len(t)
    log = io.StringIO()
    bar = Progress(True, total_layers=1, total_bytes=1, stream=log)
    bar.update(res.layers[0].name, 1)
    assert log.getvalue().count("\n") == 1 and log.getvalue().rstrip("\n").isprintable()


def test_types_without_a_selected_layer_get_no_yaml_section(tmp_path):
    res = ScanResult(
        model_name="m",
        top_percent=25,
        layers=[
            LayerResult("model.embed_tokens", "model.embed_tokens", 3.0),
            LayerResult("model.layers.0.mlp.up_proj", "mlp.up_proj", 0.2),
            LayerResult("model.layers.1.mlp.up_proj", "mlp.up_proj", 0.3),
            LayerResult("model.layers.2.mlp.up_proj", "mlp.up_proj", 0.1),
            LayerResult("model.layers.3.mlp.up_proj", "mlp.up_proj", 0.4),
            LayerResult("lm_head", "lm_head", 2.0),
        ],
    )
    text = res.save(tmp_path)["yaml"].read_text()
    # 1 of 4 up_proj layers at 25 %; int(1 * 0.25) = 0 of the embedding and the head.
    assert text == (
        "unfrozen_parameters:\n"
        "- ^lm_head.weight$\n"
        "- ^model.embed_tokens.weight$\n"
        "# mlp.up_proj layers\n"
        "- model.layers.3.mlp.up_proj\n"
    )
    assert res.unfrozen_yaml(0) == "unfrozen_parameters:\n- ^lm_head.weight$\n- ^model.embed_tokens.weight$\n"


def test_many_empty_and_all_zero_weights_give_one_warning_per_kind(tmp_path):
    """A header of thousands of zero-size weights and a model of many all-zero ones: one
    summary warning each, naming the first few, not one warning per tensor."""
    n = 3000
    header = {f"model.layers.{i}.w.weight": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]} for i in range(n)}
    raw_safetensors(tmp_path / "empty" / "model.safetensors", header)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = spectrum_rs.scan(tmp_path / "empty")
    assert len(res) == n and all(math.isnan(layer.snr) for layer in res)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages[:3]
    assert messages[0].startswith(f"{n} matrices have no values (a zero-size shape); their SNR is reported as NaN: ")
    assert messages[0].endswith(f", and {n - 5} more")
    assert "'model.layers.0.w.weight'" in messages[0] and str(tmp_path / "empty" / "model.safetensors") in messages[0]

    zeros = {f"model.layers.{i}.mlp.up_proj.weight": torch.zeros(8, 4) for i in range(40)}
    zeros["model.layers.0.self_attn.q_proj.weight"] = torch.full((4, 4), math.nan)
    zeros["model.layers.1.self_attn.q_proj.weight"] = torch.full((4, 4), math.inf)
    write_single(tmp_path / "zeros", zeros)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spectrum_rs.scan(tmp_path / "zeros", device=["cpu", "cpu"])  # two workers, one summary
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    assert len(messages) == 2, messages
    assert messages[0].startswith("2 matrices hold NaN or Inf values; their SNR is reported as NaN: ")
    assert messages[1].startswith("40 matrices are all zeros (no spectrum); their SNR is reported as NaN: ")
    assert messages[1].endswith(", and 35 more")
