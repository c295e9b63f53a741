"""A real three-policy, two-seed sweep of evaluate.py, shared by the comparison tests.

The sweep runs once per session through the command line a user types (``+sweep=...`` preset,
narrowed from the CLI) on a small workload, single-threaded, without wandb.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICIES = ("fifo", "driftsched", "oracle")  # no trained artifacts needed
SEEDS = (0, 1)
N_REQUESTS = 150


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "1",
            "DRIFTSCHED_PROGRESS": "off",
            **extra,
        }
    )
    return env


def run_evaluate(
    args: list[str], timeout: float = 240, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python evaluate.py <args>`` from the repo root; fails the test with its output."""
    proc = subprocess.run(
        [sys.executable, "evaluate.py", *args],
        cwd=REPO,
        env=run_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"evaluate.py {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
        )
    return proc


def sweep_args(sweep_dir: Path, policies=POLICIES, seeds=SEEDS, n: int = N_REQUESTS) -> list[str]:
    return [
        "+sweep=three_policies",
        f"+policy={','.join(policies)}",
        f"seed={','.join(map(str, seeds))}",
        f"workload.n_requests={n}",
        "utilisation=1.1",
        "logger=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sweep") / "three_policies"
    run_evaluate(sweep_args(d))
    return d


def suite_args(tmp: Path, artifacts: Path) -> list[str]:
    """Command-line arguments of a reduced suite/ablation run into ``tmp`` on ``artifacts``."""
    return [
        "--quick",
        "--runs",
        str(tmp / "runs"),
        "--override",
        f"predictor_dir={artifacts}",
        "--override",
        "engine.capacity_sample=60",
    ]
