"""Hostile files and long runs, the core's side (issue 11): a shard truncated by another
process while it is being scanned, a tensor larger than the memory the process may use,
and tensor names declared twice. Each test makes the real condition: a second process
truncates the file mid-scan, a real ``RLIMIT_AS`` limits the scanning process, the files
hold real duplicate JSON keys. Scans that could kill the interpreter (SIGBUS, an abort on
a failed allocation) run in a child process whose exit status is checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

import spectrum_rs
from helpers.models import raw_safetensors, write_single
from spectrum_rs import ModelFileError, _core
from spectrum_rs.run.checkpoint import finished_layers

# Exit statuses of the child scripts: a clean error of the expected class, or none.
CLEAN_ERROR, NO_ERROR = 3, 4


def child(code: str, *args: str, stdin=None, stdout=None) -> subprocess.Popen:
    """Starts ``code`` in a fresh interpreter (the same ``sys.path`` as this one)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def died_of_a_signal(returncode: int) -> bool:
    return returncode < 0


def many_layers(tmp_path: Path, n: int = 64, side: int = 256) -> Path:
    """A model of ``n`` ``side x side`` F32 layers, one file."""
    rng = np.random.default_rng(0)
    tensors = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.from_numpy(rng.standard_normal((side, side)).astype(np.float32))
        for i in range(n)
    }
    return write_single(tmp_path, tensors) / "model.safetensors"


# The child scans with a window of one byte, so that the reader reads a layer only when
# the workers ask for it. When the first layer is finished (the progress callback), it
# tells the parent, which truncates the file at once: the workers are then still far
# from done (64 layers to compute), and every layer read afterwards meets the change.
SCAN_UNTIL_TOLD = """
    import sys
    import spectrum_rs

    path, checkpoint = sys.argv[1], sys.argv[2]

    def progress(done, total, *rest):
        if done == 1:
            print("first", flush=True)
            sys.stdin.readline()  # the parent changes the file, then answers

    try:
        spectrum_rs.scan(path, device="cpu", window_bytes=1, progress=progress, checkpoint=checkpoint)
    except spectrum_rs.ModelFileError as e:
        print(f"{type(e).__name__}: {e}", flush=True)
        sys.exit(3)
    sys.exit(4)
"""

STREAM_UNTIL_TOLD = """
    import sys
    from spectrum_rs import ModelFileError, _core

    cat = _core.Catalog([sys.argv[1]])
    stream = cat.stream(cat.select(), window_bytes=1, raw=sys.argv[2] == "raw")
    next(stream)
    print("first", flush=True)
    sys.stdin.readline()
    try:
        for _ in stream:
            pass
    except ModelFileError as e:
        print(f"{type(e).__name__}: {e}", flush=True)
        sys.exit(3)
    sys.exit(4)
"""


def change_file(path: Path, how: str, size: int) -> None:
    """Truncates ``path`` (this test is the other process), or truncates it and grows it
    back to its size, which reads as zeros where the data was."""
    os.truncate(path, size // 3 if how == "truncate" else 64)
    if how == "truncate+restore":
        os.truncate(path, size)


def run_and_change(code: str, args: List[str], path: Path, how: str) -> str:
    size = path.stat().st_size
    proc = child(code, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert first == "first\n", (first, proc.stderr.read() if proc.stderr else "")
        change_file(path, how, size)
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        proc.kill()
    assert not died_of_a_signal(proc.returncode), f"killed by signal {-proc.returncode}: {err}"
    assert proc.returncode != -signal.SIGBUS
    assert proc.returncode == CLEAN_ERROR, (proc.returncode, out, err)
    return out


@pytest.mark.parametrize("how", ["truncate", "truncate+restore"])
def test_a_shard_changed_during_a_scan_is_a_clean_error_and_the_finished_layers_are_kept(tmp_path, how):
    path = many_layers(tmp_path / "model")
    original, mtime = path.read_bytes(), path.stat().st_mtime_ns
    checkpoint = tmp_path / "scan.checkpoint.jsonl"
    out = run_and_change(SCAN_UNTIL_TOLD, [str(path), str(checkpoint)], path, how)
    # Not NaN from zeros, not SIGBUS: the file is named, with what changed.
    assert out.startswith(f"ModelFileError: {path}: changed while being read (size {len(original)} -> "), out
    assert "mtime" in out
    kept = finished_layers(checkpoint)
    assert 1 <= kept < 64
    # With the file as it was (its time too: the checkpoint knows it), the scan resumes
    # from the layers finished before the change.
    path.write_bytes(original)
    os.utime(path, ns=(mtime, mtime))
    result = spectrum_rs.scan(path, device="cpu", checkpoint=checkpoint)
    assert len(result.layers) == 64


@pytest.mark.parametrize("mode", ["decoded", "raw"])
def test_a_shard_truncated_under_the_raw_stream(tmp_path, mode):
    path = many_layers(tmp_path, n=4, side=64)
    out = run_and_change(STREAM_UNTIL_TOLD, [str(path), mode], path, "truncate")
    assert out.startswith(f"ModelFileError: {path}: changed while being read (size "), out


# ---------------------------------------------------------------- allocation failure

# The child limits its address space to what it uses plus 2 GiB, then reads a tensor that
# is stored in 1.2 GB and decodes to 2.4 GB (which aborted the process before: "memory
# allocation of 2400000000 bytes failed"), and the raw bytes of one stored in 2.4 GB.
UNDER_A_MEMORY_LIMIT = """
    import resource, sys
    import numpy
    import spectrum_rs
    from spectrum_rs import _core

    def used():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

    limit = used() + (2 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cat = _core.Catalog(sys.argv[1:])
    failed = 0
    for layer, raw in ((0, False), (1, True)):
        try:
            for _ in cat.stream([layer], raw=raw):
                pass
        except MemoryError as e:
            print(f"{type(e).__name__}: {e}", flush=True)
            failed += 1
    try:
        spectrum_rs.scan(sys.argv[1:], device="cpu")
    except MemoryError as e:
        print(f"{type(e).__name__}: {e}", flush=True)
        failed += 1
    sys.exit(3 if failed == 3 else 4)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_tensor_larger_than_the_memory_limit_is_a_memory_error(tmp_path):
    n = 600_000_000
    a, b = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"
    paths = []
    for name, count, file in ((a, n, "a.safetensors"), (b, 2 * n, "b.safetensors")):
        path = raw_safetensors(
            tmp_path / file, {name: {"dtype": "F16", "shape": [1, count], "data_offsets": [0, 2 * count]}}
        )
        with open(path, "r+b") as f:  # sparse: zeros that take no disk
            f.truncate(path.stat().st_size + 2 * count)
        paths.append(path)
    assert [layer.file for layer in _core.Catalog([str(p) for p in paths]).layers()] == [str(p) for p in paths]
    proc = child(UNDER_A_MEMORY_LIMIT, *map(str, paths), stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert not died_of_a_signal(proc.returncode), f"killed by signal {-proc.returncode}: {err}"
    assert proc.returncode == CLEAN_ERROR, (proc.returncode, out, err)
    decoded, stored, scanned = out.splitlines()
    assert decoded == (
        f"MemoryError: {paths[0]}: cannot allocate {4 * n} bytes for its float32 values "
        f'of tensor "{a}" of shape [1, {n}]'
    )
    assert stored == (
        f"MemoryError: {paths[1]}: cannot allocate {4 * n} bytes for the stored bytes "
        f'of tensor "{b}" of shape [1, {2 * n}]'
    )
    assert scanned == decoded


# ---------------------------------------------------------------- names declared twice


def tensor_entry(offsets, shape=(2, 2)):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("first, second", [((0, 16), (0, 16)), ((0, 16), (16, 32))])
@pytest.mark.parametrize("opener", ["catalog", "scan"])
def test_a_name_declared_twice_in_one_header_is_refused(tmp_path, first, second, opener):
    name = "model.layers.0.mlp.up_proj.weight"
    # JSON with the same key twice (json.dumps cannot write it: joined by hand).
    entries = [f'"{name}": {json.dumps(tensor_entry(first))}', f'"{name}": {json.dumps(tensor_entry(second))}']
    if first == second:  # the same offsets: another tensor fills the rest of the data
        entries.insert(1, f'"model.layers.0.mlp.down_proj.weight": {json.dumps(tensor_entry((16, 32)))}')
    header = ("{" + ", ".join(entries) + "}").encode()
    path = raw_safetensors(tmp_path / "model.safetensors", header, bytes(32))
    with pytest.raises(ModelFileError) as err:
        if opener == "catalog":
            _core.Catalog([str(path)])
        else:
            spectrum_rs.scan(path, device="cpu")
    assert err.value.path == str(path)
    assert str(err.value) == (
        f'{path}: tensor "{name}" is declared twice in the header '
        f"(data_offsets [{first[0]}, {first[1]}] and [{second[0]}, {second[1]}])"
    )


def test_a_tensor_in_two_shards_or_listed_twice_is_refused(tmp_path):
    w = {"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2)}
    one = write_single(tmp_path / "a", w) / "model.safetensors"
    two = write_single(tmp_path / "b", w) / "model.safetensors"
    with pytest.raises(ModelFileError) as err:
        spectrum_rs.scan([one, two], device="cpu")
    assert str(err.value) == f'{two}: tensor "model.layers.0.mlp.up_proj.weight" is also in {one}'
    # An index that lists the tensor twice, with one shard and then the other.
    folder = tmp_path / "sharded"
    folder.mkdir()
    for src, dst in ((one, "model-00001-of-00002.safetensors"), (two, "model-00002-of-00002.safetensors")):
        (folder / dst).write_bytes(src.read_bytes())
    # JSON with the same key twice (a dict cannot hold it: written by hand).
    index = folder / "model.safetensors.index.json"
    index.write_text(
        '{"weight_map": {"model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors", '
        '"model.layers.0.mlp.up_proj.weight": "model-00002-of-00002.safetensors"}}'
    )
    with pytest.raises(ModelFileError) as err:
        spectrum_rs.scan(folder, device="cpu")
    assert err.value.path == str(index)
    assert str(err.value) == (
        f'{index}: weight_map lists tensor "model.layers.0.mlp.up_proj.weight" twice '
        '("model-00001-of-00002.safetensors" and "model-00002-of-00002.safetensors")'
    )
