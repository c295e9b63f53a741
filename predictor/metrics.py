"""Pure metric functions for length and drift predictors.

Every function takes plain arrays (tokens, not logs, unless the name says otherwise) and returns
a float. Nothing here reads files or fits anything, so each one is tested against hand-computed
values in ``tests/predictor/test_metrics.py``.

The drift metrics evaluate at *fixed* progress points (t = 32, 128, 512 tokens generated) over the
requests still running at t. Never at a fraction of the true length: "50% done" tells the model
the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from data.schema import runtime_classes

DRIFT_POINTS: tuple[int, ...] = (32, 128, 512)
"""Progress points (tokens generated) at which drift predictors are scored."""


def _pair(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y_true, dtype=np.float64).reshape(-1)
    b = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"y_true has {a.size} values but y_pred has {b.size}")
    if a.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("predictions and targets must be finite (got NaN or inf)")
    return a, b


def mae(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean absolute error in the units of the inputs (tokens)."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean(np.abs(a - b)))


def rmse(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Root mean squared error (tokens)."""
    a, b = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae_log(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """MAE of natural-log lengths: mean |log(y) - log(yhat)|, predictions floored at 1 token."""
    a, b = _pair(y_true, y_pred)
    if (a <= 0).any():
        raise ValueError("log-length MAE needs true lengths > 0")
    return float(np.mean(np.abs(np.log(a) - np.log(np.maximum(b, 1.0)))))


def kendall_tau(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Kendall tau-b (ties in either ranking handled); 0.0 when one side is constant."""
    a, b = _pair(y_true, y_pred)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(stats.kendalltau(a, b, variant="b").statistic)


def spearman(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0.0 when one side is constant."""
    a, b = _pair(y_true, y_pred)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def class_accuracy(
    prompt_tokens: Sequence[float], y_true: Sequence[float], y_pred: Sequence[float]
) -> float:
    """Accuracy of the paper's runtime class computed on prompt + output tokens."""
    a, b = _pair(y_true, y_pred)
    p = np.asarray(prompt_tokens, dtype=np.float64).reshape(-1)
    if p.shape != a.shape:
        raise ValueError(f"prompt_tokens has {p.size} values but y_true has {a.size}")
    return float(np.mean(runtime_classes(p + a) == runtime_classes(p + b)))


def coverage(y_true: Sequence[float], upper: Sequence[float]) -> float:
    """Fraction of true values at or below the predicted upper quantile (p90 -> ideally 0.9)."""
    a, b = _pair(y_true, upper)
    return float(np.mean(a <= b))


def length_metrics(
    y_true: Sequence[float], quantiles: np.ndarray, prompt_tokens: Sequence[float]
) -> dict[str, float]:
    """All admission metrics for predictions ``quantiles`` (n, 2) = (p50, p90) in tokens."""
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"quantiles must have shape (n, 2) (p50, p90), got {q.shape}")
    p50 = q[:, 0]
    return {
        "n": len(p50),
        "mae": mae(y_true, p50),
        "rmse": rmse(y_true, p50),
        "mae_log": mae_log(y_true, p50),
        "kendall_tau": kendall_tau(y_true, p50),
        "spearman": spearman(y_true, p50),
        "class_accuracy": class_accuracy(prompt_tokens, y_true, p50),
        "p90_coverage": coverage(y_true, q[:, 1]),
    }


def running_at(lengths: Sequence[float], t: int) -> np.ndarray:
    """Mask of requests still running after ``t`` generated tokens (true length > t)."""
    return np.asarray(lengths, dtype=np.float64) > t


def drift_metrics(lengths: Sequence[float], t: int, remaining_pred: np.ndarray) -> dict[str, float]:
    """Remaining-length metrics at fixed progress ``t`` over requests with length > t.

    ``lengths`` are the true total output lengths of exactly the requests still running at t
    (the caller selects them with :func:`running_at`); ``remaining_pred`` is (n,) or (n, 2).
    """
    L = np.asarray(lengths, dtype=np.float64).reshape(-1)
    if (t >= L).any():
        raise ValueError(f"drift metrics at t={t} need requests still running (length > {t})")
    r = np.asarray(remaining_pred, dtype=np.float64)
    p50 = r[:, 0] if r.ndim == 2 else r
    true_rem = L - t
    out = {
        "n": int(L.size),
        "mae": mae(true_rem, p50),
        "kendall_tau": kendall_tau(true_rem, p50),
        "mae_log": mae_log(true_rem, p50),
    }
    if r.ndim == 2:
        out["p90_coverage"] = coverage(true_rem, r[:, 1])
    return out
