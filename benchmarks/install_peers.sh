#!/usr/bin/env bash
# One-time install of the PEER simulators compared in docs/BENCHMARKS.md (section 1), in their
# own virtual environment: they are never DriftSched dependencies.
#
#   bash benchmarks/install_peers.sh            # -> .venv-peers/ at the repo root
#   PEERS_VENV=/some/dir bash benchmarks/install_peers.sh
#
# Vidur (microsoft/vidur, PyPI `vidur`) and sched-sim (PyPI `sched-sim`), pinned to the versions
# benchmarked. `python -m benchmarks.run` looks for this venv and reports a peer as "not
# installed" (with this command) when it is missing. Needs Python >= 3.11 (sched-sim) and
# the cp311 wheel of vidur 0.0.26; set PEERS_PYTHON to pick the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PY="${PEERS_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "vidur==0.0.26" "sched-sim==0.2.1"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("vidur", "sched-sim"):
    print(f"{name} {md.version(name)}")
PY
