#!/usr/bin/env bash
# The whole test suite: installs the package with its extras (scripts/setup.sh, skipped
# when SPECTRUM_SKIP_SETUP=1), then runs the Rust unit tests and pytest. Exits non-zero on
# any failure, and when pytest collects no test (its exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SPECTRUM_SKIP_SETUP:-0}" != "1" ]; then
    bash scripts/setup.sh
fi
cargo test --quiet
python3 -m pytest -q "$@"
