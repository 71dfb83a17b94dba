"""The reference pipeline users compare us with (the Spectrum paper's ``spectrum.py``),
reimplemented faithfully for the benchmarks:

1. load the whole model with ``transformers``:
   ``AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
   low_cpu_mem_usage=True, device_map="auto")``;
2. for every ``nn.Linear`` / ``nn.Embedding`` whose ``.weight`` has 2 or more
   dimensions, ``torch.linalg.svdvals(module.weight)`` on the weight as stored
   (out x in, no transpose), in float32;
3. the docs/method.md §2 statistics on those singular values, in torch, the way the reference
   script computes them (``torch.quantile``, Marchenko-Pastur threshold, signal/noise,
   divided by the largest singular value; noise 1.0 when no value is at or below the
   threshold, as the current reference does).

    python benches/baseline.py MODEL_DIR [--json OUT]

prints the phase timings (and writes every layer's SNR and svdvals time to OUT).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Dict, Optional

import torch


def reference_stats(S: torch.Tensor, n: int, m: int) -> float:
    """docs/method.md §2 on the singular values ``S`` (descending) of an ``n x m`` weight, in torch."""
    max_singular_value = S[0]
    q75 = torch.quantile(S, 0.75)
    q25 = torch.quantile(S, 0.25)
    sigma_estimated = (q75 - q25) / 1.349
    beta = n / m if n < m else m / n
    mp_threshold = sigma_estimated * math.sqrt((1 + math.sqrt(beta)) ** 2)
    signal = S[S > mp_threshold].sum()
    below = S[S <= mp_threshold]
    noise = below.sum() if below.numel() > 0 else torch.tensor(1.0, dtype=S.dtype)
    snr = signal / noise if noise != 0 else torch.tensor(float("inf"))
    return float((snr / max_singular_value).item())


def reference_scan(path: str) -> Dict[str, object]:
    """Runs the reference pipeline on ``path``; returns phase timings and per-layer results."""
    t0 = time.perf_counter()
    from transformers import AutoModelForCausalLM

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        path, torch_dtype=torch.float32, low_cpu_mem_usage=True, device_map="auto"
    )
    t_load = time.perf_counter() - t1
    layers: Dict[str, dict] = {}
    t_svd = 0.0
    t_stats = 0.0
    t2 = time.perf_counter()
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                continue
            weights = getattr(module, "weight", None)
            if weights is None or weights.ndim < 2:
                continue
            weights = weights.detach()
            ts = time.perf_counter()
            S = torch.linalg.svdvals(weights)
            te = time.perf_counter()
            n, m = weights.shape[-2:]
            snr = reference_stats(S, n, m)
            tf = time.perf_counter()
            t_svd += te - ts
            t_stats += tf - te
            layers[name] = {"snr": snr, "shape": [int(n), int(m)], "svdvals_s": te - ts}
    t_compute = time.perf_counter() - t2
    return {
        "import_transformers_s": t_import,
        "load_s": t_load,
        "svdvals_s": t_svd,
        "stats_s": t_stats,
        "compute_s": t_compute,
        "total_s": t_load + t_compute,
        "torch_threads": torch.get_num_threads(),
        "param_dtype": str(next(model.parameters()).dtype),
        "layers": layers,
    }


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description="the reference Spectrum pipeline (transformers + float32 svdvals)")
    ap.add_argument("model", help="model folder")
    ap.add_argument("--json", help="write timings and per-layer SNRs here")
    args = ap.parse_args(argv)
    r = reference_scan(args.model)
    print(
        f"load {r['load_s']:.2f} s, svdvals {r['svdvals_s']:.2f} s, stats {r['stats_s']:.2f} s, "
        f"total {r['total_s']:.2f} s, {len(r['layers'])} layers ({r['param_dtype']}, "
        f"{r['torch_threads']} torch threads)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
