"""One builder for the real, tiny LightGBM length + drift artifacts many tests serve from.

``tiny_artifacts_at(root)`` writes *the* tiny predictor: the session fixture ``tiny_artifacts``
(tests/conftest.py) and the golden cases (tests/scheduler/sim/test_golden.py) serve from it.
Tests that need a predictor with particular gaps (e.g. one that never saw a generator) build
their own with ``save_tiny_predictor``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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


def save_tiny_predictor(
    root: Path,
    rows: pd.DataFrame,
    *,
    length_trees: int = 10,
    drift_trees: int = 8,
    text_dim: int = 4,
    min_count: int = 5,
) -> Path:
    """Fit on ``rows`` (trace schema, prompts included) and save ``root/length`` and
    ``root/drift`` (the drift artifact pinned to the length model's fingerprint), the layout
    ``predictor.serving.load_predictor`` reads. A few seconds on one thread."""
    from data.holdout import SeenPrompts, attach_to_artifact, prompt_keys
    from predictor.artifacts import read_meta
    from predictor.lgbm import LightGBMDrift, LightGBMLength
    from predictor.serving import fingerprint

    y = rows["output_tokens"].to_numpy(np.float64)
    length = LightGBMLength(
        n_estimators=length_trees, num_threads=1, text_dim=text_dim, min_count=min_count
    ).fit(rows, y)
    F = length.featurize(rows)
    drift = LightGBMDrift(n_estimators=drift_trees, num_threads=1)
    drift.fit(F, y, length.predict_features(F))
    # the tiny models saw exactly ``rows``: recorded like train.py records its split
    seen = SeenPrompts(prompt_keys(rows), {"sources": None, "path": "tests", "split": {}})
    p = length.save(root / "length")
    attach_to_artifact(p, seen)
    d = drift.save(root / "drift", extra_meta={"length_fingerprint": fingerprint(read_meta(p))})
    attach_to_artifact(d, seen)
    return root


def tiny_artifacts_at(root: Path) -> Path:
    """The shared tiny predictor (1,200 synthetic rows with learnable prompts, ~3 s)."""
    return save_tiny_predictor(
        root,
        with_prompts(synthetic_frame(1200, seed=11)),
        length_trees=20,
        drift_trees=15,
        text_dim=8,
    )


# drift's mechanisms beyond admission ranking and its victim rule are config groups, off by
# default (docs/ABLATIONS.md); tests of those mechanisms switch them on explicitly
DRIFT_MECHANISMS = {
    "reclassify": {},
    "preemption": {"max_per_request": 1},
    "urgency": {"slo_tiers": ("premium",)},
    "recalibrate": True,
}


def drift_kwargs(**groups: dict | None) -> dict:
    """DRIFT_MECHANISMS with some groups' fields replaced (None: the group off)."""
    out = dict(DRIFT_MECHANISMS)
    for name, fields in groups.items():
        out[name] = None if fields is None else {**(out.get(name) or {}), **fields}
    return out
