"""The training pipeline behind ``python train.py``: split -> fit -> evaluate -> save.

Steps (each pure enough to test on a tiny table):
1. grouped train/val/test split by prompt (``data.splits``); CASTILLO samples exploded in train;
2. baselines fitted on train, scored on test;
3. the length model (LightGBM or transformer) fitted on train, early-stopped/calibrated on val;
4. out-of-fold admission predictions on train (``crossfit_folds`` prompt-grouped folds), so the
   drift model learns from admission estimates as noisy as the ones it sees when serving;
5. the drift model fitted on progress rows and scored at fixed t against "admission - t";
6. artifacts saved (``length/``, ``drift/``) with held-out metrics in their meta.json.

Steps 4 and 5 (the drift model's traces, inputs, fit and scores) live in
:mod:`predictor.training_drift`; this module runs the pipeline and owns the others.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm.auto import tqdm

from data.holdout import attach_to_artifact, seen_from_split, training_spec
from data.splits import (
    Split,
    grouped_split,
    leave_one_source_out,
    split_by_config,
)
from predictor.artifacts import data_hash
from predictor.datasets import explode_samples, load_training_table, subsample
from predictor.metrics import DRIFT_POINTS, length_metrics
from predictor.serving import fingerprint
from predictor.training_drift import fit_and_score_drift


def progress_enabled() -> bool:
    """tqdm bars only on an interactive terminal (quiet in logs, CI and tests)."""
    return sys.stderr.isatty()


@dataclass
class TrainConfig:
    """Plain mirror of ``cfg.train`` (conf/train.yaml)."""

    seed: int = 0
    # data.split of conf/data: kind grouped | leave_one_source_out | leave_one_model_out | time
    split: dict[str, Any] = field(default_factory=lambda: {"kind": "grouped"})
    samples_per_prompt: int = 3  # CASTILLO sampled lengths used per (prompt, model) in train
    max_train_rows: int | None = 200_000
    max_val_rows: int | None = 30_000
    max_test_rows: int | None = None
    max_drift_traces: int | None = 60_000  # traces that yield drift progress rows
    crossfit_folds: int = 2  # 0/1: in-sample admission predictions for the drift model
    drift_points: tuple[int, ...] = DRIFT_POINTS
    leave_one_source_out: bool = False
    latency_batch: int = 64

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TrainConfig:
        known = {k: m[k] for k in cls.__dataclass_fields__ if k in m}
        if "split" in known:
            known["split"] = dict(known["split"])
        for k in ("drift_points",):
            if k in known:
                known[k] = tuple(known[k])
        unknown = sorted(set(m) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"train config: unknown key(s) {unknown}; expected some of "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**known)


@dataclass
class TrainResult:
    length_table: pd.DataFrame  # one row per model/baseline, metric columns
    drift_table: pd.DataFrame  # one row per (model, t)
    loso_table: pd.DataFrame | None
    latency: dict[str, float]
    importance: pd.DataFrame | None
    artifacts: dict[str, Path]
    sizes: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    test_predictions: np.ndarray | None = None  # (n_test, 2) of the main length model
    test_lengths: np.ndarray | None = None


def prepare_split(
    df: pd.DataFrame, tc: TrainConfig, log: Callable[[str], None] = print
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, val, test): grouped by prompt; train samples exploded; explicit subsampling."""
    rng = np.random.default_rng(tc.seed)
    sp = split_table(df, tc.split)
    train = explode_samples(sp.train, tc.samples_per_prompt, rng)
    train, r1 = subsample(train, tc.max_train_rows, rng, "train: subsample (max_train_rows)")
    val, r2 = subsample(sp.val, tc.max_val_rows, rng, "val: subsample (max_val_rows)")
    test, r3 = subsample(sp.test, tc.max_test_rows, rng, "test: subsample (max_test_rows)")
    for r in (r1, r2, r3):
        if r.removed:
            log(str(r))
    if min(len(train), len(val), len(test)) == 0:
        raise ValueError(
            f"empty split (train {len(train)}, val {len(val)}, test {len(test)} "
            "rows): the training table needs more distinct prompts"
        )
    return train, val, test


def split_table(df: pd.DataFrame, split: Mapping[str, Any]) -> Split:
    """Train/val/test per ``data.split`` (conf/data/default.yaml): ``data.splits.split_by_config``."""
    return split_by_config(df, split)


def score_length(est: Any, test: pd.DataFrame) -> tuple[dict[str, float], np.ndarray, float]:
    t0 = time.perf_counter()
    q = est.predict_quantiles(test)
    dt = time.perf_counter() - t0
    y = test["output_tokens"].to_numpy(np.float64)
    return length_metrics(y, q, test["prompt_tokens"].to_numpy(np.float64)), q, dt


def measure_latency(
    est: Any, rows: pd.DataFrame, batch: int, budget_s: float = 2.0
) -> dict[str, float]:
    """Amortised per-request microseconds at ``batch``: featurize, and admission prediction.

    Embedding caches (the transformer's) are emptied before every featurize call so the
    encoder really runs; repeats are chosen to take about ``budget_s`` seconds.
    """
    n = min(len(rows), batch)
    chunk = rows.iloc[:n]
    owner = getattr(est, "featurizer_", None)

    def featurize() -> np.ndarray:
        if isinstance(getattr(owner, "cache", None), dict):
            owner.cache = {}
        return est.featurize(chunk)

    t0 = time.perf_counter()
    F = featurize()
    est.predict_features(F)  # warm-up
    repeats = int(np.clip(budget_s / max(time.perf_counter() - t0, 1e-6), 2, 50))
    t0 = time.perf_counter()
    for _ in range(repeats):
        F = featurize()
    t1 = time.perf_counter()
    for _ in range(repeats):
        est.predict_features(F)
    t2 = time.perf_counter()
    return {
        "batch": n,
        "featurize_us_per_request": (t1 - t0) / repeats / n * 1e6,
        "admission_us_per_request": (t2 - t1) / repeats / n * 1e6,
    }


def fit_and_score_baselines(
    baselines: Mapping[str, Any],
    train: pd.DataFrame,
    test: pd.DataFrame,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    rows = []
    y = train["output_tokens"].to_numpy(np.float64)
    for name, est in tqdm(
        list(baselines.items()), desc="baselines", disable=not progress_enabled()
    ):
        t0 = time.perf_counter()
        est.fit(train, y)
        fit_s = time.perf_counter() - t0
        m, _, pred_s = score_length(est, test)
        rows.append({"model": name, **m, "fit_s": fit_s, "predict_s": pred_s})
        log(
            f"  baseline {name}: kendall_tau={m['kendall_tau']:.3f} mae={m['mae']:.1f} "
            f"({fit_s:.1f}s)"
        )
    return rows


def run_training(
    *,
    length_est: Any,
    drift_est: Any | None,
    baselines: Mapping[str, Any],
    tc: TrainConfig,
    out_dir: Path | None,
    sources: list[str] | None = None,
    path: str | Path | None = None,
    table: pd.DataFrame | None = None,
    name: str = "lightgbm",
    log: Callable[[str], None] = print,
    extra_meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """The whole pipeline. ``table`` overrides loading (tests); ``out_dir`` None: no saving."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    table, (train, val, test), sizes = _load_and_split(table, sources, path, tc, log)
    timings["load_split_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = fit_and_score_baselines(baselines, train, test, log)
    timings["baselines_s"] = time.perf_counter() - t0

    q_test = _fit_and_score_length(length_est, train, val, test, name, rows, timings, log)

    drift_rows: list[dict[str, Any]] = []
    F_test = length_est.featurize(test)
    adm_test = length_est.predict_features(F_test)
    y_test = test["output_tokens"].to_numpy(np.float64)
    if drift_est is not None:
        splits, test_inputs = (train, val, test), (F_test, adm_test, y_test)
        drift_rows = fit_and_score_drift(
            length_est, drift_est, table, splits, test_inputs, tc, timings, log
        )

    loso = _leave_one_source_out_if_asked(length_est, baselines, table, tc, timings, log)
    latency = measure_latency(length_est, test, tc.latency_batch)
    importance = (
        length_est.feature_importance() if hasattr(length_est, "feature_importance") else None
    )

    artifacts: dict[str, Path] = {}
    if out_dir is not None:
        artifacts = _save_artifacts(
            length_est,
            drift_est,
            Path(out_dir),
            table=table,
            rows=rows,
            drift_rows=drift_rows,
            latency=latency,
            common=_common_meta(train, sizes, extra_meta),
            tc=tc,
            spec=training_spec(sources, path, tc.split),
        )
    return TrainResult(
        length_table=pd.DataFrame(rows),
        drift_table=pd.DataFrame(drift_rows),
        loso_table=loso,
        latency=latency,
        importance=importance,
        artifacts=artifacts,
        sizes=sizes,
        timings=timings,
        test_predictions=q_test,
        test_lengths=y_test,
    )


def _load_and_split(
    table: pd.DataFrame | None,
    sources: list[str] | None,
    path: str | Path | None,
    tc: TrainConfig,
    log: Callable[[str], None],
) -> tuple[pd.DataFrame, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], dict[str, int]]:
    """(table, (train, val, test), sizes): ``table`` as given, else loaded from
    ``sources``/``path`` (its filter reports logged), and split by ``prepare_split``."""
    if table is None:
        table, reports = load_training_table(sources=sources, path=path)
        for r in reports:
            log(str(r))
    train, val, test = prepare_split(table, tc, log)
    sizes = {"rows": len(table), "train": len(train), "val": len(val), "test": len(test)}
    log(f"data: {sizes}")
    return table, (train, val, test), sizes


def _leave_one_source_out_if_asked(
    length_est: Any,
    baselines: Mapping[str, Any],
    table: pd.DataFrame,
    tc: TrainConfig,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> pd.DataFrame | None:
    """``leave_one_source_out_table`` when ``tc.leave_one_source_out``, else None (timed)."""
    if not tc.leave_one_source_out:
        return None
    t0 = time.perf_counter()
    loso = leave_one_source_out_table(length_est, baselines, table, tc, log)
    timings["loso_s"] = time.perf_counter() - t0
    return loso


def _fit_and_score_length(
    length_est: Any,
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    name: str,
    rows: list[dict[str, Any]],
    timings: dict[str, float],
    log: Callable[[str], None],
) -> np.ndarray:
    """Fit the length model (early stopping on ``val``), append its test row to ``rows``.

    Returns its test-split quantile predictions, shape (n_test, n_quantiles)."""
    t0 = time.perf_counter()
    ytr = train["output_tokens"].to_numpy(np.float64)
    yva = val["output_tokens"].to_numpy(np.float64)
    length_est.fit(train, ytr, eval_set=(val, yva))
    timings["length_fit_s"] = time.perf_counter() - t0
    m, q_test, pred_s = score_length(length_est, test)
    rows.append({"model": name, **m, "fit_s": timings["length_fit_s"], "predict_s": pred_s})
    log(
        f"  {name}: kendall_tau={m['kendall_tau']:.3f} mae={m['mae']:.1f} "
        f"p90_coverage={m['p90_coverage']:.3f} ({timings['length_fit_s']:.1f}s)"
    )
    return q_test


def _common_meta(
    train: pd.DataFrame, sizes: Mapping[str, int], extra_meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Metadata both artifacts carry: the training data's hash and size, extra entries."""
    return {
        "training_data_hash": data_hash(train),
        "training_rows": len(train),
        "sizes": sizes,
        **(extra_meta or {}),
    }


def _save_artifacts(
    length_est: Any,
    drift_est: Any | None,
    out_dir: Path,
    *,
    table: pd.DataFrame,
    rows: list[dict[str, Any]],
    drift_rows: list[dict[str, Any]],
    latency: Mapping[str, Any],
    common: Mapping[str, Any],
    tc: TrainConfig,
    spec: Mapping[str, Any],
) -> dict[str, Path]:
    """Save the length (and drift) artifacts with their metadata and the seen-prompt set.

    ``rows``: the length table's rows, the length model's last; ``common``: metadata both
    artifacts carry; ``spec``: how the training table was chosen (``training_spec``)."""
    artifacts: dict[str, Path] = {}
    lmeta = {
        **common,
        "metrics": {k: v for k, v in rows[-1].items() if k != "model"},
        "baselines": {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in rows[:-1]},
        "latency": latency,
    }
    artifacts["length"] = length_est.save(out_dir / "length", extra_meta=lmeta)
    # which prompts the models trained/validated on (workloads then avoid them; the drift
    # model trains on the same split): before the drift model pins the length fingerprint
    sp = split_table(table, tc.split)
    seen = seen_from_split(sp.train, sp.val, spec)
    attach_to_artifact(artifacts["length"], seen)
    if drift_est is not None:
        from predictor.artifacts import read_meta

        fp = fingerprint(read_meta(artifacts["length"]))
        artifacts["drift"] = drift_est.save(
            out_dir / "drift",
            extra_meta={**common, "length_fingerprint": fp, "metrics": drift_rows},
        )
        attach_to_artifact(artifacts["drift"], seen)
    return artifacts


def leave_one_source_out_table(
    length_est: Any,
    baselines: Mapping[str, Any],
    table: pd.DataFrame,
    tc: TrainConfig,
    log: Callable[[str], None],
) -> pd.DataFrame:
    """Every model and baseline trained without one source and scored on it."""
    rows = []
    for src in sorted(table["source"].astype(str).unique()):
        train_all, test = leave_one_source_out(table, src)
        if len(train_all) == 0:
            continue
        rng = np.random.default_rng(tc.seed)
        sp = grouped_split(train_all, (0.9, 0.1, 0.0), seed=tc.seed)
        tr = explode_samples(sp.train, tc.samples_per_prompt, rng)
        tr, _ = subsample(tr, tc.max_train_rows, rng, "loso train")
        va, _ = subsample(sp.val, tc.max_val_rows, rng, "loso val")
        te, _ = subsample(test, tc.max_test_rows, rng, "loso test")
        log(f"leave out {src}: train {len(tr)}, test {len(te)}")
        for name, est in baselines.items():
            est = clone(est).fit(tr, tr["output_tokens"].to_numpy(np.float64))
            rows.append({"held_out": src, "model": name, **score_length(est, te)[0]})
        m = clone(length_est).fit(
            tr,
            tr["output_tokens"].to_numpy(np.float64),
            eval_set=(va, va["output_tokens"].to_numpy(np.float64)),
        )
        rows.append({"held_out": src, "model": "main", **score_length(m, te)[0]})
    return pd.DataFrame(rows)
