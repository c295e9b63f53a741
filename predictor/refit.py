"""Incremental refit of a length model from the serving engine's own completions.

``IncrementalRefit(base).add(F, lengths)`` keeps the features and true lengths of the last
``max_rows`` completed requests; every ``cadence`` completions (once it holds ``min_rows``)
the served model becomes ``base.continue_fit(buffer, rounds)``: the artifact's trees plus
``rounds`` trees per quantile fitted on recent traffic. Each refit restarts from ``base``, so
the model never grows past ``base + rounds`` trees and old traffic is forgotten with the
buffer. Completions are biased toward short requests early on (they finish first); the refit
learns the *ranking* of the new generator, while its level and spread are best left to a
:class:`predictor.censored.CensoredCalibrator` on top (reset it after a refit: its residuals
refer to the previous model).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class IncrementalRefit:
    base: Any  # a fitted estimator with continue_fit(F, y, rounds) (predictor.lgbm.LightGBMLength)
    cadence: int = 200  # completions between refits
    rounds: int = 30  # trees added per quantile model at each refit
    max_rows: int = 4096  # completions kept (the most recent)
    min_rows: int = 100  # completions needed before the first refit
    refits: int = 0  # refits done so far
    current: Any = None  # the model to serve (``base`` until the first refit)
    _F: deque = field(default_factory=deque, repr=False)
    _y: deque = field(default_factory=deque, repr=False)
    _since: int = 0

    def __post_init__(self) -> None:
        if not hasattr(self.base, "continue_fit"):
            raise TypeError(f"{type(self.base).__name__} has no continue_fit(F, y, rounds)")
        if self.cadence < 1 or self.rounds < 1 or self.max_rows < self.min_rows:
            raise ValueError(
                f"refit cadence {self.cadence} and rounds {self.rounds} must be >= 1 and "
                f"max_rows {self.max_rows} >= min_rows {self.min_rows}"
            )
        self._F = deque(maxlen=self.max_rows)
        self._y = deque(maxlen=self.max_rows)
        if self.current is None:
            self.current = self.base

    def add(self, F: np.ndarray, lengths: np.ndarray) -> bool:
        """Completed requests' admission features (n, d) and true lengths (n,); True when
        this call refitted (``current`` changed)."""
        F = np.asarray(F, dtype=np.float32).reshape(len(lengths), -1)
        y = np.asarray(lengths, dtype=np.float64).reshape(-1)
        if (y <= 0).any():
            raise ValueError("completed lengths must be > 0 tokens")
        self._F.extend(F)
        self._y.extend(y.tolist())
        self._since += len(y)
        if self._since < self.cadence or len(self._y) < self.min_rows:
            return False
        self.current = self.base.continue_fit(np.stack(self._F), np.asarray(self._y), self.rounds)
        self._since = 0
        self.refits += 1
        return True
