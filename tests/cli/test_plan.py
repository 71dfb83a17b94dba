"""``spectrum-rs plan``: the layers, types and bytes it lists (computed here from the tensors
written), that it reads no weight byte (a 20 GB sparse model), its JSON schema, the
calibration cache, the one-line error for a model id missing from the cache, and the
schedules of its cost model on hand-worked cases."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
import struct
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import run_cli
from helpers.models import cast, llama_tensors, write_single
from helpers.oracle import layer_name, spec_type


def plan_cli(*args, cache: Path, env=None, check: bool = True, **kw):
    """``spectrum-rs plan ARGS`` with the calibration cached under ``cache``."""
    return run_cli("plan", *args, env={"SPECTRUM_RS_CACHE": str(cache), **(env or {})}, check=check, **kw)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small Llama model: BF16 matrices and norms, and one F32 matrix (the head)."""
    t = cast(
        llama_tensors(seed=3, n_layers=2, hidden=64, kv=16, inter=96, vocab=128, zero=None, outliers=(), tie_pair=None),
        "BF16",
    )
    t["lm_head.weight"] = t["lm_head.weight"].float()
    return write_single(tmp_path_factory.mktemp("plan_model"), t), t


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, model):
    """The first plan with an empty calibration cache: it calibrates and caches."""
    cache = tmp_path_factory.mktemp("plan_cache")
    folder, _ = model
    p = plan_cli(folder, "--json", cache=cache)
    return cache, p


def test_lists_the_layers_types_and_bytes_of_the_model(model, calibrated):
    folder, tensors = model
    _, p = calibrated
    plan = json.loads(p.stdout)
    matrices = {layer_name(k): v for k, v in tensors.items() if v.dim() == 2}
    got = {layer["name"]: layer for layer in plan["layers"]}
    assert set(got) == set(matrices)
    for name, v in matrices.items():
        rows, cols = v.shape
        small, large = min(rows, cols), max(rows, cols)
        layer = got[name]
        assert (layer["rows"], layer["cols"]) == (rows, cols)
        assert layer["type"] == spec_type(name)
        assert layer["dtype"] == {torch.float32: "F32", torch.bfloat16: "BF16"}[v.dtype]
        assert layer["stored_bytes"] == v.numel() * v.element_size()
        assert layer["decoded_bytes"] == 4 * v.numel()
        assert layer["gram_flops"] == large * small * small
        assert layer["eig_flops"] == 4 * small**3 // 3
        assert layer["seconds"] > 0
    types = {x["type"]: x for x in plan["types"]}
    assert sorted(types) == sorted({spec_type(n) for n in matrices})
    for t, x in types.items():
        members = [v for n, v in matrices.items() if spec_type(n) == t]
        assert x["layers"] == len(members)
        assert x["stored_bytes"] == sum(v.numel() * v.element_size() for v in members)
    assert plan["read"]["stored_bytes"] == sum(v.numel() * v.element_size() for v in matrices.values())
    # A restricted plan lists only what a restricted scan would compute.
    only = json.loads(plan_cli(folder, "--json", "--types", "mlp.*", cache=calibrated[0]).stdout)
    assert {layer["name"] for layer in only["layers"]} == {n for n in matrices if spec_type(n).startswith("mlp.")}


def test_json_has_the_documented_schema(calibrated):
    plan = json.loads(calibrated[1].stdout)
    assert plan["schema"] == 1
    assert {
        "model",
        "files",
        "prediction",
        "layers",
        "types",
        "tied_head",
        "device",
        "read",
        "time",
        "memory",
        "notes",
    } <= set(plan)
    assert {"requested", "kind", "workers", "threads_per_worker", "cores", "calibrated", "calibration"} <= set(
        plan["device"]
    )
    assert {"kernel_seconds", "wall_seconds", "stream_order_seconds", "largest_first_seconds", "floor_seconds"} <= set(
        plan["time"]
    )
    assert {"peak_bytes", "bound_bytes", "baseline_bytes", "window_bytes", "per_worker_bytes"} <= set(plan["memory"])
    assert {"stored_bytes", "cached_bytes", "disk_bytes_per_s", "disk_rate", "seconds"} <= set(plan["read"])
    assert plan["device"]["kind"] == "cpu" and plan["device"]["calibrated"] is True
    assert plan["memory"]["window_bytes"] == 128 << 20
    t, m = plan["time"], plan["memory"]
    # Equal in exact arithmetic when one layer dominates: compare with a rounding margin.
    assert t["floor_seconds"] <= t["largest_first_seconds"] * (1 + 1e-9) <= t["kernel_seconds"] * (1 + 1e-9) + 1e-12
    assert m["baseline_bytes"] < m["peak_bytes"] <= m["bound_bytes"]


def test_human_output_has_a_row_per_type_and_a_total(model, calibrated):
    folder, tensors = model
    out = plan_cli(folder, cache=calibrated[0]).stdout
    for t in {spec_type(layer_name(k)) for k, v in tensors.items() if v.dim() == 2}:
        assert any(line.split()[:1] == [t] for line in out.splitlines()), t
    for label in ("total", "predicted wall", "peak host memory", "read", "workers"):
        assert f"  {label}" in out


def test_calibration_is_cached(model, calibrated):
    cache, first = calibrated
    assert "calibrating" in first.stderr
    assert json.loads(first.stdout)["device"]["calibration"] == "measured now"
    f = cache / "calibration.json"
    before = f.stat().st_mtime_ns
    again = plan_cli(model[0], "--json", cache=cache)
    assert f.stat().st_mtime_ns == before
    assert "calibrating" not in again.stderr
    assert json.loads(again.stdout)["device"]["calibration"] == "cached"


def _resident_pages(path: Path, start: int, end: int) -> int:
    """Pages of ``path`` between byte offsets ``start`` and ``end`` in the page cache
    (``mincore`` on a mapping this test never touches)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = mmap.PAGESIZE
    first = start // page * page
    length = end - first
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, first)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        n = (length + page - 1) // page
        vec = (ctypes.c_ubyte * n)()
        assert libc.mincore(ctypes.c_void_p(addr), length, vec) == 0, ctypes.get_errno()
        libc.munmap(ctypes.c_void_p(addr), length)
        return sum(v & 1 for v in bytes(vec))
    finally:
        os.close(fd)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="mincore and sparse files: Linux")
def test_reads_no_weight_bytes_of_a_20_gb_model(tmp_path, calibrated):
    """A header declaring a 100000 x 100000 BF16 matrix (20 GB) over a sparse file: the plan
    is quick, and afterwards no page of its data is in the page cache (reading any of it
    would have put it there)."""
    big = 100_000 * 100_000 * 2
    header = {
        "model.layers.0.mlp.down_proj.weight": {"dtype": "BF16", "shape": [100_000, 100_000], "data_offsets": [0, big]},
        "model.layers.0.mlp.up_proj.weight": {"dtype": "BF16", "shape": [96, 64], "data_offsets": [big, big + 12288]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "huge" / "model.safetensors"
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + big + 12288)
    st = path.stat()
    assert st.st_size > 20e9 and st.st_blocks * 512 < 1 << 20  # sparse: nothing written but the header
    data_start = 8 + len(raw)
    page = mmap.PAGESIZE
    first_data_page = (data_start + page - 1) // page * page  # the header's last page may hold data too
    assert _resident_pages(path, first_data_page, st.st_size) == 0
    t0 = time.perf_counter()
    p = plan_cli(path.parent, "--json", cache=calibrated[0], timeout=60)
    assert time.perf_counter() - t0 < 30
    plan = json.loads(p.stdout)
    layer = {x["name"]: x for x in plan["layers"]}["model.layers.0.mlp.down_proj"]
    assert (layer["rows"], layer["cols"], layer["stored_bytes"]) == (100_000, 100_000, big)
    assert plan["read"]["cached_bytes"] < page * 2  # the header's page at most
    assert plan["time"]["wall_seconds"] > 3600  # 1e15 flops of Gram matrix alone
    assert _resident_pages(path, first_data_page, st.st_size) == 0


def test_a_model_id_missing_from_the_cache_is_one_line(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    # HF_HUB_OFFLINE unset: plan must not try the Hub (this machine may have no network).
    p = plan_cli(
        "acme/absent-model",
        cache=tmp_path / "cache",
        env={"HF_HUB_CACHE": str(hub)},
        check=False,
        timeout=120,
        unset=("HF_HOME", "HF_HUB_OFFLINE"),
    )
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("spectrum-rs: error: acme/absent-model: not a local path")
    assert f"not in the Hugging Face cache {hub}" in lines[0] and "plan reads local files only" in lines[0]
    assert not (tmp_path / "cache").exists()  # failed before calibrating


# --------------------------------------------------------------------------- the schedules


def test_largest_first_list_scheduling():
    from spectrum_rs.run.plan import largest_first

    # 4, 3, 3, 2 on two workers: 4 and 3 first, then 3 to the one free at 3, then 2 to the one free at 4.
    span, assignment = largest_first([[3, 4, 2, 3], [3, 4, 2, 3]])
    assert span == 6
    assert assignment == [1, 0, 0, 1]


def test_stream_simulation_follows_the_window_rule():
    from spectrum_rs.run.plan import simulate_stream

    mib = 1 << 20

    def one_worker(window):
        return simulate_stream([1, 1], [100 * mib, 100 * mib], [[10, 10]], window * mib, [0, 0], [[0, 0]])

    # Window 150 MiB: the second layer waits until the first one's charge is given back,
    # when the worker asks again (at 11); decoded 11-12, computed 12-22.
    assert one_worker(150).seconds == 22
    # Window 250 MiB: decoded 1-2 while the first computes; taken at 11, done at 21.
    assert one_worker(250).seconds == 21
    # Two workers: the idle one asks at once, so the charge is back at the hand-out.
    two = simulate_stream([1, 1], [100 * mib, 100 * mib], [[10, 10], [10, 10]], 150 * mib, [0, 0], [[0, 0]] * 2)
    assert two.seconds == 12 and two.assignment == [0, 1]
    # A GPU worker holds two layers: it asks for the next one as soon as it has one to
    # compute, so the first charge is back at once and the second layer is decoded 1-2.
    gpu = simulate_stream([1, 1], [100 * mib, 100 * mib], [[10, 10]], 150 * mib, [0, 0], [[0, 0]], slots=[2])
    assert gpu.seconds == 21
    # Memory: each matrix is held from its decoding until its computation ends, and the
    # worker's workspace while it computes: both matrices and both workspaces at 2..11.
    mem = simulate_stream([1, 1], [1, 1], [[10, 10], [10, 10]], 1 << 30, [5, 7], [[100, 100], [100, 100]])
    assert mem.peak_bytes == 5 + 7 + 100 + 100
