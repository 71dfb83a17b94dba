"""The command line end to end, through subprocesses, on real safetensors files."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.cli import run_cli as run
from helpers.models import cast, write_single


def llama_like(folder: Path, layers: int = 4, hidden: int = 48, seed: int = 0) -> Path:
    """A tiny Llama-named bf16 model in ``folder`` (q/k/v/o with GQA k/v, MLP, norms)."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "model.embed_tokens.weight": torch.randn(100, hidden, generator=g),
        "lm_head.weight": torch.randn(100, hidden, generator=g),
        "model.norm.weight": torch.ones(hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = torch.randn(hidden, hidden, generator=g)
        t[p + "self_attn.k_proj.weight"] = torch.randn(hidden // 4, hidden, generator=g)
        t[p + "mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g) * (1 + i)
        t[p + "input_layernorm.weight"] = torch.ones(hidden)
    return write_single(folder, cast(t, "BF16"))


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = llama_like(root / "model")
    p = run("scan", model, "--name", "org/tiny_model", "--top-percent", "50", cwd=root)
    return root, model, p


def test_scan_writes_the_three_files_in_the_current_folder(scanned):
    root, model, p = scanned
    out = root / "model_snr_results"
    assert sorted(f.name for f in out.iterdir()) == [
        "snr_results_org-tiny-model.json",
        "snr_results_org-tiny-model_sorted.json",
        "snr_results_org-tiny-model_unfrozenparameters_50percent.yaml",
    ]
    data = json.loads((out / "snr_results_org-tiny-model.json").read_text())
    api = spectrum_rs.scan(model)
    assert set(data) == {r.name for r in api}
    for r in api:
        assert data[r.name]["type"] == r.type
        assert data[r.name]["snr"] == pytest.approx(r.snr, rel=1e-12)
    assert "scanned 14 layers" in p.stderr and "peak memory" in p.stderr
    assert "snr_results_org-tiny-model.json" in p.stderr


def test_scan_never_prompts_and_prints_plain_progress_in_a_log(scanned):
    _, _, p = scanned
    # stdin is not a terminal and no question was asked; stderr is a pipe -> plain lines
    assert "spectrum-rs: 14/14 layers" in p.stderr
    assert "\r" not in p.stderr


def test_quiet_prints_only_where_the_files_went(tmp_path):
    model = llama_like(tmp_path / "m", layers=1)
    p = run("scan", model, "--quiet", "--out", tmp_path / "o", "--name", "org/m")
    written = sorted((tmp_path / "o" / "model_snr_results").iterdir())
    assert len(written) == 3 and p.stdout == ""
    assert p.stderr.splitlines() == [
        f"spectrum-rs: wrote {tmp_path / 'o' / 'model_snr_results' / 'snr_results_org-m.json'} "
        f"and its _sorted.json and .yaml"
    ]


def test_select_reselects_without_rescanning(scanned):
    root, _, _ = scanned
    results = root / "model_snr_results" / "snr_results_org-tiny-model.json"
    ranked = spectrum_rs.ScanResult.load(results).ranked()
    # 4 layers per block type: 75% keeps the best 3 of each, 1 of 1 for single layers -> 0
    names = run("select", results, "--top-percent", "75", "--format", "names").stdout.split()
    expected = [layer.name for t in sorted(ranked) for layer in ranked[t][: int(len(ranked[t]) * 0.75)]]
    assert names == expected
    assert len(names) == 9
    peft = json.loads(run("select", results, "--top-percent", "75", "--format", "peft").stdout)
    assert peft == {"target_modules": expected}
    by_type = json.loads(run("select", results, "--top-percent", "75", "--format", "json").stdout)
    assert by_type["self_attn.q_proj"] == [layer.name for layer in ranked["self_attn.q_proj"][:3]]
    yaml_text = run("select", results, "--top-percent", "75").stdout
    assert yaml_text.startswith("unfrozen_parameters:\n- ^lm_head.weight$\n- ^model.embed_tokens.weight$\n")
    out = root / "sel.yaml"
    run("select", results, "--top-percent", "75", "-o", out)
    assert out.read_text() == yaml_text


def test_select_reads_a_reference_tool_file(tmp_path):
    ref = tmp_path / "snr_results_x.json"
    ref.write_text(
        '{"model.layers.0.mlp.up_proj": {"snr": Infinity, "type": "mlp.up_proj"},'
        ' "model.layers.1.mlp.up_proj": {"snr": 0.5, "type": "mlp.up_proj"}}'
    )
    assert run("select", ref, "--top-percent", "50", "--format", "names").stdout == "model.layers.0.mlp.up_proj\n"


def test_show_prints_a_table_per_type(scanned):
    root, _, _ = scanned
    results = root / "model_snr_results" / "snr_results_org-tiny-model.json"
    out = run("show", results, "--top-percent", "50").stdout
    assert "mlp.up_proj  (2 of 4 selected at 50%)" in out
    best = spectrum_rs.ScanResult.load(results).ranked()["mlp.up_proj"][0].name
    line = next(line for line in out.splitlines() if best in line)
    assert line.split()[0] == "1" and line.rstrip().endswith("yes")


def test_plot_writes_a_non_blank_png_of_the_right_size(scanned, tmp_path):
    pytest.importorskip("matplotlib")
    root, _, _ = scanned
    png = tmp_path / "snr.png"
    run("plot", root / "model_snr_results" / "snr_results_org-tiny-model.json", "-o", png)
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    h, w = img.shape[:2]
    assert w >= 600 and h >= 300  # the figure is sized to fit every type label
    assert np.unique(img.reshape(-1, img.shape[-1]), axis=0).shape[0] > 50  # not blank


def test_plot_is_readable_for_80_layers_and_7_types(tmp_path):
    pytest.importorskip("matplotlib")
    types = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    data = {
        f"model.layers.{i}.{t}": {"snr": 0.1 + ((i * 7 + j) % 13) / 10, "type": t}
        for j, t in enumerate(types)
        for i in range(80)
    }
    src = tmp_path / "big.json"
    src.write_text(json.dumps(data))
    png = tmp_path / "big.png"
    run("plot", src, "-o", png)
    import matplotlib.image

    h, w = matplotlib.image.imread(str(png)).shape[:2]
    assert w >= 1500 and h >= 300  # wide enough for 80 columns


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["scan"],
        ["frobnicate"],
        ["select", "x.json", "--top-percent", "140"],
        ["scan", "m", "--method", "qr"],
        ["scan", "m", "--window-mb", "-1"],
    ],
)
def test_bad_arguments_exit_2(args):
    p = run(*args, check=False)
    assert p.returncode == 2
    assert "usage:" in p.stderr


def test_missing_model_is_one_line_and_exit_1(tmp_path):
    p = run("scan", tmp_path / "nope", check=False, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"spectrum-rs: error: {tmp_path / 'nope'}: no such file or directory (--debug shows the traceback)"
    ]
    assert "Traceback" not in p.stderr
    p = run("--debug", "scan", tmp_path / "nope", check=False, cwd=tmp_path)
    assert "Traceback" in p.stderr
    p = run("scan", tmp_path / "nope", "--debug", check=False, cwd=tmp_path)  # after the command too
    assert "Traceback" in p.stderr and p.returncode == 1


def test_broken_results_file_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for cmd in ("select", "show"):
        p = run(cmd, bad, check=False)
        assert p.returncode == 1
        assert str(bad) in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_module_and_console_script_are_the_same_program(tmp_path):
    import shutil

    exe = shutil.which("spectrum-rs")
    if exe is None:
        pytest.skip("console script not on PATH (package not installed with pip)")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == f"spectrum-rs {spectrum_rs.__version__}"
