"""Artifact I/O of the LightGBM length and drift models (:mod:`predictor.lgbm`).

A length artifact holds ``model_q50.txt``/``model_q90.txt`` (LightGBM text, cut to the best
iteration), ``featurizer.json`` + ``featurizer.safetensors`` (the fitted
:class:`predictor.features.Featurizer`) and ``meta.json`` (``predictor.artifacts``); a drift
artifact holds the two boosters, ``text_ngram.safetensors`` when it scores partial-text n-grams,
and ``meta.json``. Loading checks what it reads and raises ``ArtifactError`` naming the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from predictor.artifacts import (
    TRAIN_COMMAND,
    ArtifactError,
    load_arrays,
    read_meta,
    save_arrays,
    write_meta,
)
from predictor.features import Featurizer
from predictor.lgbm_boosters import load_boosters, save_boosters
from predictor.text_progress import NgramScore

if TYPE_CHECKING:  # the estimators call these functions from their save/load
    from predictor.lgbm import LightGBMDrift, LightGBMLength


def save_length(
    est: LightGBMLength, directory: str | Path, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write a fitted length model to ``directory``; ``extra_meta`` joins its meta.json."""
    est._check_fitted()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_boosters(d, est.quantiles, est.boosters_, est.best_iteration_)
    fmeta, arrays = est.featurizer_.state()
    (d / "featurizer.json").write_text(json.dumps(fmeta))
    if arrays:
        save_arrays(d / "featurizer.safetensors", arrays)
    write_meta(
        d,
        est.kind,
        {
            "hyperparameters": est.get_params(),
            "p90_shift": est.p90_shift_,
            "best_iteration": est.best_iteration_,
            "feature_names": est.featurizer_.feature_names,
            **(extra_meta or {}),
        },
    )
    return d


def load_length(cls: type[LightGBMLength], directory: str | Path) -> LightGBMLength:
    """A fitted ``cls`` from the artifact ``save_length`` wrote."""
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
    est.boosters_, est.best_iteration_ = load_boosters(d, est.quantiles)
    est.p90_shift_ = float(meta["p90_shift"])
    est.meta_ = meta
    est.fitted_ = True
    return est


def save_drift(
    est: LightGBMDrift, directory: str | Path, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write a fitted drift model to ``directory``; ``extra_meta`` joins its meta.json."""
    est._check_fitted()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_boosters(d, est.quantiles, est.boosters_, est.best_iteration_)
    if est.text and est.text_ngrams and est.ngram_.coef_ is not None:
        save_arrays(
            d / "text_ngram.safetensors",
            {
                "coef": est.ngram_.coef_,
                "intercept": np.asarray(est.ngram_.intercept_, np.float64),
            },
        )
    write_meta(
        d,
        est.kind,
        {
            "hyperparameters": est.get_params(),
            "p90_shift": est.p90_shift_,
            "best_iteration": est.best_iteration_,
            "feature_names": est.feature_names_,
            "text_feature_names": est.text_feature_names_,
            "ngram_fitted": est.ngram_.coef_ is not None,
            "n_features_in": est.n_features_in_,
            "used_columns": est.used_columns_,
            "categorical_indices": est.categorical_indices_,
            **(extra_meta or {}),
        },
    )
    return d


def load_drift(cls: type[LightGBMDrift], directory: str | Path) -> LightGBMDrift:
    """A fitted ``cls`` from the artifact ``save_drift`` wrote (older artifacts included:
    missing hyperparameters take the values they had before they existed)."""
    d = Path(directory)
    meta = read_meta(d, (cls.kind,))
    hp = dict(meta["hyperparameters"])
    hp["quantiles"] = tuple(hp["quantiles"])
    hp["points"] = tuple(hp["points"])
    hp["drop_prefixes"] = tuple(hp.get("drop_prefixes", ()))  # older artifacts: none
    hp.setdefault("text", False)  # artifacts written before partial-text features
    hp.setdefault("text_ngrams", False)
    est = cls(**hp)
    est.boosters_, est.best_iteration_ = load_boosters(d, est.quantiles)
    est.p90_shift_ = float(meta["p90_shift"])
    est.feature_names_ = list(meta["feature_names"])
    est.text_feature_names_ = list(meta.get("text_feature_names", []))
    if est.text_feature_names_ != est.text_feature_columns():
        raise ArtifactError(
            f"{d}: drift model reads partial-text features {est.text_feature_names_[:3]}... "
            f"that this version does not compute; retrain with `{TRAIN_COMMAND}`"
        )
    est.ngram_ = NgramScore()
    if est.text and est.text_ngrams and meta.get("ngram_fitted"):
        est.ngram_.coef_, est.ngram_.intercept_ = _load_ngram(d, est.ngram_)
    est.n_features_in_ = int(meta["n_features_in"])
    est.used_columns_ = [int(c) for c in meta.get("used_columns", range(est.n_features_in_))]
    if any(not 0 <= c < est.n_features_in_ for c in est.used_columns_):
        raise ArtifactError(f"{d}: used_columns out of range; retrain with `{TRAIN_COMMAND}`")
    est.categorical_indices_ = list(meta["categorical_indices"])
    est.meta_ = meta
    est.fitted_ = True
    return est


def _load_ngram(d: Path, ngram: NgramScore) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of the n-gram scorer in ``d``, checked against ``ngram``'s shape."""
    arrays = load_arrays(d / "text_ngram.safetensors")
    try:
        coef = np.asarray(arrays["coef"], np.float32)
        intercept = np.asarray(arrays["intercept"], np.float64).reshape(-1)
    except KeyError as e:
        raise ArtifactError(f"{d}: text_ngram.safetensors lacks {e}") from e
    want = (len(ngram.t_edges) + 1, 2 * ngram.n_features)
    if coef.shape != want or intercept.shape != (want[0],):
        raise ArtifactError(
            f"{d}: text_ngram.safetensors has coefficients {coef.shape} and intercepts "
            f"{intercept.shape}, expected {want} and ({want[0]},); retrain with "
            f"`{TRAIN_COMMAND}`"
        )
    return coef, intercept
