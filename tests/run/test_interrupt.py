"""Ctrl-C during a long matrix: a real SIGINT sent to a real scan (the Python API and the
command line) is acted on within a few seconds, although the matrix being computed (a
float64 SVD of 3000 x 3000, many seconds on one core) is not finished: the workers compute
in background threads, the calling thread waits in short steps, and the matrix in flight
is abandoned. The finished layers are in the checkpoint and in the exception."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import command
from helpers.models import write_single

#: How soon after SIGINT the process must have exited. The matrix in flight alone takes
#: longer than this (without the background workers the scan would wait for it).
PROMPT_SECONDS = 3.0
BIG = 3000


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A small first layer (done at once), then two 3000 x 3000 float32 layers."""
    g = torch.Generator().manual_seed(6)
    t = {"model.layers.0.mlp.down_proj.weight": torch.randn(64, 64, generator=g)}
    for i in (1, 2):
        t[f"model.layers.{i}.mlp.down_proj.weight"] = torch.randn(BIG, BIG, generator=g)
    return write_single(tmp_path_factory.mktemp("long"), t)


def finished(ck: Path) -> int:
    try:
        return max(0, ck.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def interrupt_after_first_layer(cmd, ck: Path):
    """Starts ``cmd``, waits until the checkpoint holds the first layer and the next (big)
    one is being computed, sends SIGINT; returns (seconds to exit, exit code, stdout,
    stderr, the monotonic time it was sent)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while finished(ck) < 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.5)  # well into the 3000 x 3000 SVD
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        return time.monotonic() - sent, proc.returncode, out, err, sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


API_SCAN = """
import sys
import spectrum_rs
try:
    spectrum_rs.scan(sys.argv[1], device="cpu", method="svd", checkpoint=sys.argv[2])
except spectrum_rs.ScanInterrupted as e:
    import time

    acted = time.monotonic()  # one clock for every process (CLOCK_MONOTONIC)
    assert isinstance(e, KeyboardInterrupt)
    print("interrupted", [layer.name for layer in e.partial], flush=True)
    print(acted, flush=True)
    sys.exit(42)
"""


def test_ctrl_c_interrupts_an_api_scan_within_seconds(long_model, tmp_path):
    ck = tmp_path / "ck.jsonl"
    _, code, out, err, sent = interrupt_after_first_layer(
        [sys.executable, "-c", API_SCAN, str(long_model), str(ck)], ck
    )
    assert code == 42, (code, err)  # a clean exit: no crash of the matrix left in flight
    line, acted = out.strip().splitlines()
    assert line == "interrupted ['model.layers.0.mlp.down_proj']"
    # The caller has its ScanInterrupted at once; the process itself exits once the matrix
    # in flight is done (a BLAS call cannot be stopped, and tearing BLAS down under it
    # crashed the process).
    seconds = float(acted) - sent
    assert seconds < PROMPT_SECONDS, f"took {seconds:.1f} s to act on Ctrl-C"
    assert finished(ck) == 1


def test_ctrl_c_stops_the_command_line_at_once_with_exit_130(long_model, tmp_path):
    out = tmp_path / "out"
    ck = out / "model_snr_results" / "snr_results_m.checkpoint.jsonl"
    cmd = command("scan", long_model, "--name", "m", "--out", out, "--method", "svd", "--device", "cpu")
    seconds, code, _, err, _ = interrupt_after_first_layer(cmd, ck)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert seconds < PROMPT_SECONDS, f"took {seconds:.1f} s to act on Ctrl-C"
    assert finished(ck) == 1
