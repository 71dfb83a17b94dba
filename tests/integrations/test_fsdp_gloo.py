"""FSDP on two CPU processes (gloo): scan_model of an FSDP2 (fully_shard) and an FSDP1
(use_orig_params=True) model equals the unsharded scan, gathering one parameter (FSDP2)
or one unit with recurse=False (FSDP1) at a time; freeze, training and retarget work on
the sharded model. The ranks run fsdp_worker.py beside this file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import spectrum_rs  # noqa: E402

WORKER = Path(__file__).with_name("fsdp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "rank"
    port = free_port()
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(Path(spectrum_rs.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out), str(port), str(r)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the FSDP ranks did not finish in 240 s")
    reports = []
    for r in (0, 1):
        path = Path(f"{out}.{r}")
        assert path.is_file(), f"rank {r} wrote no report:\n{logs[r][-4000:]}"
        report = json.loads(path.read_text())
        assert "error" not in report, report["error"]
        reports.append(report)
    return reports


def test_fsdp2_scan_equals_the_unsharded_scan(ranks):
    for report in ranks:
        if "fsdp2_unavailable" in report:
            pytest.skip(f"FSDP2 fully_shard: {report['fsdp2_unavailable']}")
        assert report["fsdp2"] == report["reference"]  # names, types, SNRs (bit for bit), ties
        assert report["fsdp2_tied"] == report["reference_tied"]
        assert [row for row in report["fsdp2_tied"] if row[3]] == [
            ["lm_head", "lm_head", row[2], "model.embed_tokens", "lm_head.weight"]
            for row in report["fsdp2_tied"]
            if row[0] == "lm_head"
        ]
        # One full_tensor() per scanned matrix, none for the norms.
        assert len(report["fsdp2_gathers"]) == len(report["reference"]) and all(
            len(s) == 2 for s in report["fsdp2_gathers"]
        )
        assert report["fsdp2_total"] == report["reference_total"]
    assert ranks[0]["fsdp2"] == ranks[1]["fsdp2"]


def test_fsdp2_freeze_train_retarget(ranks):
    for report in ranks:
        if "fsdp2_unavailable" in report:
            pytest.skip(report["fsdp2_unavailable"])
        emb_head = {"model.embed_tokens.weight", "lm_head.weight"}
        first, second = set(report["first"]), set(report["second"])
        assert first != second
        assert set(report["entered"]) == second - first and set(report["left"]) == first - second
        assert set(report["changed_1"]) == first | emb_head  # frozen shards bitwise unchanged
        assert set(report["changed_2"]) == second | emb_head  # entered layers train after retarget


def test_fsdp1_scan_and_freeze(ranks):
    for report in ranks:
        assert report["fsdp1"] == report["reference"]
        # The root and each decoder layer gathered alone (recurse=False), once each.
        assert report["fsdp1_summons"] == [
            ["LlamaForCausalLM", False],
            ["LlamaDecoderLayer", False],
            ["LlamaDecoderLayer", False],
        ]
        assert set(report["fsdp1_changed"]) == set(report["fsdp1_selected"]) | {
            "model.embed_tokens.weight",
            "lm_head.weight",
        }
        assert report["fsdp1_total"] == report["reference_total"]
