"""Baseline length estimators (same contract and artifact rules as the learned models).

* :class:`ConstantMedian`: the training median (p90: the training 90th percentile).
* :class:`PaperHeuristic`: the paper's keyword category + EMA estimator (``predictor.paper``);
  ``fit`` replays the training completions in order through the EMA and freezes the biases
  (``correction=False`` keeps them at 1.0). A point estimate: p90 = p50.
* :class:`PromptLengthRegression`: least squares of log output on log prompt tokens.
* :class:`TfidfRidge`: ridge regression of log output on word 1-2 gram TF-IDF of the prompt
  plus one-hot model/source/category ids.

Regression baselines get p90 = p50 x exp(90th percentile of training log residuals).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from predictor.artifacts import (
    TRAIN_COMMAND,
    ArtifactError,
    load_arrays,
    read_meta,
    save_arrays,
    write_meta,
)
from predictor.base import LengthEstimator, check_frame, check_lengths, finish_quantiles
from predictor.features import CATEGORICAL, MAX_PROMPT_CHARS, _prompts, prompt_tokens_of
from predictor.paper import PaperEMA, classify_categories, count_input_tokens


def _save_json(d: Path, name: str, obj: Any) -> None:
    (d / name).write_text(json.dumps(obj))


def _load_json(d: Path, name: str) -> Any:
    try:
        return json.loads((d / name).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{d / name}: unreadable ({e}); retrain with `{TRAIN_COMMAND}`") from e


class _Saved(LengthEstimator):
    """Save/load of estimators whose whole state is a JSON dict plus optional arrays."""

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # pragma: no cover
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError  # pragma: no cover

    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state, arrays = self._state()
        _save_json(d, "state.json", state)
        if arrays:
            save_arrays(d / "state.safetensors", arrays)
        write_meta(d, self.kind, {"hyperparameters": self.get_params(), **(extra_meta or {})})
        return d

    @classmethod
    def load(cls, directory: str | Path) -> LengthEstimator:
        d = Path(directory)
        meta = read_meta(d, (cls.kind,))
        est = cls(**meta["hyperparameters"])
        state = _load_json(d, "state.json")
        arrays = load_arrays(d / "state.safetensors") if (d / "state.safetensors").exists() else {}
        try:
            est._set_state(state, arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{d}: invalid state ({e}); retrain with `{TRAIN_COMMAND}`") from e
        est.meta_ = meta
        est.fitted_ = True
        return est


class ConstantMedian(_Saved):
    kind: ClassVar[str] = "constant_median"

    def __init__(self, *, upper: float = 0.9) -> None:
        self.upper = upper

    def fit(self, X: pd.DataFrame, y: Any) -> ConstantMedian:
        yv = check_lengths(y, len(check_frame(X)))
        self.p50_ = float(np.median(yv))
        self.p90_ = float(np.quantile(yv, self.upper))
        self.fitted_ = True
        return self

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        n = len(check_frame(X))
        return np.tile([self.p50_, self.p90_], (n, 1)).astype(np.float64)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"p50": self.p50_, "p90": self.p90_}, {}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.p50_, self.p90_ = float(state["p50"]), float(state["p90"])


class PaperHeuristic(_Saved):
    kind: ClassVar[str] = "paper_heuristic"

    def __init__(self, *, correction: bool = True, counting: str = "whitespace") -> None:
        self.correction = correction
        self.counting = counting

    def _inputs(self, X: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
        prompts = _prompts(X)
        cats = classify_categories(prompts)
        tiers = X["tier"].astype(object).tolist() if "tier" in X.columns else ["standard"] * len(X)
        tiers = [t if isinstance(t, str) else "standard" for t in tiers]
        if self.counting == "tokenizer":
            # prompt_tokens carries the full tokenizer count (prompts may be truncated text)
            n_in = prompt_tokens_of(X)
            n_in = np.where(np.isnan(n_in), 0.0, n_in)
        else:
            n_in = count_input_tokens(prompts, "whitespace").astype(np.float64)
        return cats, tiers, n_in

    def fit(self, X: pd.DataFrame, y: Any) -> PaperHeuristic:
        X = check_frame(X)
        yv = check_lengths(y, len(X))
        ema = PaperEMA(correction=self.correction, counting=self.counting)
        cats, _, _ = self._inputs(X)
        ema.update(cats, yv)  # replay training completions in table order
        self.biases_ = dict(ema.biases)
        self.fitted_ = True
        return self

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        X = check_frame(X)
        ema = PaperEMA(
            correction=self.correction, counting=self.counting, biases=dict(self.biases_)
        )
        cats, tiers, n_in = self._inputs(X)
        est = ema.estimate(cats, tiers, n_in)
        return np.column_stack([est, est])

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"biases": self.biases_}, {}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.biases_ = {str(k): float(v) for k, v in state["biases"].items()}


class PromptLengthRegression(_Saved):
    kind: ClassVar[str] = "prompt_length_regression"

    def __init__(self, *, upper: float = 0.9) -> None:
        self.upper = upper

    @staticmethod
    def _design(X: pd.DataFrame) -> np.ndarray:
        p = prompt_tokens_of(X)
        p = np.where(np.isnan(p), 1.0, p)
        return np.column_stack([np.ones(len(p)), np.log1p(p)])

    def fit(self, X: pd.DataFrame, y: Any) -> PromptLengthRegression:
        X = check_frame(X)
        ly = np.log(check_lengths(y, len(X)))
        A = self._design(X)
        self.coef_, *_ = np.linalg.lstsq(A, ly, rcond=None)
        self.resid_q_ = float(np.quantile(ly - A @ self.coef_, self.upper))
        self.fitted_ = True
        return self

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        m = self._design(check_frame(X)) @ self.coef_
        return finish_quantiles(np.column_stack([m, m + self.resid_q_]))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"coef": [float(c) for c in self.coef_], "resid_q": self.resid_q_}, {}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.coef_ = np.asarray(state["coef"], dtype=np.float64)
        self.resid_q_ = float(state["resid_q"])


class TfidfRidge(_Saved):
    kind: ClassVar[str] = "tfidf_ridge"

    def __init__(
        self,
        *,
        alpha: float = 3.0,
        max_vocab: int = 50000,
        min_df: int = 2,
        upper: float = 0.9,
        use_ids: bool = True,
        min_count: int = 20,
    ) -> None:
        self.alpha = alpha
        self.max_vocab = max_vocab
        self.min_df = min_df
        self.upper = upper
        self.use_ids = use_ids
        self.min_count = min_count

    def _design(self, X: pd.DataFrame) -> sp.csr_matrix:
        from sklearn.feature_extraction.text import CountVectorizer

        prompts = [p[:MAX_PROMPT_CHARS] if p else "" for p in _prompts(X)]
        if self.vocabulary_:
            # Text features once per distinct prompt (traces repeat prompts across models).
            codes, uniq = pd.factorize(pd.Series(prompts, dtype=object))
            cv = CountVectorizer(ngram_range=(1, 2), vocabulary=self.vocabulary_, dtype=np.float64)
            tf = cv.transform(list(uniq)).tocsr()
            tf.data = (1.0 + np.log(tf.data)) * self.idf_[tf.indices]
            norms = np.sqrt(np.asarray(tf.multiply(tf).sum(axis=1)).reshape(-1))
            norms[norms == 0] = 1.0
            tf = sp.csr_matrix(sp.diags(1.0 / norms) @ tf)[codes]
        else:  # no prompt text in training (e.g. evaluate.py records): ids + length only
            tf = sp.csr_matrix((len(X), 0))
        p = prompt_tokens_of(X)
        dense = np.column_stack([np.log1p(np.where(np.isnan(p), 1.0, p))])
        blocks = [tf, sp.csr_matrix(dense)]
        if self.use_ids:
            for c in CATEGORICAL:
                vals = self.ids_.get(c, [])
                lookup = {v: i for i, v in enumerate(vals)}
                col = X[c].astype(object).tolist() if c in X.columns else [None] * len(X)
                j = np.array([lookup.get(v, -1) if isinstance(v, str) else -1 for v in col])
                ok = np.flatnonzero(j >= 0)
                blocks.append(
                    sp.csr_matrix(
                        (np.ones(ok.size), (ok, j[ok])), shape=(len(X), max(len(vals), 1))
                    )
                )
        return sp.hstack(blocks).tocsr()

    def fit(self, X: pd.DataFrame, y: Any) -> TfidfRidge:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge

        X = check_frame(X)
        ly = np.log(check_lengths(y, len(X)))
        uniq = list(dict.fromkeys(p[:MAX_PROMPT_CHARS] for p in _prompts(X) if p))
        self.vocabulary_, self.idf_ = {}, np.zeros(0)
        if len(uniq) >= 2:
            vec = TfidfVectorizer(
                ngram_range=(1, 2),
                max_features=self.max_vocab,
                min_df=min(self.min_df, len(uniq)),
                sublinear_tf=True,
            )
            vec.fit(uniq)
            self.vocabulary_ = {str(k): int(v) for k, v in vec.vocabulary_.items()}
            self.idf_ = vec.idf_.astype(np.float64)
        self.ids_ = {}
        for c in CATEGORICAL:
            if c in X.columns:
                vc = X[c].astype("string").value_counts()
                self.ids_[c] = sorted(str(v) for v, k in vc.items() if k >= self.min_count)
        A = self._design(X)
        r = Ridge(alpha=self.alpha, solver="sparse_cg", random_state=0).fit(A, ly)
        self.coef_ = r.coef_.astype(np.float64)
        self.intercept_ = float(r.intercept_)
        self.resid_q_ = float(np.quantile(ly - (A @ self.coef_ + self.intercept_), self.upper))
        self.fitted_ = True
        return self

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        m = self._design(check_frame(X)) @ self.coef_ + self.intercept_
        return finish_quantiles(np.column_stack([m, m + self.resid_q_]))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"coef": self.coef_}
        if self.vocabulary_:
            arrays["idf"] = self.idf_
        return (
            {
                "vocabulary": self.vocabulary_,
                "ids": self.ids_,
                "intercept": self.intercept_,
                "resid_q": self.resid_q_,
            },
            arrays,
        )

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.vocabulary_ = {str(k): int(v) for k, v in state["vocabulary"].items()}
        self.ids_ = {str(k): list(v) for k, v in state["ids"].items()}
        self.intercept_ = float(state["intercept"])
        self.resid_q_ = float(state["resid_q"])
        self.idf_ = np.asarray(arrays["idf"] if self.vocabulary_ else np.zeros(0), dtype=np.float64)
        self.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        if self.idf_.shape != (len(self.vocabulary_),):
            raise ValueError("idf length does not match the vocabulary")


BASELINES: dict[str, type[LengthEstimator]] = {
    c.kind: c for c in (ConstantMedian, PaperHeuristic, PromptLengthRegression, TfidfRidge)
}
