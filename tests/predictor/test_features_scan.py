"""The shared prompt scan (one lowercase, one tokenisation per prompt) changes no feature value.

Three things replaced plain implementations and are checked here against them, bit for bit:
* the cue counts read from the tokens (``lexical._token_cue_counts``) against
  ``len(regex.findall(text))`` under IGNORECASE (``reference_lexical`` of
  test_features_fast.py, the definition of the lexical features);
* ``predictor.text_counts.VocabCounts`` against sklearn's ``CountVectorizer`` transform;
* the whole ``Featurizer.transform`` against ``reference_transform``.
Prompts: ASCII, other scripts, the IGNORECASE case twins, digits of other scripts, code
fences, near-misses of every cue alternative, the one case the token path hands back to the
regex (an ``implement\\w*`` token ending in "import"), empty, missing and over-long prompts.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from predictor import lexical
from predictor.features import Featurizer
from predictor.lexical import _CASE_TWINS, _CUE_RES, _CUES, MAX_PROMPT_CHARS, scan_prompt
from predictor.text_counts import VocabCounts
from tests.predictor.test_features_fast import (
    _PIECES,
    EDGE_CASES,
    assert_same,
    reference_transform,
)

PROMPTS: list[str | None] = [
    *EDGE_CASES,
    "implementimport os",  # "import " inside an implement\w* token: the whole cue_code regex
    "IMPLEMENTATION import numpy; implemented import  x; reimport y",
    "Implement a Python function. ```js\nimport x from 'y'\n``` class Foo: def bar",
    "one words, one-word, ONE LINE; yes or no? Yes Or No. is it? isit; which of; does it",
    "tl;dr TL;DR tl; dr tldr tldrs; in-depth IN DEPTH indepth; role play roleplay roleplays",
    "Summary SUMMARIZE summarisation presummary; you are YOU ARE; I want you to act as",
    "Write 500 words. 3-paragraph essay, 10 bullet points, 2 examples, 100 tokens, 5 lines",
    "12 34 1+2 3 * 4 5^6 7/8 9=9 x-1 solve calculate equation prove",
    "Kelvin \u212a: \u212aode ja\u212aa; \u017fql ſummary; \u0130mplement; ı \u0130s \u0130t",
    "Ärger über Öl: Schreibe einen ausführlichen Bericht (500 Wörter). Explain why.",
    "Напиши подробное эссе на 1000 слов. Write an essay, list 5 steps.",
    "日本語のプロンプト: コードを書いて python code で 3 examples",
    "ＷＲＩＴＥ ａｎ ＥＳＳＡＹ — full-width letters, １２３ digits",
    "What is this?\n  where are you\n\tDo it\nCAN you\ndoes it",
    "x² + y³ = z⁴ ½ ⅓ ① ② ③ ٣ + ٤ = ٧ ５＋６",
    "snake_case_words write_code __init__ _write write_ explain__",
    "a" * 9000,
    "explain the code " * 700,  # longer than MAX_PROMPT_CHARS, cut inside a word
    "Ünïcödé " * 1500 + "write an essay",
    "\n\n\n",
    "?????",
    "```",
    *(  # every word of every cue pattern (no case twin: the token path)
        f"{sep.join(p for p in _PIECES if p not in _CASE_TWINS)}{tail}"
        for sep, tail in ((" ", ""), ("\n", " \u00e9t\u00e9"), (", ", "s"))
    ),
    " ".join(_PIECES).upper(),
    *(  # each phrase alternative alone (its keys are all the prompt holds)
        f"Please: {ph}."
        for ph in [
            "one word",
            "one sentence",
            "One line",
            "yes or no",
            "true or false",
            "in a word",
            "which of",
            "Is it",
            "does it",
            "fix the grammar",
            "tl;dr",
            "in-depth",
            "in depth",
            "you are",
            "act as",
            "role play",
            "I want you to",
            "def f",
            "class A",
            "c++",
            "#include x",
            "import os",
            "```",
        ]
    ),
]


def test_prompts_match_the_regex_reference() -> None:
    assert_same(PROMPTS)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*_PIECES, "implement", "import ", "Ü", "ß", "\u00a0"]),
            st.sampled_from(["lower", "upper", "title"]),
        ),
        max_size=30,
    )
)
def test_random_cue_strings_match_the_regex_reference(parts: list[tuple[str, str]]) -> None:
    assert_same(["".join(getattr(p, case)() for p, case in parts)])


def test_token_cue_counts_equal_every_cue_regex() -> None:
    """Each cue alone (not only the feature vector): the token counts equal ``findall``."""
    for p in PROMPTS:
        if p is None:
            continue
        s = scan_prompt(p)
        if not s.text.isascii() and any(c in s.text for c in _CASE_TWINS):
            continue  # these texts take the regex path (_cue_counts)
        got = lexical._token_cue_counts(s.low, s.words, any(c.isdigit() for c in s.text))
        want = [float(len(r.findall(s.text))) for r in _CUE_RES.values()]
        if got is not None:
            assert got == want, repr(p)
        else:
            assert re.search(r"implement\w*import", s.low), repr(p)


def test_token_cue_table_is_complete_and_disjoint() -> None:
    assert list(lexical._TOKEN_CUES) == list(_CUES)
    seen: dict[str, str] = {}
    for name, cue in lexical._TOKEN_CUES.items():
        for w in cue.words:
            assert w not in seen, f"{w!r} in {seen.get(w)} and {name}"
            seen[w] = name
            assert re.fullmatch(r"[a-z]{2,}", w)
            assert len(_CUE_RES[name].findall(w)) == 1, (name, w)  # it is an alternative
        for key in cue.keys:  # no phrase token is one of the cue's words
            assert not key & cue.words, (name, key)


def test_lowercasing_keeps_character_classes() -> None:
    """What the token path relies on, for every code point but the case twins: ``lower()``
    gives one character, of the same \\w, \\s and \\d classes, and ASCII only from ASCII."""
    w, s, d = re.compile(r"\w"), re.compile(r"\s"), re.compile(r"\d")
    for i in range(sys.maxunicode + 1):
        c = chr(i)
        if c in _CASE_TWINS:
            continue
        lo = c.lower()
        if lo == c:
            continue
        assert len(lo) == 1, hex(i)
        assert (w.match(c) is None) == (w.match(lo) is None), hex(i)
        assert (s.match(c) is None) == (s.match(lo) is None), hex(i)
        assert (d.match(c) is None) == (d.match(lo) is None), hex(i)
        assert c.isascii() or not lo.isascii(), hex(i)


@pytest.mark.parametrize("max_features", [None, 60])
def test_vocab_counts_equal_sklearn(max_features: int | None) -> None:
    docs = [p[:MAX_PROMPT_CHARS] for p in PROMPTS if p is not None]
    docs += ["the cat the cat the cat sat", "Cat THE cat the", "the the the"]
    vocab = TfidfVectorizer(ngram_range=(1, 2), max_features=max_features).fit(docs).vocabulary_
    ref = CountVectorizer(ngram_range=(1, 2), vocabulary=vocab, dtype=np.float32).transform(docs)
    got = VocabCounts(vocab).transform([scan_prompt(p).tokens for p in docs])
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.data, ref.data)


def test_transform_on_varied_prompts_equals_the_reference(trace: pd.DataFrame) -> None:
    f = Featurizer(text_dim=6, min_count=1).fit(trace, trace["output_tokens"].to_numpy())
    rows = pd.concat([trace] * 2, ignore_index=True).iloc[: len(PROMPTS)].copy()
    rows["prompt"] = pd.array(PROMPTS, dtype=object)
    for df in (rows, rows.iloc[::-1], rows.iloc[7:8]):
        np.testing.assert_array_equal(f.transform(df), reference_transform(f, df))
