"""The three reference result files (docs/method.md §4): names, exact bytes for a small known case,
round trips through ScanResult.load in both shapes, reference-written files with
Infinity/NaN, and clean errors for files that are not results."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

import spectrum_rs
from helpers.oracle import oracle_selection
from spectrum_rs import LayerResult, ScanResult, SpectrumError

NAN, INF = math.nan, math.inf

# (name, type, snr) in model order; types chosen by docs/method.md §1 by hand.
KNOWN = [
    ("model.embed_tokens", "model.embed_tokens", 5.0),
    ("model.layers.0.self_attn.q_proj", "self_attn.q_proj", 0.3),
    ("model.layers.0.mlp.down_proj", "mlp.down_proj", NAN),
    ("model.layers.1.self_attn.q_proj", "self_attn.q_proj", 0.9),
    ("model.layers.1.mlp.down_proj", "mlp.down_proj", 0.1),
    ("model.layers.2.self_attn.q_proj", "self_attn.q_proj", 0.5),
    ("model.layers.2.mlp.down_proj", "mlp.down_proj", INF),
    ("model.layers.10.self_attn.q_proj", "self_attn.q_proj", 0.9),
    ("model.layers.10.mlp.down_proj", "mlp.down_proj", 0.2),
    ("model.norm", "model.norm", 1.0),
    ("lm_head", "lm_head", 2.0),
]


def known_result(model_name: str = "org/My_Model-7b") -> ScanResult:
    return ScanResult(
        model_name=model_name, layers=[LayerResult(name=n, type=t, snr=s) for n, t, s in KNOWN], top_percent=50
    )


# By hand: q_proj 4 layers -> int(4 * 50 / 100) = 2: layers.1 (0.9) and layers.10 (0.9,
# a tie: model order); down_proj: layers.2 (inf) then layers.10 (0.2); NaN never.
# lm_head, model.embed_tokens, model.norm: int(1 * 0.5) = 0 layers, header only.
EXPECTED_YAML_50 = """\
unfrozen_parameters:
- ^lm_head.weight$
- ^model.embed_tokens.weight$
# lm_head layers
# mlp.down_proj layers
- model.layers.2.mlp.down_proj
- model.layers.10.mlp.down_proj
# model.embed_tokens layers
# model.norm layers
# self_attn.q_proj layers
- model.layers.1.self_attn.q_proj
- model.layers.10.self_attn.q_proj
"""

EXPECTED_YAML_75_STRICT = """\
unfrozen_parameters:
- ^lm_head\\.weight$
- ^model\\.embed_tokens\\.weight$
# lm_head layers
# mlp.down_proj layers
- ^model\\.layers\\.2\\.mlp\\.down_proj\\.
- ^model\\.layers\\.10\\.mlp\\.down_proj\\.
- ^model\\.layers\\.1\\.mlp\\.down_proj\\.
# model.embed_tokens layers
# model.norm layers
# self_attn.q_proj layers
- ^model\\.layers\\.1\\.self_attn\\.q_proj\\.
- ^model\\.layers\\.10\\.self_attn\\.q_proj\\.
- ^model\\.layers\\.2\\.self_attn\\.q_proj\\.
"""

# Types in sorted order, layers in model order inside a type, 4-space indent,
# non-finite numbers as Python's json writes them.
EXPECTED_JSON = """\
{
    "lm_head": {
        "snr": 2.0,
        "type": "lm_head"
    },
    "model.layers.0.mlp.down_proj": {
        "snr": NaN,
        "type": "mlp.down_proj"
    },
    "model.layers.1.mlp.down_proj": {
        "snr": 0.1,
        "type": "mlp.down_proj"
    },
    "model.layers.2.mlp.down_proj": {
        "snr": Infinity,
        "type": "mlp.down_proj"
    },
    "model.layers.10.mlp.down_proj": {
        "snr": 0.2,
        "type": "mlp.down_proj"
    },
    "model.embed_tokens": {
        "snr": 5.0,
        "type": "model.embed_tokens"
    },
    "model.norm": {
        "snr": 1.0,
        "type": "model.norm"
    },
    "model.layers.0.self_attn.q_proj": {
        "snr": 0.3,
        "type": "self_attn.q_proj"
    },
    "model.layers.1.self_attn.q_proj": {
        "snr": 0.9,
        "type": "self_attn.q_proj"
    },
    "model.layers.2.self_attn.q_proj": {
        "snr": 0.5,
        "type": "self_attn.q_proj"
    },
    "model.layers.10.self_attn.q_proj": {
        "snr": 0.9,
        "type": "self_attn.q_proj"
    }
}"""

EXPECTED_SORTED = """\
{
    "lm_head": {
        "lm_head": 2.0
    },
    "mlp.down_proj": {
        "model.layers.2.mlp.down_proj": Infinity,
        "model.layers.10.mlp.down_proj": 0.2,
        "model.layers.1.mlp.down_proj": 0.1,
        "model.layers.0.mlp.down_proj": NaN
    },
    "model.embed_tokens": {
        "model.embed_tokens": 5.0
    },
    "model.norm": {
        "model.norm": 1.0
    },
    "self_attn.q_proj": {
        "model.layers.1.self_attn.q_proj": 0.9,
        "model.layers.10.self_attn.q_proj": 0.9,
        "model.layers.2.self_attn.q_proj": 0.5,
        "model.layers.0.self_attn.q_proj": 0.3
    }
}"""


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_save_writes_three_files_with_reference_names(tmp_path):
    paths = known_result().save(tmp_path)
    folder = tmp_path / "model_snr_results"
    slug = "org-My-Model-7b"  # '/' -> '-', '_' -> '-'
    assert paths["results"] == folder / f"snr_results_{slug}.json"
    assert paths["sorted"] == folder / f"snr_results_{slug}_sorted.json"
    assert paths["yaml"] == folder / f"snr_results_{slug}_unfrozenparameters_50percent.yaml"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths.values())


def test_file_bytes_for_a_known_case(tmp_path):
    paths = known_result().save(tmp_path)
    assert paths["results"].read_text(encoding="utf-8") == EXPECTED_JSON
    assert paths["sorted"].read_text(encoding="utf-8") == EXPECTED_SORTED
    assert paths["yaml"].read_bytes() == EXPECTED_YAML_50.encode()


def test_yaml_other_percent_and_strict_mode(tmp_path):
    paths = known_result().save(tmp_path, top_percent=75, strict=True)
    assert paths["yaml"].name == "snr_results_org-My-Model-7b_unfrozenparameters_75percent.yaml"
    assert paths["yaml"].read_bytes() == EXPECTED_YAML_75_STRICT.encode()
    # A fractional percent keeps its fraction in the file name.
    paths = known_result().save(tmp_path, top_percent=12.5)
    assert paths["yaml"].name == "snr_results_org-My-Model-7b_unfrozenparameters_12.5percent.yaml"


def test_yaml_is_valid_yaml_and_matches_selection(tmp_path):
    yaml = pytest.importorskip("yaml")
    res = known_result()
    paths = res.save(tmp_path, top_percent=100)
    data = yaml.safe_load(paths["yaml"].read_text())
    expected = oracle_selection(KNOWN, 100)
    layer_lines = [x for x in data["unfrozen_parameters"] if not x.startswith("^")]
    assert layer_lines == [n for names in expected.values() for n in names]
    # At 100 % every layer is listed, NaN last in its type.
    assert layer_lines.index("model.layers.0.mlp.down_proj") == layer_lines.index("model.layers.1.mlp.down_proj") + 1


def test_yaml_lists_only_real_embedding_names(tmp_path):
    res = ScanResult(
        model_name="bert",
        top_percent=100,
        layers=[
            LayerResult("embeddings.word_embeddings", "embeddings.word_embeddings", 3.0),
            LayerResult("encoder.layer.0.attention.self.query", "attention.self.query", 0.2),
        ],
    )
    text = res.save(tmp_path)["yaml"].read_text()
    assert text == (
        "unfrozen_parameters:\n"
        "- ^embeddings.word_embeddings.weight$\n"
        "# attention.self.query layers\n"
        "- encoder.layer.0.attention.self.query\n"
        "# embeddings.word_embeddings layers\n"
        "- embeddings.word_embeddings\n"
    )
    text = res.save(tmp_path, embeddings=False)["yaml"].read_text()
    assert "^" not in text


def test_yaml_lists_the_model_embeddings_even_when_only_some_types_are_scanned(tmp_path, small_llama_dir):
    res = spectrum_rs.scan(small_llama_dir, types=["self_attn.q_proj"])
    assert {layer.type for layer in res} == {"self_attn.q_proj"}
    lines = res.save(tmp_path)["yaml"].read_text().splitlines()
    assert lines[:3] == ["unfrozen_parameters:", "- ^lm_head.weight$", "- ^model.embed_tokens.weight$"]


@pytest.mark.parametrize("which", ["results", "sorted"])
def test_round_trip_through_load(tmp_path, which):
    res = known_result()
    path = res.save(tmp_path)[which]
    back = ScanResult.load(path)
    assert back.model_name == "org-My-Model-7b"
    # Loaded layers come back in model order (numbers compare as numbers).
    assert [layer.name for layer in back] == [
        "lm_head",
        "model.embed_tokens",
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.2.mlp.down_proj",
        "model.layers.2.self_attn.q_proj",
        "model.layers.10.mlp.down_proj",
        "model.layers.10.self_attn.q_proj",
        "model.norm",
    ]
    got = {layer.name: (layer.type, layer.snr) for layer in back}
    assert set(got) == {n for n, _, _ in KNOWN}
    for name, kind, snr in KNOWN:
        assert got[name][0] == kind
        assert _same(got[name][1], snr), name
    for pct in (25, 50, 75, 100):
        assert back.selected_by_type(pct) == oracle_selection(KNOWN, pct)
    # And writing the loaded result again gives the same results file.
    again = back.save(tmp_path / "again", name="org/My_Model-7b")
    assert again["results"].read_text() == EXPECTED_JSON


def test_scan_save_load_round_trip(tmp_path, small_llama_dir):
    res = spectrum_rs.scan(small_llama_dir, name="tiny/llama_bf16")
    paths = res.save(tmp_path)
    assert paths["results"].name == "snr_results_tiny-llama-bf16.json"
    for which in ("results", "sorted"):
        back = ScanResult.load(paths[which])
        assert {layer.name: layer.snr for layer in back} == {layer.name: layer.snr for layer in res}
        assert {layer.name: layer.type for layer in back} == {layer.name: layer.type for layer in res}
        assert back.select(25) == res.select(25)
    # The results JSON is exactly what Python's json makes of to_dict().
    assert json.loads(paths["results"].read_text()) == res.to_dict()


def test_scan_top_percent_is_the_default_for_select_and_save(tmp_path, small_llama_dir):
    res = spectrum_rs.scan(small_llama_dir, top_percent=50, name="m")
    records = [(layer.name, layer.type, layer.snr) for layer in res]
    assert res.selected_by_type() == oracle_selection(records, 50)
    assert res.save(tmp_path)["yaml"].name == "snr_results_m_unfrozenparameters_50percent.yaml"


def test_reference_written_file_with_infinity_and_nan_loads(tmp_path):
    # As the reference spectrum.py writes it: json.dump(..., indent=4), bare Infinity/NaN.
    text = """{
    "model.layers.0.self_attn.k_proj": {
        "snr": Infinity,
        "type": "self_attn.k_proj"
    },
    "model.layers.1.self_attn.k_proj": {
        "snr": 1.5,
        "type": "self_attn.k_proj"
    },
    "model.layers.0.mlp.up_proj": {
        "snr": NaN,
        "type": "mlp.up_proj"
    },
    "model.layers.1.mlp.up_proj": {
        "snr": 0.25,
        "type": "mlp.up_proj"
    },
    "model.layers.2.mlp.up_proj": {
        "snr": -Infinity,
        "type": "mlp.up_proj"
    }
}
"""
    path = tmp_path / "snr_results_meta-llama-Llama-2-7b-hf.json"
    path.write_text(text)
    res = ScanResult.load(path)
    assert res.model_name == "meta-llama-Llama-2-7b-hf"
    assert res["model.layers.0.self_attn.k_proj"].snr == INF
    assert math.isnan(res["model.layers.0.mlp.up_proj"].snr)
    assert res["model.layers.2.mlp.up_proj"].snr == -INF
    assert res["model.layers.1.mlp.up_proj"].type == "mlp.up_proj"
    assert res.selected_by_type(50) == {
        "mlp.up_proj": ["model.layers.1.mlp.up_proj"],
        "self_attn.k_proj": ["model.layers.0.self_attn.k_proj"],
    }
    assert res.selected_by_type(100)["mlp.up_proj"] == [
        "model.layers.1.mlp.up_proj",
        "model.layers.2.mlp.up_proj",
        "model.layers.0.mlp.up_proj",
    ]


def test_reference_sorted_shape_loads(tmp_path):
    path = tmp_path / "snr_results_x_sorted.json"
    path.write_text(
        '{"self_attn.q_proj": {"model.layers.3.self_attn.q_proj": Infinity, '
        '"model.layers.0.self_attn.q_proj": 0.5, "model.layers.1.self_attn.q_proj": NaN}}'
    )
    res = ScanResult.load(path)
    assert res.model_name == "x"
    assert [layer.name for layer in res] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.3.self_attn.q_proj",
    ]
    assert all(layer.type == "self_attn.q_proj" for layer in res)
    assert res.select(100) == [
        "model.layers.3.self_attn.q_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]


BAD_FILES = {
    "not_json": ("{not json", "not valid JSON"),
    "a_list": ('[{"snr": 1.0, "type": "t"}]', "expected either the results shape"),
    "a_number": ("3.5", "expected either the results shape"),
    "empty_object": ("{}", "expected either the results shape"),
    "flat_numbers": ('{"model.layers.0.q": 1.0}', "expected either the results shape"),
    "results_shape_bad_snr": (
        '{"a.0.q": {"snr": 1.0, "type": "q"}, "a.1.q": {"snr": "high", "type": "q"}}',
        "results shape",
    ),
    "results_shape_not_object": ('{"a.0.q": {"snr": 1.0, "type": "q"}, "a.1.q": 2.0}', "results shape"),
    "sorted_shape_bad_member": ('{"q": {"a.0.q": 1.0}, "k": [1, 2]}', "sorted shape"),
    "sorted_shape_bad_snr": ('{"q": {"a.0.q": 1.0, "a.1.q": "x"}}', "sorted shape"),
    "results_shape_missing_snr": ('{"a.0.q": {"snr": 1.0, "type": "q"}, "a.1.q": {"type": "q"}}', "results shape"),
    "number_too_large_for_a_float": ('{"a.0.q": {"snr": 1' + "0" * 400 + ', "type": "q"}}', "results shape"),
    "number_too_long_to_parse": ('{"a.0.q": {"snr": 1' + "0" * 5000 + ', "type": "q"}}', "not valid JSON"),
    "nested_too_deep": ("[" * 100000 + "]" * 100000, "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_results_files_raise_spectrum_error(tmp_path, case):
    text, shape_words = BAD_FILES[case]
    path = tmp_path / f"snr_results_{case}.json"
    path.write_text(text)
    with pytest.raises(SpectrumError) as err:
        ScanResult.load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert shape_words in msg
    assert isinstance(err.value, ValueError)


def test_result_files_are_readable_by_others(tmp_path):
    """Written through a private temporary file, they still get a plain file's mode."""
    old = os.umask(0o022)
    try:
        res = ScanResult(model_name="m", layers=[LayerResult("a.0.q", "q", 1.0)])
        for path in res.save(tmp_path).values():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_missing_results_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(SpectrumError, match="nope.json"):
        ScanResult.load(path)


def test_to_dict_and_iteration(tmp_path):
    res = known_result()
    assert len(res) == len(KNOWN)
    assert [layer.name for layer in res] == [n for n, _, _ in KNOWN]
    d = res.to_dict()
    assert list(d) == list(json.loads(EXPECTED_JSON))
    assert d["model.layers.2.mlp.down_proj"] == {"snr": INF, "type": "mlp.down_proj"}
    assert res.types == sorted({t for _, t, _ in KNOWN})
    assert LayerResult("a", "a", 1.0, shape=(2, 3)).to_dict()["shape"] == [2, 3]
