"""The fast featurisation paths give exactly the features of the plain implementation.

``reference_lexical`` below is a frozen copy of ``lexical_features`` before the speed-ups
(every cue counted with ``len(regex.findall(text))`` under IGNORECASE, digits and capitals
counted per character). The fast version must agree bit for bit on real prompts (ShareGPT
first turns: code, many languages), on hand-made edge cases and on random strings built from
the cue vocabulary.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer

from predictor import lexical
from predictor.features import CATEGORICAL, UNKNOWN_CODE, Featurizer, prompt_tokens_of
from predictor.lexical import (
    _CASE_TWINS,
    _CUE_RES,
    _CUES,
    _UNIT_WORDS,
    _WORD_COUNT_RE,
    LEXICAL_NAMES,
    MAX_PROMPT_CHARS,
    PAPER_CATEGORIES,
    lexical_features,
)
from predictor.paper import classify_category


def reference_lexical(prompt: str | None) -> np.ndarray:
    """``lexical_features`` as it was before the fast paths (the definition of the features)."""
    if prompt is None or not isinstance(prompt, str):
        return np.full(len(LEXICAL_NAMES), np.nan)
    text = prompt[:MAX_PROMPT_CHARS]
    n = max(len(text), 1)
    words = text.split()
    requested = np.nan
    m = _WORD_COUNT_RE.search(text)
    if m:
        unit = m.group(2).lower().rstrip("s")
        requested = np.log1p(float(m.group(1)) * _UNIT_WORDS.get(unit, 1.0))
    out = [
        np.log1p(len(prompt)),
        np.log1p(len(words)),
        np.log1p(text.count("\n")),
        float(text.count("?")),
        sum(c.isdigit() for c in text) / n,
        sum(c.isupper() for c in text) / n,
        float("```" in text),
        requested,
        float(PAPER_CATEGORIES.index(classify_category(text))),
    ]
    out.extend(float(len(r.findall(text))) for r in _CUE_RES.values())
    return np.asarray(out, dtype=np.float64)


def assert_same(prompts: list[str | None]) -> None:
    for p in prompts:
        np.testing.assert_array_equal(lexical_features(p), reference_lexical(p), err_msg=repr(p))


EDGE_CASES = [
    None,
    "",
    " ",
    "What is 2+2? Solve 3 * 4 = 12.",
    "WRITE A 500-WORD ESSAY ABOUT PYTHON CODE",
    "ſolve the equation; İmplement Kode in java",  # İ ı ſ K: IGNORECASE twins of i i s k
    "ıs it true or false? Does it rate well? tl;dr please, TLDR.",
    "Give me one word.\nOne sentence only\n  which of these? is it ok",
    "```python\ndef f(x):\n    import os\n    return x\n```\n#include <c++>",
    "Write a 3-paragraph story, 10 bullet points, 2 examples, 100 tokens.",
    "Résumé: écrire un essai détaillé sur la programmation en Python (500 mots).",
    "写一篇关于机器学习的文章，500字。Explain how transformers work.",
    "٣ + ٤ = ٧ solve",  # Arabic-Indic digits: \d matches, str.isdigit too
    "x² + y² = z²",  # superscripts: str.isdigit but not \d
    "In-depth in depth role play roleplay you are act as I want you to pretend",
    "summary summarize summarization overview rephrase fix the grammar translate",
    "haiku poem song lyrics rap limerick; list steps bullet point ideas examples",
]


def test_edge_cases_match_reference() -> None:
    assert_same(EDGE_CASES)


def test_huge_prompt_is_truncated_the_same_way() -> None:
    assert_same(["explain the code " * 2000 + "write an essay", "é" + "solve 1+1 " * 3000])


# Pieces that make cue matches, near-misses (word boundaries), case variants and the
# non-ASCII characters that change how IGNORECASE and lowercasing behave.
_PIECES = [
    *(w for pat in _CUES.values() for w in re.findall(r"[a-z]{2,}", pat)),
    "one word",
    "yes or no",
    "in-depth",
    "tl;dr",
    "c++",
    "```",
    "#include",
    "import ",
    "def ",
    "class ",
    "1",
    "42",
    "+",
    "=",
    "^",
    "/",
    " ",
    "\n",
    "\t",
    "?",
    "_",
    "-",
    "s",
    "ed",
    "ing",
    "X",
    "é",
    "字",
    "٣",
    "²",
    *_CASE_TWINS,
]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.sampled_from(_PIECES), st.sampled_from(["lower", "upper", "title"])),
        max_size=25,
    )
)
def test_random_cue_strings_match_reference(parts: list[tuple[str, str]]) -> None:
    text = "".join(getattr(p, case)() for p, case in parts)
    assert_same([text])


def test_case_twins_are_complete() -> None:
    """Every non-ASCII character that IGNORECASE-matches an ASCII letter is in _CASE_TWINS
    (the anchor shortcut is only sound for texts without them)."""
    r = re.compile("[a-z]", re.IGNORECASE)
    twins = {chr(c) for c in range(0x80, 0x110000) if r.fullmatch(chr(c))}
    assert twins == set(_CASE_TWINS)


@pytest.fixture(scope="module")
def sharegpt_prompts() -> list[str]:
    from data.loaders import load_sources

    df = load_sources(["sharegpt"])
    ps = [p for p in dict.fromkeys(df["prompt"].astype(object).tolist()) if isinstance(p, str)]
    rng = np.random.default_rng(0)
    return [ps[i] for i in rng.choice(len(ps), size=min(1500, len(ps)), replace=False)]


def test_real_prompts_match_reference(sharegpt_prompts: list[str]) -> None:
    assert any(not p.isascii() for p in sharegpt_prompts)  # the sample covers both paths
    assert_same(sharegpt_prompts)


def test_transform_is_unchanged_by_the_cached_vectorizer(
    trace: pd.DataFrame, sharegpt_prompts: list[str]
) -> None:
    """The cached count vectorizer and id lookups give the features of fresh objects."""
    f = Featurizer(text_dim=4, min_count=1).fit(trace, trace["output_tokens"].to_numpy())
    rows = trace.iloc[:40].copy()
    rows["prompt"] = sharegpt_prompts[:40]
    first, again = f.transform(rows), f.transform(rows)
    np.testing.assert_array_equal(first, again)
    cv = CountVectorizer(ngram_range=(1, 2), vocabulary=f.vocabulary_, dtype=np.float32)
    ref = cv.transform([p[:MAX_PROMPT_CHARS] for p in rows["prompt"]]).tocsr()
    got = f._counter().transform([lexical.scan_prompt(p).tokens for p in rows["prompt"]])
    assert (ref != got).nnz == 0
    # refitting on other data replaces the cached vectorizer and lookups
    other = trace.iloc[::2].copy()
    other["model"] = "m-only"
    g = Featurizer(text_dim=4, min_count=1).fit(other, other["output_tokens"].to_numpy())
    f.fit(other, other["output_tokens"].to_numpy())
    np.testing.assert_array_equal(f.transform(rows), g.transform(rows))


def test_module_has_no_stale_names() -> None:
    assert set(lexical._CUE_ANCHORS) == set(_CUES) == set(lexical._CUE_FIRST)


def reference_transform(f: Featurizer, df: pd.DataFrame, training: bool = False) -> np.ndarray:
    """``Featurizer.transform`` as it was before the speed-ups: a new CountVectorizer per call,
    the transposed SVD view, ``astype(object)`` columns and ``reference_lexical``."""
    prompts = [p if isinstance(p, str) else None for p in df["prompt"].astype(object).tolist()]
    uniq = list(dict.fromkeys(p for p in prompts if p is not None))
    pos = {p: i for i, p in enumerate(uniq)}
    lex_u = np.array([reference_lexical(p) for p in uniq]).reshape(len(uniq), len(LEXICAL_NAMES))
    txt_u = np.zeros((len(uniq), f.n_text + 1), dtype=np.float32)
    txt_u[:, -1] = np.nan
    if f.n_text and uniq:
        cv = CountVectorizer(ngram_range=(1, 2), vocabulary=f.vocabulary_, dtype=np.float32)
        tf = cv.transform([p[:MAX_PROMPT_CHARS] for p in uniq]).tocsr()
        tf.data = (1.0 + np.log(tf.data)) * f.idf_[tf.indices]
        norms = np.sqrt(np.asarray(tf.multiply(tf).sum(axis=1)).reshape(-1))
        norms[norms == 0] = 1.0
        tf = sp.csr_matrix(sp.diags(1.0 / norms) @ tf)
        txt_u[:, :-1] = np.asarray(tf @ f.components_.T, dtype=np.float32)
        if f.score_coef_ is not None:
            txt_u[:, -1] = tf @ f.score_coef_ + f.score_intercept_
            if training and f.oof_scores_:
                oof = [f.oof_scores_.get(p[:MAX_PROMPT_CHARS]) for p in uniq]
                txt_u[:, -1] = [s if s is not None else v for s, v in zip(oof, txt_u[:, -1])]
    n = len(df)
    lex = np.full((n, len(LEXICAL_NAMES)), np.nan, dtype=np.float32)
    txt = np.full((n, f.n_text + 1), np.nan, dtype=np.float32)
    rows = np.array([i for i, p in enumerate(prompts) if p is not None], dtype=np.int64)
    if rows.size:
        src = np.array([pos[prompts[i]] for i in rows], dtype=np.int64)
        lex[rows] = lex_u[src]
        txt[rows] = txt_u[src]
    cats = np.zeros((n, len(CATEGORICAL)), dtype=np.float32)
    for j, c in enumerate(CATEGORICAL):
        if c in df.columns:
            lookup = {v: i + 1 for i, v in enumerate(f.categories_.get(c, []))}
            vals = df[c].astype(object).tolist()
            cats[:, j] = [lookup.get(v, UNKNOWN_CODE) if isinstance(v, str) else 0 for v in vals]
    ptok = np.log1p(prompt_tokens_of(df)).astype(np.float32)[:, None]
    return np.hstack([ptok, lex, txt, cats]).astype(np.float32)


def test_transform_equals_the_reference(trace: pd.DataFrame, sharegpt_prompts: list[str]) -> None:
    """Whole feature matrices before/after the speed-ups: real prompts, missing prompts,
    unseen ids, arrow-backed and object columns, batch sizes 1 and many."""
    y = trace["output_tokens"].to_numpy()
    f = Featurizer(text_dim=6, min_count=1).fit(trace, y)
    rows = pd.concat([trace] * 2, ignore_index=True).iloc[:120].copy()
    rows["prompt"] = pd.array(
        [None, *sharegpt_prompts[: len(rows) - 2], pd.NA], dtype="string"
    )  # arrow-backed strings with missing values
    rows.loc[3, "model"] = "never-seen"
    rows.loc[4, "tenant"] = None
    for df in (rows, rows.astype({"prompt": object, "model": object}), rows.iloc[5:6]):
        np.testing.assert_array_equal(f.transform(df), reference_transform(f, df))
    np.testing.assert_array_equal(
        f.transform(trace, training=True), reference_transform(f, trace, training=True)
    )
