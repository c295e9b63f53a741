"""`python train.py` end to end on small subsets (Hydra compose with overrides, tmp dirs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import train as train_entry
from predictor.serving import load_predictor
from predictor.training import TrainConfig
from scheduler.records import build_records
from scheduler.request import SchedRequest, Status
from tests.predictor.conftest import make_trace

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "logger=none",
    "threads=1",
    "train.max_train_rows=1500",
    "train.max_val_rows=300",
    "train.max_test_rows=300",
    "train.max_drift_traces=600",
    "predictor.length.n_estimators=25",
    "predictor.length.text_dim=8",
    "predictor.length.min_count=5",
    "predictor.drift.n_estimators=20",
    "baselines.tfidf_ridge.max_vocab=3000",
]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_default_config_composes() -> None:
    cfg = _compose([])
    assert cfg.predictor.name == "lightgbm" and list(cfg.data.sources) == [
        "castillo",
        "alpaca_eval",
        "sharegpt",
    ]
    assert cfg.out_dir == "artifacts" and cfg.logger.enabled


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_train_on_a_shipped_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = _compose([*SMALL, "data.sources=[sharegpt]", f"out_dir={tmp_path / 'art'}"])
    res = train_entry.train(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "Held-out length metrics" in out and "tfidf_ridge" in out and "paper_ema" in out
    models = set(res.length_table["model"])
    assert {
        "constant_median",
        "paper_ema",
        "paper_ema_tokenizer",
        "paper_no_correction",
        "prompt_length_regression",
        "tfidf_ridge",
        "lightgbm",
    } <= models
    assert set(res.drift_table["t"]) == {32, 128, 512}
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["length"]["lightgbm"]["n"] == 300
    assert (tmp_path / "run" / "calibration.png").stat().st_size > 1000
    pred = load_predictor(tmp_path / "art")
    meta = pred.meta["length"]
    assert meta["metrics"]["kendall_tau"] == pytest.approx(
        float(res.length_table.set_index("model").loc["lightgbm", "kendall_tau"])
    )
    assert len(meta["training_data_hash"]) == 64 and "lightgbm" in meta["library_versions"]
    # the scoring CLI on a user file with only prompt + output_tokens
    pd.DataFrame(
        {
            "prompt": ["Write a long story", "What is 2+2?", "Explain DNS"],
            "output_tokens": [600, 4, 250],
        }
    ).to_csv(tmp_path / "u.csv", index=False)
    r = subprocess.run(
        [sys.executable, "-m", "predictor.score", str(tmp_path / "art"), str(tmp_path / "u.csv")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    scored = json.loads(r.stdout)
    assert scored["n"] == 3 and {"mae", "rmse", "kendall_tau", "spearman", "class_accuracy"} <= set(
        scored
    )


def _records(path: Path) -> Path:
    trace = make_trace(n_prompts=150, seed=3, samples=False)
    reqs = []
    for i, r in enumerate(trace.itertuples()):
        q = SchedRequest(
            request_id=r.request_id,
            index=i,
            tenant=r.tenant,
            tier=r.tier,
            category=r.category,
            source=r.source,
            model=r.model,
            prompt=None,
            prompt_tokens=r.prompt_tokens,
            max_tokens=4096,
            arrival_s=float(i),
            true_output_tokens=r.output_tokens,
        )
        q.status = Status.ABORTED if i % 50 == 0 else Status.FINISHED
        q.num_output_tokens = r.output_tokens
        q.finish_s = float(i) + 1
        reqs.append(q)
    df = build_records(reqs, engine="sim", policy="fifo", seed=0)
    df.to_parquet(path)
    return path


def test_train_on_evaluate_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rec = _records(tmp_path / "records.parquet")
    cfg = _compose(
        [
            *SMALL,
            f"data.path={rec}",
            f"out_dir={tmp_path / 'art'}",
            "baselines.tfidf_ridge.min_count=1",
            "predictor.length.min_count=1",
        ]
    )
    res = train_entry.train(cfg, run_dir=None)
    assert "keep finished requests" in capsys.readouterr().out
    assert res.sizes["rows"] == 450 - 9  # 9 aborted records removed, explicitly reported
    assert (tmp_path / "art" / "length" / "meta.json").exists()
    X = load_predictor(tmp_path / "art").featurize(pd.DataFrame({"prompt_tokens": [5]}))
    assert np.isfinite(X[:, 0]).all()


def test_bad_data_config_is_named(tmp_path: Path) -> None:
    cfg = _compose([*SMALL, f"data.path={tmp_path / 'nope.parquet'}"])
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        train_entry.train(cfg)
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_mapping({"no_such_key": 1})
