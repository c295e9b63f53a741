"""LightGBM length and drift models (the only module that imports lightgbm).

* :class:`LightGBMLength`: quantile regression (p50, p90) on log output length from
  :class:`predictor.features.Featurizer` features. With an ``eval_set`` it early-stops and
  shifts p90 (split conformal, in log space) so the validation coverage is exactly the target.
* :class:`LightGBMDrift`: quantile regression of log remaining length given not finished after
  t tokens, from admission features + admission quantiles + progress (``predictor.drift_data``).

Artifacts: ``model_q50.txt``/``model_q90.txt`` (LightGBM text), ``featurizer.json`` +
``featurizer.safetensors`` (length only), ``meta.json`` (see ``predictor.artifacts``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from predictor.artifacts import (
    TRAIN_COMMAND,
    ArtifactError,
    load_arrays,
    read_meta,
    save_arrays,
    write_meta,
)
from predictor.base import QUANTILES, LengthEstimator, check_frame, check_lengths, finish_quantiles
from predictor.drift_data import DRIFT_EXTRA_NAMES, drift_features, progress_points
from predictor.features import Featurizer
from predictor.metrics import DRIFT_POINTS


def _booster_params(est: Any, alpha: float) -> dict[str, Any]:
    return {
        "objective": "quantile",
        "alpha": alpha,
        "learning_rate": est.learning_rate,
        "num_leaves": est.num_leaves,
        "min_data_in_leaf": est.min_child_samples,
        "feature_fraction": est.feature_fraction,
        "bagging_fraction": est.bagging_fraction,
        "bagging_freq": 1 if est.bagging_fraction < 1.0 else 0,
        "lambda_l2": est.lambda_l2,
        "num_threads": est.num_threads,
        "seed": est.random_state,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        "max_bin": 127,
        "cat_smooth": 10.0,
        "max_cat_to_onehot": 8,
    }


def _train_quantiles(
    est: Any,
    F: np.ndarray,
    target: np.ndarray,
    cat_idx: list[int],
    names: list[str],
    eval_set: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[list[lgb.Booster], list[int]]:
    boosters, best = [], []
    for alpha in est.quantiles:
        ds = lgb.Dataset(
            F,
            target,
            feature_name=names,
            categorical_feature=cat_idx,
            free_raw_data=True,
            params={"max_bin": 127, "verbosity": -1},
        )
        valid, callbacks = [], []
        if eval_set is not None:
            valid = [lgb.Dataset(eval_set[0], eval_set[1], reference=ds)]
            callbacks = [lgb.early_stopping(est.early_stopping_rounds, verbose=False)]
        b = lgb.train(
            _booster_params(est, alpha),
            ds,
            num_boost_round=est.n_estimators,
            valid_sets=valid,
            callbacks=callbacks,
        )
        it = (
            b.best_iteration if b.best_iteration and b.best_iteration > 0 else b.current_iteration()
        )
        boosters.append(b)
        best.append(int(it))
    return boosters, best


def _load_booster(path: Path) -> lgb.Booster:
    try:
        return lgb.Booster(model_file=str(path))
    except (lgb.basic.LightGBMError, OSError, ValueError) as e:
        raise ArtifactError(
            f"{path}: not a readable LightGBM model ({e}); retrain with `{TRAIN_COMMAND}`"
        ) from e


SMALL_BATCH = 4096  # below this many rows prediction runs on one thread (see _predict)


def _predict(
    boosters: list[lgb.Booster], best: list[int], X: np.ndarray, num_threads: int
) -> np.ndarray:
    # Serving batches (tens of rows) are ~20x faster on one thread: OpenMP start-up and
    # contention on a shared 2-core machine dominate (measured 13 vs 300 us/request at 64).
    nt = 1 if X.shape[0] < SMALL_BATCH else num_threads
    return np.column_stack(
        [b.predict(X, num_iteration=it, num_threads=nt) for b, it in zip(boosters, best)]
    )


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
            )
            featurizer.fit(X, yv)
        self.featurizer_ = featurizer
        return self.fit_features(
            self.featurizer_.transform(X, training=True),
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
        self.boosters_, self.best_iteration_ = _train_quantiles(
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
            lq = _predict(self.boosters_, self.best_iteration_, eval_set[0], self.num_threads)
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
        lq = _predict(self.boosters_, self.best_iteration_, F, self.num_threads)
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_features(self.featurize(X))

    def feature_importance(self) -> pd.DataFrame:
        """Gain importance of each feature for each quantile model."""
        self._check_fitted()
        out = pd.DataFrame({"feature": self.featurizer_.feature_names})
        for q, b in zip(self.quantiles, self.boosters_):
            out[f"gain_q{int(q * 100)}"] = b.feature_importance("gain")
        return out.sort_values(out.columns[1], ascending=False).reset_index(drop=True)

    # --- artifacts -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for q, b, it in zip(self.quantiles, self.boosters_, self.best_iteration_):
            b.save_model(str(d / f"model_q{int(q * 100)}.txt"), num_iteration=it)
        fmeta, arrays = self.featurizer_.state()
        (d / "featurizer.json").write_text(json.dumps(fmeta))
        if arrays:
            save_arrays(d / "featurizer.safetensors", arrays)
        write_meta(
            d,
            self.kind,
            {
                "hyperparameters": self.get_params(),
                "p90_shift": self.p90_shift_,
                "best_iteration": self.best_iteration_,
                "feature_names": self.featurizer_.feature_names,
                **(extra_meta or {}),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> LightGBMLength:
        d = Path(directory)
        meta = read_meta(d, (cls.kind,))
        hp = dict(meta["hyperparameters"])
        hp["quantiles"] = tuple(hp["quantiles"])
        est = cls(**hp)
        try:
            fmeta = json.loads((d / "featurizer.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(
                f"{d / 'featurizer.json'}: unreadable ({e}); retrain with `{TRAIN_COMMAND}`"
            ) from e
        arrays = load_arrays(d / "featurizer.safetensors") if fmeta.get("vocabulary") else {}
        try:
            est.featurizer_ = Featurizer.from_state(fmeta, arrays)
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"{d}: featurizer state is invalid ({e})") from e
        est.boosters_ = [_load_booster(d / f"model_q{int(q * 100)}.txt") for q in est.quantiles]
        est.best_iteration_ = [b.current_iteration() for b in est.boosters_]
        est.p90_shift_ = float(meta["p90_shift"])
        est.meta_ = meta
        est.fitted_ = True
        return est


class LightGBMDrift:
    """Remaining-length quantiles given not finished after ``t`` tokens (sklearn-style).

    ``fit(F, y, admission)``: admission features ``F`` (n, d), true lengths ``y`` (n,) and
    out-of-fold admission quantiles (n, 2); progress rows are sampled internally.
    """

    kind: ClassVar[str] = "lgbm_drift"

    def __init__(
        self,
        *,
        n_estimators: int = 300,
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
        self.num_threads = num_threads
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "n_estimators",
                "learning_rate",
                "num_leaves",
                "min_child_samples",
                "feature_fraction",
                "bagging_fraction",
                "lambda_l2",
                "early_stopping_rounds",
                "quantiles",
                "calibrate",
                "points",
                "n_random",
                "num_threads",
                "random_state",
            )
        }

    def _rows(
        self, F: np.ndarray, y: np.ndarray, admission: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        r, t = progress_points(y, rng, tuple(self.points), self.n_random)
        X = drift_features(F[r], admission[r], t)
        return X, np.log(y[r] - t)

    def fit(
        self,
        F: np.ndarray,
        y: Any,
        admission: np.ndarray,
        eval_set: tuple[np.ndarray, Any, np.ndarray] | None = None,
        feature_names: list[str] | None = None,
        categorical_indices: list[int] | None = None,
    ) -> LightGBMDrift:
        F = np.asarray(F, dtype=np.float32)
        yv = check_lengths(y, F.shape[0])
        adm = np.asarray(admission, dtype=np.float64).reshape(-1, 2)
        rng = np.random.default_rng(self.random_state)
        X, target = self._rows(F, yv, adm, rng)
        names = list(feature_names or [f"f{i}" for i in range(F.shape[1])])
        names += list(DRIFT_EXTRA_NAMES)
        ev = None
        if eval_set is not None:
            Fe = np.asarray(eval_set[0], dtype=np.float32)
            ev = self._rows(
                Fe,
                check_lengths(eval_set[1], Fe.shape[0], "eval y"),
                np.asarray(eval_set[2], dtype=np.float64).reshape(-1, 2),
                rng,
            )
        self.feature_names_ = names
        self.n_features_in_ = F.shape[1]
        self.boosters_, self.best_iteration_ = _train_quantiles(
            self, X, target, list(categorical_indices or []), names, ev
        )
        self.p90_shift_ = 0.0
        if ev is not None and self.calibrate:
            lq = _predict(self.boosters_, self.best_iteration_, ev[0], self.num_threads)
            self.p90_shift_ = float(np.quantile(ev[1] - lq[:, 1], self.quantiles[1]))
        self.categorical_indices_ = list(categorical_indices or [])
        self.fitted_ = True
        return self

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError("LightGBMDrift is not fitted yet; call fit(F, y, admission)")

    def predict_remaining(
        self, F: np.ndarray, admission: np.ndarray, generated: np.ndarray
    ) -> np.ndarray:
        """(p50, p90) of tokens still to come (n, 2), given not finished after ``generated``."""
        self._check_fitted()
        F = np.asarray(F, dtype=np.float32)
        if F.ndim != 2 or F.shape[1] != self.n_features_in_:
            raise ValueError(f"features must have shape (n, {self.n_features_in_}), got {F.shape}")
        if F.shape[0] == 0:
            return np.zeros((0, 2))
        X = drift_features(F, admission, generated)
        lq = _predict(self.boosters_, self.best_iteration_, X, self.num_threads)
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for q, b, it in zip(self.quantiles, self.boosters_, self.best_iteration_):
            b.save_model(str(d / f"model_q{int(q * 100)}.txt"), num_iteration=it)
        write_meta(
            d,
            self.kind,
            {
                "hyperparameters": self.get_params(),
                "p90_shift": self.p90_shift_,
                "best_iteration": self.best_iteration_,
                "feature_names": self.feature_names_,
                "n_features_in": self.n_features_in_,
                "categorical_indices": self.categorical_indices_,
                **(extra_meta or {}),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> LightGBMDrift:
        d = Path(directory)
        meta = read_meta(d, (cls.kind,))
        hp = dict(meta["hyperparameters"])
        hp["quantiles"] = tuple(hp["quantiles"])
        hp["points"] = tuple(hp["points"])
        est = cls(**hp)
        est.boosters_ = [_load_booster(d / f"model_q{int(q * 100)}.txt") for q in est.quantiles]
        est.best_iteration_ = [b.current_iteration() for b in est.boosters_]
        est.p90_shift_ = float(meta["p90_shift"])
        est.feature_names_ = list(meta["feature_names"])
        est.n_features_in_ = int(meta["n_features_in"])
        est.categorical_indices_ = list(meta["categorical_indices"])
        est.meta_ = meta
        est.fitted_ = True
        return est
