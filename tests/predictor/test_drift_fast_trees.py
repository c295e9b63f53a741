"""The drift model's serving batches go through the compiled tree walker with LightGBM's exact
predictions, with and without partial output text."""

from __future__ import annotations

import numpy as np
import pytest

from predictor import fast_trees
from predictor.lgbm import LightGBMDrift
from tests.predictor.test_drift_text_model import _replies

pytestmark = pytest.mark.skipif(not fast_trees.available(), reason="numba not importable")


@pytest.mark.parametrize("text", [False, True])
def test_drift_fast_path_matches_lightgbm(text: bool) -> None:
    texts, y = _replies(200, 3)
    F = np.random.default_rng(2).normal(size=(len(y), 3)).astype(np.float32)
    adm = np.column_stack([np.full(len(y), np.median(y)), np.full(len(y), np.quantile(y, 0.9))])
    m = LightGBMDrift(
        n_estimators=40, num_threads=1, min_child_samples=5, n_random=2, n_random_text=2, text=text
    ).fit(F, y, adm, texts=texts if text else None)
    gen = np.random.default_rng(4).integers(1, 64, len(y)).astype(np.float64)
    partial = [t[: int(g) * 3] for t, g in zip(texts, gen)] if text else None
    fast = m.predict_remaining(F, adm, gen, texts=partial)
    assert m._fast[2] is not None  # the walker answered
    m.fast_predict = False
    slow = m.predict_remaining(F, adm, gen, texts=partial)
    np.testing.assert_array_equal(fast, slow)
    assert m.get_params()["fast_predict"] is False  # saved with the artifact's hyperparameters
