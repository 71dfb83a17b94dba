"""Checks ``spectrum-rs plan`` against real scans on this machine: for each model, the plan's
predicted wall time and peak host memory (``plan --device cpu --json``, with this machine's
calibration), then a real ``spectrum_rs.scan(path, device="cpu")`` in a fresh subprocess
(its wall time around ``scan()``, the process's wall time, and its peak resident memory
``VmHWM``), and the relative error of each prediction.

    python benches/bench_plan.py                       # small and llama8b-layer, writes
                                                       # benches/results/plan-<date>.md
    python benches/bench_plan.py --models small --runs 1
    python benches/bench_plan.py --smoke               # the tiny model, seconds: tests the script

The calibration is measured afresh at the start (``--recalibrate``, into a cache folder of
the bench's own, so that a user's ``~/.cache/spectrum-rs`` is untouched), and the plans use
it. Each scan runs at most ``--runs`` times (default 2); the load average before each and
the CPU other processes used during it (``bench_cpu.Probe``) are recorded, because the
machine is shared: a calibration and a scan under different loads disagree by the ratio
of the loads, whatever the model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_cpu import NTHREADS, Probe, loadavg, machine_info, wait_for_quiet  # noqa: E402

RESULT_TAG = "@@PLAN-BENCH@@"


def child_env(cache: Path) -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(NTHREADS)
    env["SPECTRUM_RS_CACHE"] = str(cache)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- children


def child_scan(model: str) -> None:
    """A real scan as a user makes it, in this fresh process: ``scan()``'s wall time, the
    process's peak resident memory, and whether torch was loaded (it must not be)."""
    import resource

    import spectrum_rs

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    result = spectrum_rs.scan(model, device="cpu")
    seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    out = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "vmhwm_bytes": hwm,
        "layers": len(result),
        "device": result.settings["device"],
        "torch_imported": "torch" in sys.modules,
    }
    print(RESULT_TAG + json.dumps(out), flush=True)


def run_plan(model: Path, cache: Path, recalibrate: bool = False) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "spectrum_rs", "plan", str(model), "--device", "cpu", "--json"]
    if recalibrate:
        cmd.append("--recalibrate")
    with Probe(children=True) as pr:
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(cache), cwd=str(REPO))
    if p.returncode != 0:
        raise RuntimeError(f"plan failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout)
    out["_bench"] = {"wall": pr.wall, "foreign_cores": pr.ratio, "load": loadavg(), "stderr": p.stderr.strip()}
    return out


def run_scan(model: Path, cache: Path) -> Dict[str, Any]:
    load = loadavg()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-scan", str(model)]
    with Probe(children=True) as pr:
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(cache), cwd=str(REPO))
    if p.returncode != 0:
        raise RuntimeError(f"scan failed ({p.returncode}):\n{p.stderr[-3000:]}")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            r: Dict[str, Any] = json.loads(line[len(RESULT_TAG) :])
            r.update(process_wall=pr.wall, foreign_cores=pr.ratio, load_before=load, load_after=loadavg())
            if r["torch_imported"]:
                raise RuntimeError("the CPU scan imported torch")
            return r
    raise RuntimeError(f"scan printed no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def eig_growth(sizes: List[int]) -> List[Dict[str, Any]]:
    """How the two-stage eigensolver's rate grows with the size (one BLAS thread): what the
    plan's ``a n^3 + b n^2`` extrapolation above its calibrated sizes rests on."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from spectrum_rs.compute import lapack

    rng = np.random.default_rng(0)
    eigvalsh = lapack.large_matrix_eigvalsh()
    out = []
    with threadpool_limits(1, user_api="blas"):
        for n in sizes:
            s = rng.standard_normal((n, n))
            g = (s + s.T) / 2 + 3 * np.sqrt(n) * np.eye(n)
            c0 = time.thread_time()
            with Probe() as pr:
                eigvalsh(g)
            cpu = time.thread_time() - c0
            out.append(
                {"n": n, "seconds": cpu, "wall": pr.wall, "gflops": 4 * n**3 / 3 / cpu / 1e9, "foreign_cores": pr.ratio}
            )
            log(f"dsyevd_2stage {n}: {cpu:.2f} CPU s ({out[-1]['gflops']:.1f} GFLOP/s), others {pr.ratio:.2f} cores")
    return out


# --------------------------------------------------------------------------- report


def rel(pred: float, meas: float) -> str:
    return f"{(pred - meas) / meas:+.0%}" if meas else "-"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report(res: Dict[str, Any]) -> str:
    m = res["machine"]
    cal = res["calibration"]
    out = [
        f"# `spectrum-rs plan` against real scans, {res['date']}",
        "",
        "Written by `python benches/bench_plan.py" + (" " + " ".join(res["argv"]) if res["argv"] else "") + "`.",
        "",
        "## Machine, versions, settings",
        "",
        f"- CPU: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs, RAM {m.get('RAM_GiB', '?')} GiB; "
        f"Python {m['python']}, numpy {m['numpy']} ({m['numpy_blas']}); spectrum-rs at {m['git']}",
        f"- Threads: {NTHREADS} (OMP/MKL/OPENBLAS_NUM_THREADS in every subprocess): the scan's plan is "
        f"{res['workers']}",
        f"- Calibration: measured at the start (`plan --recalibrate`) in {cal['seconds']:.1f} s (process wall "
        f"{cal['wall']:.1f} s), load average {cal['load_before']} before it, others' CPU during it "
        f"{cal['foreign_cores']:.2f} cores; the plans below use it (cached)",
        f"- Load average (1/5/15 min) at start: {res['load_start']}; at end: {res['load_end']}. The machine is "
        "shared with other engineers' builds and tests: others' CPU during each scan is in the table",
        "- Model files were in the page cache (written or read just before): the plans say 100 % cached",
        "",
        "## Predicted vs measured",
        "",
        "Time: the plan's `time.wall_seconds` against the wall time of `scan()` in the child (the process "
        "adds its start-up, `time.startup_seconds`, compared with the process wall), with a calibration "
        "made just before the scan (`plan --recalibrate`: about the load the scan meets) and with the one "
        "made at the start of the bench (what a user who calibrated earlier gets). Memory: the plan's "
        "`memory.peak_bytes` (a simulation of the stream) and `memory.bound_bytes` against the process's "
        "VmHWM. Error = (predicted - measured) / measured.",
        "",
        "| model | run | load before | others' CPU (cores): calibration / scan | scan s | predicted s "
        "(calibrated just before) | error | predicted s (calibrated at the start) | error | process s | "
        "predicted s | error | peak RSS | predicted | error | bound | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["models"].items():
        p = r["plan"]
        t, mem = p["time"], p["memory"]
        for k, s in enumerate(r["scans"], 1):
            ft = s["fresh_plan"]["time"]
            proc_pred = ft["wall_seconds"] + ft["startup_seconds"]
            out.append(
                f"| {name} | {k} | {s['load_before']} | {s['fresh_plan']['bench']['foreign_cores']:.2f} / "
                f"{s['foreign_cores']:.2f} | {s['seconds']:.2f} | {ft['wall_seconds']:.2f} | "
                f"{rel(ft['wall_seconds'], s['seconds'])} | {t['wall_seconds']:.2f} | "
                f"{rel(t['wall_seconds'], s['seconds'])} | {s['process_wall']:.2f} | "
                f"{proc_pred:.2f} | {rel(proc_pred, s['process_wall'])} | {mib(s['vmhwm_bytes'])} | "
                f"{mib(mem['peak_bytes'])} | {rel(mem['peak_bytes'], s['vmhwm_bytes'])} | {mib(mem['bound_bytes'])} | "
                f"{rel(mem['bound_bytes'], s['vmhwm_bytes'])} |"
            )
    out += [
        "",
        "The plan's other schedules, against the best measured scan:",
        "",
        "| model | layers | kernel s (one worker) | stream order s | largest first s | floor s | cores bound s | "
        "best scan s | plan's own wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["models"].items():
        t = r["plan"]["time"]
        best = min(s["seconds"] for s in r["scans"])
        out.append(
            f"| {name} | {len(r['plan']['layers'])} | {t['kernel_seconds']:.2f} | {t['stream_order_seconds']:.2f} | "
            f"{t['largest_first_seconds']:.2f} | {t['floor_seconds']:.2f} | {t['cpu_bound_seconds']:.2f} | "
            f"{best:.2f} | {r['plan']['_bench']['wall']:.2f} |"
        )
    out += [
        "",
        "CPU time, which other processes distort less than wall time: the scan process's user + system "
        "seconds during `scan()` against the plan's `time.cpu_seconds` (the calibrated CPU time of the "
        "kernels and of the reader's decoding, calibrated just before):",
        "",
        "| model | run | scan CPU s | predicted CPU s | error | scan wall x cores | its share of CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res["models"].items():
        for k, s in enumerate(r["scans"], 1):
            pc = s["fresh_plan"]["time"]["cpu_seconds"]
            cores = r["plan"]["device"]["cores"]
            out.append(
                f"| {name} | {k} | {s['cpu_seconds']:.2f} | {pc:.2f} | {rel(pc, s['cpu_seconds'])} | "
                f"{s['seconds'] * cores:.1f} | {s['cpu_seconds'] / (s['seconds'] * cores):.0%} |"
            )
    if res.get("eig_growth"):
        from spectrum_rs.run.plan import _cubic_fit

        g = res["eig_growth"]
        a, b = _cubic_fit([[x["n"], x["seconds"]] for x in (g[0], g[-1])])
        out += [
            "",
            "## The eigensolver's rate against the size (one thread)",
            "",
            "OpenBLAS `dsyevd_2stage` (what the CPU worker uses from 2048 rows) on one thread; the plan "
            "extrapolates above its calibrated sizes with `a n^3 + b n^2` through the two largest. Here that "
            f"fit through {g[0]['n']} and {g[-1]['n']} gives the middle sizes:",
            "",
            "| n | CPU s | wall s | GFLOP/s of (4/3) n^3 (CPU) | others' CPU (cores) | a n^3 + b n^2 s | "
            f"constant rate from {g[0]['n']} s |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in g:
            n = x["n"]
            flat = g[0]["seconds"] * (n / g[0]["n"]) ** 3
            out.append(
                f"| {n} | {x['seconds']:.2f} | {x['wall']:.2f} | {x['gflops']:.1f} | {x['foreign_cores']:.2f} | "
                f"{a * n**3 + b * n**2:.2f} | {flat:.2f} |"
            )
    out += [
        "",
        "## The calibration used",
        "",
        "```json",
        json.dumps(cal["entry"], indent=1, sort_keys=True),
        "```",
        "",
        "## Plans (human output)",
        "",
    ]
    for name, r in res["models"].items():
        out += [f"`spectrum-rs plan {name} --device cpu`:", "", "```", r["human"].rstrip(), "```", ""]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["small", "llama8b-layer"])
    ap.add_argument("--runs", type=int, default=2, help="real scans per model (at most 2 on a shared machine)")
    ap.add_argument("--smoke", action="store_true", help="the tiny model, one run: checks the script")
    ap.add_argument("--wait-load", type=float, default=None, help="wait for the 1-minute load to drop below this")
    ap.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for it at most")
    ap.add_argument("--no-kernels", action="store_true", help="skip the eigensolver's size table (~15 s)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default benches/results/plan-<date>.md)")
    ap.add_argument("--child-scan", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_scan:
        child_scan(args.child_scan)
        return 0
    import models as bench_models

    names = ["tiny"] if args.smoke else args.models
    runs = 1 if args.smoke else max(1, min(args.runs, 2))
    folders = {n: bench_models.ensure(n, quiet=False) for n in names}
    load_start = loadavg()
    if args.wait_load is not None:
        load_start, waited = wait_for_quiet(args.wait_load, args.wait_max)
        log(f"load {load_start} after waiting {waited:.0f} s")
    cache = Path(tempfile.mkdtemp(prefix="spectrum-rs-bench-plan-"))
    first = folders[names[0]]
    log(f"calibrating (plan --recalibrate, cache {cache}) ...")
    load_cal = loadavg()
    cal_plan = run_plan(first, cache, recalibrate=True)
    store = json.loads((cache / "calibration.json").read_text())
    entry = next(iter(store["entries"].values()))
    res: Dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "load_start": load_start,
        "workers": f"{len(cal_plan['device']['workers'])} workers ({', '.join(cal_plan['device']['workers'])}), "
        f"{cal_plan['device']['threads_per_worker']} BLAS thread each",
        "calibration": {
            "seconds": entry["calibration_seconds"],
            "wall": cal_plan["_bench"]["wall"],
            "foreign_cores": cal_plan["_bench"]["foreign_cores"],
            "load_before": load_cal,
            "entry": entry,
        },
        "models": {},
    }
    for name in names:
        folder = folders[name]
        p = run_plan(folder, cache)
        human = subprocess.run(
            [sys.executable, "-m", "spectrum_rs", "plan", str(folder), "--device", "cpu"],
            capture_output=True,
            text=True,
            env=child_env(cache),
            cwd=str(REPO),
        ).stdout
        log(
            f"{name}: predicted {p['time']['wall_seconds']:.2f} s, peak {mib(p['memory']['peak_bytes'])} "
            f"(plan took {p['_bench']['wall']:.2f} s)"
        )
        scans = []
        for k in range(runs):
            # A calibration just before the scan sees about the load the scan will see.
            # (in a cache of its own: the start's calibration stays for the next model)
            fresh = run_plan(folder, cache / f"fresh-{name}-{k}", recalibrate=True)
            s = run_scan(folder, cache)
            s["fresh_plan"] = {"time": fresh["time"], "memory": fresh["memory"], "bench": fresh["_bench"]}
            log(
                f"{name} run {k + 1}: {s['seconds']:.2f} s, VmHWM {mib(s['vmhwm_bytes'])}, load {s['load_before']}, "
                f"others {s['foreign_cores']:.2f} cores"
            )
            scans.append(s)
        res["models"][name] = {"plan": p, "human": human, "scans": scans}
    if not args.no_kernels:
        res["eig_growth"] = eig_growth([128, 192, 256] if args.smoke else [2048, 3072, 4096])
    res["load_end"] = loadavg()
    text = report(res)
    out = args.out or (HERE / "results" / f"plan-{res['date']}.md")
    if args.smoke and args.out is None:
        out = cache / "plan-smoke.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
