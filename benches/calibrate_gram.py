"""How far rounding the Gram matrix to float32 moves its eigenvalues, relative to the
largest, on the layer shapes of real models and on spectra with outliers, heavy tails and
low rank. This is the error the model in python/spectrum_rs/singular_values.py
must cover: ``|dλ_i| <= FLOAT32_RELATIVE_ERROR * λ_i + FLOAT32_ABSOLUTE_ERROR * λmax``. Eigenvalues come from the product's own float64 eigensolver, of the Gram
matrix formed the product's way (numpy ``syrk`` in blocks of rows) in float32 and float64.

    python benches/calibrate_gram.py [--quick] [--out benches/results/gram-float32-error.md]
"""

from __future__ import annotations

import argparse
import platform
import zlib

import numpy as np
from threadpoolctl import threadpool_limits

from spectrum_rs import lapack
from spectrum_rs.numpy_worker import gram
from spectrum_rs.singular_values import FLOAT32_ABSOLUTE_ERROR, FLOAT32_RELATIVE_ERROR

SHAPES = [(1024, 1024), (2816, 1024), (32000, 1024), (4096, 4096), (1024, 4096), (14336, 4096), (32000, 4096)]
QUICK = [(1024, 1024), (2816, 1024), (4096, 1024)]


def matrix(kind: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
    if kind == "outlier-columns":
        w[:, : max(1, cols // 512)] *= 30
    elif kind == "heavy-tailed":
        w = (rng.standard_t(3, size=(rows, cols)) * 0.02).astype(np.float32)
    elif kind == "low-rank+noise":
        r = max(1, min(rows, cols) // 64)
        w += (rng.standard_normal((rows, r), dtype=np.float32) @ rng.standard_normal((r, cols), dtype=np.float32)) * 0.02
    elif kind == "half-rows-zero":
        w[: rows // 2] = 0
    elif kind == "rank-1 outlier":
        w += 20 * 0.02 * np.outer(rng.standard_normal(rows), rng.standard_normal(cols)).astype(np.float32) / np.sqrt(cols)
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes only (a smoke test)")
    ap.add_argument("--out", default=None, help="write a markdown table here")
    args = ap.parse_args()
    kinds = ["gaussian", "outlier-columns", "heavy-tailed", "low-rank+noise", "rank-1 outlier", "half-rows-zero"]
    rows_out = []
    worst = worst_abs = worst_rel = 0.0
    with threadpool_limits(1):
        for rows, cols in (QUICK if args.quick else SHAPES):
            for kind in kinds:
                rng = np.random.default_rng(zlib.crc32(f"{rows}x{cols} {kind}".encode()))
                w = matrix(kind, rows, cols, rng)
                a = w.T if rows < cols else w
                l32 = lapack.eigvalsh(gram(a, np.dtype(np.float32)).astype(np.float64))
                l64 = lapack.eigvalsh(gram(a, np.dtype(np.float64)))
                d = np.abs(l32 - l64)
                top = l64[-1]
                bulk = l64 < top / 100
                err = float(d.max() / top)
                absolute = float(d[bulk].max() / top) if bulk.any() else 0.0
                relative = float((d[~bulk] / l64[~bulk]).max())
                # The smallest (relative, absolute) pair of the model that covers this case.
                need = float(((d - FLOAT32_ABSOLUTE_ERROR * top) / np.maximum(l64, 1e-300 * top)).max())
                worst_abs = max(worst_abs, absolute)
                worst_rel = max(worst_rel, relative)
                worst = max(worst, need)
                rows_out.append((rows, cols, kind, err, absolute, relative, need))
                print(f"{rows:>6}x{cols:<5} {kind:<16} max|dλ|/λmax = {err:.2e}  bulk (λ<λmax/100) |dλ|/λmax = "
                      f"{absolute:.2e}  outliers |dλ|/λ = {relative:.2e}", flush=True)
    covered = worst_abs <= FLOAT32_ABSOLUTE_ERROR and worst <= FLOAT32_RELATIVE_ERROR
    print(f"worst: bulk {worst_abs:.2e} of λmax, outliers {worst_rel:.2e} of λ; model "
          f"|dλ| <= {FLOAT32_RELATIVE_ERROR:.1e} λ + {FLOAT32_ABSOLUTE_ERROR:.1e} λmax "
          f"{'covers every eigenvalue' if covered else 'DOES NOT cover every eigenvalue'} "
          f"(relative part needed: {worst:.2e})")
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Float32 Gram rounding: eigenvalue error relative to the largest\n\n")
            f.write(f"`python benches/calibrate_gram.py --out {args.out}` on {platform.processor() or platform.machine()}, "
                    f"numpy {np.__version__}, eigensolver: {lapack.backend()}.\n\n")
            f.write("| shape | spectrum | max abs(dλ) / λmax | bulk (λ < λmax/100): max abs(dλ) / λmax "
                    "| λ ≥ λmax/100: max abs(dλ) / λ |\n|---|---|---|---|---|\n")
            for rows, cols, kind, err, absolute, relative, _ in rows_out:
                f.write(f"| {rows}x{cols} | {kind} | {err:.2e} | {absolute:.2e} | {relative:.2e} |\n")
            f.write(f"\nWorst: bulk {worst_abs:.2e} of λmax, larger eigenvalues {worst_rel:.2e} of their own value. "
                    f"The product's model |dλ| <= {FLOAT32_RELATIVE_ERROR:.1e} λ + {FLOAT32_ABSOLUTE_ERROR:.1e} λmax "
                    f"{'covers every eigenvalue measured' if covered else 'DOES NOT cover every eigenvalue'} "
                    f"(relative part needed with that absolute part: {worst:.2e}).\n")


if __name__ == "__main__":
    main()
