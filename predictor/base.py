"""The estimator contract every length predictor follows (scikit-learn style).

``__init__`` only stores keyword hyperparameters; ``fit(X, y)`` takes a trace DataFrame (the
columns of ``data.schema``; only ``prompt``/``prompt_tokens`` and the categorical ids are read)
and true output lengths in tokens, and returns ``self``; fitted state ends in ``_``; predicting
before ``fit`` raises ``sklearn.exceptions.NotFittedError``. Predictions are in tokens:
``predict_quantiles(X) -> (n, 2)`` = (p50, p90) and ``predict(X) -> (n,)`` = p50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

QUANTILES: tuple[float, float] = (0.5, 0.9)
MIN_TOKENS = 1.0  # predictions are floored at one token
MAX_LOG = float(np.log(1e6))  # and capped at a million tokens


def check_lengths(y: Any, n: int, what: str = "y") -> np.ndarray:
    """True output lengths as float64 (n,), all finite and > 0, or a clear ValueError."""
    a = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise ValueError(f"{what} has {a.size} values but X has {n} rows")
    bad = ~np.isfinite(a) | (a <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: row {i} has output length {a[i]!r}; expected a finite number of tokens > 0"
        )
    return a


def check_frame(X: Any, where: str = "X") -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            f"{where}: expected a trace DataFrame (columns of data.schema), got {type(X).__name__}"
        )
    return X


def finish_quantiles(log_q: np.ndarray) -> np.ndarray:
    """(n, 2) log-token quantiles -> tokens, floored at 1 and non-crossing (p90 >= p50)."""
    # Clipped to [1, 1e6] tokens before exp: no overflow on out-of-distribution rows.
    q = np.exp(np.clip(np.asarray(log_q, dtype=np.float64), 0.0, MAX_LOG))
    q = np.maximum(q, MIN_TOKENS)
    q[:, 1] = np.maximum(q[:, 1], q[:, 0])
    return q


class LengthEstimator(BaseEstimator):
    """Base class: subclasses implement ``fit``, ``predict_quantiles``, ``save`` and ``load``."""

    kind: ClassVar[str] = "length"

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Median output length in tokens, float64 (n,)."""
        return self.predict_quantiles(X)[:, 0]

    def save(
        self, directory: str | Path, extra_meta: dict[str, Any] | None = None
    ) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError
