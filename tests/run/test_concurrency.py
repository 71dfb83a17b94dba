"""Scans running at once: two command-line scans writing the same ``--out`` both succeed
with the files of one scan (the checkpoint is locked: the second waits for the first, says
so once, and resumes from its layers, or refuses clearly after a bound), and two scans in
two threads of one process give the numbers of a sequential scan and leave numpy's BLAS
threads as they found them (the process-wide limit is shared, reference-counted). Real
processes, real threads, real locks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import spectrum_rs
from helpers.cli import command
from helpers.models import write_single
from spectrum_rs import CheckpointBusyError
from spectrum_rs.run import checkpoint as checkpoint_module
from spectrum_rs.run.checkpoint import Checkpoint

NAME = "m"
LAYERS = 8


def model(folder: Path, seed: int = 1, layers: int = LAYERS, size: int = 192) -> Path:
    g = torch.Generator().manual_seed(seed)
    t = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(size, size + 16 * i, generator=g) for i in range(layers)}
    return write_single(folder, t)


def scan_cmd(m: Path, out: Path):
    return command("scan", m, "--name", NAME, "--out", out, "--device", "cpu", "--method", "svd")


def results_folder(out: Path) -> Path:
    return out / "model_snr_results"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    m = model(root / "model")
    subprocess.run(scan_cmd(m, root / "single") + ["--quiet"], check=True, timeout=300)
    return m, {f.name: f.read_bytes() for f in results_folder(root / "single").iterdir()}


def test_two_cli_scans_of_the_same_out_started_together_both_succeed(reference, tmp_path):
    m, expected = reference
    for attempt in range(5):
        out = tmp_path / f"out{attempt}"
        procs = [
            subprocess.Popen(scan_cmd(m, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        for p, err in zip(procs, errs):
            assert p.returncode == 0, err
            assert "No such file" not in err and "Traceback" not in err, err
        files = {f.name: f.read_bytes() for f in results_folder(out).iterdir()}
        assert files == expected, f"attempt {attempt}: only the three files, as one scan writes them"


HOLDER = """
import sys, time
import spectrum_rs
model, ck, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])

def hold_after_the_first_layer(done, *_):
    if done == 1:
        print("holding", flush=True)
        time.sleep(hold)

spectrum_rs.scan(model, device="cpu", method="svd", checkpoint=ck, progress=hold_after_the_first_layer)
print("released", flush=True)
"""


def hold_checkpoint(m: Path, ck: Path, seconds: float) -> subprocess.Popen:
    """A scan in another process that holds the checkpoint's lock for ``seconds`` after its
    first layer; returns once it holds it."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(m), str(ck), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "holding"
    return p


def test_a_second_scan_waits_for_the_first_then_resumes_from_its_layers(reference, tmp_path):
    m, expected = reference
    out = tmp_path / "out"
    ck = results_folder(out) / f"snr_results_{NAME}.checkpoint.jsonl"  # the CLI's checkpoint
    holder = hold_checkpoint(m, ck, 2.0)
    try:
        p = subprocess.run(scan_cmd(m, out), capture_output=True, text=True, timeout=300)
    finally:
        holder.wait(timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("another scan is using this checkpoint; waiting") == 1, p.stderr
    assert f"scanned {LAYERS} layers ({LAYERS} from the checkpoint)" in p.stderr
    assert {f.name: f.read_bytes() for f in results_folder(out).iterdir()} == expected


REFUSER = """
import sys
import spectrum_rs
from spectrum_rs.run import checkpoint
checkpoint.LOCK_WAIT_SECONDS = 0.5
try:
    spectrum_rs.scan(sys.argv[1], device="cpu", method="svd", checkpoint=sys.argv[2])
except spectrum_rs.CheckpointMismatchError as e:
    print(type(e).__name__, e.path == sys.argv[2], e)
"""


def test_a_scan_refuses_when_another_keeps_the_checkpoint(reference, tmp_path):
    m, _ = reference
    ck = tmp_path / "ck.jsonl"
    holder = hold_checkpoint(m, ck, 60.0)
    try:
        p = subprocess.run(
            [sys.executable, "-c", REFUSER, str(m), str(ck)], capture_output=True, text=True, timeout=300
        )
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(
        f"CheckpointBusyError True {ck}: another scan is using this checkpoint (it has not finished after 0.5 s)"
    ), p.stdout
    # The holder was killed: the lock went with it, and its finished layer is resumed.
    assert spectrum_rs.scan(m, device="cpu", method="svd", checkpoint=ck).settings["resumed_layers"] >= 1


def test_two_checkpoints_of_one_path_in_one_process_take_turns(tmp_path, monkeypatch):
    """Locks are per open file: a second scan in another thread of the same process waits
    like another process."""
    monkeypatch.setattr(checkpoint_module, "LOCK_WAIT_SECONDS", 0.3)
    path = tmp_path / "ck.jsonl"
    first = Checkpoint(path, [["m.safetensors", 1, 2, "0" * 16]], {"method": "gram"})
    assert first.load() == {}
    first.open()
    second = Checkpoint(path, [["m.safetensors", 1, 2, "0" * 16]], {"method": "gram"})
    with pytest.warns(RuntimeWarning, match="another scan is using this checkpoint"):
        with pytest.raises(CheckpointBusyError, match="another scan is using this checkpoint"):
            second.load()
    first.close()
    assert second.load() == {}  # free now
    second.open()
    second.close()
    assert path.read_text().count("\n") == 1, "one head line, written once"


def blas_threads_now():
    return [(lib["internal_api"], lib["filepath"], lib["num_threads"]) for lib in threadpool_info()]


def test_two_scans_in_two_threads_match_sequential_scans_and_restore_blas(tmp_path):
    a = model(tmp_path / "a", seed=2, layers=4, size=160)
    b = model(tmp_path / "b", seed=3, layers=6, size=224)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads_now()
        alone_a = spectrum_rs.scan(a, device="cpu")
        alone_b = spectrum_rs.scan(b, device="cpu")
        assert alone_a.settings["device"] == alone_b.settings["device"] == "cpu x2"
        # Force the interleaving in which the scans' limits overlap and the first to start
        # ends first: a starts, b starts, a ends while b runs, b ends.
        a_started, b_started, a_done = threading.Event(), threading.Event(), threading.Event()
        got = {}

        def on_a(done, *_):
            if done == 1:
                a_started.set()
                assert b_started.wait(60)

        def on_b(done, *_):
            if done == 1:
                b_started.set()
                assert a_done.wait(60)

        def run_a():
            assert a_started is not None
            got["a"] = spectrum_rs.scan(a, device="cpu", progress=on_a)
            a_done.set()

        def run_b():
            assert a_started.wait(60)
            got["b"] = spectrum_rs.scan(b, device="cpu", progress=on_b)

        threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert set(got) == {"a", "b"}, "both scans finished"
        after = blas_threads_now()
    assert after == before, "the BLAS threads are as before the scans"
    assert got["b"].settings["device"] == "cpu x2", "planned as alone, although the other scan held the limit"
    assert [(r.name, r.snr) for r in got["a"]] == [(r.name, r.snr) for r in alone_a]
    assert [(r.name, r.snr) for r in got["b"]] == [(r.name, r.snr) for r in alone_b]


def test_the_blas_limit_is_restored_after_overlapping_scans_in_any_order(tmp_path):
    """Many scans in threads at once, started a little apart: the limit is restored once,
    by the last."""
    m = model(tmp_path / "m", seed=4, layers=3, size=96)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads_now()
        alone = [(r.name, r.snr) for r in spectrum_rs.scan(m, device="cpu")]
        results = []

        def one(delay):
            time.sleep(delay)
            results.append([(r.name, r.snr) for r in spectrum_rs.scan(m, device="cpu")])

        threads = [threading.Thread(target=one, args=(0.01 * i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert blas_threads_now() == before
    assert results == [alone] * 6
