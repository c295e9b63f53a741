"""The predictor report end to end at tiny sizes on a synthetic three-source table.

``python -m benchmarks.predictor_report --quick`` is the same code on the shipped data
(~3 min); here the data are synthetic so the test needs no data files and runs in ~1 min.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import predictor_report as rep
from benchmarks.predictor_config import QUICK
from benchmarks.predictor_splits import Base
from data.splits import grouped_split
from scheduler.sim.synthetic import synthetic_frame
from tests.tiny_predictor import with_prompts


def _base() -> Base:
    df = with_prompts(synthetic_frame(2400, seed=4))
    rng = np.random.default_rng(0)
    src = rng.choice(["castillo", "alpaca_eval", "sharegpt"], size=len(df))
    model = np.where(
        src == "castillo",
        rng.choice(["llama-8b-instruct", "qwen-32b-instruct"], size=len(df)),
        np.where(
            src == "alpaca_eval", rng.choice(["gen-a-7b", "gen-b-70b"], size=len(df)), "chatgpt"
        ),
    )
    # generators differ in verbosity: what the held-out and online sections must learn
    scale = pd.Series(model).map(
        {
            "llama-8b-instruct": 1.0,
            "qwen-32b-instruct": 1.5,
            "gen-a-7b": 0.7,
            "gen-b-70b": 2.0,
            "chatgpt": 1.0,
        }
    )
    df["output_tokens"] = np.maximum(1, (df["output_tokens"] * scale.to_numpy()).round()).astype(
        np.int64
    )
    df["source"], df["model"] = src, model
    df["category"] = np.where(src == "castillo", "code", "chat")
    sp = grouped_split(df, (0.6, 0.2, 0.2), seed=0)
    mix = [
        {"source": "sharegpt", "models": None, "categories": None},
        {"source": "castillo", "models": ["llama-8b-instruct"], "categories": ["code"]},
        {"source": "alpaca_eval", "models": ["gen-a-7b"], "categories": None},
    ]
    return Base(sp.train, sp.val, sp.test, df.iloc[:0], mix)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_report_has_every_section_and_finite_numbers(tmp_path: Path) -> None:
    rc = replace(
        QUICK,
        max_train_rows=1200,
        max_val_rows=300,
        max_test_rows=400,
        lomo_models=("llama-8b-instruct", "gen-b-70b"),
        online_models=("llama-8b-instruct",),
        variants=("default", "no_generator", "rank"),
        stream=150,
        burn_in=20,
        refit_every=60,
        checkpoints=(0, 50, 100, 150),
        drift_traces=600,
    )
    out = rep.build(rc, tmp_path / "PREDICTORS.md", quick=True, base=_base(), log=lambda s: None)
    text = out.read_text()
    for heading in (
        "## Splits",
        "### default",
        "### rank",
        "### Summary by variant",
        "## Online adaptation to an unseen generator",
        "## p90 coverage after online calibration",
        "## Drift model off distribution",
        "## Targets",
    ):
        assert heading in text, heading
    for split in ("unseen_prompt", "loso:castillo", "lomo:gen-b-70b"):
        assert f"| {split} |" in text
    assert "| llama-8b-instruct | km |" in text and "| llama-8b-instruct | km_refit |" in text
    # metrics are finite everywhere they are defined (md_table writes NaN as n/a)
    lengths = text.split("### default")[1].split("### Summary")[0]
    assert "n/a" not in lengths
    targets = text.split("## Targets")[1]
    assert "unseen-prompt tau" in targets and "us/request" in targets
