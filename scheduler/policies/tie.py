"""``tie``: SJF on the Tail Inflated Expectation of a predicted log-t length distribution (TIE).

TIE (Zheng et al., "Scheduling LLM Inference with Uncertainty-Aware Output Length
Predictions", ICML 2026, arXiv 2604.00499; code github.com/Hyzheng-code/TIE) predicts a log-t
distribution of each request's output length (``log X = mu + sigma * T``, ``T`` Student-t with
``nu = 3.5``, censored at the generation limit) and ranks by

    score = E[X] + beta * CVaR_0.9[X]                  (paper Eq. 11)
    beta  = min(0.5, max(0.1, 0.1 * L_q / B))          (Eq. 12: L_q waiting, B max_num_seqs)

once, at arrival (no re-prediction: TIE argues its overhead eats the gains), with a starvation
decay ``score * decay ** (waited_s / decay_interval_s)`` (0.9 every 30 s in their code).
Ranking by the decayed score is ranking by ``log(score) + arrival_s * log(1/decay) /
decay_interval_s`` (the ``now`` term is common to every request), so the key is static and the
engines keep a heap; TIE's code re-heapifies every 5 s instead.

Ours, on the project's learned predictor (the same artifacts as ``sjf``/``drift``): the log-t
is fitted to the predictor's two quantiles of the total output, ``mu = log p50`` (the median of
a log-t) and ``sigma = (log p90 - log p50) / t_0.9(nu)``, instead of TIE's network that outputs
``(mu, sigma)``. ``E[min(X, cap)]`` and ``CVaR_0.9[min(X, cap)]`` (``cap`` = the request's
``max_tokens``) are computed on a fixed grid of ``grid`` quantile levels (deterministic; TIE's
code samples 10,000 Monte-Carlo draws per request). ``L_q`` counts requests waiting for their
first admission (the policy sees no engine-preempted requests without a step hook).
Preemption under memory pressure is the engines' (largest key first); TIE itself adds none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy import stats

from data.schema import runtime_class
from scheduler.policies.base import Policy
from scheduler.policies.estimates import LearnedLengths
from scheduler.request import SchedRequest


class LogTScore:
    """E[min(X, cap)] and CVaR_alpha[min(X, cap)] of ``X = exp(mu + sigma * T)``, T ~ t(nu),
    on a midpoint grid of ``n`` quantile levels (vectorised over requests)."""

    def __init__(self, nu: float = 3.5, alpha: float = 0.9, n: int = 512) -> None:
        if not nu > 0 or not 0 < alpha < 1 or n < 10:
            raise ValueError(
                f"LogTScore: need nu > 0, 0 < alpha < 1, n >= 10; got {nu}, {alpha}, {n}"
            )
        u = (np.arange(n) + 0.5) / n
        self.t = stats.t.ppf(u, df=nu)  # (n,) standardised quantiles
        self.tail = u > alpha  # the grid points above the alpha quantile
        self.t90 = float(stats.t.ppf(0.9, df=nu))  # for fitting sigma from (p50, p90)

    def fit(self, p50: np.ndarray, p90: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the log-t with these median and 0.9 quantile (sigma floor 1e-3)."""
        lo = np.log(np.maximum(p50, 1.0))
        hi = np.log(np.maximum(p90, np.maximum(p50, 1.0)))
        return lo, np.maximum((hi - lo) / self.t90, 1e-3)

    def mean_cvar(
        self, mu: np.ndarray, sigma: np.ndarray, cap: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n_req,) E[min(X, cap)] and CVaR_alpha[min(X, cap)] (tokens)."""
        logx = mu[:, None] + sigma[:, None] * self.t[None, :]
        x = np.exp(np.minimum(logx, np.log(cap)[:, None]))
        return x.mean(axis=1), x[:, self.tail].mean(axis=1)


class TIEPolicy(Policy):
    name: ClassVar[str] = "tie"

    def __init__(
        self,
        predictor_dir: str = "artifacts",
        nu: float = 3.5,
        alpha: float = 0.9,
        beta_min: float = 0.1,
        beta_max: float = 0.5,
        beta_per_batch: float = 0.1,
        batch_size: int = 256,
        decay: float = 0.9,
        decay_interval_s: float = 30.0,
        grid: int = 512,
        recalibrate: bool = False,
    ) -> None:
        if not 0 < decay <= 1 or not decay_interval_s > 0:
            raise ValueError(
                f"tie: need 0 < decay <= 1 and decay_interval_s > 0, got {decay}, {decay_interval_s}"
            )
        if not 0 <= beta_min <= beta_max or batch_size < 1:
            raise ValueError("tie: need 0 <= beta_min <= beta_max and batch_size >= 1")
        self.predictor_dir = str(predictor_dir)
        self.lengths = LearnedLengths(predictor_dir, require_drift=False, recalibrate=recalibrate)
        self.score = LogTScore(nu, alpha, grid)
        self.nu, self.alpha = float(nu), float(alpha)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.beta_per_batch = float(beta_per_batch)
        self.batch_size = int(batch_size)  # B: the engine's max_num_seqs (conf: ${engine...})
        self.decay, self.decay_interval_s = float(decay), float(decay_interval_s)
        # ranking by score * decay^(waited/interval) == ranking by log(score) + rate * arrival
        self._rate = math.log(1.0 / self.decay) / self.decay_interval_s  # 1/s
        self._queued: set[int] = set()  # arrived, never admitted (L_q)

    def beta(self, n_waiting: int) -> float:
        """TIE's adaptive tail weight (Eq. 12)."""
        b = self.beta_per_batch * n_waiting / self.batch_size
        return min(self.beta_max, max(self.beta_min, b))

    def prepare(self, requests: Sequence[SchedRequest]) -> None:
        self.lengths.featurize(requests)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        adm = np.asarray(self.lengths.admission(requests), dtype=np.float64)
        p50, p90 = adm[:, 0], adm[:, 1]
        mu, sigma = self.score.fit(p50, p90)
        cap = np.array([max(1, r.max_tokens) for r in requests], dtype=np.float64)
        mean, cvar = self.score.mean_cvar(mu, sigma, cap)
        beta = self.beta(len(self._queued))  # the queue as these requests find it
        tie = mean + beta * cvar
        for r, m, p, q, s in zip(requests, p50.tolist(), p90.tolist(), mean.tolist(), tie.tolist()):
            r.est_output_tokens = r.est_remaining = m
            r.est_output_p90 = p
            r.est_updated_at_tokens = 0
            r.record_estimate(now, q, runtime_class(r.prompt_tokens + q))
            r.sched_key = math.log(max(s, 1e-9)) + self._rate * r.arrival_s
            self._queued.add(r.index)

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._queued.discard(r.index)

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.observe(requests)
        for r in requests:
            self._queued.discard(r.index)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.forget(requests)  # features of aborted requests would leak otherwise
        for r in requests:
            self._queued.discard(r.index)

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "predictor_dir": self.predictor_dir,
            "nu": self.nu,
            "alpha": self.alpha,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "beta_per_batch": self.beta_per_batch,
            "batch_size": self.batch_size,
            "decay": self.decay,
            "decay_interval_s": self.decay_interval_s,
            "predictor_failed": self.lengths.failed,
        }
