"""Featurizer robustness: unknown ids, missing prompts, huge prompts, safe state round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from predictor.features import UNKNOWN_CODE, Featurizer
from predictor.lexical import LEXICAL_NAMES, MAX_PROMPT_CHARS, lexical_features


@pytest.fixture(scope="module")
def fitted(trace: pd.DataFrame) -> Featurizer:
    return Featurizer(text_dim=4, min_count=1).fit(trace, trace["output_tokens"].to_numpy())


def test_shape_and_names(fitted: Featurizer, trace: pd.DataFrame) -> None:
    F = fitted.transform(trace)
    assert F.shape == (len(trace), len(fitted.feature_names)) and F.dtype == np.float32
    # only "no explicit length requested" is missing (NaN = LightGBM's missing branch)
    other = [i for i, n in enumerate(fitted.feature_names) if n != "requested_words_log"]
    assert np.isfinite(F[:, other]).all()


def test_unknown_ids_go_to_the_unknown_bucket(fitted: Featurizer, trace: pd.DataFrame) -> None:
    rows = trace.iloc[:2].copy()
    rows["model"] = ["never-seen", "m-terse"]
    rows["tenant"] = ["new-tenant", "t0"]
    F = fitted.transform(rows)
    j = fitted.feature_names.index("model_id")
    assert F[0, j] == UNKNOWN_CODE and F[1, j] != UNKNOWN_CODE
    assert F[0, fitted.feature_names.index("tenant_id")] == UNKNOWN_CODE


def test_missing_prompt_and_missing_columns(fitted: Featurizer) -> None:
    rows = pd.DataFrame(
        {"prompt": pd.array([None, "Write an essay"], dtype="string"), "prompt_tokens": [12, 4]}
    )  # no tenant/tier/model columns at all
    F = fitted.transform(rows)
    lex = [fitted.feature_names.index(n) for n in LEXICAL_NAMES]
    assert np.isnan(F[0, lex]).all() and not np.isnan(F[1, lex]).all()
    assert F[0, 0] == pytest.approx(np.log1p(12))
    # no prompt_tokens column: counted from the prompt with cl100k
    F2 = fitted.transform(pd.DataFrame({"prompt": ["Hello there"]}))
    assert F2[0, 0] == pytest.approx(np.log1p(2))


def test_huge_and_empty_prompts(fitted: Featurizer) -> None:
    huge = "explain " * (MAX_PROMPT_CHARS // 2)
    F = fitted.transform(pd.DataFrame({"prompt": [huge, ""], "prompt_tokens": [50_000, 1]}))
    assert np.isfinite(F[0, fitted.feature_names.index("svd_0")])
    assert F[0, fitted.feature_names.index("cue_explain")] > 0
    assert F[0, 0] == pytest.approx(np.log1p(50_000))  # full length kept


def test_lexical_cues() -> None:
    v = dict(zip(LEXICAL_NAMES, lexical_features("Write a 500-word essay. Is it good?")))
    assert v["cue_write"] == 1 and v["cue_long"] == 1 and v["n_questions"] == 1
    assert v["requested_words_log"] == pytest.approx(np.log1p(500))
    assert np.isnan(lexical_features(None)).all()


def test_state_round_trip_and_version_check(fitted: Featurizer, trace: pd.DataFrame) -> None:
    meta, arrays = fitted.state()
    again = Featurizer.from_state(meta, arrays)
    np.testing.assert_array_equal(again.transform(trace), fitted.transform(trace))
    with pytest.raises(ValueError, match="feature schema version"):
        Featurizer.from_state({**meta, "feature_schema_version": 0}, arrays)
    with pytest.raises(NotFittedError):
        Featurizer().transform(trace)


def test_text_score_is_out_of_fold_on_training_rows(
    fitted: Featurizer, trace: pd.DataFrame
) -> None:
    j = fitted.feature_names.index("text_score")
    full = fitted.transform(trace)[:, j]
    oof = fitted.transform(trace, training=True)[:, j]
    assert np.isfinite(full).all() and np.isfinite(oof).all()
    assert not np.allclose(full, oof)  # training rows never see a score fitted on themselves
    # the score ranks prompts like their true lengths do (synthetic words drive length)
    from predictor.metrics import kendall_tau

    assert kendall_tau(trace["output_tokens"], oof) > 0.2
    # without targets there is no score model: the column is missing, not made up
    plain = Featurizer(text_dim=4, min_count=1).fit(trace)
    assert np.isnan(plain.transform(trace)[:, j]).all()
