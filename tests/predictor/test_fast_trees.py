"""The compiled tree walker gives LightGBM's predictions bit for bit, or declines to run."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from predictor import fast_trees
from predictor.lgbm import LightGBMLength

pytestmark = pytest.mark.skipif(not fast_trees.available(), reason="numba is not installed")


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Numerical columns with NaNs and exact zeros, and two categorical columns (one with
    70 levels: bitsets longer than one 32-bit word)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            np.where(rng.random(n) < 0.4, 0.0, rng.exponential(size=n)),
            rng.integers(0, 70, n).astype(float),
            rng.integers(0, 5, n).astype(float),
        ]
    )
    y = (
        X[:, 0]
        + np.nan_to_num(X[:, 1], nan=2.0)
        + 0.5 * X[:, 2]
        + np.sin(X[:, 3])
        + 0.3 * X[:, 4]
        + rng.normal(0, 0.3, n)
    )
    return X, y


def _booster(params: dict, seed: int = 0) -> tuple[lgb.Booster, np.ndarray]:
    X, y = _data(3000, seed)
    base = {
        "objective": "quantile",
        "alpha": 0.5,
        "num_leaves": 31,
        "min_data_in_leaf": 5,
        "verbosity": -1,
        "num_threads": 1,
        "max_cat_to_onehot": 4,
        "seed": seed,
    }
    ds = lgb.Dataset(X, y, categorical_feature=[3, 4], params={"verbosity": -1})
    return lgb.train({**base, **params}, ds, num_boost_round=40), X


def _adversarial(X: np.ndarray, seed: int) -> np.ndarray:
    """Rows that hit every missing-value and categorical edge case."""
    rng = np.random.default_rng(seed)
    A = X[rng.integers(0, len(X), 400)].copy()
    A[::7, 0] = np.nan
    A[1::7, 1] = 0.0
    A[2::7, 2] = np.nan
    A[3::7, 3] = np.nan  # missing category
    A[4::7, 3] = -1.0  # negative category -> right
    A[5::7, 3] = 1000.0  # unseen, beyond the bitset -> right
    A[6::7, 4] = 2.7  # non-integral category: truncated like static_cast<int>
    A[::11, 2] = 1e-40  # below kZeroThreshold: read as 0
    A[::13, 0] = -0.0
    return A


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"alpha": 0.9, "zero_as_missing": True},
        {"use_missing": False},
        {"num_leaves": 4, "objective": "regression"},
    ],
)
def test_equal_to_lightgbm_bit_for_bit(params: dict) -> None:
    b, X = _booster(params)
    forest = fast_trees.compile_models([b.model_to_string()])
    for rows in (X[:500], _adversarial(X, 1)):
        np.testing.assert_array_equal(forest.predict_raw(rows)[:, 0], b.predict(rows))


def test_several_boosters_and_num_iteration() -> None:
    b1, X = _booster({})
    b2, _ = _booster({"alpha": 0.9}, seed=1)
    forest = fast_trees.compile_boosters([b1, b2], [25, 40])
    assert forest is not None
    A = _adversarial(X, 2)
    ref = np.column_stack([b1.predict(A, num_iteration=25), b2.predict(A, num_iteration=40)])
    np.testing.assert_array_equal(forest.predict_raw(A), ref)
    np.testing.assert_array_equal(forest.predict_raw(A[:1]), ref[:1])  # one request


def test_single_leaf_trees() -> None:
    """A constant target grows one-leaf trees (no split): the walker adds their values."""
    X, _ = _data(200, 0)
    ds = lgb.Dataset(X, np.full(200, 3.0), params={"verbosity": -1})
    b = lgb.train({"objective": "regression", "verbosity": -1}, ds, num_boost_round=3)
    forest = fast_trees.compile_models([b.model_to_string()])
    np.testing.assert_array_equal(forest.predict_raw(X)[:, 0], b.predict(X))


def test_unsupported_models_are_declined() -> None:
    X, _ = _data(300, 0)
    y = np.random.default_rng(0).integers(0, 3, 300)
    ds = lgb.Dataset(X, y, params={"verbosity": -1})
    b = lgb.train({"objective": "multiclass", "num_class": 3, "verbosity": -1}, ds, 2)
    with pytest.raises(ValueError, match="single-output"):
        fast_trees.compile_models([b.model_to_string()])
    assert fast_trees.compile_boosters([b], [2]) is None
    forest = fast_trees.compile_models([_booster({})[0].model_to_string()])
    with pytest.raises(ValueError, match="features"):
        forest.predict_raw(np.zeros((2, 3)))


def test_length_model_fast_path_matches_lightgbm(
    trace: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    y = trace["output_tokens"].to_numpy()
    m = LightGBMLength(n_estimators=30, text_dim=4, min_count=1, num_threads=1).fit(trace, y)
    F = m.featurize(trace)
    fast = m.predict_features(F)
    assert m._forest() is not None
    slow = m.set_params(fast_predict=False).predict_features(F)
    np.testing.assert_array_equal(fast, slow)
    m.set_params(fast_predict=True)
    m.fit_features(m.featurize_training(trace), y[: len(trace)] * 2.0)  # refit: new boosters
    refit = m.predict_features(F)
    assert not np.array_equal(refit, fast)  # the walker was rebuilt, not reused
    np.testing.assert_array_equal(refit, m.set_params(fast_predict=False).predict_features(F))
    slow = refit
    monkeypatch.setenv("DRIFTSCHED_FAST_TREES", "0")  # switched off: LightGBM answers
    assert not fast_trees.available()
    m.set_params(fast_predict=True)
    m._fast = None
    np.testing.assert_array_equal(m.predict_features(F), slow)
    assert m._forest() is None
