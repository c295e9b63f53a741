"""Admission-time features: lexical cues, TF-IDF -> SVD text embedding, categorical ids.

``Featurizer.fit(trace)`` learns the categorical vocabularies, a TF-IDF vocabulary (word 1-2
grams) and an SVD projection on the *unique* training prompts; ``transform(trace)`` returns a
float32 matrix (n, d) whose columns are ``feature_names`` (the lexical columns come from
the pure :func:`predictor.lexical.lexical_features`). State is plain JSON plus numpy arrays
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
from sklearn.feature_extraction.text import TfidfVectorizer

from predictor.lexical import (
    LEXICAL_NAMES,
    MAX_PROMPT_CHARS,
    PromptScan,
    lexical_features,
    scan_prompt,
)
from predictor.text_counts import VocabCounts

FEATURE_SCHEMA_VERSION = 2  # 2: adds the supervised text_score column
CATEGORICAL: tuple[str, ...] = ("tenant", "tier", "category", "source", "model")
UNKNOWN_CODE = 0

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
    def tfidf(self, prompts: list[str], scans: list[PromptScan] | None = None) -> sp.csr_matrix:
        """L2-normalised sublinear TF-IDF rows (n, V) with the fitted vocabulary.

        ``scans``: ``[scan_prompt(p) for p in prompts]`` when the caller has them."""
        if scans is None:
            scans = [scan_prompt(p) for p in prompts]
        tokens, words = [s.tokens for s in scans], [s.words for s in scans]
        tf = self._counter().transform(tokens, words)
        tf.data = (1.0 + np.log(tf.data)) * self.idf_[tf.indices]
        norms = np.sqrt(np.asarray(tf.multiply(tf).sum(axis=1)).reshape(-1))
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ tf)

    def _counter(self) -> VocabCounts:
        """The 1-2 gram counter of the fitted vocabulary (sklearn's CountVectorizer transform,
        exactly), rebuilt when the vocabulary changes."""
        if self._cache.get("counter_vocab") is not self.vocabulary_:
            self._cache.update(
                counter=VocabCounts(self.vocabulary_), counter_vocab=self.vocabulary_
            )
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
        scans = [scan_prompt(p) for p in uniq]  # shared by the lexical and TF-IDF features
        lex_u = np.array([lexical_features(p, s) for p, s in zip(uniq, scans)])
        lex_u = lex_u.reshape(len(uniq), len(LEXICAL_NAMES))
        txt_u = np.zeros((len(uniq), self.n_text + 1), dtype=np.float32)
        txt_u[:, -1] = np.nan  # no text score model -> missing
        if self.n_text and uniq:
            tf = self.tfidf(uniq, scans)
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
