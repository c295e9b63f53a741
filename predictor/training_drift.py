"""The drift step of the training pipeline (``predictor.training``): its traces, its
admission inputs, its fit and its held-out scores.

* ``drift_traces``: which train-split traces the drift model learns from (every one carrying an
  output text, the rest subsampled);
* ``crossfit_admission``: out-of-fold admission predictions on those traces, as noisy as the
  ones the drift model sees when serving;
* ``fit_and_score_drift``: the fit on progress rows, early-stopped on the validation split;
* ``score_drift``: drift vs "admission - t" at fixed t, on the test split and its
  text-bearing subset.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from data.schema import FilterReport, filter_rows
from data.splits import assign_groups, split_by_config
from predictor.datasets import subsample
from predictor.drift_data import naive_remaining, output_token_ids, partial_texts
from predictor.metrics import drift_metrics, running_at

if TYPE_CHECKING:  # the pipeline's config; predictor.training imports this module
    from predictor.training import TrainConfig


def crossfit_admission(
    est: Any, F: np.ndarray, y: np.ndarray, groups: pd.DataFrame, folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold (p50, p90) admission predictions on the training rows, (n, 2).

    Folds are prompt-grouped (a prompt's rows never predict each other). Each fold model is a
    clone of the fitted ``est`` (same featurizer, n_estimators = its best iteration).
    """
    if folds <= 1:
        return est.predict_features(F)
    if folds not in (2, 3):
        raise ValueError(f"crossfit_folds must be 0, 1, 2 or 3, got {folds}")
    fractions = (0.5, 0.5, 0.0) if folds == 2 else (1 / 3, 1 / 3, 1 / 3)
    fold = assign_groups(groups, fractions, seed=seed + 1)
    out = np.zeros((len(y), 2))
    for k in range(folds):
        hold = fold == k
        if not hold.any() or hold.all():
            return est.predict_features(F)  # degenerate tiny data: fall back to in-sample
        m = clone(est)
        if hasattr(est, "best_iteration_"):  # LightGBM: the early-stopped size
            m.set_params(n_estimators=int(max(est.best_iteration_)))
        if hasattr(est, "epochs_"):  # transformer head: the early-stopped epoch count
            m.set_params(epochs=int(est.epochs_))
        m.featurizer_ = est.featurizer_
        if "calibrate" in m.get_params():
            m.set_params(calibrate=False)
        m.fit_features(F[~hold], y[~hold])
        out[hold] = m.predict_features(F[hold])
    return out


def text_columns(df: pd.DataFrame) -> tuple[Any, Any]:
    """(output_text, output_text_truncated) columns of a trace, None where absent."""
    texts = df["output_text"] if "output_text" in df.columns else None
    cut = df["output_text_truncated"] if "output_text_truncated" in df.columns else None
    return texts, cut


def has_output_text(df: pd.DataFrame) -> np.ndarray:
    """Mask of rows carrying an output text (the partial-text drift features read it)."""
    if "output_text" not in df.columns:
        return np.zeros(len(df), bool)
    return df["output_text"].notna().to_numpy(bool)


def reads_text(drift: Any) -> bool:
    """Whether ``drift.predict_remaining`` takes partial output texts."""
    return "texts" in inspect.signature(drift.predict_remaining).parameters


def score_drift(
    drift: Any,
    F: np.ndarray,
    adm: np.ndarray,
    y: np.ndarray,
    points: tuple[int, ...],
    texts: Any = None,
    texts_truncated: Any = None,
    subset: str = "all",
) -> list[dict[str, Any]]:
    """Drift vs "admission - t" at each fixed t over the requests still running at t.

    ``texts``: full output texts of the test traces (None/NA without); a drift model that reads
    partial text gets the decoded first t tokens of each, never more.
    """
    ids, complete = [], np.zeros(0, bool)
    if texts is not None and reads_text(drift):
        ids, complete = output_token_ids(texts, texts_truncated)
    rows = []
    for t in points:
        run = running_at(y, t)
        if run.sum() < 2:
            continue
        gen = np.full(int(run.sum()), t, dtype=np.float64)
        kw = {}
        if ids:
            kw["texts"] = partial_texts(ids, complete, np.flatnonzero(run), gen)
        pred = drift.predict_remaining(F[run], adm[run], gen, **kw)
        base = naive_remaining(adm[run], gen)
        m = drift_metrics(y[run], t, pred)
        b = drift_metrics(y[run], t, base)
        rows.append({"subset": subset, "model": "drift", "t": t, **m})
        rows.append({"subset": subset, "model": "admission_minus_t", "t": t, **b})
    df = pd.DataFrame(rows)
    if len(df):
        naive = df[df.model == "admission_minus_t"].set_index("t")["mae"]
        df["mae_gain_vs_naive"] = df["t"].map(naive) / df["mae"]
    return df.to_dict("records")


def drift_traces(
    train: pd.DataFrame,
    extra_text: pd.DataFrame | None,
    n: int | None,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, FilterReport]:
    """Traces for drift training: every text-bearing trace, the rest subsampled to ``n`` total.

    Text traces (ShareGPT) are a few percent of the length corpora but the only ones whose
    partial output can be read, so none is subsampled away; ``extra_text`` adds the text rows
    of the train split that ``max_train_rows`` removed (no length model saw them either).
    """
    df = (
        train
        if extra_text is None or not len(extra_text)
        else pd.concat([train, extra_text], ignore_index=True)
    )
    text = has_output_text(df)
    keep = text.copy()
    rest = np.flatnonzero(~text)
    budget = len(rest) if n is None else max(0, n - int(text.sum()))
    if budget >= len(rest):
        keep[rest] = True
    else:
        keep[rng.choice(rest, size=budget, replace=False)] = True
    return filter_rows(
        df, keep, f"drift: traces (all {int(text.sum()):,} with output text, max_drift_traces)"
    )


def fit_and_score_drift(
    length_est: Any,
    drift_est: Any,
    table: pd.DataFrame,
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    test_inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    tc: TrainConfig,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Fit the drift model on cross-fitted admission estimates and score it on the test split.

    ``splits``: train, val, test; ``test_inputs``: the length model's test features, its
    admission predictions and the true lengths. Returns the drift metric rows."""
    train, val, test = splits
    F_test, adm_test, y_test = test_inputs
    t0 = time.perf_counter()
    rng = np.random.default_rng(tc.seed + 7)
    dtrain = _drift_training_rows(length_est, drift_est, table, train, tc, rng, log)
    F_tr = getattr(length_est, "featurize_training", length_est.featurize)(dtrain)
    y_dtr = dtrain["output_tokens"].to_numpy(np.float64)
    adm_tr = crossfit_admission(length_est, F_tr, y_dtr, dtrain, tc.crossfit_folds, tc.seed)
    F_va = length_est.featurize(val)
    adm_va = length_est.predict_features(F_va)
    timings["drift_crossfit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = getattr(getattr(length_est, "featurizer_", None), "feature_names", None)
    cats = getattr(getattr(length_est, "featurizer_", None), "categorical_indices", None)
    yva = val["output_tokens"].to_numpy(np.float64)
    kw: dict[str, Any] = {}
    ev: tuple[Any, ...] = (F_va, yva, adm_va)
    if reads_text(drift_est) and has_output_text(dtrain).any():
        tx, cut = text_columns(dtrain)
        kw = {"texts": tx, "texts_truncated": cut}
        ev = (F_va, yva, adm_va, *text_columns(val))
    drift_est.fit(
        F_tr,
        y_dtr,
        adm_tr,
        eval_set=ev,
        feature_names=names,
        categorical_indices=cats,
        **kw,
    )
    timings["drift_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    drift_rows = _score_drift_subsets(drift_est, test, F_test, adm_test, y_test, tc.drift_points)
    timings["drift_score_s"] = time.perf_counter() - t0
    for r in drift_rows:
        if r["model"] == "drift":
            log(
                f"  drift [{r['subset']}] t={r['t']}: mae={r['mae']:.1f} "
                f"tau={r['kendall_tau']:.3f} gain_vs_naive={r['mae_gain_vs_naive']:.2f}x"
            )
    return drift_rows


def _drift_training_rows(
    length_est: Any,
    drift_est: Any,
    table: pd.DataFrame,
    train: pd.DataFrame,
    tc: TrainConfig,
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> pd.DataFrame:
    """The train-split traces the drift model fits on (within ``tc.max_drift_traces``)."""
    dtrain = train
    if hasattr(length_est, "restrict_rows"):  # encoder budget: reuse encoded prompts
        dtrain, rep = filter_rows(
            train,
            train["request_id"]
            .isin(set(length_est.restrict_rows(train)["request_id"]))
            .to_numpy(bool),
            "drift: rows of prompts encoded for the length model (budget)",
        )
        log(str(rep))
    if reads_text(drift_est) and has_output_text(table).any():
        extra_text = None
        if not hasattr(length_est, "restrict_rows"):
            # text rows of the train split dropped by max_train_rows (same split again)
            full = split_by_config(table, tc.split).train
            full = full[has_output_text(full)]
            extra_text = full[~full["request_id"].isin(set(dtrain["request_id"]))]
        dtrain, rep = drift_traces(dtrain, extra_text, tc.max_drift_traces, rng)
        log(str(rep))
    else:
        dtrain, _ = subsample(dtrain, tc.max_drift_traces, rng, "drift: traces")
    return dtrain


def _score_drift_subsets(
    drift_est: Any,
    test: pd.DataFrame,
    F_test: np.ndarray,
    adm_test: np.ndarray,
    y_test: np.ndarray,
    points: Sequence[int],
) -> list[dict[str, Any]]:
    """Drift metric rows on the whole test split, then on its text-bearing subset."""
    tx_test, cut_test = text_columns(test)
    drift_rows = score_drift(drift_est, F_test, adm_test, y_test, points, tx_test, cut_test)
    text_test = has_output_text(test)
    if text_test.any():
        # the text-bearing held-out subset (ShareGPT): where partial text can be read
        drift_rows += score_drift(
            drift_est,
            F_test[text_test],
            adm_test[text_test],
            y_test[text_test],
            points,
            tx_test[text_test] if tx_test is not None else None,
            cut_test[text_test] if cut_test is not None else None,
            subset="with_text",
        )
    return drift_rows
