#!/usr/bin/env bash
# The main job: install (if needed), train the default predictors if none are saved yet, then
# evaluate every policy on the default multi-tenant workload in the simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ ! -f artifacts/length/meta.json ] || [ ! -f artifacts/drift/meta.json ]; then
  python train.py
fi
exec python evaluate.py "$@"
