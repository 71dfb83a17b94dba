"""GPU benchmark: per-shape throughput of our singular-value method vs
``torch.linalg.svdvals`` on the same GPU, for the weight shapes of Qwen1.5-110B, and the
projected time of a whole-model scan. Run by ``benches/gpu.sh`` (under 5 minutes on one
H200); ``--smoke`` runs the same code on the CPU with shapes divided by 64.

Our method (what ``spectrum_rs.compute.torch_worker.TorchWorker`` does on CUDA): upload the stored bf16 bytes,
convert on the device to float64, Gram matrix of the smaller side (``a.T @ a`` or
``a @ a.T``), ``eigvalsh``, clamp at 0 and square-root. Timings use
``torch.cuda.synchronize``; each is the best of a few runs after one warm-up run.

Baseline: ``torch.linalg.svdvals`` in float32 on the weight as stored (out x in), as the
reference tool calls it. Shapes where it would take too long are not run: their time is
estimated from a run on the same shape scaled down by 2 in both dimensions (cost ~ m n^2,
so x8) and marked as estimated.

SNRs: docs/method.md §2 in float64 by ``benches/oracle.py`` (the tests' oracle) on each method's
singular values.

Results: printed, and written to ``$OUT/gpu-<date>.md`` and ``.json`` (``$OUT`` defaults
to ``benches/results``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from oracle import snr_from_singular_values  # noqa: E402  (docs/method.md §2 in float64, the tests' oracle)

# Qwen1.5-110B: hidden 8192, MLP 49152, 64 heads / 8 kv heads (head dim 128), vocab 152064,
# 80 layers. (label, rows, cols, count in the whole model)
QWEN110B = [
    ("q_proj/o_proj", 8192, 8192, 160),
    ("k_proj/v_proj", 1024, 8192, 160),
    ("gate_proj/up_proj", 49152, 8192, 160),
    ("down_proj", 8192, 49152, 80),
    ("embed_tokens/lm_head", 152064, 8192, 2),
]
SMOKE_DIV = 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Clock:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def best(self, fn: Callable[[], Any], reps: int, warmup: int = 1) -> Tuple[float, Any]:
        out = None
        for _ in range(warmup):
            out = fn()
        self.sync()
        best = math.inf
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best, out


def gram_eig(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Our method on a device tensor ``w`` (any float dtype, as stored): singular values."""
    a = w.to(dtype)
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return torch.linalg.eigvalsh(g).clamp_(min=0).sqrt_()


def synthetic(rows: int, cols: int, device: torch.device, seed: int) -> torch.Tensor:
    """bf16 noise plus a few strong low-rank components (a non-degenerate spectrum)."""
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, device=device) / math.sqrt(cols)
    k = 8
    u = torch.randn(rows, k, generator=g, device=device)
    v = torch.randn(k, cols, generator=g, device=device)
    w.addmm_(u / u.norm(dim=0), v / v.norm(dim=1, keepdim=True), alpha=3 * (1 + math.sqrt(rows / cols)))
    return w.to(torch.bfloat16)


def magma_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        torch.backends.cuda.preferred_linalg_library("magma")
        torch.linalg.eigvalsh(torch.eye(64, dtype=torch.float64, device=device))
        return True
    except Exception:
        return False
    finally:
        torch.backends.cuda.preferred_linalg_library("default")


def svdvals_estimate(w32: torch.Tensor, clock: Clock, limit_s: float) -> Tuple[float, List[Tuple[int, float]]]:
    """Estimated svdvals time of ``w32`` from runs on top-left corners scaled down by
    s = 16, 8, 4, 2 in both dimensions (stopping before one would take over ``limit_s``/4):
    t(s) ~ s^-p with p fitted on the last two corners, clamped to [2, 3] (the flop count
    goes as m n^2, i.e. p = 3; small sizes use the GPU less well, so p is often lower)."""
    rows, cols = w32.shape
    runs: List[Tuple[int, float]] = []
    for sc in (16, 8, 4, 2):
        r, c = rows // sc, cols // sc
        if r < 8 or c < 8:
            continue
        if len(runs) >= 2:
            p = min(3.0, max(2.0, math.log(runs[-2][1] / runs[-1][1]) / math.log(2)))
            if runs[-1][1] * 2**p > limit_s / 4:
                break
        corner = w32[:r, :c].contiguous()
        t, _ = clock.best(lambda: torch.linalg.svdvals(corner), 1, warmup=1 if not runs else 0)
        runs.append((sc, t))
        corner = None  # free it now
    if not runs:
        return 0.0, runs
    if len(runs) == 1:
        p = 3.0
    else:
        p = min(3.0, max(2.0, math.log(runs[-2][1] / runs[-1][1]) / math.log(runs[-2][0] / runs[-1][0])))
    sc, t = runs[-1]
    return t * sc**p, runs


def bench_shape(
    label: str,
    rows: int,
    cols: int,
    count: int,
    device: torch.device,
    clock: Clock,
    args: argparse.Namespace,
    deadline: float,
) -> Dict[str, Any]:
    reps = args.reps
    rec: Dict[str, Any] = {"label": label, "rows": rows, "cols": cols, "count": count}
    w_dev = synthetic(rows, cols, device, seed=rows * 7 + cols)
    pinned = device.type == "cuda"
    w_host = torch.empty((rows, cols), dtype=torch.bfloat16, pin_memory=pinned)
    w_host.copy_(w_dev)
    # ours, float64 (the default), from the stored bf16 bytes in pinned host memory:
    # upload, convert on the device, Gram, eigvalsh (the first run also warms up cuSOLVER)
    rec["ours_f64_with_upload_s"], s64 = clock.best(
        lambda: gram_eig(w_host.to(device, non_blocking=True), torch.float64), reps
    )
    rec["snr_ours_f64"] = snr_from_singular_values(s64, rows, cols)
    if rec["ours_f64_with_upload_s"] > args.slow_s:
        reps = 1  # a slow shape: one run per remaining measurement keeps the script under 5 minutes
    rec["reps_after_first"] = reps
    # the same on a tensor already on the device, and its parts
    rec["ours_f64_kernel_s"], _ = clock.best(lambda: gram_eig(w_dev, torch.float64), reps, warmup=0)
    a = w_dev.to(torch.float64)
    rec["gram_f64_s"], g = clock.best(lambda: a.T @ a if rows >= cols else a @ a.T, reps, warmup=0)
    rec["eigvalsh_f64_s"], _ = clock.best(lambda: torch.linalg.eigvalsh(g), reps, warmup=0)

    def in_time() -> bool:  # optional measurements stop at the deadline
        ok = time.perf_counter() < deadline
        if not ok:
            rec.setdefault("skipped_after_deadline", True)
        return ok

    if args.magma and in_time():
        torch.backends.cuda.preferred_linalg_library("magma")
        try:
            rec["eigvalsh_f64_magma_s"], ev = clock.best(lambda: torch.linalg.eigvalsh(g), reps)
            rec["snr_magma"] = snr_from_singular_values(ev.clamp(min=0).sqrt(), rows, cols)
        finally:
            torch.backends.cuda.preferred_linalg_library("default")
    a = g = None  # free it now
    # float32 option
    if in_time():
        rec["ours_f32_kernel_s"], s32 = clock.best(lambda: gram_eig(w_dev, torch.float32), reps)
        rec["snr_ours_f32"] = snr_from_singular_values(s32, rows, cols)
    # the product's own worker path (host numpy bytes -> pin_memory -> device -> method)
    if args.worker is not None and in_time():
        raw = w_host.view(torch.uint8).reshape(-1).numpy()
        wk = args.worker

        def product() -> Any:
            return wk.singular_values(wk.to_matrix(raw, "BF16", rows, cols))

        rec["product_worker_s"], sp = clock.best(product, reps, warmup=0)
        rec["snr_product"] = snr_from_singular_values(sp, rows, cols)
    # batching: `batch` same-shaped small matrices in one call
    if rows * cols <= args.batch_max_elems and count >= args.batch and in_time():
        wb = torch.stack([w_dev] * args.batch)

        def batched() -> Any:
            a = wb.to(torch.float64)
            gb = a.transpose(1, 2) @ a if rows >= cols else a @ a.transpose(1, 2)
            return torch.linalg.eigvalsh(gb)

        tb, _ = clock.best(batched, reps)
        rec["batched_per_matrix_s"] = tb / args.batch
        rec["batch"] = args.batch
        wb = None  # free it now
    # baseline: svdvals float32 as stored, unless it would take too long
    w32 = w_dev.to(torch.float32)
    remaining = deadline - time.perf_counter()
    est, runs = svdvals_estimate(w32, clock, min(args.svd_limit, max(remaining, 0.0)))
    rec["svdvals_corner_runs"] = runs
    rec["svdvals_estimate_s"] = est
    remaining = deadline - time.perf_counter()
    forced = label in args.svd_estimate_only
    if forced or est > args.svd_limit or est * 1.5 > remaining:
        rec["svdvals_f32_s"] = est
        rec["svdvals_estimated"] = True
        why = (
            "forced by --svd-estimate-only"
            if forced
            else f"limit {args.svd_limit:.0f} s, {remaining:.0f} s of the budget left"
        )
        rec["svdvals_note"] = (
            f"not run, estimated {est:.1f} s from corners "
            + ", ".join(f"1/{sc}: {t:.3f} s" for sc, t in runs)
            + f" ({why})"
        )
    else:
        rec["svdvals_f32_s"], ssv = clock.best(lambda: torch.linalg.svdvals(w32), 1, warmup=0)
        rec["svdvals_estimated"] = False
        rec["snr_svdvals_f32"] = snr_from_singular_values(ssv, rows, cols)
    w32 = w_dev = w_host = None  # free it now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def e2e(args: argparse.Namespace, device: torch.device, shapes_by_label: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """A whole scan (``spectrum_rs.scan``) of one synthetic decoder layer at Qwen1.5-110B
    sizes, vs the sum of the per-shape times of its matrices."""
    import models
    import spectrum_rs

    name = "tiny" if args.smoke else "qwen110b-layer"
    root = Path(args.model_dir or tempfile.gettempdir()) / "spectrum-rs-bench-models"
    t0 = time.perf_counter()
    path = models.ensure(name, root, quiet=False, device="cuda" if device.type == "cuda" else "cpu")
    t_write = time.perf_counter() - t0
    spectrum_rs.scan(str(path), device=str(device), types=["self_attn.k_proj"])  # warm-up (CUDA context, libs)
    t1 = time.perf_counter()
    r = spectrum_rs.scan(str(path), device=str(device))  # the product's defaults
    t_scan = time.perf_counter() - t1
    out = {
        "model": name,
        "write_s": t_write,
        "scan_s": t_scan,
        "layers": len(r.layers),
        "dtype": r.settings.get("dtype"),
        "device": r.settings.get("device"),
    }
    if not args.smoke:
        spec = models.MODELS[name]
        key = "product_worker_s"
        per = {k: v.get(key, v["ours_f64_with_upload_s"]) for k, v in shapes_by_label.items()}
        # the layer's 7 matrices; embedding and head are 32000 x 8192 here: scale the
        # 152064 x 8192 time by rows (Gram cost ~ rows; eigvalsh is the same 8192)
        emb = shapes_by_label["embed_tokens/lm_head"]
        emb_t = (per["embed_tokens/lm_head"] - emb["eigvalsh_f64_s"]) * spec.vocab / emb["rows"] + emb["eigvalsh_f64_s"]
        out["sum_of_kernels_s"] = (
            2 * per["q_proj/o_proj"]
            + 2 * per["k_proj/v_proj"]
            + 2 * per["gate_proj/up_proj"]
            + per["down_proj"]
            + 2 * emb_t
        )
    return out


def device_info(device: torch.device) -> Dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            {"gpu": p.name, "gpu_mem_gib": round(p.total_memory / 2**30, 1), "cudnn": torch.backends.cudnn.version()}
        )
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def report(res: Dict[str, Any]) -> str:
    L: List[str] = []
    add = L.append
    i = res["info"]
    add(f"# GPU benchmark{' (SMOKE: CPU, shapes / 64, figures meaningless)' if res['smoke'] else ''}, {res['date']}\n")
    add("Written by `benches/gpu.sh` (`benches/bench_gpu.py`).\n")
    add(
        f"- Device: {i.get('gpu', i['device'])}"
        + (f", {i['gpu_mem_gib']} GiB" if "gpu_mem_gib" in i else "")
        + f"; torch {i['torch']} (CUDA {i['cuda']}), numpy {i['numpy']}, Python {i['python']}"
    )
    add(f"- spectrum_rs importable: {res['spectrum_rs']}")
    add(
        f"- Each time: best of {res['reps']} runs (the first measurement of a shape after a warm-up run), "
        f"`torch.cuda.synchronize` around it; svdvals: one run. MAGMA eigvalsh available: {res['magma']}.\n"
    )
    add("## Per shape (seconds per matrix)\n")
    add(
        "| shape | count | ours f64 (on device) | ours f64 + upload | Gram f64 | eigvalsh f64 | eigvalsh f64 MAGMA | "
        f"ours f32 | product worker (dtype {res.get('product_dtype')}) | batched f64 / matrix | svdvals f32 | "
        "svdvals / ours f64 + upload |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["shapes"]:
        sv = fmt(r["svdvals_f32_s"]) + (" (est.)" if r["svdvals_estimated"] else "")
        add(
            f"| {r['rows']}x{r['cols']} {r['label']} | {r['count']} | {fmt(r['ours_f64_kernel_s'])} | "
            f"{fmt(r['ours_f64_with_upload_s'])} | {fmt(r['gram_f64_s'])} | {fmt(r['eigvalsh_f64_s'])} | "
            f"{fmt(r.get('eigvalsh_f64_magma_s'))} | {fmt(r.get('ours_f32_kernel_s'))} | {fmt(r.get('product_worker_s'))} | "
            f"{fmt(r.get('batched_per_matrix_s'))} | {sv} | "
            f"{r['svdvals_f32_s'] / r['ours_f64_with_upload_s']:.1f}x |"
        )
    add("")
    for r in res["shapes"]:
        if r.get("svdvals_note"):
            add(f"- {r['rows']}x{r['cols']}: svdvals {r['svdvals_note']}.")
        if r.get("skipped_after_deadline"):
            add(f"- {r['rows']}x{r['cols']}: optional columns skipped (time budget spent).")
    add("")
    add("SNR check (ours f64 vs the others, relative difference):\n")
    for r in res["shapes"]:
        ref = r["snr_ours_f64"]
        parts = [f"ours f64 {ref:.6g}"]
        for key, label in (
            ("snr_ours_f32", "f32"),
            ("snr_magma", "f64 MAGMA"),
            ("snr_product", "product"),
            ("snr_svdvals_f32", "svdvals"),
        ):
            if key in r and ref:
                parts.append(f"{label} {abs(r[key] - ref) / abs(ref):.1e}")
        add(f"- {r['rows']}x{r['cols']}: " + ", ".join(parts))
    add("")
    p = res["projection"]
    add("## Projected Qwen1.5-110B scan (80 layers + embedding + head, sum of count x per-shape time)\n")
    add("| pipeline | projected s | minutes |")
    add("|---|---|---|")
    for key, label in (
        ("ours_f64_kernel_s", "ours f64, kernels only"),
        ("ours_f64_with_upload_s", "ours f64 incl. upload (no overlap)"),
        ("ours_f64_best_s", "ours f64 incl. upload, k/v batched where faster"),
        ("ours_f32_kernel_s", "ours f32 (dtype=float32), kernels only"),
        ("product_worker_s", f"product worker (dtype {res.get('product_dtype')}; pin_memory + upload per tensor)"),
        ("svdvals_f32_s", "svdvals f32 (baseline)" + (" incl. estimates" if p["svdvals_has_estimates"] else "")),
    ):
        if p.get(key) is not None:
            add(f"| {label} | {fmt(p[key])} | {p[key] / 60:.1f} |")
    add("")
    if p.get("svdvals_f32_s") and p.get("ours_f64_with_upload_s"):
        add(
            f"- Target: under 5 minutes on one H200 -> ours f64 incl. upload {p['ours_f64_with_upload_s'] / 60:.1f} "
            f"min ({'met' if p['ours_f64_with_upload_s'] < 300 else 'not met'}); at least 10x faster than svdvals "
            f"-> {p['svdvals_f32_s'] / p['ours_f64_with_upload_s']:.1f}x "
            f"({'met' if p['svdvals_f32_s'] >= 10 * p['ours_f64_with_upload_s'] else 'not met'})."
        )
    if res.get("e2e"):
        e = res["e2e"]
        if "error" in e:
            add(f"- End-to-end scan: {e['error']}")
        else:
            add(
                f'- End-to-end `spectrum_rs.scan(path, device="{e.get("device")}")` (dtype {e.get("dtype")}) of '
                f"`{e['model']}` ({e['layers']} matrices): {fmt(e['scan_s'])} s"
                + (
                    f" vs {fmt(e['sum_of_kernels_s'])} s summed per-shape product-worker times (ratio "
                    f"{e['scan_s'] / e['sum_of_kernels_s']:.2f})"
                    if e.get("sum_of_kernels_s")
                    else ""
                )
                + f"; writing the model took {fmt(e['write_s'])} s."
            )
    if res.get("pytest"):
        add(f"- `pytest -k cuda`: {res['pytest']}")
    add(f"\nTotal run time {res['total_s']:.0f} s.")
    return "\n".join(L) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, shapes / 64: tests the script")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else benches/results)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per measurement (default 2; smoke 1)")
    ap.add_argument(
        "--budget",
        type=float,
        default=200.0,
        help="seconds for the per-shape part (svdvals skipped when it would overrun)",
    )
    ap.add_argument("--svd-limit", type=float, default=25.0, help="run svdvals on a shape only if estimated below")
    ap.add_argument(
        "--svd-estimate-only",
        default=None,
        help="comma-separated shape labels whose svdvals is only estimated (smoke: the largest)",
    )
    ap.add_argument("--batch", type=int, default=16, help="matrices per batched call")
    ap.add_argument("--batch-max-elems", type=int, default=16 << 20, help="batch only matrices up to this size")
    ap.add_argument(
        "--slow-s",
        type=float,
        default=1.5,
        help="after the first measurement of a shape, one run per measurement when it took longer",
    )
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end scan of a synthetic layer")
    ap.add_argument(
        "--e2e-after",
        type=float,
        default=230.0,
        help="skip the end-to-end scan when the run has already taken this many seconds",
    )
    ap.add_argument("--model-dir", default=None, help="where the e2e model is written (default: temp dir)")
    ap.add_argument("--pytest", default=None, help="(from gpu.sh) the pytest -k cuda outcome line to record")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.smoke:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke to test on the CPU", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    args.reps = args.reps or (1 if args.smoke else 2)
    if args.svd_estimate_only is None:
        args.svd_estimate_only = "embed_tokens/lm_head" if args.smoke else ""
    args.svd_estimate_only = [x for x in args.svd_estimate_only.split(",") if x]
    args.magma = magma_available(device)
    div = SMOKE_DIV if args.smoke else 1
    if args.smoke:
        args.batch_max_elems //= div * div
    clock = Clock(device)
    try:
        import inspect

        import spectrum_rs
        from spectrum_rs.compute.torch_worker import TorchWorker

        sig = inspect.signature(spectrum_rs.scan).parameters
        args.product_dtype = sig["dtype"].default if "dtype" in sig else "float64"
        args.worker = TorchWorker(device=str(device), method="gram", dtype=args.product_dtype)
        have_pkg = True
    except Exception as e:
        args.worker = None
        args.product_dtype = None
        have_pkg = f"no ({type(e).__name__}: {e})"
    # warm-up: CUDA context, cuBLAS/cuSOLVER handles and kernels
    x = torch.randn(256, 128, device=device)
    gram_eig(x, torch.float64), gram_eig(x, torch.float32), torch.linalg.svdvals(x)
    clock.sync()
    res: Dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "info": device_info(device),
        "spectrum_rs": have_pkg,
        "reps": args.reps,
        "magma": args.magma,
        "product_dtype": args.product_dtype,
        "shapes": [],
    }
    deadline = time.perf_counter() + args.budget
    # cheapest first, so that a budget overrun costs the big svdvals estimates only
    for label, rows, cols, count in sorted(QWEN110B, key=lambda s: s[1] * s[2]):
        r, c = max(rows // div, 1), max(cols // div, 1)
        log(f"{label} {r}x{c}")
        res["shapes"].append(bench_shape(label, r, c, count, device, clock, args, deadline))
    order = {s[0]: i for i, s in enumerate(QWEN110B)}
    res["shapes"].sort(key=lambda r: order[r["label"]])
    proj: Dict[str, Any] = {}
    for key in (
        "ours_f64_kernel_s",
        "ours_f64_with_upload_s",
        "ours_f32_kernel_s",
        "product_worker_s",
        "svdvals_f32_s",
    ):
        if all(key in r for r in res["shapes"]):
            proj[key] = sum(r[key] * r["count"] for r in res["shapes"])
    proj["ours_f64_best_s"] = sum(
        min(r["ours_f64_with_upload_s"], r.get("batched_per_matrix_s", math.inf)) * r["count"] for r in res["shapes"]
    )
    proj["svdvals_has_estimates"] = any(r["svdvals_estimated"] for r in res["shapes"])
    res["projection"] = proj
    elapsed = time.perf_counter() - t_start
    if not args.no_e2e and args.worker is not None and elapsed > args.e2e_after:
        res["e2e"] = {"error": f"skipped: {elapsed:.0f} s already spent (--e2e-after {args.e2e_after:.0f})"}
    elif not args.no_e2e and args.worker is not None:
        log("end-to-end scan of a synthetic layer")
        try:
            res["e2e"] = e2e(args, device, {r["label"]: r for r in res["shapes"]})
        except Exception as e:
            res["e2e"] = {"error": f"{type(e).__name__}: {e}"}
    elif args.worker is None:
        res["e2e"] = {"error": f"skipped: spectrum_rs not importable ({have_pkg})"}
    if args.pytest:
        res["pytest"] = args.pytest
    res["total_s"] = time.perf_counter() - t_start
    md = report(res)
    out = args.out or Path(os.environ.get("OUT") or (HERE / "results"))
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-smoke" if args.smoke else f"gpu-{datetime.date.today().isoformat()}"
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(md)
    log(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
