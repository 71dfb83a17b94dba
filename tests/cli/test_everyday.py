"""Everyday use as a newcomer meets it: default result names, never losing a finished
result, `show` agreeing with the YAML, messages about devices and torch, `--debug` where
users put it. Subprocesses of the real CLI on real safetensors files."""

import json
import subprocess
import sys

import torch

import spectrum_rs
from helpers.cli import run_cli as run
from helpers.models import cast, write_single


def tiny(folder, layers=4, hidden=32, config=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {
        "model.embed_tokens.weight": torch.randn(64, hidden, generator=g),
        "lm_head.weight": torch.randn(64, hidden, generator=g),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = torch.randn(hidden, hidden, generator=g)
        t[p + "mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g) * (1 + i)
    return write_single(folder, cast(t, "BF16"), config=config)


def results_names(out):
    return sorted(p.name for p in (out / "model_snr_results").iterdir())


def test_a_folder_is_named_by_the_hub_id_its_config_records(tmp_path):
    model = tiny(tmp_path / "checkpoint-500", config={"_name_or_path": "acme/Tiny-7B", "model_type": "llama"})
    run("scan", model, "--out", tmp_path / "o")
    assert "snr_results_acme-Tiny-7B.json" in results_names(tmp_path / "o")


def test_a_folder_without_a_hub_id_is_named_by_the_folder(tmp_path):
    model = tiny(tmp_path / "my_model", config={"_name_or_path": "/home/me/train/out", "model_type": "llama"})
    p = run("scan", model, "--out", tmp_path / "o")
    assert "snr_results_my-model.json" in results_names(tmp_path / "o")
    assert "--name" in p.stderr  # says how the name came about, and how to choose another


def test_a_restricted_scan_never_replaces_a_fuller_result_silently(tmp_path):
    model = tiny(tmp_path / "m")
    out = tmp_path / "o"
    run("scan", model, "--out", out, "--name", "m")
    full = out / "model_snr_results" / "snr_results_m.json"
    before = full.read_bytes()
    p = run("scan", model, "--out", out, "--name", "m", "--types", "mlp.up_proj", check=False)
    assert p.returncode == 1
    assert "--overwrite" in p.stderr and str(full) in p.stderr
    assert full.read_bytes() == before  # untouched
    # With --overwrite the restricted scan is written (from the
    # checkpoint the refused run kept: nothing is computed twice).
    p = run("scan", model, "--out", out, "--name", "m", "--types", "mlp.up_proj", "--overwrite")
    assert "4 from the checkpoint" in p.stderr
    assert sorted(json.loads(full.read_text())) == [f"model.layers.{i}.mlp.up_proj" for i in range(4)]
    # Rerunning that restricted scan over its own result is fine: nothing is dropped.
    run("scan", model, "--out", out, "--name", "m", "--types", "mlp.up_proj")


def test_show_agrees_with_the_yaml_about_embeddings_and_head(tmp_path):
    model = tiny(tmp_path / "m")
    run("scan", model, "--out", tmp_path, "--name", "m")
    results = tmp_path / "model_snr_results" / "snr_results_m.json"
    yaml_text = (tmp_path / "model_snr_results" / "snr_results_m_unfrozenparameters_25percent.yaml").read_text()
    assert "- ^lm_head.weight$" in yaml_text
    out = run("show", results).stdout
    head_rows = [line for line in out.splitlines() if line.strip().split()[1:2] == ["lm_head"]]
    assert head_rows and head_rows[0].rstrip().endswith("yes (embedding/head)")
    out = run("show", results, "--no-embeddings").stdout
    head_rows = [line for line in out.splitlines() if line.strip().split()[1:2] == ["lm_head"]]
    assert "yes" not in head_rows[0]


def test_show_summarises_a_large_result_per_type(tmp_path):
    # A MoE result with reference types: one type per expert number (64 of them per projection).
    layers = [
        spectrum_rs.LayerResult(
            name=f"model.layers.{i // 64}.mlp.experts.{i % 64}.down_proj",
            type=f"mlp.experts.{i % 64}.down_proj",
            snr=float(i),
        )
        for i in range(4000)
    ]
    layers.append(spectrum_rs.LayerResult(name="lm_head", type="lm_head", snr=1.0))
    paths = spectrum_rs.ScanResult(model_name="moe", layers=layers).save(tmp_path, name="moe")
    out = run("show", paths["results"]).stdout.splitlines()
    assert len(out) <= 10  # a screenful: the 64 expert types are one family line
    row = next(line for line in out if line.strip().startswith("mlp.experts.*.down_proj"))
    # 64 types, 4000 layers; int(count * 25 / 100) of each type's 62 or 63 layers trains.
    expected_trained = sum(int(sum(1 for i in range(4000) if i % 64 == e) * 25 / 100) for e in range(64))
    assert row.split()[1:4] == ["64", "4000", str(expected_trained)]
    assert row.split()[-1] == "model.layers.62.mlp.experts.31.down_proj"  # the highest SNR, 3999
    assert len(run("show", paths["results"], "--full").stdout.splitlines()) > 4000


def test_an_unknown_device_is_refused_without_importing_torch(tmp_path):
    model = tiny(tmp_path / "m", layers=1)
    code = (
        "import sys, spectrum_rs\n"
        "try:\n"
        f"    spectrum_rs.scan({str(model)!r}, device='gpu')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "print('torch' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    message, imported = p.stdout.strip().splitlines()
    assert "unknown device 'gpu'" in message and "cuda:N" in message
    assert imported == "False"


def test_cuda_without_torch_says_how_to_install_it(tmp_path):
    model = tiny(tmp_path / "m", layers=1)
    # torch is installed here: hide it from this one process, as on a machine without it.
    code = (
        "import importlib.util as u, sys\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'torch' else real(name, *a)\n"
        "import spectrum_rs\n"
        "try:\n"
        f"    spectrum_rs.scan({str(model)!r}, device='cuda')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs torch, which is not installed" in p.stdout and "pip install" in p.stdout


def test_the_version_is_the_crates(tmp_path):
    from pathlib import Path

    import tomllib  # Python 3.11+, which the tests run on

    cargo = tomllib.loads((Path(__file__).parents[2] / "Cargo.toml").read_text())
    assert spectrum_rs.__version__ == cargo["package"]["version"]
    assert run("--version").stdout.strip() == f"spectrum-rs {spectrum_rs.__version__}"


def test_plot_colours_each_type_by_its_own_best_layer():
    from spectrum_rs.plot import heatmap

    layers = [spectrum_rs.LayerResult(name="model.embed_tokens", type="model.embed_tokens", snr=100.0)]
    for i, (q, up) in enumerate([(0.2, 3.0), (0.1, 6.0), (0.05, 1.5)]):
        layers.append(
            spectrum_rs.LayerResult(name=f"model.layers.{i}.self_attn.q_proj", type="self_attn.q_proj", snr=q)
        )
        layers.append(spectrum_rs.LayerResult(name=f"model.layers.{i}.mlp.up_proj", type="mlp.up_proj", snr=up))
    h = heatmap(spectrum_rs.ScanResult(model_name="m", layers=layers))
    q_row, up_row = h.types.index("self_attn.q_proj"), h.types.index("mlp.up_proj")
    # The embedding's SNR of 100 does not darken the attention row: its best layer is 1.
    assert list(h.relative[q_row][:3]) == [1.0, 0.5, 0.25]
    assert list(h.relative[up_row][:3]) == [0.5, 1.0, 0.25]
    assert h.best[q_row] == 0.2 and h.labels == ["0", "1", "2", "other"]


def test_the_default_read_ahead_window_is_128_mib():
    from spectrum_rs.cli import build_parser
    from spectrum_rs.scan import DEFAULT_WINDOW_BYTES

    args = build_parser().parse_args(["scan", "some/model"])
    assert args.window_bytes == DEFAULT_WINDOW_BYTES == 128 << 20
    assert build_parser().parse_args(["scan", "m", "--window-mb", "0.5"]).window_bytes == 1 << 19
