"""Model ids resolve through a real Hugging Face cache layout (offline)."""

import os
from pathlib import Path

import pytest
import torch

from helpers.cli import run_cli
from helpers.models import write_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(root: Path, repo: str) -> Path:
    """The layout huggingface_hub writes: blobs, refs/main and a snapshot of symlinks."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    blobs = base / "blobs"
    blobs.mkdir()
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    write_file(
        blobs / "weights",
        {
            "model.layers.0.mlp.up_proj.weight": torch.randn(24, 16),
            "model.layers.1.mlp.up_proj.weight": torch.randn(24, 16),
        },
    )
    (blobs / "config").write_text('{"model_type": "llama"}')
    os.symlink(blobs / "weights", snap / "model.safetensors")
    os.symlink(blobs / "config", snap / "config.json")
    return snap


def run(args, cache, cwd):
    """The command line reading only the Hugging Face cache ``cache``, offline."""
    return run_cli(
        *args,
        cwd=cwd,
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
        unset=("HF_HOME",),
        check=False,
        timeout=300,
    )


def test_cached_model_id_scans_offline(tmp_path):
    cache = tmp_path / "hub"
    fake_cache(cache, "acme/tiny_llama")
    p = run(["scan", "acme/tiny_llama", "--quiet"], cache, tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "model_snr_results" / "snr_results_acme-tiny-llama.json"
    import json

    assert sorted(json.loads(out.read_text())) == ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]


def test_missing_model_id_says_it_is_not_cached_and_offline(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    p = run(["scan", "acme/absent-model"], cache, tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip() == (
        f"spectrum-rs: error: acme/absent-model: not a local path, and not in the "
        f"Hugging Face cache {cache}; downloading is disabled (HF_HUB_OFFLINE is set) (--debug shows the traceback)"
    )


def test_resolve_model_api_and_no_download(tmp_path, monkeypatch):
    from spectrum_rs import SpectrumError
    from spectrum_rs.model.source import looks_like_repo_id, resolve_model

    assert looks_like_repo_id("meta-llama/Llama-3.1-8B") and looks_like_repo_id("gpt2")
    assert not looks_like_repo_id("./model") and not looks_like_repo_id("/abs/x.safetensors")
    local = tmp_path / "local"
    local.mkdir()
    assert resolve_model(str(local)) == local
    with pytest.raises(SpectrumError, match="no such file or directory"):
        resolve_model(str(tmp_path / "nope"))
    cache = tmp_path / "hub"
    snap = fake_cache(cache, "acme/m")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    assert resolve_model("acme/m", download=False) == snap
    with pytest.raises(SpectrumError, match=r"downloading is disabled \(--no-download\)"):
        resolve_model("acme/other", download=False)


def test_a_snapshot_without_weights_is_not_taken_for_the_model(tmp_path):
    """Other tools (AutoConfig, AutoTokenizer) cache a snapshot with only config.json."""
    cache = tmp_path / "hub"
    base = cache / "models--acme--cfg-only"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    p = run(["scan", "acme/cfg-only"], cache, tmp_path)
    assert p.returncode == 1
    assert "holds no complete set of .safetensors weights; downloading is disabled (HF_HUB_OFFLINE is set)" in p.stderr
