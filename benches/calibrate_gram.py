"""How far rounding the Gram matrix to float32 moves its eigenvalues, relative to the
largest, on the layer shapes of real models and on spectra with outliers, heavy tails and
low rank. This is the error the model in python/spectrum_rs/compute/precision.py
must cover: ``|dλ_i| <= FLOAT32_RELATIVE_ERROR * λ_i + max(FLOAT32_ABSOLUTE_ERROR * λmax,
2 * |most negative computed λ|)``. Eigenvalues come from the product's own float64 eigensolver, of the Gram
matrix formed the product's way (numpy ``syrk`` in blocks of rows) in float32 and float64.

    python benches/calibrate_gram.py [--quick] [--out benches/results/gram-float32-error.md]
"""

from __future__ import annotations

import argparse
import platform
import zlib

import numpy as np
from threadpoolctl import threadpool_limits

from spectrum_rs.compute import lapack
from spectrum_rs.compute.numpy_worker import gram
from spectrum_rs.compute.precision import (
    FLOAT32_ABSOLUTE_ERROR,
    FLOAT32_RELATIVE_ERROR,
    NEGATIVE_EVIDENCE,
    gram_error_model,
)

SHAPES = [
    (256, 1024),
    (1024, 1024),
    (2816, 1024),
    (1024, 2816),
    (32000, 1024),
    (2048, 2048),
    (4096, 4096),
    (1024, 4096),
    (14336, 4096),
    (32000, 4096),
]
QUICK = [(1024, 1024), (2816, 1024), (1024, 2816)]


def matrix(kind: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
    if kind == "outlier-columns":
        w[:, : max(1, cols // 512)] *= 30
    elif kind == "heavy-tailed":
        w = (rng.standard_t(3, size=(rows, cols)) * 0.02).astype(np.float32)
    elif kind == "low-rank+noise":
        r = max(1, min(rows, cols) // 64)
        w += (
            rng.standard_normal((rows, r), dtype=np.float32) @ rng.standard_normal((r, cols), dtype=np.float32)
        ) * 0.02
    elif kind == "half-rows-zero":
        w[: rows // 2] = 0
    elif kind == "8-rows-zero":
        w[:8] = 0
    elif kind == "1-row-zero":
        w[:1] = 0
    elif kind == "rank-1 outlier":
        w += (
            20
            * 0.02
            * np.outer(rng.standard_normal(rows), rng.standard_normal(cols)).astype(np.float32)
            / np.sqrt(cols)
        )
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes only (a smoke test)")
    ap.add_argument("--out", default=None, help="write a markdown table here")
    args = ap.parse_args()
    kinds = [
        "gaussian",
        "outlier-columns",
        "heavy-tailed",
        "low-rank+noise",
        "rank-1 outlier",
        "half-rows-zero",
        "8-rows-zero",
        "1-row-zero",
    ]
    rows_out = []
    worst_floor = worst_rel = 0.0
    all_ok = True
    with threadpool_limits(1):
        for rows, cols in QUICK if args.quick else SHAPES:
            for kind in kinds:
                rng = np.random.default_rng(zlib.crc32(f"{rows}x{cols} {kind}".encode()))
                w = matrix(kind, rows, cols, rng)
                a = w.T if rows < cols else w
                l32 = lapack.eigvalsh(gram(a, np.dtype(np.float32)).astype(np.float64))
                l64 = lapack.eigvalsh(gram(a, np.dtype(np.float64)))
                d = np.abs(l32 - l64)
                top = l64[-1]
                bulk = l64 < top / 100
                relative, absolute = gram_error_model(l32, "float32")
                negative = NEGATIVE_EVIDENCE * max(0.0, -float(l32[0])) / top
                # the bulk error the negative eigenvalues do not account for: the floor must cover it
                floor_need = float(((d[bulk] / top) - negative).max()) if bulk.any() else 0.0
                # the relative part needed on top of the model's absolute part
                rel_need = float(((d - absolute * top) / np.maximum(l64, 1e-300 * top)).max())
                ok = bool(np.all(d <= relative * np.abs(l64) + absolute * top))
                worst_floor = max(worst_floor, floor_need)
                worst_rel = max(worst_rel, rel_need)
                all_ok &= ok
                rows_out.append(
                    (
                        rows,
                        cols,
                        kind,
                        float(d.max() / top),
                        float(d[bulk].max() / top) if bulk.any() else 0.0,
                        negative / NEGATIVE_EVIDENCE,
                        floor_need,
                        rel_need,
                        ok,
                    )
                )
                print(
                    f"{rows:>6}x{cols:<5} {kind:<16} max|dλ|/λmax {d.max() / top:.2e}  bulk floor needed "
                    f"{floor_need:.2e}  relative needed {rel_need:.2e}  covered {ok}",
                    flush=True,
                )
    print(
        f"worst: floor needed {worst_floor:.2e} (model {FLOAT32_ABSOLUTE_ERROR:.1e}), relative needed {worst_rel:.2e} "
        f"(model {FLOAT32_RELATIVE_ERROR:.1e}); the model covers every eigenvalue: {all_ok}"
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Float32 Gram rounding: eigenvalue error relative to the largest\n\n")
            f.write(
                f"`python benches/calibrate_gram.py --out {args.out}` on {platform.processor() or platform.machine()}, "
                f"numpy {np.__version__}, eigensolver: {lapack.backend()}.\n\n"
            )
            f.write(
                "Model: |dλ| <= relative λ + max(floor λmax, 2 × |most negative computed λ|), "
                f"relative = {FLOAT32_RELATIVE_ERROR:.1e}, floor = {FLOAT32_ABSOLUTE_ERROR:.1e}.\n\n"
            )
            f.write(
                "| shape | spectrum | max abs(dλ) / λmax | bulk (λ < λmax/100) max abs(dλ) / λmax "
                "| most negative λ / λmax | floor needed | relative needed | covered |\n"
                "|---|---|---|---|---|---|---|---|\n"
            )
            for rows, cols, kind, err, bulk_err, neg, floor_need, rel_need, ok in rows_out:
                f.write(
                    f"| {rows}x{cols} | {kind} | {err:.2e} | {bulk_err:.2e} | {neg:.1e} | {floor_need:.1e} "
                    f"| {rel_need:.1e} | {ok} |\n"
                )
            f.write(
                f"\nWorst: floor needed {worst_floor:.2e}, relative needed {worst_rel:.2e}. "
                f"The model covers every eigenvalue measured: {all_ok}.\n"
            )


if __name__ == "__main__":
    main()
