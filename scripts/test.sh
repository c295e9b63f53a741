#!/usr/bin/env bash
# The test command: install (if needed) then run the whole suite, real vLLM tests included.
#   bash scripts/test.sh            everything (CI: .ci/run)
#   bash scripts/test.sh --fast     the inner loop: every package, without the tests marked
#                                   `slow` (>= 4 s each here: whole-pipeline and subprocess runs)
#                                   and without the real-vLLM tests (`vllm`); ~2 min on 2 cores (125 s measured)
# Any other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
# One thread everywhere: two shared cores make multi-threaded LightGBM/torch many times slower.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Fixed hash seed: set iteration order (and so hypothesis's derandomised examples) is the same
# in every run.
export PYTHONHASHSEED=0
if [ "${1:-}" = "--fast" ]; then
  shift
  exec python -m pytest -m "not slow and not vllm" "$@"
fi
exec python -m pytest "$@"
