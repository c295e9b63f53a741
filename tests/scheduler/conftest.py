"""Shared fixtures: synthetic workloads and a tiny trained predictor (real LightGBM, ~3 s)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.sim.synthetic import synthetic_frame

WORDS = np.array(
    [
        "explain",
        "summarize",
        "what",
        "list",
        "code",
        "write",
        "report",
        "detail",
        "brief",
        "why",
        "compare",
        "design",
    ]
)


def with_prompts(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Add prompt text whose words correlate with the output length (learnable)."""
    rng = np.random.default_rng(seed)
    long = df["output_tokens"].to_numpy() > np.median(df["output_tokens"])
    texts = []
    for i, is_long in enumerate(long):
        words = list(rng.choice(WORDS, size=4))
        words.append("report detail" if is_long else "brief what")
        texts.append(" ".join(words) + f" item {i}")
    out = df.copy()
    out["prompt"] = texts
    out["prompt_id"] = [f"p{i}" for i in range(len(df))]
    return out


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) length + drift predictor written with the predictor package's API."""
    from tests.tiny_predictor import save_tiny_predictor

    return save_tiny_predictor(
        tmp_path_factory.mktemp("artifacts"),
        with_prompts(synthetic_frame(1200, seed=11)),
        length_trees=20,
        drift_trees=15,
        text_dim=8,
    )
