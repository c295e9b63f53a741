"""Admission-time features: pure lexical cues, TF-IDF -> SVD text embedding, categorical ids.

``Featurizer.fit(trace)`` learns the categorical vocabularies, a TF-IDF vocabulary (word 1-2
grams) and an SVD projection on the *unique* training prompts; ``transform(trace)`` returns a
float32 matrix (n, d) whose columns are ``feature_names``. State is plain JSON plus numpy arrays
(saved as safetensors by :mod:`predictor.artifacts`): no pickle anywhere.

Robustness rules (tested):
* ``prompt`` missing or NA -> text and lexical columns are NaN (LightGBM's missing branch);
* prompts longer than ``MAX_PROMPT_CHARS`` are truncated for text features only (the
  ``prompt_tokens`` column still carries the full length);
* tenant/tier/category/source/model values not seen (or seen fewer than ``min_count`` times) in
  training map to the explicit unknown bucket, code 0;
* missing ``prompt_tokens`` is counted from the prompt with cl100k, or NaN when there is no prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from predictor.paper import classify_category

FEATURE_SCHEMA_VERSION = 2  # 2: adds the supervised text_score column
MAX_PROMPT_CHARS = 8000  # text features read at most this many characters of a prompt
CATEGORICAL: tuple[str, ...] = ("tenant", "tier", "category", "source", "model")
UNKNOWN_CODE = 0
PAPER_CATEGORIES = ("short_qa", "summary", "technical", "report")

# Generator descriptors (``Featurizer(generator_features=True)``): what a model's *name* says
# about it, so a generator never seen in training is placed by family and size instead of
# falling into the one unknown ``model_id`` bucket. Family code = position + 1 (0: none known);
# checked in order, so "mixtral" and "ministral" count as mistral and "codellama" as llama.
GENERATOR_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llama", ("llama",)),
    ("qwen", ("qwen",)),
    ("gemma", ("gemma",)),
    ("mistral", ("mistral", "mixtral", "ministral", "zephyr", "openhermes", "dolphin")),
    ("phi", ("phi-", "phi2", "phi3", "phi4")),
    ("gpt", ("gpt", "chatgpt", "text-davinci", "openai")),
    ("claude", ("claude",)),
    ("yi", ("yi-",)),
    ("vicuna", ("vicuna",)),
    ("wizardlm", ("wizard",)),
    ("tulu", ("tulu",)),
    ("falcon", ("falcon",)),
    ("deepseek", ("deepseek",)),
    ("cohere", ("cohere", "command")),
    ("gemini", ("gemini", "palm", "bard")),
    ("xwin", ("xwin",)),
    ("dbrx", ("dbrx",)),
    ("internlm", ("internlm",)),
    ("baichuan", ("baichuan",)),
)
GENERATOR_NAMES: tuple[str, ...] = ("gen_size_log", "gen_family", "gen_instruct", "gen_moe")
_SIZE_RE = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)\s*b(?![a-z])", re.IGNORECASE)
_INSTRUCT_RE = re.compile(r"(instruct|chat|\bit\b|-it-|-it$|_it$|sft|dpo|rlhf)", re.IGNORECASE)


def generator_descriptors(model: str | None) -> tuple[float, float, float, float]:
    """(log1p billions of parameters or NaN, family code, instruct flag, mixture flag)."""
    if not isinstance(model, str) or not model or model == "unknown":
        return (np.nan, 0.0, np.nan, np.nan)
    low = model.lower()
    size, moe = np.nan, 0.0
    sizes = [
        (float(m.group(1) or 1) * float(m.group(2)), bool(m.group(1)))
        for m in _SIZE_RE.finditer(low)
    ]
    if sizes:  # the largest size named ("aligner-2b_qwen1.5-72b" -> 72b generates)
        b, moe_flag = max(sizes)
        size, moe = float(np.log1p(b)), float(moe_flag)
    fam = 0.0
    for i, (_, keys) in enumerate(GENERATOR_FAMILIES):
        if any(k in low for k in keys):
            fam = float(i + 1)
            break
    return (size, fam, float(bool(_INSTRUCT_RE.search(low))), moe)


# Lexical cue -> regex (case-insensitive). Chosen for output length: explicit length requests,
# task verbs that produce long outputs (write/explain/code) or short ones (classify/yes-no).
_CUES: dict[str, str] = {
    "cue_write": r"\b(write|compose|draft|generate|create)\b",
    "cue_explain": r"\b(explain|describe|discuss|elaborate|why|how)\b",
    "cue_list": r"\b(list|enumerate|steps?|bullet|points?|ideas|examples?)\b",
    "cue_short": r"\b(brief(ly)?|short|concise|one (word|sentence|line)|single|yes or no|"
    r"true or false|in a word)\b",
    "cue_classify": r"\b(classify|categori[sz]e|which of|choose|select|identify|extract|"
    r"is it|does it|rate)\b",
    "cue_rewrite": r"\b(rewrite|rephrase|paraphrase|translate|correct|edit|fix the grammar)\b",
    "cue_summary": r"\b(summar\w*|tl;?dr|overview)\b",
    "cue_long": r"\b(essay|article|story|report|blog|detailed|comprehensive|in[- ]depth|"
    r"thorough|outline|plan|guide|tutorial|script)\b",
    "cue_code": r"(```|\bdef |\bclass |\bfunction\b|\bpython\b|\bjava(script)?\b|\bsql\b|"
    r"\bc\+\+|\bcode\b|\bimplement\w*\b|\bprogram\b|#include|import )",
    "cue_math": r"(\d\s*[-+*/^=]\s*\d|\bsolve\b|\bcalculate\b|\bequation\b|\bprove\b)",
    "cue_poem": r"\b(poem|haiku|song|lyrics|rap|limerick)\b",
    "cue_question_word": r"^\s*(what|who|when|where|which|is|are|can|do|does)\b",
    "cue_dialog": r"\b(you are|act as|pretend|role ?play|i want you to)\b",
}
_CUE_RES = {k: re.compile(v, re.IGNORECASE | re.MULTILINE) for k, v in _CUES.items()}
_WORD_COUNT_RE = re.compile(
    r"\b(\d{1,5})\s*(?:-|\s)?\s*(words?|sentences?|paragraphs?|lines?|"
    r"bullet|points?|items?|examples?|tokens?|characters?)\b",
    re.IGNORECASE,
)
_UNIT_WORDS = {
    "word": 1.0,
    "token": 0.75,
    "character": 0.2,
    "sentence": 20.0,
    "line": 12.0,
    "paragraph": 90.0,
    "bullet": 15.0,
    "point": 15.0,
    "item": 15.0,
    "example": 30.0,
}

LEXICAL_NAMES: tuple[str, ...] = (
    "n_chars_log",
    "n_words_log",
    "n_lines_log",
    "n_questions",
    "frac_digits",
    "frac_upper",
    "has_code_block",
    "requested_words_log",
    "paper_category",
    *_CUES,
)


# Two exact speed-ups of the cue counts (each cue is still ``len(regex.findall(text))``):
# 1. Anchors: literal lowercase pieces such that every match of the cue contains one of them
#    (cue_math's digit-operator-digit branch is checked apart). A text whose lowercase holds
#    none has a count of 0 without running the regex (a substring test is ~50x cheaper).
#    Sound unless the text holds one of ``_CASE_TWINS``, the only non-ASCII characters that
#    IGNORECASE-match an ASCII letter (then every regex runs).
# 2. First characters: prefixing a cue with the lookahead (?=[...]) of the characters its
#    matches can start with (\\d: any decimal digit) never changes what it matches but lets
#    the engine skip the other positions without trying all alternatives (5x on code
#    prompts). ASCII prompts are matched lowercased with case-sensitive patterns (the same
#    matches as IGNORECASE on ASCII text, and faster); others keep IGNORECASE.
# tests/predictor/test_features_fast.py checks both against the plain ``_CUE_RES`` counts.
_CUE_ANCHORS: dict[str, tuple[str, ...]] = {
    "cue_write": ("write", "compose", "draft", "generate", "create"),
    "cue_explain": ("explain", "describe", "discuss", "elaborate", "why", "how"),
    "cue_list": ("list", "enumerate", "step", "bullet", "point", "ideas", "example"),
    "cue_short": (
        "brief",
        "short",
        "concise",
        "one ",
        "single",
        "yes or no",
        "true or false",
        "in a word",
    ),
    "cue_classify": (
        "classify",
        "categori",
        "which of",
        "choose",
        "select",
        "identify",
        "extract",
        "is it",
        "does it",
        "rate",
    ),
    "cue_rewrite": (
        "rewrite",
        "rephrase",
        "paraphrase",
        "translate",
        "correct",
        "edit",
        "fix the grammar",
    ),
    "cue_summary": ("summar", "tl;dr", "tldr", "overview"),
    "cue_long": (
        "essay",
        "article",
        "story",
        "report",
        "blog",
        "detailed",
        "comprehensive",
        "in-depth",
        "in depth",
        "thorough",
        "outline",
        "plan",
        "guide",
        "tutorial",
        "script",
    ),
    "cue_code": (
        "```",
        "def ",
        "class ",
        "function",
        "python",
        "java",
        "sql",
        "c++",
        "code",
        "implement",
        "program",
        "#include",
        "import ",
    ),
    "cue_math": ("solve", "calculate", "equation", "prove"),
    "cue_poem": ("poem", "haiku", "song", "lyrics", "rap", "limerick"),
    "cue_question_word": (),  # empty: always run (anchored at line starts, already cheap)
    "cue_dialog": ("you are", "act as", "pretend", "role", "i want you to"),
}
_CUE_FIRST: dict[str, str] = {
    "cue_write": "wcdg",
    "cue_explain": "edwh",
    "cue_list": "lesbpi",
    "cue_short": "bscoyti",
    "cue_classify": "cwsiedr",
    "cue_rewrite": "rptcef",
    "cue_summary": "sto",
    "cue_long": "easrbdcitopg",
    "cue_code": "`dcfpjsi#",
    "cue_math": "\\dscep",
    "cue_poem": "phslr",
    "cue_question_word": "",  # starts with ^\\s*: no lookahead
    "cue_dialog": "yapri",
}
_CASE_TWINS = "\u0130\u0131\u017f\u212a"  # İ ı ſ K: IGNORECASE-match i, i, s, k
_MATH_OPERATORS = "-+*/^="


def _fast_cue(name: str, flags: int) -> re.Pattern[str]:
    first = _CUE_FIRST[name]
    return re.compile((f"(?=[{first}])" if first else "") + _CUES[name], flags)


# (name, anchors, lowercase-ASCII pattern, IGNORECASE pattern) in _CUES order
_CUE_PLAN = [
    (k, _CUE_ANCHORS[k], _fast_cue(k, re.MULTILINE), _fast_cue(k, re.IGNORECASE | re.MULTILINE))
    for k in _CUES
]
_ASCII_DIGITS = b"0123456789"
_ASCII_UPPER = bytes(range(ord("A"), ord("Z") + 1))


def _cue_counts(text: str, has_digit: bool = True) -> list[float]:
    """``len(findall)`` of every cue regex in ``text``, in ``_CUES`` order.

    ``has_digit``: False only if ``text`` has no ``str.isdigit`` character (skips cue_math's
    digit branch)."""
    is_ascii = text.isascii()
    low = text.lower()
    use_anchors = is_ascii or not any(c in text for c in _CASE_TWINS)
    math_ops = has_digit and any(o in text for o in _MATH_OPERATORS)
    out = []
    for name, anchors, r_low, r_any in _CUE_PLAN:
        if (
            use_anchors
            and anchors
            and not any(a in low for a in anchors)
            and not (math_ops and name == "cue_math")
        ):
            out.append(0.0)
        elif is_ascii:
            out.append(float(len(r_low.findall(low))))
        else:
            out.append(float(len(r_any.findall(text))))
    return out


def _digit_upper_counts(text: str) -> tuple[int, int]:
    """(# chars with ``str.isdigit``, # with ``str.isupper``); bytes.translate for ASCII."""
    if text.isascii():
        b = text.encode("ascii")
        return len(b) - len(b.translate(None, _ASCII_DIGITS)), len(b) - len(
            b.translate(None, _ASCII_UPPER)
        )
    return sum(map(str.isdigit, text)), sum(map(str.isupper, text))


def lexical_features(prompt: str | None) -> np.ndarray:
    """Pure lexical cues of one prompt: float64 (len(LEXICAL_NAMES),); NaNs when no prompt."""
    if prompt is None or not isinstance(prompt, str):
        return np.full(len(LEXICAL_NAMES), np.nan)
    text = prompt[:MAX_PROMPT_CHARS]
    n = max(len(text), 1)
    n_digit, n_upper = _digit_upper_counts(text)
    requested = np.nan
    # \d (Unicode decimal) implies str.isdigit: no digit, no requested length
    m = _WORD_COUNT_RE.search(text) if n_digit else None
    if m:
        unit = m.group(2).lower().rstrip("s")
        requested = np.log1p(float(m.group(1)) * _UNIT_WORDS.get(unit, 1.0))
    out = [
        np.log1p(len(prompt)),
        np.log1p(len(text.split())),
        np.log1p(text.count("\n")),
        float(text.count("?")),
        n_digit / n,
        n_upper / n,
        float("```" in text),
        requested,
        float(PAPER_CATEGORIES.index(classify_category(text))),
    ]
    out.extend(_cue_counts(text, n_digit > 0))
    return np.asarray(out, dtype=np.float64)


def _prompts(df: pd.DataFrame) -> list[str | None]:
    if "prompt" not in df.columns:
        return [None] * len(df)
    # .tolist() gives str for strings and NA/None/NaN otherwise (no object copy of the column)
    return [p if isinstance(p, str) else None for p in df["prompt"].tolist()]


def prompt_tokens_of(df: pd.DataFrame) -> np.ndarray:
    """``prompt_tokens`` as float64 (n,), counted with cl100k where absent; NaN with no prompt."""
    if "prompt_tokens" in df.columns:
        v = pd.to_numeric(df["prompt_tokens"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        v = np.full(len(df), np.nan)
    need = np.isnan(v)
    if need.any():
        prompts = _prompts(df)
        idx = [i for i in np.flatnonzero(need) if prompts[i] is not None]
        if idx:
            from data.tokens import count_tokens

            v[idx] = count_tokens([prompts[i] for i in idx]).astype(np.float64)
    return v


@dataclass
class Featurizer:
    """Fitted admission featurizer; construct, ``fit`` on a training trace, then ``transform``."""

    text_dim: int = 48  # SVD components of the TF-IDF matrix (0 disables text features)
    max_vocab: int = 20000  # TF-IDF vocabulary size (word 1-2 grams)
    min_df: int = 2  # a term must occur in this many training prompts
    min_count: int = 20  # rows a categorical value needs in training to get its own id
    random_state: int = 0
    text_score: bool = True  # ridge "prompt difficulty" score on TF-IDF (needs y in fit)
    score_alpha: float = 1.0  # ridge penalty of the text score
    score_folds: int = 5  # out-of-fold folds over training prompts (see fit)
    generator_features: bool = False  # + GENERATOR_NAMES columns parsed from the model name
    # --- fitted state (set by fit / from_state) ---
    categories_: dict[str, list[str]] = field(default_factory=dict)
    vocabulary_: dict[str, int] = field(default_factory=dict)
    idf_: np.ndarray | None = None  # (V,) float32
    components_: np.ndarray | None = None  # (text_dim, V) float32 SVD projection
    score_coef_: np.ndarray | None = None  # (V,) float32 ridge weights of the text score
    score_intercept_: float = 0.0
    # prompt -> out-of-fold text score of training prompts (runtime only, never saved)
    oof_scores_: dict[str, float] = field(default_factory=dict, repr=False)
    fitted_: bool = False
    # derived serving objects (count vectorizer, id lookups), rebuilt when the state changes
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def feature_names(self) -> list[str]:
        names = ["prompt_tokens_log", *LEXICAL_NAMES]
        names += [f"svd_{i}" for i in range(self.n_text)]
        names += ["text_score"]
        names += [f"{c}_id" for c in CATEGORICAL]
        if self.generator_features:
            names += list(GENERATOR_NAMES)
        return names

    @property
    def n_text(self) -> int:
        return 0 if self.components_ is None else int(self.components_.shape[0])

    @property
    def categorical_indices(self) -> list[int]:
        names = self.feature_names
        cats = [names.index(f"{c}_id") for c in CATEGORICAL]
        return cats + ([names.index("gen_family")] if self.generator_features else [])

    def generator_columns(self, df: pd.DataFrame) -> np.ndarray:
        """(n, len(GENERATOR_NAMES)) float32 descriptors of each row's model name."""
        vals = df["model"].tolist() if "model" in df.columns else [None] * len(df)
        memo = {v: generator_descriptors(v) for v in set(v for v in vals if isinstance(v, str))}
        out = [
            memo.get(v, generator_descriptors(None))
            if isinstance(v, str)
            else generator_descriptors(None)
            for v in vals
        ]
        return np.asarray(out, dtype=np.float32).reshape(len(df), len(GENERATOR_NAMES))

    # --- fitting -------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, y: np.ndarray | None = None) -> Featurizer:
        """Learn vocabularies and the SVD; with ``y`` (true lengths) also the text score.

        The text score is a ridge regression from a prompt's TF-IDF to its "difficulty": the
        mean over its rows of log(length) minus the row's model mean (so it is comparable
        across models). Training prompts also get out-of-fold scores (``score_folds``
        prompt folds) for ``transform(..., training=True)``, so the model downstream never
        sees a score fitted on its own target.
        """
        for c in CATEGORICAL:
            if c in df.columns:
                counts = df[c].astype("string").fillna("unknown").value_counts()
                keep = sorted(str(v) for v, k in counts.items() if k >= self.min_count)
            else:
                keep = []
            self.categories_[c] = keep  # code = position + 1; 0 is the unknown bucket
        prompts = [p[:MAX_PROMPT_CHARS] for p in dict.fromkeys(_prompts(df)) if p]
        self.vocabulary_, self.idf_, self.components_ = {}, None, None
        if self.text_dim > 0 and len(prompts) > self.text_dim + 1:
            vec = TfidfVectorizer(
                ngram_range=(1, 2),
                max_features=self.max_vocab,
                min_df=min(self.min_df, len(prompts)),
                sublinear_tf=True,
                dtype=np.float32,
            )
            tf = vec.fit_transform(prompts)
            self.vocabulary_ = {str(k): int(v) for k, v in vec.vocabulary_.items()}
            self.idf_ = vec.idf_.astype(np.float32)
            k = min(self.text_dim, tf.shape[1] - 1)
            from sklearn.decomposition import TruncatedSVD

            svd = TruncatedSVD(n_components=k, random_state=self.random_state, n_iter=4)
            svd.fit(tf)
            self.components_ = svd.components_.astype(np.float32)
        self.score_coef_, self.score_intercept_, self.oof_scores_ = None, 0.0, {}
        if self.text_score and y is not None and self.vocabulary_:
            self._fit_text_score(df, np.asarray(y, dtype=np.float64))
        self.fitted_ = True
        return self

    def _fit_text_score(self, df: pd.DataFrame, y: np.ndarray) -> None:
        from sklearn.linear_model import Ridge

        ly = np.log(np.maximum(y, 1.0))
        models = (
            df["model"].astype(str).to_numpy()
            if "model" in df.columns
            else np.zeros(len(df), dtype=object)
        )
        resid = ly - pd.Series(ly).groupby(models).transform("mean").to_numpy()
        prompts = pd.Series(_prompts(df), dtype=object)
        target = pd.Series(resid).groupby(prompts.to_numpy()).mean()  # one value per prompt
        if len(target) < max(self.score_folds, 2) * 2:
            return
        uniq = [str(p) for p in target.index]
        T = self.tfidf(uniq)
        t = target.to_numpy()
        rng = np.random.default_rng(self.random_state)
        fold = rng.integers(0, self.score_folds, len(uniq))
        oof = np.zeros(len(uniq))
        for k in range(self.score_folds):
            r = Ridge(alpha=self.score_alpha).fit(T[fold != k], t[fold != k])
            oof[fold == k] = r.predict(T[fold == k])
        full = Ridge(alpha=self.score_alpha).fit(T, t)
        self.score_coef_ = full.coef_.astype(np.float32)
        self.score_intercept_ = float(full.intercept_)
        self.oof_scores_ = dict(zip(uniq, oof.tolist()))

    # --- transforming --------------------------------------------------------------------
    def tfidf(self, prompts: list[str]) -> sp.csr_matrix:
        """L2-normalised sublinear TF-IDF rows (n, V) with the fitted vocabulary."""
        tf = self._counter().transform([p[:MAX_PROMPT_CHARS] for p in prompts]).tocsr()
        tf.data = (1.0 + np.log(tf.data)) * self.idf_[tf.indices]
        norms = np.sqrt(np.asarray(tf.multiply(tf).sum(axis=1)).reshape(-1))
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ tf)

    def _counter(self) -> CountVectorizer:
        """The count vectorizer of the fitted vocabulary, built once: sklearn validates a
        given vocabulary (20k entries, ~6 ms) on the first ``transform`` of each instance."""
        if self._cache.get("counter_vocab") is not self.vocabulary_:
            cv = CountVectorizer(ngram_range=(1, 2), vocabulary=self.vocabulary_, dtype=np.float32)
            self._cache.update(counter=cv, counter_vocab=self.vocabulary_)
        return self._cache["counter"]

    def _components_t(self) -> np.ndarray:
        """``components_.T`` (V, text_dim) C-contiguous, built once: scipy copied the
        transposed view (20k x 48 floats, ~1 ms) on every sparse @ dense product."""
        if self._cache.get("components_src") is not self.components_:
            t = np.ascontiguousarray(self.components_.T)
            self._cache.update(components_t=t, components_src=self.components_)
        return self._cache["components_t"]

    def _lookups(self) -> list[dict[str, int]]:
        """Per categorical column: value -> code (position + 1), rebuilt when categories change."""
        key = [tuple(self.categories_.get(c, [])) for c in CATEGORICAL]
        if self._cache.get("lookup_key") != key:
            lookups = [{v: i + 1 for i, v in enumerate(k)} for k in key]
            self._cache.update(lookups=lookups, lookup_key=key)
        return self._cache["lookups"]

    def encode_categorical(self, df: pd.DataFrame) -> np.ndarray:
        """Integer codes (n, len(CATEGORICAL)) as float32; 0 = unknown/unseen/missing."""
        out = np.zeros((len(df), len(CATEGORICAL)), dtype=np.float32)
        for j, (c, lookup) in enumerate(zip(CATEGORICAL, self._lookups())):
            if c not in df.columns:
                continue
            vals = df[c].tolist()  # non-strings (NA, numbers) -> the unknown code below
            out[:, j] = [
                lookup.get(v, UNKNOWN_CODE) if isinstance(v, str) else UNKNOWN_CODE for v in vals
            ]
        return out

    def transform(self, df: pd.DataFrame, training: bool = False) -> np.ndarray:
        """Feature matrix float32 (n, d) in ``feature_names`` order.

        ``training=True``: prompts seen in ``fit`` get their out-of-fold text score.
        """
        if not self.fitted_:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("Featurizer is not fitted; call fit(trace) first")
        n = len(df)
        prompts = _prompts(df)
        # Text features are computed once per distinct prompt (traces repeat prompts per model).
        uniq = list(dict.fromkeys(p for p in prompts if p is not None))
        pos = {p: i for i, p in enumerate(uniq)}
        lex_u = np.array([lexical_features(p) for p in uniq]).reshape(len(uniq), len(LEXICAL_NAMES))
        txt_u = np.zeros((len(uniq), self.n_text + 1), dtype=np.float32)
        txt_u[:, -1] = np.nan  # no text score model -> missing
        if self.n_text and uniq:
            tf = self.tfidf(uniq)
            txt_u[:, :-1] = np.asarray(tf @ self._components_t(), dtype=np.float32)
            if self.score_coef_ is not None:
                txt_u[:, -1] = tf @ self.score_coef_ + self.score_intercept_
                if training and self.oof_scores_:
                    oof = [self.oof_scores_.get(p[:MAX_PROMPT_CHARS]) for p in uniq]
                    txt_u[:, -1] = [s if s is not None else v for s, v in zip(oof, txt_u[:, -1])]
        lex = np.full((n, len(LEXICAL_NAMES)), np.nan, dtype=np.float32)
        txt = np.full((n, self.n_text + 1), np.nan, dtype=np.float32)
        rows = np.array([i for i, p in enumerate(prompts) if p is not None], dtype=np.int64)
        if rows.size:
            src = np.array([pos[prompts[i]] for i in rows], dtype=np.int64)
            lex[rows] = lex_u[src]
            txt[rows] = txt_u[src]
        ptok = np.log1p(prompt_tokens_of(df)).astype(np.float32)[:, None]
        parts = [ptok, lex, txt, self.encode_categorical(df)]
        if self.generator_features:
            parts.append(self.generator_columns(df))
        return np.hstack(parts).astype(np.float32)

    # --- safe state ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able dict, named float32 arrays) describing the fitted featurizer."""
        meta = {
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "params": {
                "text_dim": self.text_dim,
                "max_vocab": self.max_vocab,
                "min_df": self.min_df,
                "min_count": self.min_count,
                "random_state": self.random_state,
                "text_score": self.text_score,
                "score_alpha": self.score_alpha,
                "score_folds": self.score_folds,
                "generator_features": self.generator_features,
            },
            "score_intercept": self.score_intercept_,
            "categories": self.categories_,
            "vocabulary": self.vocabulary_,
            "feature_names": self.feature_names,
            "max_prompt_chars": MAX_PROMPT_CHARS,
        }
        arrays = {}
        if self.idf_ is not None and self.components_ is not None:
            arrays = {"idf": self.idf_, "svd_components": self.components_}
        if self.score_coef_ is not None:
            arrays["score_coef"] = self.score_coef_
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Featurizer:
        v = meta.get("feature_schema_version")
        if v != FEATURE_SCHEMA_VERSION:
            raise ValueError(
                f"featurizer state has feature schema version {v!r}, this code "
                f"reads version {FEATURE_SCHEMA_VERSION}; retrain with "
                "`python train.py`"
            )
        f = cls(**meta["params"])
        f.categories_ = {k: list(v) for k, v in meta["categories"].items()}
        f.vocabulary_ = {str(k): int(i) for k, i in meta["vocabulary"].items()}
        if f.vocabulary_:
            f.idf_ = np.asarray(arrays["idf"], dtype=np.float32)
            f.components_ = np.asarray(arrays["svd_components"], dtype=np.float32)
            if f.idf_.shape != (len(f.vocabulary_),) or f.components_.shape[1] != len(
                f.vocabulary_
            ):
                raise ValueError(
                    "featurizer arrays do not match its vocabulary size "
                    f"({len(f.vocabulary_)}): the artifact is corrupt"
                )
            if "score_coef" in arrays:
                f.score_coef_ = np.asarray(arrays["score_coef"], dtype=np.float32)
                f.score_intercept_ = float(meta["score_intercept"])
                if f.score_coef_.shape != (len(f.vocabulary_),):
                    raise ValueError("text score weights do not match the vocabulary size")
        f.fitted_ = True
        if f.feature_names != list(meta["feature_names"]):
            raise ValueError(
                "featurizer feature names differ from the ones this code builds: "
                "the artifact was written by another feature version"
            )
        return f
