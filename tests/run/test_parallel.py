"""Scans spread over several workers (threads, one per device) and over several
processes with torch.distributed (torchrun, gloo on the CPU) give the single-process
result."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import spectrum_rs
from helpers.cli import command
from helpers.models import cast, write_single
from spectrum_rs.run.distributed import layer_cost, shares


def model(folder: Path) -> Path:
    g = torch.Generator().manual_seed(5)
    t = {"model.embed_tokens.weight": torch.randn(200, 64, generator=g)}
    for i in range(6):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(64, 64, generator=g)
        t[f"model.layers.{i}.self_attn.k_proj.weight"] = torch.randn(16, 64, generator=g)
        t[f"model.layers.{i}.mlp.down_proj.weight"] = torch.randn(64, 176, generator=g) * (i + 1)
    return write_single(folder, cast(t, "BF16"))


def test_shares_cover_every_layer_once_and_balance_cost():
    costs = [(i, layer_cost(r, c)) for i, (r, c) in enumerate([(64, 64), (16, 64), (64, 176)] * 6 + [(200, 64)])]
    for world in (1, 2, 3, 7):
        s = shares(costs, world)
        assert sorted(i for part in s for i in part) == list(range(len(costs)))
        assert s == shares(list(reversed(costs)), world)  # deterministic whatever the input order
        loads = [sum(dict(costs)[i] for i in part) for part in s]
        assert max(loads) - min(loads) <= max(c for _, c in costs)  # greedy bound


def test_two_workers_pulling_from_one_stream_match_one_worker(tmp_path):
    m = model(tmp_path / "m")
    one = spectrum_rs.scan(m, device="cpu")
    two = spectrum_rs.scan(m, device=["cpu", "cpu"], window_bytes=1)
    assert two.settings["device"] == "cpu x2"
    assert [(r.name, r.snr) for r in two] == [(r.name, r.snr) for r in one]


def test_a_cpu_scan_runs_one_single_threaded_worker_per_blas_thread(tmp_path):
    m = model(tmp_path / "m")
    one = spectrum_rs.scan(m, device="cpu")
    assert one.settings["device"] == "cpu"  # conftest pins BLAS to one thread
    with threadpool_limits(limits=2, user_api="blas"):
        two = spectrum_rs.scan(m, device="cpu")
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(n == 2 for n in blas), "the caller's thread setting is restored"
    assert two.settings["device"] == "cpu x2"
    # Each matrix is computed by one thread either way: the numbers are identical.
    assert [(r.name, r.snr) for r in two] == [(r.name, r.snr) for r in one]


def test_the_last_matrix_is_computed_on_one_thread_even_when_the_other_worker_idles(tmp_path):
    """Two single-threaded workers; one takes the large matrix (largest first), the other
    the small ones and then idles. The large matrix still runs on one BLAS thread: with
    two, OpenBLAS sums in another order (numpy's eigvalsh of a 1000² matrix, dsyrk at
    2500, dgesdd: other last bits, benches/results/schedule-2026-12-01.md), and which
    matrix would get them depends on timing, so a rerun or a resumed scan would write other
    files. The numbers are a one-worker scan's, and the caller's threads come back."""
    g = torch.Generator().manual_seed(8)
    t = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(48, 32, generator=g) for i in range(12)}
    t["lm_head.weight"] = torch.randn(1536, 1536, generator=g)
    m = write_single(tmp_path / "m", t)
    one = spectrum_rs.scan(m, device="cpu")
    seen = []

    def progress(done, total, done_bytes, total_bytes, name):
        seen.append((name, [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]))

    with threadpool_limits(limits=2, user_api="blas"):
        two = spectrum_rs.scan(m, device="cpu", progress=progress)
        after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert two.settings["device"] == "cpu x2"
    assert seen[-1][0] == "lm_head", "the large matrix finished last, alone"
    assert all(threads == [1] * len(threads) for _, threads in seen), "one thread per matrix throughout"
    assert after == [2] * len(after)
    assert [(r.name, r.snr) for r in two] == [(r.name, r.snr) for r in one]


@pytest.mark.parametrize("device", [["cpu", "cpu"], ["cpu"]], ids=["two", "one"])
def test_a_list_of_cpu_workers_computes_on_one_thread_each(tmp_path, device):
    """Workers named in a list get one BLAS thread each too, whatever the process has:
    the numbers are those of ``device="cpu"`` (on two threads OpenBLAS's eigvalsh of the
    1536² Gram matrix gives other last bits)."""
    g = torch.Generator().manual_seed(8)
    t = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(48, 32, generator=g) for i in range(4)}
    t["lm_head.weight"] = torch.randn(1536, 1536, generator=g)
    m = write_single(tmp_path / "m", t)
    seen = []

    def progress(*_):
        seen.append([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"])

    with threadpool_limits(limits=2, user_api="blas"):
        planned = spectrum_rs.scan(m, device="cpu")
        listed = spectrum_rs.scan(m, device=device, progress=progress)
    assert listed.settings["device"] == ("cpu x2" if len(device) == 2 else "cpu")
    assert seen and all(threads == [1] * len(threads) for threads in seen)
    assert [(r.name, r.snr) for r in listed] == [(r.name, r.snr) for r in planned]


def test_unknown_device_is_a_clear_error(tmp_path):
    m = model(tmp_path / "m")
    with pytest.raises(ValueError, match="device"):
        spectrum_rs.scan(m, device="tpu:0")
    with pytest.raises(ValueError, match="device list is empty"):
        spectrum_rs.scan(m, device=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the torchrun test runs on CPU (gloo)")
def test_torchrun_two_processes_write_the_single_process_files(tmp_path):
    m = model(tmp_path / "m")
    # Same threads per process as torchrun's default, so the floating-point sums run in the
    # same order and the files can be compared byte for byte.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = tmp_path / "single"
    subprocess.run(command("scan", m, "--name", "m", "--out", single, "--quiet"), check=True, env=env, timeout=600)
    multi = tmp_path / "multi"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "spectrum_rs",
            "scan",
            str(m),
            "--name",
            "m",
            "--out",
            str(multi),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "in 2 processes" in p.stderr
    assert p.stderr.count("wrote ") == 3  # only rank 0 writes
    files = sorted(f.name for f in (single / "model_snr_results").iterdir())
    assert files == sorted(f.name for f in (multi / "model_snr_results").iterdir())
    assert len(files) == 3  # no rank checkpoint left behind
    for name in files:
        assert (multi / "model_snr_results" / name).read_bytes() == (single / "model_snr_results" / name).read_bytes()


RANK_SCRIPT = """
import sys, torch.distributed as dist
import spectrum_rs
dist.init_process_group("gloo")
rank = dist.get_rank()
model, mode = sys.argv[1], sys.argv[2]
if mode == "rank0-only":
    # A plain library call inside a multi-process job must not join a collective.
    if rank == 0:
        print("plain", len(spectrum_rs.scan(model)))
elif mode == "one-rank-fails":
    ck = model + "/ck.jsonl"
    if rank == 1:
        open(ck + ".rank1-of-2", "w").write("not a checkpoint\\n")
    try:
        spectrum_rs.scan(model, distributed_scan=True, checkpoint=ck)
    except spectrum_rs.SpectrumError as e:
        print(f"rank {rank} raised: {e}")
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("mode", ["rank0-only", "one-rank-fails"])
def test_process_groups_neither_hang_nor_hide_a_rank_error(tmp_path, mode):
    m = model(tmp_path / "m")
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(m),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr
    if mode == "rank0-only":
        assert "plain 19" in p.stdout
    else:
        # Both ranks raise, and both name the rank whose checkpoint was refused.
        assert p.stdout.count("raised:") == 2
        assert p.stdout.count("ck.jsonl.rank1-of-2: not a spectrum-rs checkpoint") == 2


def test_the_stream_reads_in_the_order_given_when_asked(tmp_path):
    # Largest first, the scheduler's order for several CPU workers: the reader keeps it.
    g = torch.Generator().manual_seed(3)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8 + 8 * i, 16, generator=g) for i in range(5)}
    folder = write_single(tmp_path / "m", tensors)
    cat = spectrum_rs._core.Catalog([str(folder)])
    by_size = sorted(range(5), key=lambda i: -cat.layers()[i].rows)
    stream = cat.stream(by_size, file_order=False)
    assert [index for index, _, _ in stream] == by_size
    stream = cat.stream(by_size)  # the default: the files' order
    assert [index for index, _, _ in stream] == sorted(by_size, key=lambda i: cat.layers()[i].name)


def test_largest_first_scheduling_gives_the_numbers_of_file_order(tmp_path):
    g = torch.Generator().manual_seed(4)
    tensors = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16 + 24 * (i % 3), 32, generator=g) for i in range(9)
    }
    folder = write_single(tmp_path / "m", tensors)
    with threadpool_limits(limits=2, user_api="blas"):
        two = spectrum_rs.scan(folder, device="cpu")  # two workers: largest first
    one = spectrum_rs.scan(folder, device=["cpu"])  # one worker: file order
    assert [(r.name, r.snr) for r in two] == [(r.name, r.snr) for r in one]
