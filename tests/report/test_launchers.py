"""Scale-out: tiny evaluate.py sweeps through the joblib launcher (local processes) and the
submitit_local launcher (the SLURM code path, run locally), then compared."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import compare
from report.runs import discover_runs
from tests.report.conftest import run_evaluate

TINY = ["-m", "+policy=fifo,oracle", "seed=0", "workload.n_requests=30", "logger=none"]


def check_sweep(sweep: Path, tmp_path: Path) -> None:
    runs = discover_runs([sweep])
    assert sorted(r.policy for r in runs) == ["fifo", "oracle"]
    assert all(r.complete for r in runs)
    assert compare.main([str(sweep), "--out", str(tmp_path / "cmp"), "--no-figures"]) == 0
    assert len(pd.read_csv(tmp_path / "cmp" / "runs.csv")) == 2


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_joblib_launcher_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "joblib"
    proc = run_evaluate(
        [*TINY, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    )
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in proc.stdout + proc.stderr
    check_sweep(sweep, tmp_path)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_submitit_local_launcher_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "submitit"
    run_evaluate(
        [
            *TINY,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    # submitit wrote its own job logs: the jobs ran as separate submitted processes
    assert list((sweep / ".submitit").rglob("*_log.out"))
    check_sweep(sweep, tmp_path)


def test_slurm_presets_compose(tmp_path: Path) -> None:
    proc = run_evaluate(
        ["+policy=fifo", "hydra/launcher=slurm_gpu", "--cfg", "hydra", "-p", "hydra.launcher"]
    )
    out = proc.stdout
    assert "SlurmLauncher" in out and "gpus_per_node: 1" in out
    assert "OMP_NUM_THREADS=1" in out
