"""Issue 9 parts 6 and 5 (cheap part): crash-safe outputs and clean failures.

* ``report.runs.atomic_write`` never leaves a torn or half-written file under the final name;
* a policy that raises inside the simulator makes ``evaluate.py`` exit non-zero with the error,
  writes no ``summary.json`` and leaves an ``INCOMPLETE`` marker naming the failure;
* a job killed with SIGKILL mid-run is flagged incomplete;
* ``compare.py`` refuses incomplete runs (exit 2, naming them) unless ``--allow-incomplete``,
  and never reads a temporary file, a torn parquet or a stale summary as a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from report import jobs
from report import runs as report_runs
from report.runs import MARKER, discover_runs, job_finished
from scheduler.policies.fifo import FIFOPolicy
from scheduler.request import SchedRequest

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

REPO = Path(__file__).resolve().parents[2]
SMALL = ["workload.n_requests=40", "logger=none", "engine.capacity_sample=40"]
HERE = "tests.report.test_crash_safe"


class ExplodingPolicy(FIFOPolicy):
    """FIFO that raises after ``after`` admissions (an injected policy bug)."""

    def __init__(self, after: int = 5) -> None:
        self.after = int(after)
        self.seen = 0

    def on_admit(self, requests: list[SchedRequest], now: float) -> None:
        self.seen += len(requests)
        if self.seen > self.after:
            raise RuntimeError(f"injected policy failure after {self.seen} admissions")


class HangingPolicy(FIFOPolicy):
    """FIFO that signals it is inside the run (file in $CRASH_SAFE_FLAG), then blocks."""

    def on_admit(self, requests: list[SchedRequest], now: float) -> None:
        Path(os.environ["CRASH_SAFE_FLAG"]).write_text("in run\n")
        time.sleep(600)


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "WANDB_DIR": str(tmp),
        "PYTHONPATH": str(REPO),
    }


def exploding_preset(tmp: Path) -> list[str]:
    """Overrides selecting ``ExplodingPolicy`` through a preset of its own (a config dir on
    Hydra's search path): a class with knobs the stock presets' schemas do not have."""
    conf = tmp / "user_conf"
    (conf / "policy").mkdir(parents=True, exist_ok=True)
    (conf / "policy" / "exploding.yaml").write_text(f"_target_: {HERE}.ExplodingPolicy\nafter: 5\n")
    return [f"hydra.searchpath=[file://{conf}]", "+policy=exploding"]


def _evaluate(run_dir: Path, extra: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "evaluate.py", *SMALL, *extra, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _compare(paths: list[Path], tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "compare.py",
            *map(str, paths),
            "--no-figures",
            "--out",
            str(tmp / "cmp"),
            *flags,
        ],
        cwd=REPO,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    run = tmp / "runs" / "fifo"
    proc = _evaluate(run, ["+policy=fifo"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "summary.json").is_file() and not (run / MARKER).exists()
    return run


# ------------------------------------------------------------------ atomic writes
def test_atomic_write_failure_leaves_no_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"

    def torn(p: Path) -> None:
        p.write_text('{"n_requests": 3, "lat')  # half written, then the process "dies"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        report_runs.atomic_write(target, torn)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file

    target.write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt):
        report_runs.atomic_write(target, torn)
    assert json.loads(target.read_text()) == {"old": True}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_rewrite_of_a_finished_dir_that_dies_midway_is_not_complete(
    finished_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "fifo"
    shutil.copytree(finished_run, run)
    assert job_finished(run)

    class Res:  # records are written, then writing steps "crashes"
        records = pd.read_parquet(run / "records.parquet")

        @property
        def steps(self) -> pd.DataFrame:
            raise OSError("disk full (injected)")

    with pytest.raises(OSError, match="injected"):
        report_runs.write_outputs(run, Res(), {"n_requests": 40})
    # the old summary.json no longer vouches for the new records
    assert not (run / "summary.json").exists()
    assert not job_finished(run)
    assert not [p for p in run.glob(".*.parquet.*")]  # no temporary file left


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_torn_and_temporary_files_are_never_read_as_complete(
    finished_run: Path, tmp_path: Path
) -> None:
    cases: dict[str, str] = {}

    def variant(name: str, expect: str) -> Path:
        d = tmp_path / "runs" / name
        shutil.copytree(finished_run, d)
        cases[name] = expect
        return d

    d = variant("torn_records", "unreadable")
    b = (d / "records.parquet").read_bytes()
    (d / "records.parquet").write_bytes(b[: len(b) // 2])
    d = variant("no_summary", "did not finish")
    (d / "summary.json").unlink()
    d = variant("temp_only", "no records.parquet")  # killed during the first rename
    (d / "records.parquet").rename(d / ".records.parquet.k3j2")
    (d / "summary.json").unlink()
    d = variant("torn_summary", "not valid JSON")
    (d / "summary.json").write_text('{"n_requests": 4')
    d = variant("summary_not_ours", "n_requests")
    (d / "summary.json").write_text("{}")
    d = variant("row_count_mismatch", "rows")
    s = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**s, "n_requests": s["n_requests"] + 1}))
    d = variant("complete_false", "complete=false")
    (d / "summary.json").write_text(json.dumps({**s, "complete": False}))
    d = variant("marker", MARKER)
    (d / MARKER).write_text("running\n")

    runs = {r.path.name: r for r in discover_runs([tmp_path / "runs"])}
    assert set(runs) == set(cases)
    for name, expect in cases.items():
        assert not runs[name].complete, name
        assert expect in runs[name].problem, (name, runs[name].problem)


# ------------------------------------------------------------------ injected failures
@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_policy_that_raises_fails_cleanly_and_compare_refuses(
    finished_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "runs" / "exploding"
    proc = _evaluate(
        run,
        exploding_preset(tmp_path),
        tmp_path,
    )
    assert proc.returncode != 0
    assert "injected policy failure" in proc.stderr
    assert not (run / "summary.json").exists()
    marker = (run / MARKER).read_text()
    assert "failed" in marker and "injected policy failure" in marker
    assert not job_finished(run)
    # the records of the requests that ended before the failure are kept (the simulator
    # attaches them as exc.partial_result), marked incomplete
    part = json.loads((run / "partial.json").read_text())
    assert part["complete"] is False and "injected policy failure" in part["error"]
    assert part["incomplete"] and part["unfinished_requests"] >= 1
    assert "partial records" in marker and "INCOMPLETE" in marker
    rec = pd.read_parquet(run / "records.parquet")  # may be empty: it fails at admission 6
    assert len(rec) == 40 - part["unfinished_requests"]
    assert set(rec["status"]) <= {"finished", "aborted"}

    both = tmp_path / "runs"
    shutil.copytree(finished_run, both / "fifo")
    refused = _compare([both], tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "incomplete" in refused.stderr and "exploding" in refused.stderr
    assert "--allow-incomplete" in refused.stderr
    allowed = _compare([both], tmp_path, "--allow-incomplete")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "1 incomplete run(s) excluded" in allowed.stderr


def test_bare_command_with_a_failing_policy_flags_that_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the bare command writes one sub-directory per policy: the failing one must be visible to
    # compare.py (an INCOMPLETE marker), not silently missing from the comparison
    from hydra import compose, initialize_config_dir

    real = jobs.build_policy

    def build(pcfg):  # "priority" gets a bug injected; the others are the real policies
        if pcfg.get("_target_", "").endswith("PriorityPolicy"):
            return ExplodingPolicy(after=5)
        return real(pcfg)

    monkeypatch.setattr(jobs, "build_policy", build)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate", overrides=[*SMALL, "compare=[fifo,priority,weighted]"]
        )
    run = tmp_path / "bare"
    with pytest.raises(RuntimeError, match="injected policy failure"):
        jobs.evaluate(cfg, run)
    assert (run / "fifo" / "summary.json").is_file()
    assert not (run / "weighted").exists()  # never started: the failure stops the job
    runs = {r.path.name: r for r in discover_runs([run])}
    assert runs["fifo"].complete
    assert "priority" in runs and not runs["priority"].complete
    assert "injected policy failure" in (run / "priority" / MARKER).read_text()


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_killed_run_is_flagged_incomplete(tmp_path: Path) -> None:
    run = tmp_path / "killed"
    flag = tmp_path / "flag"
    env = {**_env(tmp_path), "CRASH_SAFE_FLAG": str(flag)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "evaluate.py",
            *SMALL,
            "+policy=fifo",
            f"policy._target_={HERE}.HangingPolicy",
            f"hydra.run.dir={run}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, "evaluate.py exited before reaching the policy"
            assert time.monotonic() < deadline, "evaluate.py never reached the policy"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # no handler can run: the worst case
    finally:
        proc.wait(timeout=30)
    assert not (run / "summary.json").exists()
    (r,) = discover_runs([run])
    assert not r.complete and MARKER in r.problem
    assert not [p for p in run.iterdir() if p.name.startswith(".records")]
