"""Ctrl-C and failing jobs in ``evaluate.py`` (issue 9 part 5), on both engines.

* SIGINT to a real ``python evaluate.py`` subprocess (simulator): the records so far are
  written and flagged incomplete, wandb (offline) finishes, the process exits non-zero;
* SIGINT to this process while ``report.jobs.evaluate`` serves on the live vLLM engine: the same,
  and the engine is shut down;
* a live engine that dies mid-run: the job fails cleanly with partial records, and the next job
  (a fresh engine, as in a sweep) runs; a Hydra multirun sweep goes on after a failing job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from report import jobs
from report.runs import MARKER, discover_runs
from scheduler.faults import InjectedEngineFault
from scheduler.policies.fifo import FIFOPolicy
from scheduler.request import SchedRequest
from tests import campaign
from tests.report.test_crash_safe import exploding_preset

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

REPO = Path(__file__).resolve().parents[2]
HERE = "tests.report.test_interrupt"


class SlowFifo(FIFOPolicy):
    """FIFO that announces the run (file in $INTERRUPT_FLAG) and admits slowly, so a signal
    lands mid-run."""

    def on_admit(self, requests: list[SchedRequest], now: float) -> None:
        flag = os.environ.get("INTERRUPT_FLAG")
        if flag and not os.path.exists(flag):
            Path(flag).write_text("in run\n")
        time.sleep(0.05 * len(requests))  # per request: batched admissions stay slow


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp),
        "PYTHONPATH": str(REPO),
        **extra,
    }


def wandb_exit_code(run_dir: Path) -> int | None:
    """The exit code wandb recorded when the run finished (None: never finished)."""
    logs = sorted(run_dir.glob("wandb/*run-*/logs/debug.log"))
    assert logs, f"no wandb run under {run_dir}"
    text = logs[-1].read_text()
    if "finishing run" not in text:
        return None
    code = text.rsplit("got exitcode:", 1)[-1].split()[0] if "got exitcode:" in text else None
    return None if code is None else int(code)


def assert_partial(run: Path, kind: str, error: str) -> pd.DataFrame:
    assert not (run / "summary.json").exists()
    marker = (run / MARKER).read_text()
    assert kind in marker and error in marker and "INCOMPLETE" in marker, marker
    part = json.loads((run / "partial.json").read_text())
    assert part["complete"] is False and error in part["error"]
    rec = pd.read_parquet(run / "records.parquet")
    assert len(rec) >= 1 and set(rec["status"]) <= {"finished", "aborted"}
    assert rec["request_id"].is_unique
    (r,) = discover_runs([run])
    assert not r.complete
    return rec


# ----------------------------------------------------------------------------- simulator
@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_sigint_during_sim_evaluate_flushes_records_and_finishes_wandb(
    tmp_path: Path, sig: signal.Signals
) -> None:
    run = tmp_path / "run"
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [
            sys.executable,
            "evaluate.py",
            "workload.n_requests=200",
            "rate_rps=2.0",
            "logger=wandb",
            "logger.mode=offline",
            "+policy=fifo",
            f"policy._target_={HERE}.SlowFifo",
            f"hydra.run.dir={run}",
        ],
        cwd=REPO,
        env=_env(tmp_path, INTERRUPT_FLAG=str(flag)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "evaluate.py never reached the policy"
            time.sleep(0.05)
        time.sleep(1.0)  # ~20 admissions in
        t = time.monotonic()
        proc.send_signal(sig)  # SIGINT: what Ctrl-C sends; SIGTERM: kill, SLURM time limits
        _, err = proc.communicate(timeout=60)
        stop_s = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    rec = assert_partial(run, "interrupted", "KeyboardInterrupt")
    assert len(rec) < 200
    assert wandb_exit_code(run) == 1  # finished, marked failed
    assert stop_s < 30
    campaign.COUNTS[f"interrupt/sim_{sig.name.lower()}"] += 1
    campaign.COUNTS["interrupt/sim_partial_records"] += len(rec)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_multirun_sweep_runs_the_next_job_after_a_failing_one(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "-m",
            "workload.n_requests=40",
            "rate_rps=2.0",
            "logger=none",
            *exploding_preset(tmp_path),
            "policy.after=20,100000",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode != 0  # the sweep reports the failure at the end
    assert "injected policy failure" in proc.stderr
    assert_partial(sweep / "0", "failed", "injected policy failure")
    assert (sweep / "1" / "summary.json").is_file()  # the next job ran to completion
    runs = {r.path.name: r for r in discover_runs([sweep])}
    assert not runs["0"].complete and runs["1"].complete
    campaign.COUNTS["interrupt/sweep_jobs_after_failure"] += 1


# ----------------------------------------------------------------------------- live engine
pytest_vllm = pytest.mark.vllm
INSTANCES: list = []


def _tracked_engine_cls():
    from scheduler.live.engine import VllmEngine

    class TrackedVllmEngine(VllmEngine):
        """The live engine, remembered so the test can check it was shut down."""

        def __init__(self, **cfg):
            super().__init__(**cfg)
            INSTANCES.append(self)

    return TrackedVllmEngine


TrackedVllmEngine = None  # built lazily (imports vLLM); see _compose


def _compose(tmp: Path, *extra: str):
    from hydra import compose, initialize_config_dir

    global TrackedVllmEngine
    if TrackedVllmEngine is None:
        TrackedVllmEngine = _tracked_engine_cls()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                "engine=vllm",
                f"engine._target_={HERE}.TrackedVllmEngine",
                f"engine.cache_dir={tmp / 'cache'}",
                "engine.max_num_seqs=4",
                "engine.kv_cache_gib=0.25",
                "engine.max_model_len=256",
                "engine.progress=false",
                "workload.n_requests=60",
                "workload.max_tokens=24",  # short outputs: a run of seconds on the tiny model
                "workload.max_prompt_tokens=200",
                "rate_rps=12.0",
                "logger=wandb",
                "logger.mode=offline",
                "+policy=fifo",
                *extra,
            ],
        )


@pytest_vllm
def test_live_engine_death_fails_cleanly_and_the_next_job_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    INSTANCES.clear()
    cfg = _compose(tmp_path, "+faults=engine_death", "faults.engine.die_at_step=40")
    run1 = tmp_path / "job0"
    with pytest.raises(InjectedEngineFault, match="died in engine step 40"):
        jobs.evaluate(cfg, run1)
    rec = assert_partial(run1, "failed", "InjectedEngineFault")
    part = json.loads((run1 / "partial.json").read_text())
    assert part["partial"]["cut_off"] >= 1 and part["unfinished_requests"] >= 1
    assert len(pd.read_parquet(run1 / "steps.parquet")) >= 40  # buffered step lines flushed
    assert all(k >= 0 for k in part["cut_off_tokens"].values())
    assert wandb_exit_code(run1) == 1
    assert len(INSTANCES) == 1 and not INSTANCES[0].is_open  # the engine was shut down
    # the next job of a sweep: a fresh engine, same workload, no fault
    run2 = tmp_path / "job1"
    out = jobs.evaluate(_compose(tmp_path, "workload.n_requests=12"), run2)
    assert (run2 / "summary.json").is_file() and not (run2 / MARKER).exists()
    assert next(iter(out.values()))["n_requests"] == 12
    assert wandb_exit_code(run2) == 0
    assert len(INSTANCES) == 2 and not INSTANCES[1].is_open
    campaign.COUNTS["interrupt/live_engine_death"] += 1
    campaign.COUNTS["interrupt/live_partial_records"] += len(rec)


@pytest_vllm
def test_sigint_during_live_evaluate_flushes_records_stops_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    INSTANCES.clear()
    sink = tmp_path / "sink"
    cfg = _compose(tmp_path, f"engine.sink_dir={sink}", "engine.keep_sink=true")
    run = tmp_path / "job"
    sent = threading.Event()

    def ctrl_c() -> None:  # Ctrl-C once a few requests have ended (the run is mid-way)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run / "summary.json").exists():
            lines = list(sink.glob("*/sched_requests.jsonl"))
            if lines and len(lines[0].read_text().splitlines()) >= 5:
                sent.set()
                os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the main thread
                return
            time.sleep(0.02)

    th = threading.Thread(target=ctrl_c, daemon=True)
    # Python's Ctrl-C handler, also where this process started with SIGINT ignored (a
    # background job of a non-interactive shell)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    th.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.evaluate(cfg, run)
    finally:
        th.join(timeout=5)
        signal.signal(signal.SIGINT, previous)
    assert sent.is_set()
    rec = assert_partial(run, "interrupted", "KeyboardInterrupt")
    assert 5 <= len(rec) < 60
    part = json.loads((run / "partial.json").read_text())
    assert part["partial"]["submitted"] >= len(rec)
    assert wandb_exit_code(run) == 1
    assert len(INSTANCES) == 1 and not INSTANCES[0].is_open
    campaign.COUNTS["interrupt/live_sigint"] += 1
    campaign.COUNTS["interrupt/live_partial_records"] += len(rec)
