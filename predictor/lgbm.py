"""LightGBM length and drift models: fitting and prediction (sklearn-style estimators).

* :class:`LightGBMLength`: quantile regression (p50, p90) on log output length from
  :class:`predictor.features.Featurizer` features. With an ``eval_set`` it early-stops and
  shifts p90 (split conformal, in log space) so the validation coverage is exactly the target.
* :class:`LightGBMDrift`: quantile regression of log remaining length given not finished after
  t tokens, from admission features + admission quantiles + progress (``predictor.drift_data``)
  + features of the partial output text where a trace has one (``predictor.text_progress``;
  NaN otherwise, LightGBM's missing branch).

The boosters themselves (training, scoring, LightGBM text files) live in
:mod:`predictor.lgbm_boosters`, the only lightgbm importer. Serving batches (fewer than
``SMALL_BATCH`` rows) are predicted by :mod:`predictor.fast_trees`, a compiled walker of the
same text models (equal predictions, 2-3x faster at batch 64, ~6x at batch 1); larger batches
and training use LightGBM.

Artifacts (``save``/``load``, :mod:`predictor.lgbm_artifacts`): ``model_q50.txt``/
``model_q90.txt`` (LightGBM text), ``featurizer.json`` + ``featurizer.safetensors`` (length
only), ``text_ngram.safetensors`` (drift with text n-grams), ``meta.json``
(see ``predictor.artifacts``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from predictor import fast_trees
from predictor.base import QUANTILES, LengthEstimator, check_frame, check_lengths, finish_quantiles
from predictor.drift_data import (
    DRIFT_EXTRA_NAMES,
    drift_features,
    output_token_ids,
    partial_texts,
    text_progress_points,
)
from predictor.features import Featurizer
from predictor.lgbm_artifacts import load_drift, load_length, save_drift, save_length
from predictor.lgbm_boosters import (
    SMALL_BATCH,
    cached_forest,
    continue_quantiles,
    predict_scores,
    train_quantiles,
)
from predictor.metrics import DRIFT_POINTS
from predictor.text_progress import TEXT_FEATURE_NAMES, NgramScore, text_features


class LightGBMLength(LengthEstimator):
    """Admission-time output-length quantiles from prompt text, length and categorical ids."""

    kind: ClassVar[str] = "lgbm_length"

    def __init__(
        self,
        *,
        n_estimators: int = 400,
        learning_rate: float = 0.06,
        num_leaves: int = 63,
        min_child_samples: int = 40,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        early_stopping_rounds: int = 30,
        quantiles: tuple[float, float] = QUANTILES,
        calibrate: bool = True,
        text_dim: int = 48,
        max_vocab: int = 20000,
        min_count: int = 20,
        text_score: bool = True,
        generator_features: bool = False,
        model_id_dropout: float = 0.0,
        fast_predict: bool = True,
        num_threads: int = 2,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.quantiles = quantiles
        self.calibrate = calibrate
        self.text_dim = text_dim
        self.max_vocab = max_vocab
        self.min_count = min_count
        self.text_score = text_score
        # model-name descriptors (family, size) as features (predictor.features.GENERATOR_NAMES)
        self.generator_features = generator_features
        # share of training rows whose model_id is set to the unknown code, so the trees learn
        # what an unseen generator looks like from its descriptors (0: off)
        self.model_id_dropout = model_id_dropout
        # serving batches (< SMALL_BATCH rows) through predictor.fast_trees (same predictions,
        # compiled; falls back to LightGBM without numba)
        self.fast_predict = fast_predict
        self.num_threads = num_threads
        self.random_state = random_state

    # --- fitting -------------------------------------------------------------------------
    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        eval_set: tuple[pd.DataFrame, Any] | None = None,
        featurizer: Featurizer | None = None,
    ) -> LightGBMLength:
        """Fit on trace ``X`` and lengths ``y``; ``eval_set`` early-stops and calibrates p90.

        ``featurizer``: an already fitted featurizer to reuse (cross-fitting shares one).
        """
        X = check_frame(X)
        yv = check_lengths(y, len(X))
        if featurizer is None:
            featurizer = Featurizer(
                text_dim=self.text_dim,
                max_vocab=self.max_vocab,
                min_count=self.min_count,
                random_state=self.random_state,
                text_score=self.text_score,
                generator_features=self.generator_features,
            )
            featurizer.fit(X, yv)
        self.featurizer_ = featurizer
        F = self.featurizer_.transform(X, training=True)
        if self.model_id_dropout > 0:
            rng = np.random.default_rng(self.random_state + 11)
            col = self.featurizer_.feature_names.index("model_id")
            F[rng.random(len(F)) < self.model_id_dropout, col] = 0.0  # the unknown code
        return self.fit_features(
            F,
            yv,
            None
            if eval_set is None
            else (
                self.featurizer_.transform(check_frame(eval_set[0], "eval X")),
                check_lengths(eval_set[1], len(eval_set[0]), "eval y"),
            ),
        )

    def fit_features(
        self, F: np.ndarray, y: np.ndarray, eval_set: tuple[np.ndarray, np.ndarray] | None = None
    ) -> LightGBMLength:
        """Fit on precomputed features (``featurizer_`` must be set)."""
        if not hasattr(self, "featurizer_"):
            raise NotFittedError("fit_features needs featurizer_; use fit(X, y)")
        ev = None if eval_set is None else (eval_set[0], np.log(eval_set[1]))
        self.boosters_, self.best_iteration_ = train_quantiles(
            self,
            F,
            np.log(y),
            self.featurizer_.categorical_indices,
            self.featurizer_.feature_names,
            ev,
        )
        self.p90_shift_ = 0.0
        if eval_set is not None and self.calibrate:
            # Split-conformal shift in log space: validation coverage of p90 becomes quantiles[1].
            lq = predict_scores(self.boosters_, self.best_iteration_, eval_set[0], self.num_threads)
            resid = np.log(eval_set[1]) - lq[:, 1]
            self.p90_shift_ = float(np.quantile(resid, self.quantiles[1]))
        self.fitted_ = True
        return self

    # --- predicting ----------------------------------------------------------------------
    def featurize(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self.featurizer_.transform(check_frame(X))

    def featurize_training(self, X: pd.DataFrame) -> np.ndarray:
        """Features of training rows: out-of-fold text scores (only right after ``fit``)."""
        self._check_fitted()
        return self.featurizer_.transform(check_frame(X), training=True)

    def predict_features(self, F: np.ndarray) -> np.ndarray:
        """(p50, p90) tokens (n, 2) from features ``F`` (n, d)."""
        self._check_fitted()
        F = np.asarray(F, dtype=np.float32)
        d = len(self.featurizer_.feature_names)
        if F.ndim != 2 or F.shape[1] != d:
            raise ValueError(f"features must have shape (n, {d}), got {F.shape}")
        if F.shape[0] == 0:
            return np.zeros((0, 2))
        forest = self._forest() if F.shape[0] < SMALL_BATCH else None
        if forest is not None:
            lq = forest.predict_raw(F)  # equal to predict_scores' LightGBM scores, bit for bit
        else:
            lq = predict_scores(self.boosters_, self.best_iteration_, F, self.num_threads)
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def _forest(self) -> fast_trees.CompiledForest | None:
        return cached_forest(self)

    def continue_fit(self, F: np.ndarray, y: np.ndarray, rounds: int) -> LightGBMLength:
        """A new estimator: these quantile models plus ``rounds`` trees each fitted on
        ``(F, y)`` (e.g. the serving engine's own recent completions). The featurizer and the
        p90 shift are shared; ``self`` is unchanged, so refits can always restart from it."""
        self._check_fitted()
        F = np.asarray(F, dtype=np.float32)
        yv = check_lengths(y, F.shape[0])
        if rounds < 1:
            raise ValueError(f"continue_fit needs rounds >= 1, got {rounds}")
        new = LightGBMLength(**self.get_params())
        new.featurizer_ = self.featurizer_
        new.boosters_, new.best_iteration_ = continue_quantiles(
            self,
            F,
            np.log(yv),
            rounds,
            self.featurizer_.feature_names,
            self.featurizer_.categorical_indices,
        )
        new.p90_shift_ = self.p90_shift_
        new.fitted_ = True
        return new

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_features(self.featurize(X))

    def feature_importance(self) -> pd.DataFrame:
        """Gain importance of each feature for each quantile model."""
        self._check_fitted()
        out = pd.DataFrame({"feature": self.featurizer_.feature_names})
        for q, b in zip(self.quantiles, self.boosters_):
            out[f"gain_q{int(q * 100)}"] = b.feature_importance("gain")
        return out.sort_values(out.columns[1], ascending=False).reset_index(drop=True)

    # --- artifacts (predictor.lgbm_artifacts) --------------------------------------------
    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        return save_length(self, directory, extra_meta)

    @classmethod
    def load(cls, directory: str | Path) -> LightGBMLength:
        return load_length(cls, directory)


class LightGBMDrift(BaseEstimator):
    """Remaining-length quantiles given not finished after ``t`` tokens (sklearn-style).

    ``fit(F, y, admission, texts=...)``: admission features ``F`` (n, d), true lengths ``y``
    (n,), out-of-fold admission quantiles (n, 2) and optionally each trace's full output text
    (None where the source has none); progress rows are sampled internally and, with ``text``,
    read the partial text of their first t tokens (``predictor.text_progress``).
    ``predict_remaining(F, admission, generated, texts=None)``: ``texts`` are the partial
    output texts so far (None/absent -> the text columns are missing values).
    """

    kind: ClassVar[str] = "lgbm_drift"

    def __init__(
        self,
        *,
        n_estimators: int = 600,
        learning_rate: float = 0.08,
        num_leaves: int = 63,
        min_child_samples: int = 40,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        early_stopping_rounds: int = 30,
        quantiles: tuple[float, float] = QUANTILES,
        calibrate: bool = True,
        points: tuple[int, ...] = DRIFT_POINTS,
        n_random: int = 2,
        text: bool = True,
        n_random_text: int = 10,
        text_ngrams: bool = True,
        drop_prefixes: tuple[str, ...] = ("svd_",),
        fast_predict: bool = True,
        num_threads: int = 2,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.quantiles = quantiles
        self.calibrate = calibrate
        self.points = points
        self.n_random = n_random
        self.text = text
        self.n_random_text = n_random_text
        self.text_ngrams = text_ngrams
        self.drop_prefixes = drop_prefixes
        # serving batches (< SMALL_BATCH rows) through predictor.fast_trees, as the length model
        self.fast_predict = fast_predict
        self.num_threads = num_threads
        self.random_state = random_state

    def _rows(
        self,
        F: np.ndarray,
        y: np.ndarray,
        admission: np.ndarray,
        rng: np.random.Generator,
        texts: Any = None,
        truncated: Any = None,
    ) -> tuple[np.ndarray, np.ndarray, list[str | None], np.ndarray, np.ndarray]:
        """(features, log remaining target, partial texts, trace index, t) of progress rows."""
        ids, complete = [], np.zeros(0, bool)
        if self.text and texts is not None:
            if len(texts) != len(y):
                raise ValueError(f"texts has {len(texts)} entries for {len(y)} traces")
            ids, complete = output_token_ids(texts, truncated)
        has = np.array([i is not None for i in ids], bool) if ids else np.zeros(len(y), bool)
        r, t = text_progress_points(
            y, has, rng, tuple(self.points), self.n_random, self.n_random_text
        )
        X = drift_features(F[r], admission[r], t)
        tx = partial_texts(ids, complete, r, t)
        if self.text:
            X = np.hstack([X, text_features(tx, t)])
        return X, np.log(y[r] - t), tx, r, t

    def _ngram_column(
        self,
        tx: list[str | None],
        t: np.ndarray,
        target: np.ndarray | None = None,
        r: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, 1) n-gram score of each partial text (NaN without text); out-of-fold when
        ``target`` is given (training rows), else from the fitted ``ngram_``."""
        col = np.full((len(tx), 1), np.nan, np.float32)
        idx = [i for i, v in enumerate(tx) if isinstance(v, str)]
        if idx:
            texts = [tx[i] for i in idx]
            if target is not None and r is not None:
                col[idx, 0] = self.ngram_.fit_oof(texts, target[idx], r[idx], t[idx])
            elif self.ngram_.coef_ is not None:
                col[idx, 0] = self.ngram_.score(texts, t[idx])
        return col

    def fit(
        self,
        F: np.ndarray,
        y: Any,
        admission: np.ndarray,
        eval_set: tuple[Any, ...] | None = None,
        feature_names: list[str] | None = None,
        categorical_indices: list[int] | None = None,
        texts: Any = None,
        texts_truncated: Any = None,
    ) -> LightGBMDrift:
        """``eval_set``: (F, y, admission[, texts[, texts_truncated]]) of validation traces.

        ``texts``: full output text per trace (str, or None/NA without text);
        ``texts_truncated``: flags of capped texts (only their first tokens are known).
        """
        F = np.asarray(F, dtype=np.float32)
        yv = check_lengths(y, F.shape[0])
        adm = np.asarray(admission, dtype=np.float64).reshape(-1, 2)
        rng = np.random.default_rng(self.random_state)
        self.n_features_in_ = F.shape[1]
        all_names = list(feature_names or [f"f{i}" for i in range(F.shape[1])])
        # admission columns the drift model reads: the prompt's SVD dims overfit here (a trace
        # yields many progress rows but one prompt; measured on ShareGPT at t=128: 1.27x vs
        # 1.23x gain without them); their summary (admission quantiles, text_score) stays
        drop = tuple(self.drop_prefixes)
        self.used_columns_ = [
            i for i, n in enumerate(all_names) if not (drop and n.startswith(drop))
        ]
        F = F[:, self.used_columns_]
        X, target, tx, r, t = self._rows(F, yv, adm, rng, texts, texts_truncated)
        names = [all_names[i] for i in self.used_columns_]
        names += list(DRIFT_EXTRA_NAMES)
        self.text_feature_names_ = self.text_feature_columns()
        names += self.text_feature_names_
        self.ngram_ = NgramScore()
        if self.text and self.text_ngrams:
            X = np.hstack([X, self._ngram_column(tx, t, target, r)])
        ev = None
        if eval_set is not None:
            Fe = np.asarray(eval_set[0], dtype=np.float32)[:, self.used_columns_]
            Xe, ye, txe, _, te = self._rows(
                Fe,
                check_lengths(eval_set[1], Fe.shape[0], "eval y"),
                np.asarray(eval_set[2], dtype=np.float64).reshape(-1, 2),
                rng,
                eval_set[3] if len(eval_set) > 3 else None,
                eval_set[4] if len(eval_set) > 4 else None,
            )
            if self.text and self.text_ngrams:
                Xe = np.hstack([Xe, self._ngram_column(txe, te)])
            ev = (Xe, ye)
        self.feature_names_ = names
        pos = {c: k for k, c in enumerate(self.used_columns_)}
        cats = [pos[c] for c in (categorical_indices or []) if c in pos]
        self.n_text_rows_ = int(np.isfinite(X[:, -1]).sum()) if self.text else 0
        self.boosters_, self.best_iteration_ = train_quantiles(self, X, target, cats, names, ev)
        self.p90_shift_ = 0.0
        if ev is not None and self.calibrate:
            lq = predict_scores(self.boosters_, self.best_iteration_, ev[0], self.num_threads)
            self.p90_shift_ = float(np.quantile(ev[1] - lq[:, 1], self.quantiles[1]))
        self.categorical_indices_ = cats  # in the booster's columns
        self.fitted_ = True
        return self

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError("LightGBMDrift is not fitted yet; call fit(F, y, admission)")

    def predict_remaining(
        self,
        F: np.ndarray,
        admission: np.ndarray,
        generated: np.ndarray,
        texts: Any = None,
    ) -> np.ndarray:
        """(p50, p90) of tokens still to come (n, 2), given not finished after ``generated``.

        ``texts``: the partial output text of each request so far (its first ``generated``
        tokens; None where unknown), or None for none at all.
        """
        self._check_fitted()
        F = np.asarray(F, dtype=np.float32)
        if F.ndim != 2 or F.shape[1] != self.n_features_in_:
            raise ValueError(f"features must have shape (n, {self.n_features_in_}), got {F.shape}")
        if F.shape[0] == 0:
            return np.zeros((0, 2))
        X = drift_features(F[:, self.used_columns_], admission, generated)
        if self.text_feature_names_:
            if texts is None:
                T = np.full((F.shape[0], len(self.text_feature_names_)), np.nan, np.float32)
            else:
                if len(texts) != F.shape[0]:
                    raise ValueError(f"texts has {len(texts)} entries for {F.shape[0]} rows")
                tx = [v if isinstance(v, str) else None for v in texts]
                T = text_features(tx, np.asarray(generated, dtype=np.float64))
                if self.text_ngrams:
                    T = np.hstack([T, self._ngram_column(tx, np.asarray(generated))])
            X = np.hstack([X, T])
        forest = cached_forest(self) if X.shape[0] < SMALL_BATCH else None
        if forest is not None:
            lq = forest.predict_raw(X)  # equal to LightGBM's scores, bit for bit
        else:
            lq = predict_scores(self.boosters_, self.best_iteration_, X, self.num_threads)
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def text_feature_columns(self) -> list[str]:
        """Partial-text feature columns of a drift model with these hyperparameters."""
        if not self.text:
            return []
        return list(TEXT_FEATURE_NAMES) + (["tx_ngram_score"] if self.text_ngrams else [])

    # --- artifacts (predictor.lgbm_artifacts) --------------------------------------------
    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        return save_drift(self, directory, extra_meta)

    @classmethod
    def load(cls, directory: str | Path) -> LightGBMDrift:
        return load_drift(cls, directory)
