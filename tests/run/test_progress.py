"""Progress reporting (callback, terminal bar, plain lines for batch logs) and a clean
stop on Ctrl-C that keeps the checkpoint usable."""

import io
import signal
import subprocess
import time
from pathlib import Path

import torch

import spectrum_rs
from helpers.cli import command
from helpers.models import write_file
from spectrum_rs.run.progress import Progress


def small_model(path: Path, layers: int = 5) -> Path:
    g = torch.Generator().manual_seed(9)
    return write_file(
        path, {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 20, generator=g) for i in range(layers)}
    )


def test_callback_sees_every_layer_and_the_byte_totals(tmp_path):
    f = small_model(tmp_path / "m.safetensors")
    calls = []
    spectrum_rs.scan(f, progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5]
    assert all(c[1] == 5 and c[3] == 5 * 32 * 20 * 4 for c in calls)
    assert calls[-1][2] == calls[-1][3]
    assert {c[4] for c in calls} == {f"model.layers.{i}.mlp.up_proj" for i in range(5)}


def test_an_interrupted_api_scan_hands_back_the_finished_layers(tmp_path):
    f = small_model(tmp_path / "m.safetensors")
    full = spectrum_rs.scan(f)

    def ctrl_c_after_two(done, *_):
        if done == 2:
            raise KeyboardInterrupt

    try:
        spectrum_rs.scan(f, progress=ctrl_c_after_two)
    except spectrum_rs.ScanInterrupted as e:
        assert isinstance(e, KeyboardInterrupt)
        assert len(e.partial) == 2
        assert [(r.name, r.snr) for r in e.partial] == [
            (r.name, r.snr) for r in full if r.name in {p.name for p in e.partial}
        ]
    else:
        raise AssertionError("the scan should have been interrupted")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_plain_lines():
    tty = Terminal()
    bar = Progress(True, total_layers=2, total_bytes=2048, stream=tty)
    bar.update("model.layers.0.q_proj", 1024)
    bar.update("model.layers.1.q_proj", 1024)
    bar.close()
    text = tty.getvalue()
    assert "\r" in text and "2/2 layers" in text and "model.layers.1.q_proj" in text

    log = io.StringIO()
    plain = Progress(True, total_layers=2, total_bytes=2048, stream=log)
    plain.update("a", 1024)
    plain.update("b", 1024)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("spectrum-rs: 2/2 layers, 2.0 KiB/2.0 KiB (100%)") and lines[-1].endswith("at b")

    quiet = io.StringIO()
    Progress(False, total_layers=1, total_bytes=1, stream=quiet).update("a", 1)
    assert quiet.getvalue() == ""


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    g = torch.Generator().manual_seed(4)
    model = tmp_path / "m.safetensors"
    write_file(model, {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(512, 512, generator=g) for i in range(12)})
    out = tmp_path / "out"
    cmd = command("scan", model, "--name", "m", "--out", out, "--method", "svd", "--device", "cpu")
    ck = out / "model_snr_results" / "snr_results_m.checkpoint.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (ck.exists() and ck.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "To resume: spectrum-rs scan" in err and str(ck) in err
    assert "Traceback" not in err
    kept = ck.read_text().count("\n") - 1
    assert 2 <= kept < 12
    again = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    fresh = tmp_path / "fresh"
    subprocess.run(
        cmd[:5] + ["--name", "m", "--out", str(fresh), "--method", "svd", "--device", "cpu", "--quiet"], check=True
    )
    for f in (fresh / "model_snr_results").iterdir():
        assert (out / "model_snr_results" / f.name).read_bytes() == f.read_bytes()
