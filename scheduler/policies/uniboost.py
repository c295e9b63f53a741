"""``uniboost``: prediction-free soft priority boosting with KV-aware preemption (after UniBoost).

UniBoost (Li et al., "Beyond Prediction: Tail-Aware Scheduling for LLM Inference", ICML 2026,
arXiv 2606.18431) ranks requests without any length prediction: soft priority boosting from
the observed size distribution plus KV-cache-aware preemption, one knob gamma between FCFS and
SJF. Its theory is Yu & Scully's gamma-Boost ("Strongly Tail-Optimal Scheduling in the
Light-Tailed M/G/1", SIGMETRICS 2024, arXiv 2404.08826): serve the job with the smallest
*boosted arrival time* ``arrival - b``. With full size information ``b(s) = (1/g) log(1 / (1 -
exp(-g s)))``; with partial information (a label ``l``) ``b(l) = (1/g) log(M / (M - 1))``, ``M =
E[exp(g S) | l]``. The paper's own algorithm was not available to us (only its abstract and
project page), so this is gamma-Boost's published partial-information rule with the label a
request actually exposes without prediction, its **attained service**:

    M(a) = E[exp(g (S - a)) | S > a]          over the sizes S of recently finished requests
    b(a) = (1/g) log(M(a) / (M(a) - 1))        tokens of work (>= 0; larger = served sooner)
    key  = arrival_s - tau * b(a)              seconds (lowest first)

where ``a`` is the request's generated tokens, ``g = gamma / mean(S)`` (gamma is dimensionless,
per mean request) and ``tau`` seconds of engine time per generated token (the completion
throughput of the last ``window`` finished requests, or ``seconds_per_token``). A request
that has run longer than most finished requests had a larger expected remaining work, so
(heavy tails) its boost shrinks and later arrivals overtake it: with ``gamma -> infinity``
every boost is 0 (FCFS); with ``gamma -> 0`` boosts differ by ``(1/g) log`` of the expected
remaining work, which dominates arrival times (SJF/Gittins-like on attained service).
``prompt_weight`` > 0 (default 0: strictly prediction-free, every fresh request has the same
boost) adds the known prompt work: ``M *= exp(g * prompt_weight * prompt tokens to compute)``.

Sizes are the output lengths of finished requests (a ring of ``window``); until ``min_count``
have finished, every boost is 0 (FCFS). The table (sorted sizes, suffix log-sum-exp of ``g S``)
is refitted every ``refresh_every`` completions, and every waiting request is then re-keyed;
``b(a)`` is a bisection plus a few float operations.

**KV-cache-aware preemption** (``scheduler/policies/preemptive.py``): a running request is
preempted (recompute) for a waiting one with a smaller key only when the key difference,
in tokens of work (``/ tau``), exceeds ``min_gain_tokens`` plus the recompute cost of the
victim's KV (``recompute_cost_per_token * (prompt + generated) * running requests``); the
engines' memory victim is the running request with the largest key.

Where ours differs from the paper (also docs/BASELINES.md): the boost is gamma-Boost's
partial-information formula on attained service, not necessarily the paper's; gamma is scaled
by the mean observed size; sizes are output tokens (prefill work enters only via
``prompt_weight``); sizes come from completions only (right-censored by the running ones);
preemption uses our recompute-cost rule, capped per request and per step.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from scheduler.policies.preemptive import PreemptivePolicy
from scheduler.request import SchedRequest, Status


class BoostTable:
    """gamma-Boost on attained service over an empirical size distribution (module doc).

    ``fit(sizes, gamma_per_token)``; ``boost(a, extra)`` = ``b(a)`` in tokens, where ``extra``
    is known work (tokens) added to the remaining size of every sample.
    """

    def __init__(self) -> None:
        self.g = 0.0  # 1/token
        self._sizes: list[float] = []  # sorted ascending
        self._lse: list[float] = []  # _lse[i] = log sum_{j >= i} exp(g * s_j)
        self._logn: list[float] = []  # _logn[i] = log(n - i)

    @property
    def fitted(self) -> bool:
        return bool(self._sizes)

    def fit(self, sizes: np.ndarray, gamma_per_token: float) -> BoostTable:
        s = np.sort(np.asarray(sizes, dtype=np.float64))
        if s.size == 0 or not gamma_per_token > 0:
            raise ValueError("BoostTable.fit needs sizes and gamma_per_token > 0")
        g = float(gamma_per_token)
        # suffix log-sum-exp, in log space (g * s reaches hundreds for long requests)
        lse = np.logaddexp.accumulate((g * s)[::-1])[::-1]
        self.g = g
        self._sizes = s.tolist()
        self._lse = lse.tolist()
        self._logn = np.log(np.arange(s.size, 0, -1, dtype=np.float64)).tolist()
        return self

    def log_m(self, a: float) -> float:
        """log E[exp(g (S - a)) | S > a]; past the largest observed size the remaining work is
        taken to be ``a`` again (Lindy: a survivor is expected to run as long again)."""
        i = bisect.bisect_right(self._sizes, a)
        if i >= len(self._sizes):
            return self.g * max(a, 1.0)
        return self._lse[i] - self._logn[i] - self.g * a

    def boost(self, a: float, extra: float = 0.0) -> float:
        """b = (1/g) log(M / (M - 1)) = -(1/g) log(1 - exp(-log M)), tokens (0 before fit)."""
        if not self._sizes:
            return 0.0
        lm = max(self.log_m(a) + self.g * extra, 1e-12)
        return -math.log(-math.expm1(-lm)) / self.g


class UniBoostPolicy(PreemptivePolicy):
    name: ClassVar[str] = "uniboost"

    def __init__(
        self,
        gamma: float = 0.003,
        prompt_weight: float = 0.0,
        seconds_per_token: float | None = None,
        window: int = 4096,
        min_count: int = 32,
        refresh_every: int = 128,
        max_preemptions: int | None = 1,
        max_preempt_per_step: int | None = 1,
        min_gain_tokens: float = 0.0,
        recompute_cost_per_token: float = 0.0015,
        rekey_every: int = 16,
    ) -> None:
        super().__init__(
            max_preemptions=max_preemptions,
            max_preempt_per_step=max_preempt_per_step,
            max_preempt_fraction=1.0,
            min_gain_tokens=min_gain_tokens,
            recompute_cost_per_token=recompute_cost_per_token,
            rekey_every=rekey_every,
        )
        if not gamma > 0:
            raise ValueError(f"uniboost: gamma must be > 0 (FCFS is gamma -> inf), got {gamma!r}")
        if seconds_per_token is not None and not seconds_per_token > 0:
            raise ValueError(
                f"uniboost: seconds_per_token must be > 0 or null, got {seconds_per_token!r}"
            )
        self.gamma = float(gamma)
        self.prompt_weight = float(prompt_weight)
        self.seconds_per_token = None if seconds_per_token is None else float(seconds_per_token)
        self.window = int(window)
        self.min_count = max(1, int(min_count))
        self.refresh_every = max(1, int(refresh_every))
        self.table = BoostTable()
        self.tau = 0.0  # seconds per generated token (0: not calibrated yet -> FCFS)
        self._sizes: deque[int] = deque(maxlen=self.window)
        self._done: deque[tuple[float, int]] = deque(maxlen=self.window)  # (finish s, tokens)
        self._since_refresh = 0

    # ------------------------------------------------------------------ keys
    def _boost_key(self, r: SchedRequest, left_prompt: int) -> float:
        if self.tau <= 0.0:
            return r.arrival_s
        b = self.table.boost(r.num_output_tokens, self.prompt_weight * left_prompt)
        return r.arrival_s - self.tau * b

    def _running_keys(self, running: Sequence[SchedRequest], now: float) -> None:
        for r in running:
            r.sched_key = self._boost_key(r, max(0, r.prompt_tokens - r.num_computed_tokens))

    def _requeue_key(self, r: SchedRequest, now: float) -> float:
        return self._boost_key(r, r.prompt_tokens)  # its KV is dropped: the prompt is redone

    def _gain_tokens(self, victim: SchedRequest, cand: SchedRequest) -> float:
        if self.tau <= 0.0:
            return 0.0
        return (victim.sched_key - cand.sched_key) / self.tau

    # ------------------------------------------------------------------ hooks
    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            r.sched_key = self._boost_key(r, r.prompt_tokens)
            self._enqueue(r, now)

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        super().on_finish(requests, now)
        for r in requests:
            if r.num_output_tokens > 0:
                self._sizes.append(r.num_output_tokens)
                self._done.append((now, r.num_output_tokens))
        self._since_refresh += len(requests)
        if self._since_refresh >= self.refresh_every or (
            not self.table.fitted and len(self._sizes) >= self.min_count
        ):
            self._refresh(now)

    def _refresh(self, now: float) -> None:
        """Refit the boost table and throughput, then re-key every waiting request."""
        self._since_refresh = 0
        if len(self._sizes) < self.min_count:
            return
        sizes = np.fromiter(self._sizes, dtype=np.float64, count=len(self._sizes))
        self.table.fit(sizes, self.gamma / float(sizes.mean()))
        if self.seconds_per_token is not None:
            self.tau = self.seconds_per_token
        elif len(self._done) >= 2:
            span = self._done[-1][0] - self._done[0][0]
            tokens = sum(n for _, n in self._done) - self._done[0][1]
            if span > 0 and tokens > 0:
                self.tau = span / tokens
        # every waiting key moves with the table: re-key them and rebuild the heap (O(waiting),
        # amortised over refresh_every completions)
        self._wait = []
        for r in self._reqs.values():
            if r.status is Status.WAITING:
                left = max(0, r.prompt_tokens - r.num_computed_tokens)
                r.sched_key = self._boost_key(r, left)
                self._enqueue(r, self._enq_t.get(r.index, now))
                self._changed.append(r)
        self._ref = None  # re-key the running requests at the next step too

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "gamma": self.gamma,
            "prompt_weight": self.prompt_weight,
            "seconds_per_token": self.seconds_per_token,
            "window": self.window,
            "min_count": self.min_count,
            "refresh_every": self.refresh_every,
            **self._describe_preemption(),
        }
