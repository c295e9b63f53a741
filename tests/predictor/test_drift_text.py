"""Partial-output-text features: hand-checked cues, never reading beyond t, incremental text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.tokens import cl100k
from predictor.drift_data import output_token_ids, partial_texts, text_progress_points
from predictor.text_progress import (
    TEXT_FEATURE_NAMES,
    NgramScore,
    PartialText,
    prefix_text,
    text_features,
    text_row,
)

REPLY = (
    "Sure! Here are 5 tips for better sleep:\n\n"
    "1. Keep a regular schedule.\n"
    "2. Avoid screens before bed.\n"
    "3. Keep the room cool.\n"
    "```python\nprint('hi')\n"
)


def feats(text: str, t: float) -> dict[str, float]:
    return dict(zip(TEXT_FEATURE_NAMES, text_row(text, t)))


def test_hand_checked_structure_cues() -> None:
    f = feats(REPLY, 50)
    assert f["tx_numbered_items"] == 3
    assert f["tx_last_number"] == 3
    assert f["tx_announced"] == 5
    assert f["tx_items_left"] == 2  # "5 tips" announced, item 3 written
    assert f["tx_list_items"] == 3
    assert f["tx_tokens_per_item"] == pytest.approx(50 / 3)
    assert f["tx_code_fences"] == 1 and f["tx_code_open"] == 1
    assert f["tx_opening"] == 1  # starts with "Sure"
    assert f["tx_chars_per_token"] == pytest.approx(len(REPLY) / 50)
    assert f["tx_ends_newline"] == 1
    assert f["tx_closing"] == 0 and np.isnan(f["tx_closing_pos"])
    assert f["tx_colon_end_lines"] == 1  # "... better sleep:"


def test_closing_and_boundaries() -> None:
    text = "The answer is 4. Overall, this works well. I hope this helps! Let me know"
    f = feats(text, 20)
    assert f["tx_closing"] == 3  # overall, | i hope this | let me know
    assert f["tx_closing_tail"] == 3
    assert 0 < f["tx_closing_pos"] < 1
    assert f["tx_ends_sentence"] == 0  # ends mid-sentence
    assert f["tx_sentences"] == 3
    g = feats("First paragraph.\n\n", 5)
    assert g["tx_ends_sentence"] == 1 and g["tx_ends_paragraph"] == 1
    assert g["tx_paragraphs"] == 1
    r = feats("I'm sorry, but as an AI language model I cannot do that.", 14)
    assert r["tx_refusal"] == 1
    w = feats("Ten ways: one", 4)
    assert w["tx_announced"] == 10 and np.isnan(w["tx_items_left"])  # no numbered item yet


def test_missing_text_is_nan_and_shapes() -> None:
    X = text_features([REPLY, None], np.array([50, 7]))
    assert X.shape == (2, len(TEXT_FEATURE_NAMES)) and X.dtype == np.float32
    assert np.isnan(X[1]).all() and np.isfinite(X[0, :4]).all()
    with pytest.raises(ValueError, match="same length"):
        text_features([REPLY], np.array([1, 2]))


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=300), st.integers(0, 400), st.text(max_size=50))
def test_features_at_t_never_read_beyond_t(text: str, t: int, more: str) -> None:
    """The features at t are the same whatever comes after the t-th token."""
    ids = cl100k().encode_ordinary(text)
    longer = cl100k().encode_ordinary(text + more)
    t = min(t, len(ids))
    if ids[:t] != longer[:t]:  # the extra text re-tokenised the end: a different prefix
        return
    a, b = prefix_text(ids, t), prefix_text(longer, t)
    assert a == b == cl100k().decode(ids[:t])
    np.testing.assert_array_equal(
        text_features([a], np.array([t])), text_features([b], np.array([t]))
    )


def test_prefix_text_limits() -> None:
    ids = cl100k().encode_ordinary("one two three four")
    assert prefix_text(ids, 2) == "one two"
    assert prefix_text(ids, len(ids)) == "one two three four"
    assert prefix_text(ids, len(ids) + 1) is None  # a running request has not finished
    assert prefix_text(ids, len(ids), complete=False) is None  # capped text: unknown there
    assert prefix_text(ids, 1, complete=False) == "one"
    assert prefix_text(None, 3) is None


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=200), st.lists(st.integers(0, 80), max_size=8))
def test_partial_text_incremental_equals_decode(text: str, ts: list[int]) -> None:
    p = PartialText(text)
    ids = cl100k().encode_ordinary(text)
    for t in ts:  # any order, including rewinds (preemption + recompute)
        assert p.at(t) == prefix_text(ids, t)
    assert PartialText(None).at(5) is None


def test_partial_texts_and_text_rows() -> None:
    ids, complete = output_token_ids(["alpha beta gamma", None, "x y"], [False, None, True])
    assert ids[1] is None and complete.tolist() == [True, True, False]
    out = partial_texts(ids, complete, np.array([0, 1, 2, 2]), np.array([2, 1, 1, 2]))
    assert out == ["alpha beta", None, "x", None]
    L = np.array([100, 50, 3])
    r, t = text_progress_points(
        L, np.array([True, False, True]), np.random.default_rng(0), (), 0, 4
    )
    assert sorted(set(r.tolist())) == [0, 2] and np.sum(r == 0) == 4
    assert ((t >= 1) & (t < L[r])).all()


def test_ngram_score_learns_and_is_out_of_fold() -> None:
    rng = np.random.default_rng(0)
    long_words = ["essay", "chapter", "detailed"]
    short_words = ["yes", "ok", "done"]
    texts, y = [], []
    for _ in range(300):
        is_long = rng.random() < 0.5
        w = rng.choice(long_words if is_long else short_words)
        texts.append(f"{w} {rng.integers(1000)} and more")
        y.append(6.0 if is_long else 2.0)
    y = np.array(y)
    t = np.where(np.arange(len(y)) % 2 == 0, 10, 100)  # two progress buckets
    ng = NgramScore(n_features=2**10, alpha=1.0, t_edges=(64,))
    oof = ng.fit_oof(texts, y, np.arange(len(y)), t)
    assert np.corrcoef(oof, y)[0, 1] > 0.9
    assert ng.coef_ is not None and ng.coef_.shape == (2, 2**11)
    s = ng.score(["essay 5 and more", "yes 5 and more"], np.array([10, 100]))
    assert s[0] > s[1] + 2
    with pytest.raises(ValueError, match="not fitted"):
        NgramScore().score(["x"], np.array([1]))
