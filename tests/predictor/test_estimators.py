"""The estimator contract for every length model and the drift model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from predictor.artifacts import ArtifactError, ArtifactNotFoundError, file_sha256
from predictor.baselines import (
    ConstantMedian,
    PaperHeuristic,
    PromptLengthRegression,
    TfidfRidge,
)
from predictor.lgbm import LightGBMDrift, LightGBMLength
from predictor.metrics import kendall_tau

FACTORIES = {
    "constant": lambda: ConstantMedian(),
    "paper": lambda: PaperHeuristic(),
    "paper_tok": lambda: PaperHeuristic(counting="tokenizer", correction=False),
    "promptlen": lambda: PromptLengthRegression(),
    "ridge": lambda: TfidfRidge(min_count=1),
    "lgbm": lambda: LightGBMLength(
        n_estimators=40, text_dim=4, min_count=1, num_threads=1, min_child_samples=5
    ),
}


def _y(df: pd.DataFrame) -> np.ndarray:
    return df["output_tokens"].to_numpy(np.float64)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_contract(name: str, trace: pd.DataFrame, tmp_path: Path) -> None:
    est = FACTORIES[name]()
    params = est.get_params()
    with pytest.raises(NotFittedError):
        est.predict_quantiles(trace)
    assert est.fit(trace, _y(trace)) is est
    assert est.get_params() == params  # fit never changes hyperparameters
    assert clone(est).get_params() == params
    q = est.predict_quantiles(trace)
    assert q.shape == (len(trace), 2)
    assert np.isfinite(q).all() and (q[:, 0] >= 1).all() and (q[:, 1] >= q[:, 0]).all()
    np.testing.assert_array_equal(est.predict(trace), q[:, 0])
    est.save(tmp_path / "a")
    loaded = type(est).load(tmp_path / "a")
    np.testing.assert_array_equal(loaded.predict_quantiles(trace), q)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["kind"] == est.kind


@pytest.mark.parametrize("name", ["ridge", "lgbm"])
def test_learned_models_rank_better_than_chance(name: str, trace: pd.DataFrame) -> None:
    train = trace[trace.prompt_id.str[1:].astype(int) < 45]
    test = trace[trace.prompt_id.str[1:].astype(int) >= 45]
    est = FACTORIES[name]().fit(train, _y(train))
    assert kendall_tau(_y(test), est.predict(test)) > 0.3


@pytest.mark.parametrize("name", list(FACTORIES))
def test_corrupt_artifacts_raise_clear_errors(
    name: str, trace: pd.DataFrame, tmp_path: Path
) -> None:
    est = FACTORIES[name]().fit(trace, _y(trace))
    d = est.save(tmp_path / "a")
    cls = type(est)
    # a corrupted model/state file: sha256 mismatch
    victim = next(p for p in sorted(d.iterdir()) if p.name != "meta.json")
    victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])
    with pytest.raises(ArtifactError, match="corrupt"):
        cls.load(d)
    # wrong feature schema version
    est.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    meta["feature_schema_version"] = 999
    (tmp_path / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="feature schema version"):
        cls.load(tmp_path / "b")
    # unreadable meta.json, wrong kind, missing directory
    (tmp_path / "b" / "meta.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        cls.load(tmp_path / "b")
    with pytest.raises(ArtifactNotFoundError, match=r"python train\.py"):
        cls.load(tmp_path / "missing")
    other = ConstantMedian if cls is not ConstantMedian else PromptLengthRegression
    with pytest.raises(ArtifactError, match="kind"):
        other.load(est.save(tmp_path / "c"))


def test_lgbm_model_file_garbage_is_reported(trace: pd.DataFrame, tmp_path: Path) -> None:
    est = FACTORIES["lgbm"]().fit(trace, _y(trace))
    d = est.save(tmp_path / "a")
    (d / "model_q50.txt").write_text("garbage")
    meta = json.loads((d / "meta.json").read_text())
    # defeat the hash check (re-sign the garbage): the loader must still fail
    meta["files"]["model_q50.txt"] = file_sha256(d / "model_q50.txt")
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="LightGBM"):
        LightGBMLength.load(d)


def test_bad_targets_are_named(trace: pd.DataFrame) -> None:
    y = _y(trace).copy()
    y[3] = 0
    with pytest.raises(ValueError, match="row 3"):
        ConstantMedian().fit(trace, y)
    with pytest.raises(ValueError, match="rows"):
        LightGBMLength().fit(trace, y[:5])
    with pytest.raises(TypeError, match="DataFrame"):
        TfidfRidge().fit(trace.to_numpy(), _y(trace))


def test_lgbm_eval_set_calibrates_p90(trace: pd.DataFrame) -> None:
    tr = trace[trace.prompt_id.str[1:].astype(int) < 40]
    va = trace[trace.prompt_id.str[1:].astype(int) >= 40]
    est = FACTORIES["lgbm"]().fit(tr, _y(tr), eval_set=(va, _y(va)))
    cov = np.mean(_y(va) <= est.predict_quantiles(va)[:, 1])
    assert cov == pytest.approx(0.9, abs=0.04)
    assert len(est.best_iteration_) == 2


def _drift_inputs(trace: pd.DataFrame) -> tuple[LightGBMLength, np.ndarray, np.ndarray]:
    length = FACTORIES["lgbm"]().fit(trace, _y(trace))
    F = length.featurize(trace)
    return length, F, length.predict_features(F)


def test_drift_contract(trace: pd.DataFrame, tmp_path: Path) -> None:
    _, F, adm = _drift_inputs(trace)
    d = LightGBMDrift(n_estimators=30, num_threads=1, min_child_samples=5, n_random=2)
    with pytest.raises(NotFittedError):
        d.predict_remaining(F, adm, np.zeros(len(F)))
    assert d.fit(F, _y(trace), adm) is d
    gen = np.full(len(F), 32.0)
    r = d.predict_remaining(F, adm, gen)
    assert r.shape == (len(F), 2) and (r[:, 0] >= 1).all() and (r[:, 1] >= r[:, 0]).all()
    d.save(tmp_path / "drift")
    d2 = LightGBMDrift.load(tmp_path / "drift")
    np.testing.assert_array_equal(d2.predict_remaining(F, adm, gen), r)
    with pytest.raises(ValueError, match="shape"):
        d.predict_remaining(F[:, :3], adm, gen)
    (tmp_path / "drift" / "model_q90.txt").write_text("x")
    with pytest.raises(ArtifactError, match="corrupt"):
        LightGBMDrift.load(tmp_path / "drift")


def test_drift_beats_naive_on_remaining_length(trace: pd.DataFrame) -> None:
    """Progress is informative: long-running requests have more left than adm - t says."""
    from predictor.drift_data import naive_remaining

    _, F, adm = _drift_inputs(trace)
    y = _y(trace)
    d = LightGBMDrift(n_estimators=60, num_threads=1, min_child_samples=5, n_random=4)
    d.fit(F, y, adm)
    t = 128
    run = y > t
    gen = np.full(int(run.sum()), float(t))
    err_model = np.mean(np.abs(d.predict_remaining(F[run], adm[run], gen)[:, 0] - (y[run] - t)))
    err_naive = np.mean(np.abs(naive_remaining(adm[run], gen)[:, 0] - (y[run] - t)))
    assert err_model < err_naive
