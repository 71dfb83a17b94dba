"""Largest-first against file order for a CPU scan with one worker per core (issue 12's
scheduling). Runs ``spectrum_rs.scan(MODEL, device="cpu")`` in fresh processes, alternating
the two orders, and prints wall and CPU seconds; file order is had by replacing the
scan's scheduler in that process only.

    python benches/bench_schedule.py /tmp/spectrum-rs-bench-models/llama8b-layer --rounds 2

(the model is written by ``benches/models.py``, as for ``bench_cpu.py``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import os, sys, time
import spectrum_rs
from spectrum_rs import scan as scan_module
if sys.argv[2] == "file":
    scan_module._schedule = lambda plan, todo: (todo, True)
t, c = time.perf_counter(), time.process_time()
r = spectrum_rs.scan(sys.argv[1], device="cpu")
print(sys.argv[2], round(time.perf_counter() - t, 1), round(time.process_time() - c, 1), len(r), os.getloadavg()[0])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print("order        wall s   CPU s  layers  load")
    for _ in range(args.rounds):
        for order in ("largest-first", "file"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.model, "file" if order == "file" else "sched"],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ),
            ).stdout.split()
            print(f"{order:<12} {out[1]:>7} {out[2]:>7} {out[3]:>7}  {float(out[4]):.2f}")


if __name__ == "__main__":
    main()
