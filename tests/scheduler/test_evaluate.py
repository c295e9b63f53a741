"""evaluate.py end to end: configs compose, one policy, the bare comparison, a small sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from report.jobs import build_policy
from scheduler.policies.base import Policy

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
POLICIES = sorted(p.stem for p in (CONF / "policy").glob("*.yaml"))
ENGINES = sorted(p.stem for p in (CONF / "engine").glob("*.yaml"))
SMALL = ["workload.n_requests=60", "logger=none", "engine.capacity_sample=60"]


def run_cli(args: list[str], tmp: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp),
        "HYDRA_FULL_ERROR": "1",
    }
    proc = subprocess.run(
        [sys.executable, "evaluate.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_every_policy_and_engine_config_composes(tiny_artifacts: Path) -> None:
    assert {
        "fifo",
        "priority",
        "weighted",
        "weighted_fair",
        "sjf",
        "aging",
        "driftsched",
        "drift",
        "oracle",
    } <= set(POLICIES)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose(config_name="evaluate")
        assert "policy" not in base  # +policy=... must be able to append the group
        assert set(base.compare) <= set(POLICIES)
        for p in POLICIES:
            cfg = compose(
                config_name="evaluate",
                overrides=[f"+policy={p}", f"predictor_dir={tiny_artifacts}"],
            )
            policy = build_policy(cfg.policy)
            assert isinstance(policy, Policy) and p.startswith(policy.name)
        for e in ENGINES:
            cfg = compose(config_name="evaluate", overrides=[f"engine={e}"])
            engine = instantiate(cfg.engine)
            assert callable(engine.run) and callable(engine.capacity_rps)
        for w in sorted(p.stem for p in (CONF / "workload").glob("*.yaml")):
            cfg = compose(config_name="evaluate", overrides=[f"workload={w}"])
            assert cfg.workload is not None


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_single_policy_writes_records_steps_summary(tiny_artifacts: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        [
            "+policy=drift",
            f"predictor_dir={tiny_artifacts}",
            "workload.n_requests=60",
            "engine.capacity_sample=60",
            "logger=wandb",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert "drift" in proc.stdout
    rec = pd.read_parquet(out / "records.parquet")
    assert len(rec) == 60 and (rec["status"] == "finished").all()
    assert (rec["policy"] == "drift").all()
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) > 0
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "latency",
        "per_tier",
        "per_tenant",
        "slo",
        "throughput",
        "fairness",
        "starvation",
        "preemptions",
        "estimation",
    ):
        assert key in s
    assert s["policy"] == "drift" and s["n_requests"] == 60
    # the workload avoided the predictor's training prompts (data.holdout)
    assert s["train_overlap"] == 0.0 and s["allow_train_overlap"] is False
    assert 0 < s["distinct_prompts"] <= 60 and s["unseen_by"] == str(tiny_artifacts)
    assert (out / "config.yaml").is_file()
    assert list(out.glob("wandb/offline-run-*")), "wandb offline run not written"
    assert not list(out.glob(".*.tmp*")) and not list(out.glob(".summary.json.*"))


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_bare_command_compares_every_policy(tiny_artifacts: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    proc = run_cli([f"predictor_dir={tiny_artifacts}", *SMALL, f"hydra.run.dir={out}"], tmp_path)
    table = pd.read_csv(out / "comparison.csv", index_col="policy")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        compare = list(compose(config_name="evaluate").compare)
    assert table.index.tolist() == compare
    assert table.loc["fifo", "vs_fifo"] == pytest.approx(1.0)
    assert table.loc["oracle", "vs_oracle"] == pytest.approx(1.0)
    assert "headroom_capture" in table.columns
    for p in compare:
        assert (out / p / "summary.json").is_file()
    # every policy saw the identical workload
    ids = {
        p: pd.read_parquet(out / p / "records.parquet")[["request_id", "arrival_s"]]
        for p in compare
    }
    for p in compare[1:]:
        pd.testing.assert_frame_equal(ids[p], ids[compare[0]])
    assert "headroom_capture" in proc.stdout
    assert table.loc["sjf", "train_overlap"] == 0.0 and pd.isna(table.loc["fifo", "train_overlap"])
    assert "What this says" in proc.stdout and "lowest mean E2E without true lengths" in proc.stdout


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_multirun_sweep(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "+policy=fifo,oracle",
            "seed=0,1",
            "workload.n_requests=40",
            "engine.capacity_sample=40",
            "logger=none",
            f"hydra.sweep.dir={out}",
        ],
        tmp_path,
    )
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]
    assert sorted((s["policy"], s["seed"]) for s in summaries) == [
        ("fifo", 0),
        ("fifo", 1),
        ("oracle", 0),
        ("oracle", 1),
    ]


def run_cli_failing(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """evaluate.py with ``args`` on the small workload; the run must fail."""
    proc = subprocess.run(
        [sys.executable, "evaluate.py", *args, *SMALL, f"hydra.run.dir={tmp / 'r'}"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode != 0
    return proc


def test_missing_predictor_names_train_command(tmp_path: Path) -> None:
    proc = run_cli_failing(["+policy=drift", f"predictor_dir={tmp_path / 'none'}"], tmp_path)
    assert "python train.py" in proc.stderr + proc.stdout


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_skip_finished_skips_only_a_finished_run_of_the_same_config(tmp_path: Path) -> None:
    out = tmp_path / "job"
    args = [
        "+policy=fifo",
        "workload.n_requests=40",
        "engine.capacity_sample=40",
        "logger=none",
        "skip_finished=true",
        f"hydra.run.dir={out}",
    ]
    first = run_cli(args, tmp_path)
    assert "skipping" not in first.stdout
    again = run_cli(args, tmp_path)
    assert "skipping" in again.stdout
    changed = run_cli([*args, "utilisation=0.5"], tmp_path)  # another config: runs again
    assert "skipping" not in changed.stdout
    assert json.loads((out / "summary.json").read_text())["utilisation"] == 0.5


def test_preset_with_its_own_predictor_names_the_training_command(tmp_path: Path) -> None:
    proc = run_cli_failing(
        ["workload=unseen_source", "+policy=sjf", f"workload.predictor.dir={tmp_path / 'loso'}"],
        tmp_path,
    )
    err = proc.stderr + proc.stdout
    assert "python train.py data.split.kind=leave_one_source_out" in err
    assert f"out_dir={tmp_path / 'loso'}" in err
