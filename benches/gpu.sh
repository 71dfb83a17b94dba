#!/usr/bin/env bash
# Prepared GPU benchmark for one H200 (finishes in under 5 minutes; no network needed).
#
#   bash benches/gpu.sh            # on the GPU machine, from anywhere
#   bash benches/gpu.sh --smoke    # on a CPU-only machine: tiny shapes, tests the script
#
# Needs python with torch (CUDA) and numpy. Our package is used when it can be imported:
# installed, or the compiled extension python/spectrum_rs/_core*.so present in the tree
# (copy it along: it is git-ignored), or built here with maturin when cargo and the crates
# are available offline. Without it the per-shape kernel figures and the projection still
# run (they only need torch); the product-worker column, the end-to-end scan and the
# CUDA tests are skipped and the results say why.
#
# Writes $OUT/gpu-<date>.md and .json ($OUT defaults to benches/results) and prints them.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export OUT="${OUT:-$REPO/benches/results}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" >&2; }
START=$(date +%s)

SMOKE=""
[[ "${1:-}" == "--smoke" ]] && SMOKE="--smoke"

if [[ -z "$SMOKE" ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1 \
    || log "nvidia-smi failed"
  cat "$OUT/nvidia-smi.txt" >&2 || true
fi
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" >&2 \
  || { log "python cannot import torch and numpy: nothing to measure"; exit 2; }

# 1. our package
PKG="none"
if "$PY" -c "import spectrum_rs._core" 2>/dev/null; then
  PKG="installed"
elif PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import spectrum_rs._core" 2>/dev/null; then
  export PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
  PKG="source tree + carried extension"
elif command -v cargo >/dev/null && command -v maturin >/dev/null; then
  log "building spectrum_rs with maturin (offline) ..."
  if CARGO_NET_OFFLINE=true timeout 150 maturin build --release -q -o /tmp/spectrum-wheels >&2 \
     && "$PY" -m pip install -q --no-index --no-deps --force-reinstall /tmp/spectrum-wheels/spectrum_rs-*.whl >&2; then
    PKG="built here with maturin"
  else
    log "maturin build failed (offline crates missing?)"
  fi
else
  log "spectrum_rs not importable and no cargo+maturin here: kernel figures only"
fi
log "spectrum_rs: $PKG"

# 2. CUDA tests, if any (bounded to 60 s)
PYTEST_LINE=""
if [[ -z "$SMOKE" && "$PKG" != "none" ]] && grep -rqs --include="test_*.py" "cuda" "$REPO/tests"; then
  if "$PY" -m pytest --version >/dev/null 2>&1; then
    log "python -m pytest -q tests -k cuda"
    timeout 60 "$PY" -m pytest -q tests -k cuda -p no:cacheprovider > "$OUT/pytest-cuda.txt" 2>&1
    rc=$?
    tail -n 15 "$OUT/pytest-cuda.txt" >&2
    PYTEST_LINE="exit $rc: $(tail -n 1 "$OUT/pytest-cuda.txt" | tr -d '=' | sed 's/^ *//') (log: pytest-cuda.txt)"
  else
    PYTEST_LINE="not run: pytest is not installed here"
  fi
elif [[ -z "$SMOKE" ]]; then
  PYTEST_LINE="not run: $([[ "$PKG" == none ]] && echo 'spectrum_rs not importable' || echo 'no CUDA tests in tests/')"
fi

# 3. the benchmark (per-shape part bounded by --budget; then an end-to-end scan)
# The whole script stays under 5 minutes: the per-shape part ends its svdvals runs by
# 170 s from the start, and the end-to-end scan (~1 minute) starts only before 210 s.
ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( 170 - ELAPSED ))
(( BUDGET < 60 )) && BUDGET=60
E2E_AFTER=$(( 210 - ELAPSED ))
(( E2E_AFTER < 0 )) && E2E_AFTER=0
ARGS=(--budget "$BUDGET" --e2e-after "$E2E_AFTER")
[[ -n "$SMOKE" ]] && ARGS=(--smoke)
[[ -n "$PYTEST_LINE" ]] && ARGS+=(--pytest "$PYTEST_LINE")
"$PY" "$REPO/benches/bench_gpu.py" "${ARGS[@]}"
rc=$?
log "done in $(( $(date +%s) - START )) s (exit $rc); results in $OUT"
exit $rc
