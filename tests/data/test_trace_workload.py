"""workload=trace: a user's trace file as a workload (good files, bad files, the overlap check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data.presets import workload_from_config
from data.schema import TraceValidationError

ROOT = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n: int = 40) -> list[dict]:
    return [
        {
            "prompt": f"question number {i}: explain topic {i % 7} in detail",
            "output_tokens": 20 + 37 * (i % 9),
            "tenant": ["alice", "bob"][i % 2],
        }
        for i in range(n)
    ]


def test_jsonl_without_arrivals_gets_an_arrival_process_and_tier_mapping(tmp_path: Path) -> None:
    f = _write_jsonl(tmp_path / "t.jsonl", _rows())
    cfg = {
        "preset": "trace",
        "path": str(f),
        "tiers": {"alice": "premium"},
        "slos": {"premium": [0.5, 30.0]},
        "tenant_slos": {"bob": [9.0, 99.0]},
        "max_tokens": 200,
    }
    w = workload_from_config(cfg, seed=3)
    r = w.requests
    assert len(w) == 40 and r["arrival_s"].is_monotonic_increasing
    assert set(zip(r["tenant"], r["tier"])) == {("alice", "premium"), ("bob", "standard")}
    assert w.tenant("alice").slo_ttft_s == 0.5 and w.tenant("bob").slo_e2e_s == 99.0
    assert (r["output_tokens"] <= 200).all() and (r["output_tokens_uncapped"] > 200).any()
    assert any("capped" in x for x in w.reports) and any("no arrival_s" in x for x in w.reports)
    again = workload_from_config(cfg, seed=3)
    pd.testing.assert_frame_equal(again.requests, r)  # deterministic in the seed


def test_csv_arrivals_are_replayed_in_time_order(tmp_path: Path) -> None:
    df = pd.DataFrame(_rows(10))
    df["arrival_s"] = [5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    df["tier"] = ["batch" if t == "bob" else "premium" for t in df["tenant"]]
    f = tmp_path / "t.csv"
    df.to_csv(f, index=False)
    w = workload_from_config({"preset": "trace", "path": str(f), "n_requests": 8}, seed=0)
    assert w.requests["arrival_s"].tolist()[:3] == [0.0, 1.0, 2.0]
    assert len(w) == 8 and any("sorted by arrival_s" in x for x in w.reports)
    pq = tmp_path / "t.parquet"
    df.to_parquet(pq)
    assert len(workload_from_config({"preset": "trace", "path": str(pq)}, seed=0)) == 10


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({}, "workload=trace needs workload.path"),
        ({"tiers": {"alice": "gold"}}, "unknown tier 'gold'"),
        ({"tiers": {"carol": "premium"}}, r"tenant\(s\) \['carol'\] that are not in"),
        ({"tenant_slos": {"carol": [1, 2]}}, r"tenant_slos names tenant\(s\) \['carol'\]"),
        ({"slos": {"gold": [1, 2]}}, "unknown tier"),
        ({"slos": {"premium": [1]}}, r"expected \[ttft_s, e2e_s\]"),
        ({"bogus": 1}, r"unknown field\(s\) \['bogus'\]"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, cfg: dict, match: str) -> None:
    f = _write_jsonl(tmp_path / "t.jsonl", _rows())
    base = {"preset": "trace"} if not cfg else {"preset": "trace", "path": str(f)}
    with pytest.raises(ValueError, match=match):
        workload_from_config({**base, **cfg}, seed=0)


def test_bad_files_name_file_row_and_column(tmp_path: Path) -> None:
    rows = _rows(5)
    rows[3]["output_tokens"] = -4
    f = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TraceValidationError, match=r"bad\.jsonl.*output_tokens") as e:
        workload_from_config({"preset": "trace", "path": str(f)}, seed=0)
    assert "3" in str(e.value)
    mixed = _rows(6)
    for i, r in enumerate(mixed):
        r["tier"] = "premium" if i < 3 else "batch"
        r["tenant"] = "alice"
    f2 = _write_jsonl(tmp_path / "mixed.jsonl", mixed)
    with pytest.raises(ValueError, match="tenant 'alice' has rows of tiers"):
        workload_from_config({"preset": "trace", "path": str(f2)}, seed=0)
    half = pd.DataFrame(_rows(4)).assign(arrival_s=[0.0, None, 1.0, 2.0])
    f3 = tmp_path / "half.csv"
    half.to_csv(f3, index=False)
    with pytest.raises(ValueError, match=r"arrival_s.*missing on row\(s\) \[1\]"):
        workload_from_config({"preset": "trace", "path": str(f3)}, seed=0)
    with pytest.raises(FileNotFoundError):
        workload_from_config({"preset": "trace", "path": str(tmp_path / "none.csv")}, seed=0)


def _evaluate(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "evaluate.py", "logger=none", "engine.capacity_sample=40", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_evaluate_on_a_user_trace_and_its_overlap_check(tmp_path: Path) -> None:
    from tests.tiny_predictor import save_tiny_predictor

    rows = pd.DataFrame(_rows(60))
    rows["request_id"] = [f"u{i}" for i in range(60)]
    rows["prompt_id"] = rows["request_id"]
    for col, v in (("category", "unknown"), ("source", "mine"), ("model", "unknown")):
        rows[col] = v
    rows["tier"] = "standard"
    rows["prompt_tokens"] = 12
    # the predictor trains on the first 20 prompts of the file
    art = save_tiny_predictor(tmp_path / "art", rows.iloc[:20].reset_index(drop=True))
    f = _write_jsonl(tmp_path / "mine.jsonl", _rows(60))
    trace = ["workload=trace", f"workload.path={f}", f"predictor_dir={art}"]
    ok = _evaluate([*trace, "+policy=fifo", f"hydra.run.dir={tmp_path / 'fifo'}"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    s = json.loads((tmp_path / "fifo" / "summary.json").read_text())
    assert s["n_requests"] == 60 and s["train_overlap"] is None
    refused = _evaluate([*trace, "+policy=sjf", f"hydra.run.dir={tmp_path / 'sjf'}"], tmp_path)
    assert refused.returncode != 0
    assert "33.3% of the 60 requests" in refused.stderr and "allow_train_overlap" in refused.stderr
    allowed = _evaluate(
        [*trace, "+policy=sjf", "allow_train_overlap=true", f"hydra.run.dir={tmp_path / 'a'}"],
        tmp_path,
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["train_overlap"] == pytest.approx(1 / 3) and s["allow_train_overlap"] is True
    dropped = _evaluate(
        [*trace, "+policy=sjf", f"workload.unseen_by={art}", f"hydra.run.dir={tmp_path / 'd'}"],
        tmp_path,
    )
    assert dropped.returncode == 0, dropped.stderr[-2000:]
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["train_overlap"] == 0.0 and s["n_requests"] == 40
