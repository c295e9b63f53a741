"""Incremental refit (continue_fit) and the generator descriptor features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictor.features import Featurizer, generator_descriptors
from predictor.lgbm import LightGBMLength
from predictor.refit import IncrementalRefit
from scheduler.sim.synthetic import synthetic_frame
from tests.tiny_predictor import with_prompts


@pytest.fixture(scope="module")
def fitted() -> tuple[LightGBMLength, pd.DataFrame]:
    df = with_prompts(synthetic_frame(600, seed=1))
    est = LightGBMLength(n_estimators=20, num_threads=1, text_dim=4, min_count=5)
    return est.fit(df, df["output_tokens"].to_numpy(np.float64)), df


def test_continue_fit_adds_trees_and_learns_the_new_level(fitted) -> None:
    est, df = fitted
    F = est.featurize(df)
    y = df["output_tokens"].to_numpy(np.float64) * 4.0  # a generator 4x more verbose
    before = np.median(est.predict_features(F)[:, 0] / y)
    new = est.continue_fit(F, y, rounds=30)
    after = np.median(new.predict_features(F)[:, 0] / y)
    assert [b.current_iteration() for b in new.boosters_] == [it + 30 for it in est.best_iteration_]
    assert abs(np.log(after)) < abs(np.log(before)) / 2
    # the base model is unchanged
    assert np.median(est.predict_features(F)[:, 0] / y) == pytest.approx(before)


def test_incremental_refit_follows_its_cadence(fitted) -> None:
    est, df = fitted
    F = est.featurize(df)
    y = df["output_tokens"].to_numpy(np.float64)
    r = IncrementalRefit(est, cadence=50, rounds=5, max_rows=120, min_rows=100)
    flags = [r.add(F[i : i + 10], y[i : i + 10]) for i in range(0, 200, 10)]
    # first refit once 100 rows are held (call 10), then every 50 completions
    assert [i for i, f in enumerate(flags) if f] == [9, 14, 19]
    assert r.refits == 3 and r.current is not est and len(r._y) == 120
    with pytest.raises(ValueError, match="> 0 tokens"):
        r.add(F[:1], np.array([0.0]))
    with pytest.raises(TypeError, match="continue_fit"):
        IncrementalRefit(object())


def test_generator_descriptors_parse_family_and_size() -> None:
    size, fam, instruct, moe = generator_descriptors("mistralai--Mixtral-8x7B-Instruct-v0.1")
    assert np.expm1(size) == pytest.approx(56.0) and moe == 1.0 and instruct == 1.0
    s2, f2, _, _ = generator_descriptors("meta-llama--Llama-3.1-8B-Instruct")
    assert np.expm1(s2) == pytest.approx(8.0)
    assert f2 == generator_descriptors("Meta-Llama-3.1-70B-Instruct-Turbo")[1] != fam
    assert np.isnan(generator_descriptors("gpt4_1106_preview")[0])
    assert generator_descriptors(None)[1] == 0.0


def test_generator_features_columns_and_state_round_trip() -> None:
    df = with_prompts(synthetic_frame(200, seed=2))
    df["model"] = np.where(np.arange(200) % 2, "qwen-7b-chat", "llama-70b")
    f = Featurizer(text_dim=4, min_count=5, generator_features=True).fit(df)
    X = f.transform(df)
    assert X.shape[1] == len(f.feature_names) and f.feature_names[-4:][0] == "gen_size_log"
    assert f.feature_names.index("gen_family") in f.categorical_indices
    col = f.feature_names.index("gen_size_log")
    assert np.expm1(X[:2, col]).tolist() == pytest.approx([70.0, 7.0])
    g = Featurizer.from_state(*f.state())
    assert np.array_equal(g.transform(df), X, equal_nan=True)
    # the default featurizer keeps its columns (artifacts unchanged)
    assert "gen_family" not in Featurizer(text_dim=4, min_count=5).fit(df).feature_names
