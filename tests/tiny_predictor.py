"""One builder for the real, tiny LightGBM length + drift artifacts many tests serve from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


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
