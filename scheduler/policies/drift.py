"""``drift`` (ours): learned, re-predicted, risk-aware shortest-remaining-work scheduling.

Per request, in batched hooks only (``key`` just reads ``sched_key``):

* **admission** (``prepare``/``on_arrival``): the learned predictor's (p50, p90) of the output
  length, recalibrated online per (tenant, category) (``predictor.online``);
* **re-prediction** (``on_step``, every ``repredict_every`` steps while requests wait): running
  requests whose generated count grew by at least ``max(min_delta_tokens, rel_delta *
  generated)`` since their last estimate are re-predicted in one batch with the drift-correction model (p50, p90 of the tokens still to come given the
  tokens generated so far); the runtime class is re-derived (``n_reclassified`` counts changes).
  A preempted request re-enters the queue with its latest remaining estimate;
* **risk-aware ranking**: ``score = tier_weight * (p50 + risk * (p90 - p50)
  + prompt_weight * uncomputed prompt tokens)``, lowest first;
* **tier SLO awareness and starvation guard**: a waiting request becomes *urgent* once it has
  waited ``slo_fraction`` of its tier's TTFT SLO (tiers in ``slo_tiers``) or
  ``guard_fraction * max_wait_s`` (every tier); urgent requests come before all others, earliest
  deadline first, so no request waits much beyond ``max_wait_s``;
* **bounded preemption** (``preempt``): when requests wait, the running request with the largest
  score may be preempted (recompute) for the best waiting one if the gain in remaining work
  exceeds ``min_gain_tokens`` plus the recompute cost (``recompute_cost_per_token`` per token to
  recompute per running request: the recompute prefill stalls the whole batch), at most ``max_preemptions`` times per request and
  ``max_preempt_per_step`` per step; with ``urgent_preempt`` urgent waiting requests preempt
  without the gain test (off by default: forced preemptions under memory pressure start
  recompute cascades that cost more than they save).

If the predictor raises or returns NaN it logs once and the calibrated heuristic takes over
(``scheduler.policies.estimates``); missing artifacts raise, naming ``python train.py``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from data.schema import TIERS
from scheduler.policies.base import Policy
from scheduler.policies.estimates import LearnedLengths
from scheduler.request import SchedRequest, Status, runtime_class


def _sched_key(r: SchedRequest) -> float:
    return r.sched_key


URGENT_OFFSET = -1e12  # urgent keys: URGENT_OFFSET + deadline (EDF, ahead of every score)
DEFAULT_TTFT_SLO_S: dict[str, float] = {"premium": 1.0, "standard": 5.0, "batch": 60.0}


class DriftPolicy(Policy):
    name: ClassVar[str] = "drift"
    dynamic_keys: ClassVar[bool] = True
    incremental_keys: ClassVar[bool] = True
    uses_step_hook: ClassVar[bool] = True

    def __init__(
        self,
        predictor_dir: str = "artifacts",
        risk: float = 0.0,
        prompt_weight: float = 0.0,
        progress_credit: float = 0.0,
        tier_weight: Mapping[str, float] | None = None,
        min_delta_tokens: int = 32,
        rel_delta: float = 0.5,
        repredict_every: int = 32,
        max_preemptions: int = 1,
        max_preempt_per_step: int = 1,
        urgent_preempt: bool = False,
        min_gain_tokens: float = 256.0,
        recompute_cost_per_token: float = 0.01,
        max_wait_s: float = 300.0,
        guard_fraction: float = 0.5,
        ttft_slo_s: Mapping[str, float] | None = None,
        slo_tiers: Sequence[str] = ("premium",),
        slo_fraction: float = 0.5,
        recalibrate: bool = True,
        require_drift: bool = True,
    ) -> None:
        self.predictor_dir = str(predictor_dir)
        self.lengths = LearnedLengths(
            predictor_dir, require_drift=require_drift, recalibrate=recalibrate
        )
        self.risk = float(risk)
        self.prompt_weight = float(prompt_weight)
        self.progress_credit = float(progress_credit)
        tw = dict(tier_weight or {})
        self.tier_weight = {t: float(tw.get(t, 1.0)) for t in TIERS}
        self.min_delta_tokens = int(min_delta_tokens)
        self.rel_delta = float(rel_delta)
        self.repredict_every = max(1, int(repredict_every))
        self.max_preemptions = int(max_preemptions)
        self.max_preempt_per_step = int(max_preempt_per_step)
        self.urgent_preempt = bool(urgent_preempt)
        self.min_gain_tokens = float(min_gain_tokens)
        self.recompute_cost_per_token = float(recompute_cost_per_token)
        self.max_wait_s = float(max_wait_s)
        self.guard_fraction = float(guard_fraction)
        slo = {**DEFAULT_TTFT_SLO_S, **dict(ttft_slo_s or {})}
        bad = [t for t in slo_tiers if t not in TIERS]
        if bad:
            raise ValueError(f"drift: slo_tiers {bad} not in {list(TIERS)}")
        self.slo_tiers = tuple(slo_tiers)
        self.slo_fraction = float(slo_fraction)
        # waiting time after which a request of each tier becomes urgent (s)
        self._urgent_after = {t: self.guard_fraction * self.max_wait_s for t in TIERS}
        for t in self.slo_tiers:
            self._urgent_after[t] = min(self._urgent_after[t], self.slo_fraction * slo[t])
        self._adm: dict[int, np.ndarray] = {}  # index -> admission (p50, p90), recalibrated
        self._next_update: dict[int, int] = {}  # index -> generated count for next prediction
        self._urgent: set[int] = set()
        self._promo: list[tuple[float, int]] = []  # (time it becomes urgent, index)
        self._reqs: dict[int, SchedRequest] = {}  # live requests by index
        self._running: dict[int, SchedRequest] = {}  # admitted and not (yet seen) preempted
        self._wait_heap: list[tuple[float, int, int]] = []  # (key, index, version) of waiting
        self._ver: dict[int, int] = {}
        self._changed: list[SchedRequest] = []
        self._prev_step = float("-inf")  # start time of the previous step
        self._now = float("-inf")
        self._step = 0

    # ------------------------------------------------------------------ keys
    def _score(self, r: SchedRequest, p50: float, p90: float) -> float:
        left_prompt = max(0, r.prompt_tokens - r.num_computed_tokens)
        # a running request's computed KV would have to be recomputed if it were preempted:
        # credit it, so the memory victim is not the request that is most expensive to redo
        credit = self.progress_credit * r.num_computed_tokens
        return (
            self.tier_weight[r.tier]
            * (p50 + self.risk * max(0.0, p90 - p50) + self.prompt_weight * left_prompt)
            - credit
        )

    def _set(self, r: SchedRequest, p50: float, p90: float, now: float) -> None:
        r.est_remaining = p50
        r.est_updated_at_tokens = r.num_output_tokens
        total = r.num_output_tokens + p50
        r.record_estimate(now, total, runtime_class(r.prompt_tokens + total))
        if r.index not in self._urgent:
            r.sched_key = self._score(r, p50, p90)
        g = r.num_output_tokens
        self._next_update[r.index] = g + max(self.min_delta_tokens, int(self.rel_delta * g))

    def _push_waiting(self, r: SchedRequest) -> None:
        v = self._ver.get(r.index, 0) + 1
        self._ver[r.index] = v
        heapq.heappush(self._wait_heap, (r.sched_key, r.index, v))

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    def take_changed(self) -> Sequence[SchedRequest]:
        out, self._changed = self._changed, []
        return out

    # ------------------------------------------------------------------ hooks
    def prepare(self, requests: Sequence[SchedRequest]) -> None:
        self.lengths.featurize(requests)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        adm = self.lengths.admission(requests)
        for r, (p50, p90) in zip(requests, adm):
            self._reqs[r.index] = r
            self._adm[r.index] = np.array([p50, p90])
            r.est_output_tokens = float(p50)
            r.est_output_p90 = float(p90)
            self._set(r, float(p50), float(p90), now)
            heapq.heappush(self._promo, (r.arrival_s + self._urgent_after[r.tier], r.index))
            self._push_waiting(r)

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._running[r.index] = r

    def on_step(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        self._prev_step, self._now = self._now, now
        # requests preempted since the last step: back into our view of the waiting queue
        for idx in [i for i, r in self._running.items() if r.status is Status.WAITING]:
            self._push_waiting(self._running.pop(idx))
        # guards: waiting requests past their tier's urgency time become urgent (EDF)
        promo = self._promo
        while promo and promo[0][0] <= now:
            _, idx = heapq.heappop(promo)
            r = self._reqs.get(idx)
            if (
                r is None
                or idx in self._urgent
                or r.status is not Status.WAITING
                or not math.isnan(r.admitted_s)
            ):
                continue  # finished, or already started: the guard bounds the first wait
            self._urgent.add(idx)
            r.sched_key = URGENT_OFFSET + r.arrival_s + self.max_wait_s
            self._changed.append(r)
            self._push_waiting(r)
        # re-predict running requests whose progress changed enough (one batch), every
        # `repredict_every` steps and only while requests wait (running keys only matter for
        # preemption, and that only happens under contention)
        self._step += 1
        if not waiting or self._step % self.repredict_every:
            return
        nu = self._next_update
        todo = [r for r in running if r.num_output_tokens >= nu.get(r.index, 0)]
        if todo:
            adm = np.stack([self._adm[r.index] for r in todo])
            rem = self.lengths.remaining(todo, adm)
            for r, (p50, p90) in zip(todo, rem):
                self._set(r, float(p50), float(p90), now)

    def _best_waiting(self) -> SchedRequest | None:
        h = self._wait_heap
        while h:
            _key, idx, v = h[0]
            r = self._reqs.get(idx)
            if r is None or v != self._ver.get(idx) or r.status is not Status.WAITING:
                heapq.heappop(h)
                continue
            return r
        return None

    def preempt(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> list[SchedRequest]:
        if not waiting or self.max_preemptions <= 0:
            return []
        cand = self._best_waiting()
        if cand is None or cand.arrival_s > self._prev_step:
            return []  # only requests that already missed an admission round
        eligible = [
            r
            for r in running
            if r.num_preemptions < self.max_preemptions and r.index not in self._urgent
        ]
        if not eligible:
            return []
        if self.max_preempt_per_step == 1:
            victims = [max(eligible, key=_sched_key)]
        else:
            victims = heapq.nlargest(self.max_preempt_per_step, eligible, key=_sched_key)
        out: list[SchedRequest] = []
        urgent = self.urgent_preempt and cand.index in self._urgent
        for v in victims:
            # recomputing the victim's tokens stalls every running request for that prefill
            cost = (
                self.recompute_cost_per_token
                * (v.prompt_tokens + v.num_output_tokens)
                * len(running)
            )
            gain = v.sched_key - max(cand.sched_key, 0.0)
            if urgent or gain > self.min_gain_tokens + cost:
                out.append(v)
        for v in out:
            self._running.pop(v.index, None)
            self._push_waiting(v)
        return out

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.observe(requests)
        self._forget(requests)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._forget(requests)

    def _forget(self, requests: Sequence[SchedRequest]) -> None:
        for r in requests:
            for d in (self._adm, self._next_update, self._reqs, self._running, self._ver):
                d.pop(r.index, None)
            self._urgent.discard(r.index)

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "predictor_dir": self.predictor_dir,
            "risk": self.risk,
            "prompt_weight": self.prompt_weight,
            "progress_credit": self.progress_credit,
            "min_delta_tokens": self.min_delta_tokens,
            "rel_delta": self.rel_delta,
            "repredict_every": self.repredict_every,
            "max_preemptions": self.max_preemptions,
            "urgent_preempt": self.urgent_preempt,
            "min_gain_tokens": self.min_gain_tokens,
            "recompute_cost_per_token": self.recompute_cost_per_token,
            "max_wait_s": self.max_wait_s,
            "guard_fraction": self.guard_fraction,
            "slo_tiers": ",".join(self.slo_tiers),
            "slo_fraction": self.slo_fraction,
            **{f"tier_weight_{t}": w for t, w in self.tier_weight.items()},
            "predictor_failed": self.lengths.failed,
        }
