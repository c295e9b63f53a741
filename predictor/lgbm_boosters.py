"""LightGBM boosters (the only module that imports lightgbm).

The estimators of :mod:`predictor.lgbm` hold one quantile booster per quantile; this module
trains them (``train_quantiles``, ``continue_quantiles``), scores with them
(``predict_scores``, or the compiled walker of :mod:`predictor.fast_trees` for serving batches,
``cached_forest``), reads and writes their LightGBM text files (``save_boosters``,
``load_boosters``), and fits the pairwise ranker :mod:`predictor.transfer` uses
(``fit_rank_booster``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from predictor import fast_trees
from predictor.artifacts import TRAIN_COMMAND, ArtifactError


def booster_params(est: Any, alpha: float) -> dict[str, Any]:
    """LightGBM parameters of ``est``'s booster for quantile ``alpha`` (deterministic)."""
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


def train_quantiles(
    est: Any,
    F: np.ndarray,
    target: np.ndarray,
    cat_idx: list[int],
    names: list[str],
    eval_set: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[list[lgb.Booster], list[int]]:
    """One booster per quantile of ``est`` on ``(F, target)`` and the iteration each uses
    (the early-stopped best on ``eval_set``, else all ``n_estimators``)."""
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
            booster_params(est, alpha),
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


def fit_rank_booster(
    F: np.ndarray,
    y: np.ndarray,
    names: list[str],
    cat_idx: list[int],
    *,
    objective: str = "rank_xendcg",
    group_size: int = 32,
    levels: int = 16,
    n_estimators: int = 300,
    learning_rate: float = 0.06,
    num_leaves: int = 63,
    min_child_samples: int = 40,
    num_threads: int = 1,
    random_state: int = 0,
) -> lgb.Booster:
    """A LightGBM ranker of output length over random groups of ``group_size`` rows (the
    requests waiting together); relevance = the row's length rank in its group, binned to
    ``levels`` grades (longer = higher). Its raw score orders requests by expected length."""
    if objective not in ("lambdarank", "rank_xendcg"):
        raise ValueError(f"rank objective must be lambdarank or rank_xendcg, got {objective!r}")
    rng = np.random.default_rng(random_state)
    order = rng.permutation(len(y))
    F, y = F[order], np.asarray(y, dtype=np.float64)[order]
    n_groups = max(1, len(y) // group_size)
    bounds = np.linspace(0, len(y), n_groups + 1).astype(np.int64)
    label = np.zeros(len(y), dtype=np.int64)
    for a, b in itertools.pairwise(bounds):
        r = np.argsort(np.argsort(y[a:b] + rng.random(b - a) * 1e-3))  # ties broken at random
        label[a:b] = (r * levels) // max(b - a, 1)
    ds = lgb.Dataset(
        F,
        label,
        group=np.diff(bounds),
        feature_name=names,
        categorical_feature=cat_idx,
        params={"max_bin": 127, "verbosity": -1},
    )
    params = {
        "objective": objective,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min_child_samples,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "num_threads": num_threads,
        "seed": random_state,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        "max_bin": 127,
        "label_gain": list(range(levels)),
        "lambdarank_truncation_level": group_size,
    }
    return lgb.train(params, ds, num_boost_round=n_estimators)


def load_booster(path: Path) -> lgb.Booster:
    try:
        return lgb.Booster(model_file=str(path))
    except (lgb.basic.LightGBMError, OSError, ValueError) as e:
        raise ArtifactError(
            f"{path}: not a readable LightGBM model ({e}); retrain with `{TRAIN_COMMAND}`"
        ) from e


SMALL_BATCH = 4096  # below this many rows prediction runs on one thread (see predict_scores)


def predict_scores(
    boosters: list[lgb.Booster], best: list[int], X: np.ndarray, num_threads: int
) -> np.ndarray:
    # Serving batches (tens of rows) are ~20x faster on one thread: OpenMP start-up and
    # contention on a shared 2-core machine dominate (measured 13 vs 300 us/request at 64).
    nt = 1 if X.shape[0] < SMALL_BATCH else num_threads
    return np.column_stack(
        [b.predict(X, num_iteration=it, num_threads=nt) for b, it in zip(boosters, best)]
    )


def cached_forest(est: Any) -> fast_trees.CompiledForest | None:
    """``est``'s boosters compiled by ``predictor.fast_trees`` (built on first use, rebuilt
    after a refit), or None when ``est.fast_predict`` is off or the walker is unavailable."""
    if not est.fast_predict:
        return None
    # keyed on the boosters list itself (held, so a refit's new list is never mistaken for it)
    # and the iterations used
    its = tuple(est.best_iteration_)
    cached = getattr(est, "_fast", None)
    if cached is None or cached[0] is not est.boosters_ or cached[1] != its:
        forest = fast_trees.compile_boosters(est.boosters_, list(its))
        est._fast = (est.boosters_, its, forest)
    return est._fast[2]


def continue_quantiles(
    est: Any,
    F: np.ndarray,
    target: np.ndarray,
    rounds: int,
    names: list[str],
    cat_idx: list[int],
) -> tuple[list[lgb.Booster], list[int]]:
    """``est``'s quantile boosters (at their best iterations) plus ``rounds`` trees each fitted
    on ``(F, target)``, ``target`` in log tokens; ``est``'s boosters are left unchanged."""
    boosters, best = [], []
    for alpha, b, it in zip(est.quantiles, est.boosters_, est.best_iteration_):
        params = booster_params(est, alpha)
        # a few hundred rows: leaves small enough to split at all
        params["min_data_in_leaf"] = int(min(est.min_child_samples, max(5, len(target) // 20)))
        base = lgb.Booster(model_str=b.model_to_string(num_iteration=it))
        ds = lgb.Dataset(
            F,
            target,
            feature_name=names,
            categorical_feature=cat_idx,
            params={"max_bin": 127, "verbosity": -1},
        )
        nb = lgb.train(params, ds, num_boost_round=rounds, init_model=base)
        boosters.append(nb)
        best.append(int(nb.current_iteration()))
    return boosters, best


def booster_file(q: float) -> str:
    """File name of the booster of quantile ``q`` in an artifact (``model_q50.txt``)."""
    return f"model_q{int(q * 100)}.txt"


def save_boosters(
    d: Path, quantiles: tuple[float, ...], boosters: list[lgb.Booster], best: list[int]
) -> None:
    """Write each booster, cut to its best iteration, as LightGBM text into ``d``."""
    for q, b, it in zip(quantiles, boosters, best):
        b.save_model(str(d / booster_file(q)), num_iteration=it)


def load_boosters(d: Path, quantiles: tuple[float, ...]) -> tuple[list[lgb.Booster], list[int]]:
    """The boosters saved by ``save_boosters`` and their iteration counts (all trees: the
    saved ones were already cut to the best iteration)."""
    boosters = [load_booster(d / booster_file(q)) for q in quantiles]
    return boosters, [b.current_iteration() for b in boosters]
