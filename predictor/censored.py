"""Online calibration of level and spread that counts running requests as censored data.

:class:`OnlineRecalibrator` (``predictor.online``) learns only from finished requests. Under
continuous batching those are biased toward the short ones (of the requests admitted together,
the short ones finish first; a size-based policy makes it worse), so its median shift is
pulled down exactly when a new generator runs longer than predicted. Here a request that is
still running after ``a`` tokens is a right-censored observation "length > a", and the
corrections are Kaplan-Meier quantiles of the log residuals:

* level ``mu[g]`` = KM median of ``z50 = log(actual / p50_raw)``; corrected p50 =
  ``p50_raw * exp(mu)``;
* spread ``s[g]`` = KM ``target`` quantile of ``z90 = log(actual / p90_raw)``; corrected p90 =
  ``p90_raw * exp(s)`` (never below the corrected p50). Coverage of the corrected p90 is then
  ``target`` for the group's recent traffic, whatever the censoring.

Both residuals share one censoring point: running at ``a`` tokens means ``z > log(a / p)``.
Memory is bounded: per group the last ``window`` completions, plus the current censored state
of at most ``max_running`` running requests (one entry per request key, overwritten by each
``observe_running`` call, removed when the request finishes or is forgotten). The warm start is
``prior_weight`` pseudo-completions at the residual quantiles of the artifact's validation
split (:meth:`CensoredCalibrator.from_residuals`), or of a calibrated model by default (z50
median 0, z90 ``target`` quantile 0). Groups form a chain ``(model, tenant) -> (model,) ->
GLOBAL``: every observation updates each level, and a level with fewer than ``min_count``
observations serves its parent's corrections.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

GLOBAL: Hashable = "__global__"
_Z90_NORMAL = 1.2815515655446004  # standard normal 0.9 quantile


def km_quantile(z: np.ndarray, event: np.ndarray, weight: np.ndarray, q: float) -> float:
    """Kaplan-Meier ``q`` quantile of right-censored values (weighted).

    ``z`` (n,) observed values; ``event`` (n,) True where ``z`` is the exact value, False where
    only ``value > z`` is known; ``weight`` (n,) >= 0. Returns the smallest event value ``t``
    with ``1 - S(t) >= q``, or ``inf`` when the curve never gets there (all the remaining mass
    lies beyond the largest censored value). Without censoring it equals
    ``np.quantile(z, q, method="inverted_cdf")`` (weighted: the weighted inverted CDF).
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    ev = np.asarray(event, dtype=bool).reshape(-1)
    w = np.asarray(weight, dtype=np.float64).reshape(-1)
    if not (z.shape == ev.shape == w.shape):
        raise ValueError(f"z, event and weight must have one shape, got {z.shape}, {ev.shape}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if z.size == 0:
        return math.inf
    order = np.argsort(z, kind="stable")
    z, ev, w = z[order], ev[order], w[order]
    vals, first = np.unique(z, return_index=True)  # distinct values, first sorted index of each
    at_risk = np.cumsum(w[::-1])[::-1][first]  # weight with value >= each distinct value
    # event weight at each distinct value (censored ties stay at risk at that value)
    deaths = np.add.reduceat(np.where(ev, w, 0.0), first)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1.0 - deaths / at_risk, 1.0)
    cdf = 1.0 - np.cumprod(factor)  # 1 - S just after each distinct value
    hit = np.flatnonzero((cdf >= q - 1e-12) & (deaths > 0))
    return float(vals[hit[0]]) if hit.size else math.inf


def _chain(g: Hashable) -> tuple[Hashable, ...]:
    """Levels an observation of group ``g`` updates, most specific first."""
    if g == GLOBAL:
        return (GLOBAL,)
    if isinstance(g, tuple) and len(g) > 1:
        return (g, g[:1], GLOBAL)
    return (g, GLOBAL)


@dataclass
class CensoredCalibrator:
    """Per-group level/spread corrections from completions and censored running requests.

    Same use as :class:`predictor.online.OnlineRecalibrator` (``adjust``, ``update_one``,
    ``update``) plus ``observe_running`` / ``forget_running`` for the censored observations.
    ``pred_raw`` is always the *uncorrected* (p50, p90) of the request in tokens.
    """

    target: float = 0.9  # coverage the corrected upper quantile should reach
    window: int = 512  # completions kept per group level (the most recent)
    max_running: int = 4096  # running requests' censored states kept (the most recent)
    prior_weight: float = 20.0  # pseudo-completions of the warm start
    min_count: int = 20  # observations a level needs before it replaces its parent's estimate
    clip: float = 3.0  # |corrections| are clipped to this many log units (x20)
    prior_z50: tuple[float, ...] = ()  # warm-start residuals log(actual / p50_raw); () default
    prior_z90: tuple[float, ...] = ()  # ... and log(actual / p90_raw)
    prior_sigma: float = 0.8  # log-length spread of the default warm start (no residuals given)
    done: dict[Hashable, deque] = field(default_factory=dict, repr=False)
    running: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cache: dict[Hashable, tuple[float, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.prior_z50:
            # a calibrated model: z50 median 0, z90 = z50 - spread, target quantile 0
            # grid u_i = (i + 1) / k (the last one pulled in from 1): the weighted inverted
            # CDF of these points returns exactly the median and the 0.9 quantile
            k = 20
            u = np.minimum((np.arange(k) + 1.0) / k, 1.0 - 0.5 / k)
            from scipy.stats import norm

            z = norm.ppf(u) * self.prior_sigma
            self.prior_z50 = tuple(z.tolist())
            self.prior_z90 = tuple((z - self.prior_sigma * _Z90_NORMAL).tolist())
        if len(self.prior_z50) != len(self.prior_z90):
            raise ValueError("prior_z50 and prior_z90 must have the same length")

    @classmethod
    def from_residuals(
        cls, actual: np.ndarray, pred_raw: np.ndarray, points: int = 50, **kw: object
    ) -> CensoredCalibrator:
        """Warm start from validation lengths ``actual`` (n,) and raw predictions (n, 2):
        ``points`` evenly spaced quantiles of each residual become the prior."""
        a = np.maximum(np.asarray(actual, dtype=np.float64).reshape(-1), 1.0)
        p = np.maximum(np.asarray(pred_raw, dtype=np.float64).reshape(-1, 2), 1.0)
        if a.size == 0 or a.size != p.shape[0]:
            raise ValueError(f"{a.size} lengths for {p.shape[0]} predictions (need n > 0, equal)")
        u = (np.arange(points) + 0.5) / points
        z50 = np.quantile(np.log(a / p[:, 0]), u)
        z90 = np.quantile(np.log(a / p[:, 1]), u)
        return cls(prior_z50=tuple(z50.tolist()), prior_z90=tuple(z90.tolist()), **kw)

    # --- observations --------------------------------------------------------------------
    def update_one(
        self, group: Hashable, actual: float, pred_raw: Sequence[float], key: Hashable = None
    ) -> None:
        """One completion of true length ``actual``; ``key`` drops its running state."""
        if not actual > 0:
            raise ValueError(f"actual length must be > 0 tokens, got {actual!r}")
        p50, p90 = max(float(pred_raw[0]), 1.0), max(float(pred_raw[1]), 1.0)
        obs = (math.log(actual / p50), math.log(actual / p90))
        for g in _chain(group):
            dq = self.done.get(g)
            if dq is None:
                dq = self.done[g] = deque(maxlen=self.window)
            dq.append(obs)
            self._cache.pop(g, None)
        if key is not None:
            self._drop(key)

    def update(
        self,
        groups: Sequence[Hashable],
        actual: Sequence[float],
        pred_raw: np.ndarray,
        keys: Sequence[Hashable] | None = None,
    ) -> None:
        """A batch of completions, applied in order (``keys``: their running-request ids)."""
        a = np.asarray(actual, dtype=np.float64).reshape(-1)
        p = np.asarray(pred_raw, dtype=np.float64).reshape(-1, 2)
        if not (len(groups) == a.size == p.shape[0]) or (keys is not None and len(keys) != a.size):
            raise ValueError(
                f"{len(groups)} groups, {a.size} actual lengths, {p.shape[0]} predictions"
                + ("" if keys is None else f" and {len(keys)} keys")
                + ": lengths must match"
            )
        for i, (g, ai, pi) in enumerate(zip(groups, a, p)):
            self.update_one(g, float(ai), pi, None if keys is None else keys[i])

    def observe_running(
        self,
        keys: Sequence[Hashable],
        groups: Sequence[Hashable],
        attained: Sequence[float],
        pred_raw: np.ndarray,
    ) -> None:
        """Running requests ``keys`` have generated ``attained`` tokens so far (censored:
        their length exceeds it). Overwrites each key's previous state; 0 tokens is no news."""
        a = np.asarray(attained, dtype=np.float64).reshape(-1)
        p = np.maximum(np.asarray(pred_raw, dtype=np.float64).reshape(-1, 2), 1.0)
        if not (len(keys) == len(groups) == a.size == p.shape[0]):
            raise ValueError(
                f"{len(keys)} keys, {len(groups)} groups, {a.size} attained counts and "
                f"{p.shape[0]} predictions: lengths must match"
            )
        for k, g, ai, (p50, p90) in zip(keys, groups, a.tolist(), p.tolist()):
            if ai <= 0:
                continue
            old = self.running.pop(k, None)
            if old is not None:
                self._dirty(old[0])
            self.running[k] = (g, math.log(ai / p50), math.log(ai / p90))
            self._dirty(g)
        while len(self.running) > self.max_running:
            _, (g, _, _) = self.running.popitem(last=False)
            self._dirty(g)

    def forget_running(self, keys: Sequence[Hashable]) -> None:
        """Requests that left without finishing (aborted): their censored state is dropped."""
        for k in keys:
            self._drop(k)

    def reset_observations(self) -> None:
        """Forget every completion and running state (e.g. after the model is refitted: the
        stored residuals refer to the old predictions); the warm start stays."""
        self.done.clear()
        self.running.clear()
        self._cache.clear()

    def _drop(self, key: Hashable) -> None:
        old = self.running.pop(key, None)
        if old is not None:
            self._dirty(old[0])

    def _dirty(self, g: Hashable) -> None:
        for lvl in _chain(g):
            self._cache.pop(lvl, None)

    # --- estimates -----------------------------------------------------------------------
    def count(self, level: Hashable) -> int:
        """Observations (completions + running) at one group level."""
        n = len(self.done.get(level, ()))
        return n + sum(1 for g, _, _ in self.running.values() if level in _chain(g))

    def corrections(self, group: Hashable) -> tuple[float, float]:
        """(mu, s): log corrections of p50 and p90 for ``group`` (from its chain)."""
        for lvl in _chain(group):
            if lvl == GLOBAL or self.count(lvl) >= self.min_count:
                return self._estimate(lvl)
        return self._estimate(GLOBAL)  # pragma: no cover - the chain always ends at GLOBAL

    def _estimate(self, level: Hashable) -> tuple[float, float]:
        hit = self._cache.get(level)
        if hit is not None:
            return hit
        done = self.done.get(level, ())
        run = [(a, b) for g, a, b in self.running.values() if level in _chain(g)]
        k = len(self.prior_z50)
        n_d, n_r = len(done), len(run)
        z = np.empty((k + n_d + n_r, 2))
        z[:k, 0], z[:k, 1] = self.prior_z50, self.prior_z90
        if n_d:
            z[k : k + n_d] = np.asarray(done, dtype=np.float64)
        if n_r:
            z[k + n_d :] = np.asarray(run, dtype=np.float64)
        ev = np.r_[np.ones(k + n_d, bool), np.zeros(n_r, bool)]
        w = np.r_[np.full(k, self.prior_weight / max(k, 1)), np.ones(n_d + n_r)]
        out = []
        for col, q in ((0, 0.5), (1, self.target)):
            v = km_quantile(z[:, col], ev, w, q)
            if not math.isfinite(v):
                # the quantile lies beyond every censored point: its largest value is a bound
                v = float(z[:, col].max())
            out.append(min(max(v, -self.clip), self.clip))
        res = (out[0], out[1])
        self._cache[level] = res
        return res

    def adjust(self, groups: Sequence[Hashable], pred: np.ndarray) -> np.ndarray:
        """Corrected (p50, p90) for raw predictions ``pred`` (n, 2) in tokens -> (n, 2)."""
        p = np.asarray(pred, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] != len(groups):
            raise ValueError(f"pred must have shape ({len(groups)}, 2), got {p.shape}")
        memo: dict[Hashable, tuple[float, float]] = {}
        shift = np.array(
            [memo[g] if g in memo else memo.setdefault(g, self.corrections(g)) for g in groups],
            dtype=np.float64,
        ).reshape(-1, 2)
        out = np.empty_like(p)
        out[:, 0] = p[:, 0] * np.exp(shift[:, 0])
        out[:, 1] = np.maximum(p[:, 1] * np.exp(shift[:, 1]), out[:, 0])
        return out
