"""Resume after a hard kill: finished layers survive in the checkpoint, are not computed
again, and the final files equal those of an uninterrupted scan. A checkpoint of other
model files or other settings is refused, and one that cannot grow is a clear error."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import spectrum_rs
from helpers.cli import command
from helpers.models import write_file, write_single
from spectrum_rs.run.checkpoint import Checkpoint, identity

NAME = "slow-model"
LAYERS = 12


def slow_model(folder: Path, extra: bool = False) -> Path:
    """Layers big enough (float64 full SVD of 512x512) that a scan takes seconds."""
    g = torch.Generator().manual_seed(1)
    t = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(512, 512, generator=g) for i in range(LAYERS)}
    if extra:
        t["model.norm.weight"] = torch.ones(512)
    return write_single(folder, t)


def scan_cmd(model, out, *extra):
    return command("scan", model, "--name", NAME, "--out", out, "--method", "svd", "--device", "cpu", *extra)


def checkpoint_path(out: Path) -> Path:
    return out / "model_snr_results" / f"snr_results_{NAME}.checkpoint.jsonl"


def finished_lines(path: Path) -> int:
    try:
        return max(0, path.read_text().count("\n") - 1)
    except FileNotFoundError:
        return 0


def kill_part_way(model: Path, out: Path, at_least: int = 3) -> int:
    """Starts a scan, SIGKILLs it once `at_least` layers are in the checkpoint, returns how
    many finished layers the checkpoint holds."""
    proc = subprocess.Popen(scan_cmd(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = checkpoint_path(out)
    deadline = time.monotonic() + 300
    try:
        while finished_lines(ck) < at_least:
            assert proc.poll() is None, "scan ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = finished_lines(ck)
    assert at_least <= done < LAYERS, "the kill should land part-way"
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = slow_model(root / "model")
    full = root / "full"
    subprocess.run(scan_cmd(model, full, "--quiet"), check=True)
    return root, model, full


def test_killed_scan_resumes_to_identical_files(reference):
    root, model, full = reference
    out = root / "killed"
    done = kill_part_way(model, out)
    assert not list((out / "model_snr_results").glob("*.json")), "no final file before the scan ends"
    p = subprocess.run(scan_cmd(model, out), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"scanned {LAYERS} layers ({done} from the checkpoint)" in p.stderr
    for f in sorted((full / "model_snr_results").iterdir()):
        assert (out / "model_snr_results" / f.name).read_bytes() == f.read_bytes(), f.name
    assert not checkpoint_path(out).exists(), "the checkpoint is removed once the files are written"


def test_changed_model_file_is_refused(reference, tmp_path):
    root, model, _ = reference
    copy = slow_model(tmp_path / "model")
    out = tmp_path / "out"
    kill_part_way(copy, out)
    slow_model(copy, extra=True)  # the file now holds one more tensor
    p = subprocess.run(scan_cmd(copy, out), capture_output=True, text=True)
    assert p.returncode == 1
    assert "checkpoint was written for other model files" in p.stderr
    assert str(checkpoint_path(out)) in p.stderr
    # --no-resume starts over instead
    p = subprocess.run(scan_cmd(copy, out, "--no-resume", "--quiet"), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_other_settings_are_refused_through_the_api(tmp_path):
    g = torch.Generator().manual_seed(2)
    write_file(tmp_path / "m.safetensors", {f"l.{i}.w.weight": torch.randn(16, 24, generator=g) for i in range(3)})
    ck = tmp_path / "ck.jsonl"
    first = spectrum_rs.scan(tmp_path / "m.safetensors", checkpoint=ck)
    assert first.settings["resumed_layers"] == 0
    again = spectrum_rs.scan(tmp_path / "m.safetensors", checkpoint=ck)
    assert again.settings["resumed_layers"] == 3
    assert [r.snr for r in again] == [r.snr for r in first]
    with pytest.raises(spectrum_rs.SpectrumError, match="other settings.*method"):
        spectrum_rs.scan(tmp_path / "m.safetensors", checkpoint=ck, method="svd")
    with pytest.raises(spectrum_rs.SpectrumError, match="other settings"):
        spectrum_rs.scan(tmp_path / "m.safetensors", checkpoint=ck, types=["l.0.*"])


def test_a_torn_last_line_is_dropped(tmp_path):
    g = torch.Generator().manual_seed(3)
    f = tmp_path / "m.safetensors"
    write_file(f, {f"l.{i}.w.weight": torch.randn(8, 8, generator=g) for i in range(4)})
    ck = tmp_path / "ck.jsonl"
    full = spectrum_rs.scan(f, checkpoint=ck)
    lines = ck.read_text().splitlines(keepends=True)
    ck.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # head, 2 layers, half a line
    again = spectrum_rs.scan(f, checkpoint=ck)
    assert again.settings["resumed_layers"] == 2
    assert [r.snr for r in again] == [r.snr for r in full]
    assert ck.read_text().count("\n") == 5  # head + 4 complete layers, no torn fragment


def test_checkpoint_identity_is_names_sizes_times_and_header_hashes(tmp_path):
    f = tmp_path / "m.safetensors"
    write_file(f, {"a.weight": torch.zeros(2, 2)})
    ident = identity(spectrum_rs._core.Catalog([str(f)]).files())
    assert ident[0][:3] == ["m.safetensors", os.path.getsize(f), os.stat(f).st_mtime_ns]
    assert len(ident[0][3]) == 16
    assert Checkpoint(tmp_path / "none.jsonl", ident, {}).load() == {}


def test_weights_saved_again_over_the_same_layout_are_refused(tmp_path):
    f = tmp_path / "m.safetensors"
    write_file(f, {f"l.{i}.w.weight": torch.randn(8, 8) for i in range(3)})
    ck = tmp_path / "ck.jsonl"
    spectrum_rs.scan(f, checkpoint=ck)
    write_file(f, {f"l.{i}.w.weight": torch.randn(8, 8) for i in range(3)})  # same header
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(spectrum_rs.SpectrumError, match="other model files"):
        spectrum_rs.scan(f, checkpoint=ck)


def test_a_line_without_its_newline_is_dropped_even_if_it_parses(tmp_path):
    f = tmp_path / "m.safetensors"
    write_file(f, {f"l.{i}.w.weight": torch.randn(8, 8, generator=torch.Generator().manual_seed(i)) for i in range(5)})
    ck = tmp_path / "ck.jsonl"
    full = spectrum_rs.scan(f, checkpoint=ck)
    lines = ck.read_text().splitlines(keepends=True)
    ck.write_text("".join(lines[:3]) + lines[3].rstrip("\n"))  # killed before the newline
    again = spectrum_rs.scan(f, checkpoint=ck)
    assert again.settings["resumed_layers"] == 2
    assert [r.snr for r in again] == [r.snr for r in full]
    third = spectrum_rs.scan(f, checkpoint=ck)  # every line now whole: all 5 resume
    assert third.settings["resumed_layers"] == 5
    assert all(json.loads(line) for line in ck.read_text().splitlines())


def test_an_empty_or_damaged_checkpoint_is_handled(tmp_path):
    f = tmp_path / "m.safetensors"
    write_file(f, {f"l.{i}.w.weight": torch.randn(8, 8) for i in range(3)})
    ck = tmp_path / "ck.jsonl"
    ck.write_bytes(b"")  # killed before the head line: nothing was computed
    assert spectrum_rs.scan(f, checkpoint=ck).settings["resumed_layers"] == 0
    lines = ck.read_text().splitlines(keepends=True)
    ck.write_text(lines[0] + lines[1] + "[1, 2]\n" + lines[2])  # a line that is not a layer
    assert spectrum_rs.scan(f, checkpoint=ck).settings["resumed_layers"] == 1
    ck.write_text("garbage\n")
    with pytest.raises(spectrum_rs.SpectrumError, match="not a spectrum-rs checkpoint"):
        spectrum_rs.scan(f, checkpoint=ck)


CHECKPOINT_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
import spectrum_rs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
try:
    spectrum_rs.scan(sys.argv[1], checkpoint=sys.argv[2])
except spectrum_rs.SpectrumError as e:
    print(e.path == sys.argv[2], e)
"""


def test_a_checkpoint_that_cannot_grow_is_a_clear_error_and_stays_whole(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE) reached while appending a finished layer: the
    scan stops with the checkpoint's name and the reason in our words, and a later scan
    resumes the layers written whole before it (a torn last line is dropped)."""
    g = torch.Generator().manual_seed(11)
    f = write_file(tmp_path / "m.safetensors", {f"l.{i}.w.weight": torch.randn(8, 8, generator=g) for i in range(40)})
    ck = tmp_path / "ck.jsonl"
    p = subprocess.run(
        [sys.executable, "-c", CHECKPOINT_UNDER_A_SIZE_LIMIT, str(f), str(ck)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (
        f"True cannot write {ck}: the file would exceed the largest file size this process or file system allows"
    )
    kept = spectrum_rs.scan(f, checkpoint=ck).settings["resumed_layers"]
    assert 0 < kept < 40
    assert spectrum_rs.scan(f, checkpoint=ck).settings["resumed_layers"] == 40  # it grew on from there
