"""The serving API the drift policies call, on a tiny trained artifact root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.artifacts import ArtifactError, ArtifactNotFoundError, read_meta
from predictor.lgbm import LightGBMDrift, LightGBMLength
from predictor.serving import fingerprint, frame_from_requests, load_predictor
from scheduler.request import SchedRequest


@pytest.fixture(scope="module")
def root(trace: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("artifacts")
    y = trace["output_tokens"].to_numpy(np.float64)
    length = LightGBMLength(
        n_estimators=30, text_dim=4, min_count=1, num_threads=1, min_child_samples=5
    ).fit(trace, y)
    length.save(d / "length")
    F = length.featurize(trace)
    drift = LightGBMDrift(n_estimators=20, num_threads=1, min_child_samples=5)
    drift.fit(F, y, length.predict_features(F))
    drift.save(d / "drift", extra_meta={"length_fingerprint": fingerprint(read_meta(d / "length"))})
    return d


def test_api_shapes_and_unknowns(root: Path) -> None:
    pred = load_predictor(root)
    assert pred.has_drift
    rows = pd.DataFrame(
        {
            "tenant": ["t0", "brand-new"],
            "tier": ["premium", "batch"],
            "category": ["chat", "???"],
            "source": ["src_a", "elsewhere"],
            "model": ["m-terse", "gpt-99"],
            "prompt": pd.array(["Please essay and story about topic 3", pd.NA], dtype="string"),
            "prompt_tokens": [9, 120],
        }
    )
    X = pred.featurize(rows)
    adm = pred.predict_admission(X)
    assert adm.shape == (2, 2) and (adm[:, 1] >= adm[:, 0]).all() and (adm >= 1).all()
    rem = pred.predict_remaining(X, adm, np.array([0, 300]))
    assert rem.shape == (2, 2) and (rem >= 1).all()
    assert pred.predict_admission(X[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="same number of rows"):
        pred.predict_remaining(X, adm[:1], np.array([1, 2]))


def test_length_dir_and_requests_frame(root: Path) -> None:
    pred = load_predictor(root / "length")  # drift found next to it
    assert pred.has_drift
    reqs = [
        SchedRequest(
            request_id=f"r{i}",
            index=i,
            tenant="t0",
            tier="standard",
            category="chat",
            source="src_a",
            model="m-mid",
            prompt=None if i else "Please list things",
            prompt_tokens=5,
            max_tokens=512,
            arrival_s=0.0,
            true_output_tokens=10,
        )
        for i in range(3)
    ]
    X = pred.featurize(frame_from_requests(reqs))
    assert X.shape[0] == 3
    with pytest.raises(TypeError, match="frame_from_requests"):
        pred.featurize(reqs)  # type: ignore[arg-type]


def test_missing_and_mismatched_artifacts(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match=r"python train\.py"):
        load_predictor(tmp_path / "nothing")
    only_length = tmp_path / "only"
    shutil.copytree(root / "length", only_length / "length")
    with pytest.raises(ArtifactNotFoundError, match=r"python train\.py"):
        load_predictor(only_length)
    p = load_predictor(only_length, require_drift=False)
    X = p.featurize(pd.DataFrame({"prompt": ["hi"], "prompt_tokens": [1]}))
    with pytest.raises(ArtifactNotFoundError, match=r"python train\.py"):
        p.predict_remaining(X, p.predict_admission(X), np.array([3]))
    # a drift model trained against another length model is refused
    other = tmp_path / "other"
    shutil.copytree(root, other)
    meta = json.loads((other / "drift" / "meta.json").read_text())
    meta["length_fingerprint"] = "0" * 64
    (other / "drift" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="another length model"):
        load_predictor(other)
