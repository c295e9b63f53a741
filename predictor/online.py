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
from collections import OrderedDict
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


# --------------------------------------------------------------------------------------------
# OnlineLevels: the online learner behind ``LearnedLengths(online=...)`` and
# ``python -m predictor.score --online``.
# --------------------------------------------------------------------------------------------

# default levels, the near-duplicate prompt key last: completions of the same prompt by other
# generators are the strongest online signal we have (docs/PREDICTORS.md, transfer: prequential
# tau 0.634 in distribution with it, 0.493 without; cross_shift 0.479 vs 0.356)
LEVELS: tuple[str, ...] = ("model", "tenant", "category", "prompt")
# what a level may be: a request column, or "prompt" (its near-duplicate prompt key)
LEVEL_NAMES: tuple[str, ...] = ("model", "tenant", "category", "tier", "source", "prompt")
_MIN_SIGMA, _MAX_SIGMA = 0.2, 2.0  # bounds of the residual spread (log units)


def _mills(alpha: float) -> float:
    """Inverse Mills ratio phi(a) / (1 - Phi(a)): E[Z | Z > a] for a standard normal Z."""
    tail = 0.5 * math.erfc(alpha / math.sqrt(2.0))
    if tail < 1e-12:  # far in the tail: the asymptote a + 1/a
        return alpha + 1.0 / max(alpha, 1e-6)
    return math.exp(-0.5 * alpha * alpha) / math.sqrt(2.0 * math.pi) / tail


@dataclass
class OnlineLevels:
    """Additive online corrections of the log output length per level value.

    Model: ``log(actual) = log(p50_raw) + theta0 + sum_l theta_l[value_l] + noise``, where the
    levels are e.g. the generator (``model``), ``tenant`` and ``category`` of a request (any
    hashable values; the caller passes one tuple per request in ``levels`` order). A value
    never seen has ``theta = 0``, i.e. the model's own prediction, until observations arrive.

    * **Completions** (``update``): stochastic backfitting, one observation at a time: the
      global offset, then each level in order, moves toward its partial residual (the residual
      with every other level's current estimate removed) as a running mean with
      ``prior_count`` pseudo-observations at 0 (shrinkage: one completion moves a new value's
      level by 1 / (prior_count + 1) of its residual). The count stops growing at
      ``max_count``, so an old level keeps tracking drift (an EMA of weight ~1 / max_count).
    * **Running requests** (``observe_running``): a request still running after ``g`` tokens
      says ``log(length) > log(g)``. Under the current predictive distribution
      ``N(rho, sigma^2)`` of its log residual it counts as a *provisional* completion at
      ``E[r | r > c] = rho + sigma * mills((c - rho) / sigma)``, ``c = log(g / p50_raw)``.
      Predictions read a shadow state: the completions' state plus every running request's
      provisional completion, applied in order (so many running requests of a new generator
      pool like completions would, instead of each adding a full step); it is rebuilt lazily
      after any change. A request's censored state is replaced by each call and withdrawn
      when it completes (``update`` with its key) or is forgotten. This corrects a new
      long-output generator before its first long request finishes: completions alone see its
      short requests first.
    * **Spread and p90**: ``sigma`` is an EMA of squared prequential residuals; the p90 is
      ``p90_raw * exp(correction + q)`` with ``q`` the adaptive-conformal offset of
      :class:`OnlineRecalibrator` (``target`` coverage), never below the corrected p50.

    Batched calls are applied in order, so batched and one-at-a-time use give identical
    state. Memory: one float pair per level value, plus ``max_running`` running states.
    """

    levels: tuple[str, ...] = LEVELS  # names of the per-request level values (for describe)
    prior_count: float = 4.0  # pseudo-observations at 0 of every level value (shrinkage)
    max_count: float = 500.0  # effective observation count cap (then an EMA)
    sigma0: float = 0.8  # prior spread of log residuals (log units)
    sigma_weight: float = 0.02  # EMA weight of a squared residual in the spread
    target: float = 0.9  # coverage the corrected p90 aims at
    lr: float = 0.05  # conformal step of the p90 offset (log units per miss)
    clip: float = 4.0  # |any level|, |q| are clipped to this many log units
    censored: bool = True  # count running requests as censored observations
    max_running: int = 8192  # running states kept (the most recent)
    # --- state ---
    theta0: float = 0.0
    n0: float = 0.0
    theta: list[dict[Hashable, float]] = field(default_factory=list, repr=False)
    count: list[dict[Hashable, float]] = field(default_factory=list, repr=False)
    sigma2: float = -1.0  # set from sigma0 in __post_init__
    q: float = 0.0
    # running key -> (level values, c = log(attained / p50_raw))
    running: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _shadow: tuple | None = field(default=None, repr=False)  # (theta0, theta) with running

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        k = len(self.levels)
        if not self.theta:
            self.theta = [{} for _ in range(k)]
            self.count = [{} for _ in range(k)]
        if self.sigma2 < 0:
            self.sigma2 = float(self.sigma0) ** 2
        if self.prior_count < 0 or self.max_count < 1 or not 0 < self.target < 1:
            raise ValueError(
                f"OnlineLevels: prior_count {self.prior_count} must be >= 0, max_count "
                f"{self.max_count} >= 1 and target {self.target} in (0, 1)"
            )

    # --- estimates -------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        return min(max(math.sqrt(self.sigma2), _MIN_SIGMA), _MAX_SIGMA)

    def _check(self, values: Sequence[Sequence[Hashable]], n: int) -> None:
        if len(values) != n:
            raise ValueError(f"{len(values)} level tuples for {n} requests: lengths must match")
        for v in values[:1]:
            if len(v) != len(self.levels):
                raise ValueError(
                    f"a level tuple has {len(v)} values, expected {len(self.levels)} "
                    f"({', '.join(self.levels)})"
                )

    def correction(self, values: Sequence[Hashable], provisional: bool = True) -> float:
        """Log correction of the p50 for one request's level values (completions, plus the
        running requests' provisional completions unless ``provisional=False``)."""
        if provisional and self.running:
            theta0, theta = self._shadow_state()
        else:
            theta0, theta = self.theta0, self.theta
        rho = theta0
        for j, v in enumerate(values):
            rho += theta[j].get(v, 0.0)
        return min(max(rho, -self.clip), self.clip)

    def adjust(self, values: Sequence[Sequence[Hashable]], raw: np.ndarray) -> np.ndarray:
        """Corrected (p50, p90) (n, 2) tokens for raw admission predictions ``raw`` (n, 2)."""
        p = np.asarray(raw, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"raw predictions must have shape (n, 2), got {p.shape}")
        self._check(values, p.shape[0])
        memo: dict[tuple, float] = {}
        rho = np.empty(p.shape[0])
        for i, v in enumerate(values):
            t = tuple(v)
            c = memo.get(t)
            if c is None:
                c = memo[t] = self.correction(t)
            rho[i] = c
        out = np.empty_like(p)
        out[:, 0] = np.maximum(p[:, 0], 1.0) * np.exp(rho)
        out[:, 1] = np.maximum(np.maximum(p[:, 1], 1.0) * np.exp(rho + self.q), out[:, 0])
        return out

    # --- observations ----------------------------------------------------------------------
    def _step(
        self,
        theta0: float,
        n0: float,
        theta: list[dict[Hashable, float]],
        count: list[dict[Hashable, float]],
        values: tuple,
        resid: float,
    ) -> tuple[float, float]:
        """One backfitting step of an observation of log residual ``resid`` on the given
        state (``theta``/``count`` updated in place); returns the new (theta0, n0)."""
        c = self.clip
        e = resid - theta0 - sum(theta[j].get(v, 0.0) for j, v in enumerate(values))
        d0 = e / (n0 + self.prior_count + 1.0)
        theta0 = min(max(theta0 + d0, -c), c)
        e -= d0
        for j, v in enumerate(values):
            n = count[j].get(v, 0.0)
            d = e / (n + self.prior_count + 1.0)
            theta[j][v] = min(max(theta[j].get(v, 0.0) + d, -c), c)
            count[j][v] = min(n + 1.0, self.max_count)
            e -= d
        return theta0, min(n0 + 1.0, self.max_count)

    def _shadow_state(self) -> tuple[float, list[dict[Hashable, float]]]:
        """(theta0, theta) of the completions plus every running request's provisional
        completion at its expected censored residual (rebuilt only after a change)."""
        if self._shadow is None:
            theta0, n0 = self.theta0, self.n0
            theta = [dict(t) for t in self.theta]
            count = [dict(n) for n in self.count]
            s = self.sigma
            for v, cpoint in self.running.values():
                rho = self.correction(v, provisional=False)
                imputed = rho + s * _mills((cpoint - rho) / s)  # E[r | r > c] ~ N(rho, s^2)
                theta0, n0 = self._step(theta0, n0, theta, count, v, imputed)
            self._shadow = (theta0, theta)
        return self._shadow

    def update_one(
        self,
        values: Sequence[Hashable],
        actual: float,
        raw: Sequence[float],
        key: Hashable = None,
    ) -> None:
        """One completion: true length ``actual`` (tokens > 0), the raw (p50, p90);
        ``key`` withdraws its running state first."""
        if not actual > 0:
            raise ValueError(f"actual length must be > 0 tokens, got {actual!r}")
        if key is not None:
            self._withdraw(key)
        p50, p90 = max(float(raw[0]), 1.0), max(float(raw[1]), 1.0)
        resid = math.log(actual / p50)
        values = tuple(values)
        rho = self.correction(values, provisional=False)
        # conformal miss of the p90 served with the current corrections
        miss = float(actual > max(p90 * math.exp(rho + self.q), p50 * math.exp(rho)))
        c = self.clip
        self.q = min(max(self.q + self.lr * (miss - (1.0 - self.target)), -c), c)
        self.sigma2 += self.sigma_weight * ((resid - rho) ** 2 - self.sigma2)
        self.theta0, self.n0 = self._step(
            self.theta0, self.n0, self.theta, self.count, values, resid
        )
        self._shadow = None

    def update(
        self,
        values: Sequence[Sequence[Hashable]],
        actual: Sequence[float],
        raw: np.ndarray,
        keys: Sequence[Hashable] | None = None,
    ) -> None:
        """A batch of completions, applied in order (``keys``: their running-request ids)."""
        a = np.asarray(actual, dtype=np.float64).reshape(-1)
        p = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
        if not (len(values) == a.size == p.shape[0]) or (keys is not None and len(keys) != a.size):
            raise ValueError(
                f"{len(values)} level tuples, {a.size} lengths, {p.shape[0]} predictions"
                + ("" if keys is None else f" and {len(keys)} keys")
                + ": lengths must match"
            )
        for i in range(a.size):
            self.update_one(values[i], float(a[i]), p[i], None if keys is None else keys[i])

    def observe_running(
        self,
        keys: Sequence[Hashable],
        values: Sequence[Sequence[Hashable]],
        attained: Sequence[float],
        raw: np.ndarray,
    ) -> None:
        """Running requests ``keys`` have generated ``attained`` tokens (censored: their
        length exceeds it). Replaces each key's previous censored state; 0 tokens is no news
        (any earlier state of that key is kept)."""
        if not self.censored:
            return
        a = np.asarray(attained, dtype=np.float64).reshape(-1)
        p = np.maximum(np.asarray(raw, dtype=np.float64).reshape(-1, 2), 1.0)
        if not (len(keys) == len(values) == a.size == p.shape[0]):
            raise ValueError(
                f"{len(keys)} keys, {len(values)} level tuples, {a.size} attained counts and "
                f"{p.shape[0]} predictions: lengths must match"
            )
        for k, v, g, p50 in zip(keys, values, a.tolist(), p[:, 0].tolist()):
            if g <= 0:
                continue
            self.running.pop(k, None)
            self.running[k] = (tuple(v), math.log(g / p50))
            self._shadow = None
        while len(self.running) > self.max_running:
            self.running.popitem(last=False)

    def forget_running(self, keys: Sequence[Hashable]) -> None:
        """Requests that left without finishing: their censored states are withdrawn."""
        for k in keys:
            self._withdraw(k)

    def _withdraw(self, key: Hashable) -> None:
        if self.running.pop(key, None) is not None:
            self._shadow = None

    def describe(self) -> dict[str, object]:
        """Level sizes and the global state (for logs and run metadata)."""
        return {
            "levels": list(self.levels),
            "values": {n: len(t) for n, t in zip(self.levels, self.theta)},
            "theta0": round(self.theta0, 4),
            "sigma": round(self.sigma, 4),
            "q": round(self.q, 4),
            "running": len(self.running),
        }
