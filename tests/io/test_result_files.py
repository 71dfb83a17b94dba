"""The three reference result files (docs/method.md §4): names, exact bytes for a small known case,
round trips through ScanResult.load in both shapes, reference-written files with
Infinity/NaN, clean errors for files that are not results, and clean errors, with nothing
left behind, for files that cannot be written (a file where a folder should be, a size
limit, a full or read-only file system, a folder the user may not write to)."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys

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
# lm_head, model.embed_tokens, model.norm: int(1 * 0.5) = 0 layers, so no section.
EXPECTED_YAML_50 = """\
unfrozen_parameters:
- ^lm_head.weight$
- ^model.embed_tokens.weight$
# mlp.down_proj layers
- model.layers.2.mlp.down_proj
- model.layers.10.mlp.down_proj
# self_attn.q_proj layers
- model.layers.1.self_attn.q_proj
- model.layers.10.self_attn.q_proj
"""

EXPECTED_YAML_75_STRICT = """\
unfrozen_parameters:
- ^lm_head\\.weight$
- ^model\\.embed_tokens\\.weight$
# mlp.down_proj layers
- ^model\\.layers\\.2\\.mlp\\.down_proj\\.
- ^model\\.layers\\.10\\.mlp\\.down_proj\\.
- ^model\\.layers\\.1\\.mlp\\.down_proj\\.
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


# --------------------------------------------------------------------------- output errors
# Each makes the real condition: a file where a folder should be, a process file-size limit
# (RLIMIT_FSIZE, with SIGXFSZ ignored: write() fails with EFBIG), a full file system and a
# read-only one (a 16 KiB tmpfs mounted in a private mount namespace, which vanishes with
# the process), and a folder the user may not write to (chmod 0o500, or for root, who
# passes permission bits, an immutable folder). The message says what is wrong in our
# words and names the path; nothing is left behind, and a file already there is kept.

SAVE_SCRIPT = """
import json, os, pathlib, subprocess, sys
from spectrum_rs import LayerResult, ScanResult, SpectrumError
out, setup = pathlib.Path(sys.argv[1]), sys.argv[2]
folder = out / "model_snr_results"
if setup in ("earlier-file", "immutable-folder"):
    folder.mkdir(parents=True, exist_ok=True)
if setup == "earlier-file":
    (folder / "snr_results_m.json").write_text("{}")
if setup == "immutable-folder":
    subprocess.run(["chattr", "+i", str(folder)], check=True)
layers = [LayerResult(f"model.layers.{i}.mlp.up_proj", "mlp.up_proj", 1.0 + i) for i in range(2000)]
try:
    ScanResult(model_name="m", layers=layers).save(out)
    print(json.dumps({"error": None}))
except SpectrumError as e:
    files = sorted(os.listdir(folder)) if folder.is_dir() else None
    kept = (folder / "snr_results_m.json").read_text() == "{}" if setup == "earlier-file" else None
    print(json.dumps({"error": str(e), "path": e.path, "files": files, "kept": kept}))
"""


def _save_in_subprocess(out, setup="none", prefix=(), preexec_fn=None):
    """Saves a 2000-layer result under ``out`` in a new process (after ``setup``), and
    returns the error it met, the files left in the results folder, and whether an earlier
    file there was kept."""
    p = subprocess.run(
        [*prefix, sys.executable, "-c", SAVE_SCRIPT, str(out), setup],
        capture_output=True,
        text=True,
        preexec_fn=preexec_fn,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def _in_private_tmpfs(mount_point, options):
    """The command prefix that runs a command with a fresh tmpfs mounted at ``mount_point``
    in a private mount namespace; skips where this machine allows no such namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    flags = "-m" if os.geteuid() == 0 else "-rm"
    probe = subprocess.run(["unshare", flags, "sh", "-c", f"mount -t tmpfs tmpfs {mount_point}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {probe.stderr.decode()[-200:]}")
    return ["unshare", flags, "sh", "-c", f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"', str(mount_point)]


def test_a_file_where_a_folder_should_be(tmp_path):
    res = known_result()
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(SpectrumError) as err:
        res.save(blocker)
    assert str(err.value) == (
        f"cannot write {blocker / 'model_snr_results' / 'snr_results_org-My-Model-7b.json'}: "
        f"{blocker} is a file, not a folder"
    )
    assert blocker.read_text() == "not a folder"
    # The results folder itself a file; then a target that is a folder.
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "model_snr_results").write_text("x")
    with pytest.raises(SpectrumError, match="model_snr_results is a file, not a folder"):
        res.save(tmp_path / "two")
    target = tmp_path / "three" / "model_snr_results" / "snr_results_org-My-Model-7b.json"
    target.mkdir(parents=True)
    with pytest.raises(SpectrumError) as err:
        res.save(tmp_path / "three")
    assert str(err.value) == f"cannot write {target}: it is a folder"
    assert err.value.path == str(target)
    assert os.listdir(target.parent) == [target.name], "no temporary file left behind"


def test_a_file_size_limit_is_said_in_our_words_and_leaves_nothing(tmp_path):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    got = _save_in_subprocess(tmp_path, "earlier-file", preexec_fn=limit)
    path = tmp_path / "model_snr_results" / "snr_results_m.json"
    assert got["error"] == (
        f"cannot write {path}: the file would exceed the largest file size this process or file system allows"
    )
    assert got["path"] == str(path)
    assert got["files"] == ["snr_results_m.json"], "no temporary or zero-byte file left behind"
    assert got["kept"], "the earlier file is kept as it was"


def test_a_full_file_system_is_said_in_our_words_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    got = _save_in_subprocess(out, "earlier-file", prefix=_in_private_tmpfs(out, "size=16k"))
    path = out / "model_snr_results" / "snr_results_m.json"
    assert got["error"] == f"no space left on device while writing {path}"
    assert got["files"] == ["snr_results_m.json"], "no temporary or zero-byte file left behind"
    assert got["kept"], "the earlier file is kept as it was"
    assert not list(out.iterdir()), "the tmpfs was private to the process"


def test_a_read_only_file_system_is_said_in_our_words(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    got = _save_in_subprocess(out, prefix=_in_private_tmpfs(out, "size=64k,ro"))
    path = out / "model_snr_results" / "snr_results_m.json"
    assert got["error"] == f"cannot write {path}: the file system is read-only"


def test_a_folder_the_user_may_not_write_to(tmp_path):
    out = tmp_path / "out"
    folder = out / "model_snr_results"
    if os.geteuid() != 0:
        folder.mkdir(parents=True)
        folder.chmod(0o500)
        try:
            with pytest.raises(SpectrumError) as err:
                known_result("m").save(out)
        finally:
            folder.chmod(0o700)
        message, files = str(err.value), os.listdir(folder)
    else:
        # Root passes permission bits, but not an immutable folder (EPERM), which needs a
        # file system with attributes: a private tmpfs.
        if shutil.which("chattr") is None:
            pytest.skip("no chattr(1) to make a folder that root may not write to")
        out.mkdir()
        got = _save_in_subprocess(out, "immutable-folder", prefix=_in_private_tmpfs(out, "size=64k"))
        message, files = got["error"], got["files"]
    assert (
        message
        == f"permission denied: cannot write {folder / 'snr_results_m.json'} (is {folder} writable by this user?)"
    )
    assert files == []
