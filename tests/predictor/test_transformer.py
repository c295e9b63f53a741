"""MiniLM length and drift models: contract, both modes, artifacts (tiny budgets, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from predictor.artifacts import ArtifactError
from predictor.serving import load_predictor
from predictor.transformer import TransformerDrift, TransformerLength
from predictor.transformer_model import EMB_DIM


def _y(df: pd.DataFrame) -> np.ndarray:
    return df["output_tokens"].to_numpy(np.float64)


@pytest.fixture(scope="module")
def fitted(trace: pd.DataFrame) -> TransformerLength:
    return TransformerLength(
        mode="frozen", epochs=15, min_count=1, num_threads=1, max_length=32
    ).fit(trace, _y(trace))


def test_contract_and_round_trip(
    fitted: TransformerLength, trace: pd.DataFrame, tmp_path: Path
) -> None:
    with pytest.raises(NotFittedError):
        TransformerLength().predict_quantiles(trace)
    q = fitted.predict_quantiles(trace)
    assert q.shape == (len(trace), 2) and (q[:, 1] >= q[:, 0]).all() and (q >= 1).all()
    F = fitted.featurize(trace)
    assert F.shape == (len(trace), EMB_DIM + 2 + 5)
    fitted.save(tmp_path / "t")
    again = TransformerLength.load(tmp_path / "t")
    np.testing.assert_allclose(again.predict_quantiles(trace), q, rtol=1e-6)
    assert not (tmp_path / "t" / "encoder.safetensors").exists()  # frozen: package weights
    # corrupt head weights
    p = tmp_path / "t" / "head.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupt"):
        TransformerLength.load(tmp_path / "t")


def test_unknown_ids_and_missing_prompt(fitted: TransformerLength) -> None:
    rows = pd.DataFrame(
        {
            "prompt": pd.array([pd.NA, "Write an essay"], dtype="string"),
            "prompt_tokens": [5, 4],
            "model": ["never-seen", "m-mid"],
        }
    )
    q = fitted.predict_quantiles(rows)
    assert np.isfinite(q).all()


def test_finetune_mode_saves_encoder(trace: pd.DataFrame, tmp_path: Path) -> None:
    m = TransformerLength(
        mode="finetune",
        max_steps=2,
        epochs=2,
        min_count=1,
        num_threads=1,
        max_length=16,
        batch_size=8,
    ).fit(trace, _y(trace))
    m.save(tmp_path / "ft")
    assert (tmp_path / "ft" / "encoder.safetensors").exists()
    np.testing.assert_allclose(
        TransformerLength.load(tmp_path / "ft").predict_quantiles(trace.iloc[:10]),
        m.predict_quantiles(trace.iloc[:10]),
        rtol=1e-5,
    )


def test_drift_and_serving(fitted: TransformerLength, trace: pd.DataFrame, tmp_path: Path) -> None:
    F = fitted.featurize(trace)
    adm = fitted.predict_features(F)
    d = TransformerDrift(epochs=3, num_threads=1)
    with pytest.raises(NotFittedError):
        d.predict_remaining(F, adm, np.zeros(len(F)))
    assert d.fit(F, _y(trace), adm, categorical_indices=fitted.featurizer_.categorical_indices) is d
    r = d.predict_remaining(F, adm, np.full(len(F), 64.0))
    assert r.shape == (len(F), 2) and (r[:, 1] >= r[:, 0]).all()
    fitted.save(tmp_path / "length")
    d.save(tmp_path / "drift")
    pred = load_predictor(tmp_path)
    X = pred.featurize(trace.iloc[:4])
    np.testing.assert_allclose(
        pred.predict_remaining(X, adm[:4], np.full(4, 64.0)), r[:4], rtol=1e-5
    )
    meta = json.loads((tmp_path / "drift" / "meta.json").read_text())
    assert meta["kind"] == "torch_drift"
    with pytest.raises(ValueError, match="categorical"):
        TransformerDrift(epochs=1).fit(F, _y(trace), adm)
