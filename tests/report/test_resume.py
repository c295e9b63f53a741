"""Resuming a sweep: finished jobs (same config) are skipped, killed or changed ones re-run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from report.runs import job_finished
from tests.report.conftest import run_evaluate, sweep_args


def job(sweep: Path, policy: str, seed: int) -> Path:
    (d,) = [
        p for p in sweep.iterdir() if f"+policy={policy}," in p.name and f"seed={seed}" in p.name
    ]
    return d


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_job_finished_single_and_bare_layouts(sweep_dir: Path, tmp_path: Path) -> None:
    src = job(sweep_dir, "fifo", 0)
    d = tmp_path / src.name
    shutil.copytree(src, d)
    assert job_finished(d)
    # the bare `python evaluate.py` layout: config.yaml with `compare`, one dir per policy
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = OmegaConf.load(d / "config.yaml")
    del cfg["policy"]
    cfg.compare = ["fifo", "oracle"]
    OmegaConf.save(cfg, bare / "config.yaml")
    shutil.copytree(src, bare / "fifo")
    assert not job_finished(bare)  # oracle missing
    shutil.copytree(job(sweep_dir, "oracle", 0), bare / "oracle")
    assert job_finished(bare)
    (d / "summary.json").unlink()  # killed before finishing: run again
    assert not job_finished(d)
    (bare / "oracle" / "INCOMPLETE").touch()  # a job may mark itself while running
    assert not job_finished(bare)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_rerun_skips_finished_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = sweep_args(sweep, policies=("fifo",), seeds=(0, 1), n=30)
    run_evaluate(args)
    done, killed = job(sweep, "fifo", 0), job(sweep, "fifo", 1)
    before = (done / "summary.json").stat().st_mtime_ns
    (killed / "summary.json").unlink()  # as if killed before finishing
    assert not job_finished(killed)
    proc = run_evaluate(args)
    assert f"skipping {done}" in proc.stdout
    assert proc.stdout.count("skipping") == 1  # the killed job ran again
    assert (done / "summary.json").stat().st_mtime_ns == before
    assert job_finished(killed)
