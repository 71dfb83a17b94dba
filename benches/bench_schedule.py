"""How close a CPU scan with one single-threaded worker per core comes to the ideal floor
(issue 12): the kernel core-seconds over the cores. In fresh processes, alternating:

* ``kernels``: every matrix of the model through the product's own kernel
  (``NumpyWorker.singular_values``, the default method and dtype, so a matrix that
  ``dtype="auto"`` forms again in float64 pays for it here too), one BLAS thread, alone
  on the machine; the sum is the kernel core-seconds, the floor is that over the cores.
* ``kernels x N``: the same in N processes at once (N = the cores), each the whole model:
  how much the cores slow each other down (shared caches and memory bandwidth), which no
  schedule of single-threaded workers avoids.
* ``scan``: ``spectrum_rs.scan(MODEL, device="cpu")``, largest first (the product), and
  with file order (the scan's scheduler replaced in that child only).

``--thread-check`` also tells whether numpy's BLAS gives the same bits on one thread and
on two (why the scan never lends an idle worker's cores to the last matrix).

    python benches/bench_schedule.py /tmp/spectrum-rs-bench-models/llama8b-layer --rounds 2

(the model is written by ``benches/models.py``, as for ``bench_cpu.py``)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List

SCAN = """
import os, sys, time, json
import spectrum_rs
from spectrum_rs import scan as scan_module
if sys.argv[2] == "file":
    scan_module._schedule = lambda plan, todo: (todo, True)
t, c = time.perf_counter(), time.process_time()
r = spectrum_rs.scan(sys.argv[1], device="cpu")
print(json.dumps({"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "layers": len(r)}))
"""

KERNELS = """
import glob, json, sys, time
from threadpoolctl import threadpool_limits
from spectrum_rs import _core
from spectrum_rs.compute.numpy_worker import NumpyWorker
from spectrum_rs.compute import numpy_worker
routes = []
real_svd, real_eig = numpy_worker._svd, NumpyWorker.gram_eigenvalues
numpy_worker._svd = lambda a: (routes.append("svd"), real_svd(a))[1]
NumpyWorker.gram_eigenvalues = staticmethod(lambda a, d: (routes.append(str(d)), real_eig(a, d))[1])
paths = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))
cat = _core.Catalog(paths)
layers = cat.layers()
worker = NumpyWorker()
out = []
with threadpool_limits(1, user_api="blas"):
    for index, array, stored in cat.stream(list(range(len(layers))), window_bytes=128 << 20, raw=False):
        info = layers[index]
        matrix = worker.to_matrix(array, stored, info.rows, info.cols)
        routes.clear()
        t = time.perf_counter()
        worker.singular_values(matrix)
        out.append({"name": info.name, "seconds": time.perf_counter() - t, "routes": list(routes)})
print(json.dumps(out))
"""

THREADS = """
import json, numpy as np
from threadpoolctl import threadpool_limits
from spectrum_rs.compute import lapack
from spectrum_rs.compute.numpy_worker import gram
rows = []
for n in (1000, 2048, 2500, 4096):
    a = np.random.default_rng(n).standard_normal((n + 100, n)).astype(np.float32)
    g64 = gram(a, np.dtype(np.float32)).astype(np.float64)
    cases = {
        "syrk float32": lambda: gram(a, np.dtype(np.float32)),
        "syrk float64": lambda: gram(a, np.dtype(np.float64)),
        "eigenvalues (" + ("dsyevd_2stage" if n >= lapack.TWO_STAGE_FROM else "numpy eigvalsh") + ")":
            lambda: lapack.eigvalsh(g64.copy()),
    }
    if n <= 1000:
        cases["SVD (dgesdd)"] = lambda: np.linalg.svd(a.astype(np.float64), compute_uv=False)
    for what, fn in cases.items():
        with threadpool_limits(1, user_api="blas"):
            one = fn()
        with threadpool_limits(2, user_api="blas"):
            two = fn()
        rows.append({"n": n, "kernel": what, "identical": bool(np.array_equal(one, two))})
print(json.dumps(rows))
"""


def child(code: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=dict(os.environ)
    ).stdout


def kernels_at_once(model: str, n: int) -> List[List[Dict]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", KERNELS, model], stdout=subprocess.PIPE, text=True) for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"kernel child failed ({p.returncode})")
        outs.append(json.loads(out))
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--thread-check", action="store_true", help="also compare one and two BLAS threads bit for bit")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    solo: List[float] = []
    shared: List[float] = []
    walls: Dict[str, List[float]] = {"largest-first": [], "file": []}
    per_matrix: List[Dict] = []
    for r in range(args.rounds):
        k = json.loads(child(KERNELS, args.model))
        per_matrix = k
        solo.append(sum(m["seconds"] for m in k))
        together = kernels_at_once(args.model, cores)
        shared.append(statistics.mean(sum(m["seconds"] for m in one) for one in together))
        for order in ("largest-first", "file"):
            got = json.loads(child(SCAN, args.model, "file" if order == "file" else "sched"))
            walls[order].append(got["wall"])
        print(
            f"round {r + 1}: kernels {solo[-1]:.1f} core-s alone, {shared[-1]:.1f} each with {cores} at once; "
            f"scan largest first {walls['largest-first'][-1]:.1f} s, file order {walls['file'][-1]:.1f} s, "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    floor = statistics.median(solo) / cores
    shared_floor = statistics.median(shared) / cores
    print(f"\ncores: {cores}")
    print("matrix                                   seconds  routes")
    for m in per_matrix:
        print(f"{m['name'][:40]:<40} {m['seconds']:7.2f}  {'+'.join(m['routes'])}")
    print(f"\nkernel core-seconds (alone, median): {statistics.median(solo):.1f} -> floor {floor:.2f} s")
    print(
        f"the same with {cores} processes at once: {statistics.median(shared):.1f} core-s each "
        f"(x{statistics.median(shared) / statistics.median(solo):.3f}) -> {shared_floor:.2f} s"
    )
    for order, w in walls.items():
        med = statistics.median(w)
        print(
            f"scan, {order:<13}: median {med:.2f} s of {[round(x, 1) for x in w]}: "
            f"{med / floor:.3f}x the floor, {med / shared_floor:.3f}x the floor with the cores' slow-down"
        )
    if args.thread_check:
        print("\none vs two BLAS threads, bit for bit:")
        for row in json.loads(child(THREADS)):
            print(f"  n={row['n']:<5} {row['kernel']:<32} {'identical' if row['identical'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
