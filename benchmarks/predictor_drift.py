"""The predictor report's drift section: the drift model fitted on a split's training rows and
scored at t = 32/128/512 against "admission minus t" in and off distribution.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.predictor_config import ReportConfig, conf_params
from predictor.eval_splits import EvalSplit


def fit_drift(est: Any, sp: EvalSplit, rc: ReportConfig) -> Any:
    """A drift model with the default hyperparameters on ``sp``'s train (out-of-fold
    admission predictions of ``est``, at most ``rc.drift_traces`` traces)."""
    from data.schema import filter_rows
    from predictor.lgbm import LightGBMDrift
    from predictor.training_drift import (
        crossfit_admission,
        drift_traces,
        has_output_text,
        text_columns,
    )

    p = conf_params("drift")
    rng = np.random.default_rng(rc.seed + 7)
    # at most half the budget of text traces (ShareGPT: the only ones with partial text), the
    # rest drawn from all traces, so the report's drift fit stays bounded at every size
    text = has_output_text(sp.train)
    cap = np.flatnonzero(text)
    keep = np.zeros(len(sp.train), bool)
    keep[rng.permutation(cap)[: rc.drift_traces // 2]] = True
    pool, _ = filter_rows(sp.train, ~text | keep, "drift: text traces capped")
    dtr, _ = drift_traces(pool, None, rc.drift_traces, rng)
    F = est.featurize_training(dtr)
    y = dtr["output_tokens"].to_numpy(np.float64)
    adm = crossfit_admission(est, F, y, dtr, 2, rc.seed)
    va = sp.val.iloc[: rc.max_val_rows]
    Fv = est.featurize(va)
    tx, cut = text_columns(dtr)
    drift = LightGBMDrift(**p)
    drift.fit(
        F,
        y,
        adm,
        eval_set=(
            Fv,
            va["output_tokens"].to_numpy(np.float64),
            est.predict_features(Fv),
            *text_columns(va),
        ),
        feature_names=est.featurizer_.feature_names,
        categorical_indices=est.featurizer_.categorical_indices,
        texts=tx,
        texts_truncated=cut,
    )
    return drift


def drift_section(
    splits: dict[str, EvalSplit],
    models: dict[tuple[str, str], Any],
    rc: ReportConfig,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    from predictor.metrics import DRIFT_POINTS
    from predictor.training_drift import has_output_text, score_drift, text_columns

    rows: list[dict[str, Any]] = []
    est = models[("default", "in_distribution")]
    t0 = time.perf_counter()
    drift = fit_drift(est, splits["in_distribution"], rc)
    log(f"drift fit {time.perf_counter() - t0:.0f} s")
    todo = [("in_distribution", est, drift), ("unseen_prompt", est, drift)]
    for m in rc.drift_models:
        name = f"lomo:{m}"
        if name in splits:
            e = models[("default", name)]
            todo.append((name, e, fit_drift(e, splits[name], rc)))
    for name, e, d in todo:
        te = splits[name].test
        F = e.featurize(te)
        adm = e.predict_features(F)
        y = te["output_tokens"].to_numpy(np.float64)
        tx, cut = text_columns(te)
        for r in score_drift(d, F, adm, y, DRIFT_POINTS, tx, cut):
            rows.append({"split": name, **r})
        has = has_output_text(te)
        if has.any():
            for with_text in (True, False):
                sub = score_drift(
                    d,
                    F[has],
                    adm[has],
                    y[has],
                    DRIFT_POINTS,
                    tx[has] if with_text and tx is not None else None,
                    cut[has] if with_text and cut is not None else None,
                    subset="with_text" if with_text else "text_rows_no_text",
                )
                rows += [{"split": name, **r} for r in sub]
    return rows
