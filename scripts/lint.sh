#!/usr/bin/env bash
# Formatting, lint, types and the stub check; fails on the first problem. Needs the
# package installed with its lint extra (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy -D warnings" >&2
cargo clippy --quiet --all-targets -- -D warnings
echo "== ruff check" >&2
python3 -m ruff check python tests benches
echo "== ruff format --check" >&2
python3 -m ruff format --check python tests benches
echo "== mypy" >&2
python3 -m mypy
echo "== stubtest spectrum_rs._core" >&2
python3 -m mypy.stubtest spectrum_rs._core
