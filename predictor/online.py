"""Online recalibration of a learned length predictor while serving a drifting workload.

Two per-group corrections, updated one completion at a time in ``on_finish`` (batched calls are
applied in order, so batched and online use give identical state):

* **median shift** ``mu[g]``: EMA of the log ratio ``log(actual / p50_raw)``; the corrected median
  is ``p50_raw * exp(mu[g])``. A workload whose requests run 2x longer than the model thinks
  converges to ``mu = log 2``.
* **upper-quantile offset** ``q[g]`` (adaptive conformal inference, Gibbs & Candes 2021):
  ``q <- q + lr * (miss - (1 - target))`` where ``miss = actual > p90_corrected``; the corrected
  upper quantile is ``p90_raw * exp(mu[g] + q[g])``. Long-run miss rate tends to 1 - target.

Groups are any hashable key (e.g. ``(tenant, category)``); unseen groups fall back to a global
group that every completion also updates, so a new tenant gets the workload-wide correction.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

GLOBAL: Hashable = "__global__"


@dataclass
class OnlineRecalibrator:
    alpha: float = 0.1  # EMA weight of a new log ratio (0.1 ~ the paper's 0.9 decay)
    target: float = 0.9  # coverage the upper quantile should reach
    lr: float = 0.05  # conformal step size (log units per miss)
    clip: float = 3.0  # |mu| and |q| are clipped to this many log units (x20)
    min_count: int = 5  # completions a group needs before its own state replaces the global one
    mu: dict[Hashable, float] = field(default_factory=dict)
    q: dict[Hashable, float] = field(default_factory=dict)
    count: dict[Hashable, int] = field(default_factory=dict)

    def _state(self, g: Hashable) -> tuple[float, float]:
        if self.count.get(g, 0) >= self.min_count:
            return self.mu[g], self.q[g]
        return self.mu.get(GLOBAL, 0.0), self.q.get(GLOBAL, 0.0)

    def adjust(self, groups: Sequence[Hashable], pred: np.ndarray) -> np.ndarray:
        """Corrected (p50, p90) for raw predictions ``pred`` (n, 2) in tokens -> (n, 2)."""
        p = np.asarray(pred, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] != len(groups):
            raise ValueError(f"pred must have shape ({len(groups)}, 2), got {p.shape}")
        shift = np.array([self._state(g) for g in groups], dtype=np.float64).reshape(-1, 2)
        out = np.empty_like(p)
        out[:, 0] = p[:, 0] * np.exp(shift[:, 0])
        out[:, 1] = np.maximum(p[:, 1] * np.exp(shift[:, 0] + shift[:, 1]), out[:, 0])
        return out

    def update_one(self, group: Hashable, actual: float, pred_raw: Sequence[float]) -> None:
        """One completion: true length ``actual`` and the raw (uncorrected) (p50, p90)."""
        if not actual > 0:
            raise ValueError(f"actual length must be > 0 tokens, got {actual!r}")
        p50, p90 = max(float(pred_raw[0]), 1.0), max(float(pred_raw[1]), 1.0)
        # scalar math (not numpy): this runs once per finished request inside engine steps
        r = math.log(actual / p50)
        c = self.clip
        for g in (GLOBAL, group) if group != GLOBAL else (GLOBAL,):
            mu = self.mu.get(g, 0.0)
            q = self.q.get(g, 0.0)
            miss = float(actual > p90 * math.exp(mu + q))
            self.q[g] = min(max(q + self.lr * (miss - (1.0 - self.target)), -c), c)
            self.mu[g] = min(max((1 - self.alpha) * mu + self.alpha * r, -c), c)
            self.count[g] = self.count.get(g, 0) + 1

    def update(
        self, groups: Sequence[Hashable], actual: Sequence[float], pred_raw: np.ndarray
    ) -> None:
        """A batch of completions, applied in order."""
        a = np.asarray(actual, dtype=np.float64).reshape(-1)
        p = np.asarray(pred_raw, dtype=np.float64).reshape(-1, 2)
        if not (len(groups) == a.size == p.shape[0]):
            raise ValueError(
                f"{len(groups)} groups, {a.size} actual lengths and "
                f"{p.shape[0]} predictions: lengths must match"
            )
        for g, ai, pi in zip(groups, a, p):
            self.update_one(g, float(ai), pi)
