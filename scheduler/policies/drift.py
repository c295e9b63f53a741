"""``drift`` (ours): learned shortest-predicted-work ordering, a cost-aware memory victim, and
reclassification driven by events.

The core (always on): each request's (p50, p90) output length from the learned predictor at
arrival (``prepare``/``on_arrival``, batched), ranked by
``score = tier_weight * (p50 + risk * (p90 - p50) + prompt_weight * uncomputed prompt)`` tokens,
lowest first; with ``boost_gamma`` the key is the learned gamma-Boost of that score (the one tail
knob, below). ``key`` only reads ``sched_key``: predictors run in batched hooks.

``prompt_weight`` (default 0.3 tokens of work per uncomputed prompt token) is why the order is
shortest predicted *work*, not shortest predicted output: vLLM admits a request only when blocks
for its whole prompt are free and stops admitting at the first that does not fit, so a long
prompt at the head of the queue blocks every request behind it and its prefill stalls the batch.
Measured on the generalisation suite (docs/ABLATIONS.md, arm ``drift-prompt``): 0.1 and 0.3 each
cut mean E2E on every cell (0.3 by 4-52%, 3 seeds), 1.0 matched 0.3 on the five workloads tried;
the optimum is flat, so it is a default, not a tuned knob.

The memory victim is separate from the order (``Policy.victim``): by default
:class:`~scheduler.policies.victims.CostAwareVictim` (evict where the recompute waste is small
relative to the expected remaining tokens, with a protection window after re-admission and an
eviction cap), because vLLM's rule (evict the largest order key) makes the request ranked
longest the victim every time memory runs short (docs/ABLATIONS.md: ordering and victim arms).

The admission gate (``admission_headroom``, default 0.05; ``Policy``'s doc): a waiting request
is admitted only if 5% of the running requests' expected remaining tokens stay free beyond its
sequence, so it is not admitted into memory its neighbours are about to grow into (then evicted
and recomputed). Measured (docs/ABLATIONS.md, arm ``drift-headroom``): lower mean E2E on 18 of
20 suite cells, the recompute tax cut to 5-46% of vLLM-victim drift's; memory_bound, where the
KV cache itself is the bottleneck, pays <= 0.6% for the memory kept free. A budget from the
running requests' predicted peak (LightLLM's past-future rule) reserved too little under our
prediction error and lost to the flat 5% on every cell tried.

Mechanisms, each a config group of the policy (``scheduler.policies.drift_config``; null: off;
on by default: the victim rule and the prompt term, the ones that paid on average on the
generalisation suite, docs/ABLATIONS.md; ``reclassify`` paid before the prompt term and is neutral
with it: +0.02% mean E2E when removed, 30 of 60 paired seeds either way):

* ``reclassify``: re-predict a request's remaining tokens with the drift model (given the
  tokens generated so far) when it is preempted (its new order key as it re-enters the queue)
  or when a running request passes its latest predicted median (an overrun: the victim rule
  reads the new estimate). The runtime class is re-derived (``n_reclassified``). Overruns are
  found without scanning the batch every step: the policy knows, in tokens of progress of a
  reference running request, when the earliest running request can next pass its threshold
  (every running request gains at most one token per step), and that is also its
  ``fast_forward_horizon``.
* ``preemption``: voluntary, bounded preemption for a better waiting request (gain test in
  tokens of work, whatever the key's units).
* ``urgency``: tier SLO urgency and a starvation guard (EDF on the time a request became
  urgent, ahead of every other key).
* ``recalibrate``: the online per-(tenant, category) recalibration (``predictor.online``).
* ``online``: the online learner (``predictor.online.OnlineLevels``: log-length levels per
  generator, tenant and category, replacing ``recalibrate``) learns from completions and,
  censoring-aware, from requests still running ("longer than g tokens") at every overrun
  (``reclassify.overrun``) and preemption, so a new generator's scale is corrected for the
  requests admitted after its first completions and overruns.

The tail knob ``boost_gamma`` (gamma-Boost, Yu & Scully, SIGMETRICS 2024): the key is the
*boosted arrival time* ``arrival_s - tau * b(score)``, ``b(s) = -log(1 - exp(-g s)) / g``
tokens with ``g = boost_gamma / mean predicted size``; small gamma is SJF on the prediction,
large gamma FIFO; every boost is bounded, so a request predicted long is overtaken only by
requests that arrived less than ``tau * b(1)`` seconds after it.

If the predictor raises or returns NaN it logs once and the calibrated heuristic takes over
(``scheduler.policies.estimates``); missing artifacts raise, naming ``python train.py``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from data.schema import TIER_SLOS, TIERS, runtime_class
from scheduler.policies.base import Policy, check_admission_headroom
from scheduler.policies.drift_config import (
    Preemption,
    Reclassify,
    Urgency,
    describe_group,
    from_mapping,
)
from scheduler.policies.estimates import LearnedLengths
from scheduler.policies.victims import CostAwareVictim, VictimRule
from scheduler.request import SchedRequest, Status

URGENT_OFFSET = -1e12  # urgent keys: URGENT_OFFSET + the time the request became urgent (EDF)
THROUGHPUT_WINDOW = 256  # finished requests behind the measured seconds per token
DEFAULT_SECONDS_PER_TOKEN = 0.002  # before 32 have finished (~500 tok/s: one L4, batched)


class DriftPolicy(Policy):
    name: ClassVar[str] = "drift"
    dynamic_keys: ClassVar[bool] = True
    incremental_keys: ClassVar[bool] = True
    uses_step_hook: ClassVar[bool] = True
    # the default memory-victim rule (a config's ``victim`` node replaces it)
    victim: VictimRule | None = CostAwareVictim()

    def __init__(
        self,
        predictor_dir: str = "artifacts",
        risk: float = 0.0,
        prompt_weight: float = 0.3,
        tier_weight: Mapping[str, float] | None = None,
        reclassify: Mapping[str, Any] | None = None,
        preemption: Mapping[str, Any] | None = None,
        urgency: Mapping[str, Any] | None = None,
        boost_gamma: float | None = None,
        seconds_per_token: float | None = None,
        recalibrate: bool = False,
        online: bool | Mapping[str, Any] | None = None,
        require_drift: bool = True,
        admission_headroom: float | None = 0.05,
    ) -> None:
        self.predictor_dir = str(predictor_dir)
        # the admission gate (policies.base): 5% of the running requests' expected remaining
        # tokens kept free; null = vLLM's rule (docs/ABLATIONS.md: drift-headroom)
        self.admission_headroom = check_admission_headroom(admission_headroom)
        if boost_gamma is not None and not boost_gamma > 0:
            raise ValueError(f"drift: boost_gamma {boost_gamma!r}: expected > 0 or null")
        self.boost_gamma = None if boost_gamma is None else float(boost_gamma)
        self.seconds_per_token = None if seconds_per_token is None else float(seconds_per_token)
        self.reclassify = from_mapping(Reclassify, reclassify, "drift.reclassify")
        self.preemption = from_mapping(Preemption, preemption, "drift.preemption")
        self.urgency = from_mapping(Urgency, urgency, "drift.urgency")
        if self.preemption is not None and self.preemption.urgent and self.urgency is None:
            raise ValueError("drift: preemption.urgent needs urgency (nobody is ever urgent)")
        self.recalibrate = bool(recalibrate)
        self.online = online if isinstance(online, bool | None) else dict(online)
        self.lengths = LearnedLengths(
            predictor_dir, require_drift=require_drift, recalibrate=recalibrate, online=online
        )
        self.risk = float(risk)
        self.prompt_weight = float(prompt_weight)
        tw = dict(tier_weight or {})
        unknown = sorted(set(tw) - set(TIERS))
        if unknown:
            raise ValueError(f"drift: tier_weight {unknown} not in {list(TIERS)}")
        self.tier_weight = {t: float(tw.get(t, 1.0)) for t in TIERS}
        self._size_sum = 0.0  # admission p50s seen (the boost's size scale)
        self._size_n = 0
        self._done: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW)
        self._done_tokens = 0
        self._adm: dict[int, np.ndarray] = {}  # index -> admission (p50, p90), recalibrated
        self._work: dict[int, float] = {}  # index -> score (tokens of predicted work)
        self._next_update: dict[int, int] = {}  # index -> generated count of its next estimate
        self._urgent: set[int] = set()
        self._promo: list[tuple[float, int]] = []  # (time it becomes urgent, index)
        self._reqs: dict[int, SchedRequest] = {}  # live requests by index
        self._running: dict[int, SchedRequest] = {}  # admitted and not preempted
        self._wait_heap: list[tuple[float, int, int]] = []  # (work, index, version) of waiting
        self._ver: dict[int, int] = {}
        self._changed: list[SchedRequest] = []
        # Voluntary-preemption victims: a lazy max-heap of (-work, admission sequence, index);
        # an entry is valid while the request runs with that work (checked at the top).
        self._victims: list[tuple[float, int, int]] = []
        self._seq: dict[int, int] = {}  # index -> admission sequence number
        self._next_seq = 0
        # Overrun detection (reclassify.overrun): `_due_in` tokens of progress of the reference
        # running request `_ref` (from `_ref_tokens`, while its preemption count is `_ref_pre`)
        # until the earliest running request can pass its threshold.
        self._ref: SchedRequest | None = None
        self._ref_tokens = 0
        self._ref_pre = 0
        self._due_in = math.inf
        self._prev_step = float("-inf")  # start time of the previous step
        self._now = float("-inf")

    # ------------------------------------------------------------------ keys
    def _score(self, r: SchedRequest, p50: float, p90: float) -> float:
        left_prompt = max(0, r.prompt_tokens - r.num_computed_tokens)
        return self.tier_weight[r.tier] * (
            p50 + self.risk * max(0.0, p90 - p50) + self.prompt_weight * left_prompt
        )

    def _tau(self) -> float:
        """Seconds of engine time per generated token: the completion throughput of the last
        ``THROUGHPUT_WINDOW`` finished requests (``seconds_per_token`` when set, or before
        enough requests have finished)."""
        if self.seconds_per_token is not None:
            return self.seconds_per_token
        d = self._done
        if len(d) < 32:
            return DEFAULT_SECONDS_PER_TOKEN
        span = d[-1][0] - d[0][0]
        tokens = self._done_tokens - d[0][1]
        return span / tokens if span > 0 and tokens > 0 else DEFAULT_SECONDS_PER_TOKEN

    def _boosted(self, r: SchedRequest, work: float) -> float:
        """The boosted arrival time of ``r`` with ``work`` tokens (module docstring)."""
        g = self.boost_gamma / max(1.0, self._size_sum / max(1, self._size_n))  # type: ignore[operator]
        b = -math.log(-math.expm1(-g * max(1.0, work))) / g
        return r.arrival_s - self._tau() * b

    def _set(self, r: SchedRequest, p50: float, p90: float, now: float) -> None:
        """A new estimate of ``r``'s remaining tokens: estimate fields, work, key, threshold."""
        r.est_remaining = p50
        r.est_updated_at_tokens = r.num_output_tokens
        total = r.num_output_tokens + p50
        r.record_estimate(now, total, runtime_class(r.prompt_tokens + total))
        work = self._work[r.index] = self._score(r, p50, p90)
        if r.index not in self._urgent:
            r.sched_key = work if self.boost_gamma is None else self._boosted(r, work)
        delta = self.reclassify.min_delta_tokens if self.reclassify is not None else 1
        # next estimate once the request passes this one's median (an overrun)
        self._next_update[r.index] = r.num_output_tokens + max(delta, math.ceil(p50))
        if r.index in self._running:
            self._push_victim(r)

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    def take_changed(self) -> Sequence[SchedRequest]:
        out, self._changed = self._changed, []
        return out

    # ------------------------------------------------------------------ queues
    def _push_waiting(self, r: SchedRequest) -> None:
        v = self._ver.get(r.index, 0) + 1
        self._ver[r.index] = v
        heapq.heappush(self._wait_heap, (self._work[r.index], r.index, v))

    def _eligible(self, r: SchedRequest) -> bool:
        pre = self.preemption
        return (
            pre is not None
            and r.n_policy_preemptions < pre.max_per_request
            and r.index not in self._urgent
        )

    def _push_victim(self, r: SchedRequest) -> None:
        if self._eligible(r):
            heapq.heappush(self._victims, (-self._work[r.index], self._seq[r.index], r.index))
            if len(self._victims) > 4 * len(self._running) + 256:
                # stale entries below the top are never popped: rebuild from the running set
                # (O(running), amortised over >= 3 * running pushes)
                self._victims = [
                    (-self._work[i], self._seq[i], i)
                    for i, q in self._running.items()
                    if q.status is Status.RUNNING and self._eligible(q)
                ]
                heapq.heapify(self._victims)

    def _top_victims(self, k: int) -> list[SchedRequest]:
        """The (up to) ``k`` eligible running requests with the most predicted work (ties: the
        earliest admitted), popping stale entries; the returned ones stay in the heap."""
        h, run = self._victims, self._running
        out: list[SchedRequest] = []
        taken: list[tuple[float, int, int]] = []
        while h and len(out) < k:
            e = h[0]
            r = run.get(e[2])
            if (
                r is None
                or r.status is not Status.RUNNING
                or self._seq.get(e[2]) != e[1]
                or -e[0] != self._work.get(e[2])
                or not self._eligible(r)
            ):
                heapq.heappop(h)  # ended, preempted, re-estimated or ineligible: never again
                continue
            heapq.heappop(h)
            if taken and taken[-1] == e:
                continue  # duplicate entry (the work went back to an earlier value)
            taken.append(e)
            out.append(r)
        for e in taken:
            heapq.heappush(h, e)
        return out

    def _best_waiting(self) -> SchedRequest | None:
        h = self._wait_heap
        while h:
            _work, idx, v = h[0]
            r = self._reqs.get(idx)
            if r is None or v != self._ver.get(idx) or r.status is not Status.WAITING:
                heapq.heappop(h)
                continue
            return r
        return None

    # ------------------------------------------------------------------ arrival and admission
    def prepare(self, requests: Sequence[SchedRequest]) -> None:
        self.lengths.featurize(requests)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        adm = np.asarray(self.lengths.admission(requests), dtype=np.float64)
        for r, row, (p50, p90) in zip(requests, adm, adm.tolist()):
            self._reqs[r.index] = r
            self._adm[r.index] = row
            r.est_output_tokens = p50
            r.est_output_p90 = p90
            self._size_sum += p50
            self._size_n += 1
            self._set(r, p50, p90, now)
            if self.urgency is not None:
                after = self._urgent_after(r)
                if math.isfinite(after):
                    heapq.heappush(self._promo, (r.arrival_s + after, r.index))
            self._push_waiting(r)

    def _urgent_after(self, r: SchedRequest) -> float:
        """Waiting time (s) after which ``r`` becomes urgent: the guard's, or for a tier in
        ``slo_tiers`` ``slo_fraction`` of the request's own TTFT SLO (the client's, else its
        tier's ``data.schema.TIER_SLOS``) when that comes sooner."""
        u = self.urgency
        assert u is not None
        if r.tier not in u.slo_tiers:
            return u.guard_after_s
        slo = r.slo_ttft_s if math.isfinite(r.slo_ttft_s) else TIER_SLOS[r.tier][0]
        return min(u.guard_after_s, u.slo_fraction * slo)

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._adopt(r)

    def _adopt(self, r: SchedRequest) -> None:
        self._running[r.index] = r
        self._seq[r.index] = self._next_seq
        self._next_seq += 1
        self._push_victim(r)
        if self.reclassify is not None and self.reclassify.overrun:
            due = self._next_update[r.index] - r.num_output_tokens
            self._due_in = min(self._due_in, self._ref_progress() + due)

    # ------------------------------------------------------------------ events
    def on_preempt(self, requests: Sequence[SchedRequest], now: float) -> None:
        """Back to the waiting side (ours were moved there by ``preempt`` already); with
        ``reclassify.preempted`` re-predicted first, so each waits with its remaining work."""
        back = [r for r in requests if self._running.pop(r.index, None) is not None]
        self.lengths.observe_running(requests)  # (censored: longer than what they generated)
        rc = self.reclassify
        if rc is not None and rc.preempted:
            ours = [r for r in requests if r.index in self._adm]
            self._repredict([r for r in ours if r.num_output_tokens > 0], now)
        for r in back:
            self._push_waiting(r)

    def _repredict(self, todo: list[SchedRequest], now: float) -> None:
        """Remaining (p50, p90) given the tokens generated so far (one batch); waiting
        requests whose key changed are reported through ``take_changed``."""
        if not todo:
            return
        adm = np.stack([self._adm[r.index] for r in todo])
        rem = self.lengths.remaining(todo, adm)
        for r, (p50, p90) in zip(todo, rem.tolist()):  # floats, not numpy row views
            self._set(r, p50, p90, now)
            if r.status is Status.WAITING:
                self._changed.append(r)
                self._push_waiting(r)

    def _ref_progress(self) -> float:
        """Tokens the reference request generated since the last overrun scan; inf (a scan
        is due) when there is none, or it left the batch or was preempted in between."""
        ref = self._ref
        if ref is None or ref.status is not Status.RUNNING or ref.num_preemptions != self._ref_pre:
            return math.inf
        return ref.num_output_tokens - self._ref_tokens

    def _steps_to_overrun(self) -> float:
        """Steps before any running request can pass its threshold (<= 0: scan now)."""
        p = self._ref_progress()
        return 0.0 if p == math.inf else self._due_in - p

    def _scan_overruns(self, running: Sequence[SchedRequest], now: float) -> None:
        nu = self._next_update
        late = [r for r in running if r.num_output_tokens >= nu.get(r.index, math.inf)]
        if late:
            self.lengths.observe_running(late)  # overruns: censored observations
        self._repredict(late, now)
        ref = self._ref = running[0]
        self._ref_tokens, self._ref_pre = ref.num_output_tokens, ref.num_preemptions
        self._due_in = min(nu.get(r.index, math.inf) - r.num_output_tokens for r in running)

    def on_step(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        self._prev_step, self._now = self._now, now
        # every change of the running set comes through a hook (on_admit, on_preempt,
        # on_finish, on_abort), so the sizes differ only after a take-over of a live run
        if len(self._running) != len(running):
            for r in running:
                if r.index not in self._running and r.index in self._reqs:
                    self._adopt(r)
        if self._promo:
            self._promote(now)
        rc = self.reclassify
        if rc is not None and rc.overrun and running and self._steps_to_overrun() <= 0:
            self._scan_overruns(running, now)

    def _promote(self, now: float) -> None:
        """Waiting requests past their urgency time become urgent (EDF on that time)."""
        promo = self._promo
        while promo and promo[0][0] <= now:
            t, idx = heapq.heappop(promo)
            r = self._reqs.get(idx)
            if (
                r is None
                or idx in self._urgent
                or r.status is not Status.WAITING
                or not math.isnan(r.admitted_s)
            ):
                continue  # finished, or already started: the guard bounds the first wait
            self._urgent.add(idx)
            r.sched_key = URGENT_OFFSET + t  # finite: the earliest urgency time goes first
            self._changed.append(r)

    def fast_forward_horizon(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> float:
        """Steps for which the hooks change nothing while only decode progresses: up to the
        next possible overrun; 1 while a promotion is pending or preemption may act."""
        if self._promo or (self.preemption is not None and waiting):
            return 1
        rc = self.reclassify
        if rc is not None and rc.overrun and running:
            return max(1.0, self._steps_to_overrun())
        return math.inf

    def preempt(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> list[SchedRequest]:
        pre = self.preemption
        if pre is None or not waiting:
            return []
        cand = self._best_waiting()
        if cand is None or cand.arrival_s > self._prev_step:
            return []  # only requests that already missed an admission round
        victims = self._top_victims(pre.per_step)
        out: list[SchedRequest] = []
        urgent = pre.urgent and cand.index in self._urgent
        cand_work = 0.0 if cand.index in self._urgent else max(self._work[cand.index], 0.0)
        for v in victims:
            # recomputing the victim's tokens stalls every running request for that prefill
            cost = (
                pre.recompute_cost_per_token
                * (v.prompt_tokens + v.num_output_tokens)
                * len(running)
            )
            if urgent or self._work[v.index] - cand_work > pre.min_gain_tokens + cost:
                out.append(v)
        for v in out:
            self._running.pop(v.index, None)
            self._push_waiting(v)
        return out

    # ------------------------------------------------------------------ ends
    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._done_tokens += r.num_output_tokens
            self._done.append((now, self._done_tokens))
        self.lengths.observe(requests)
        self._forget(requests)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.forget(requests)  # features of aborted requests would leak otherwise
        self._forget(requests)

    def _forget(self, requests: Sequence[SchedRequest]) -> None:
        for r in requests:
            for d in (
                self._adm,
                self._work,
                self._next_update,
                self._reqs,
                self._running,
                self._ver,
                self._seq,
            ):
                d.pop(r.index, None)
            self._urgent.discard(r.index)

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "predictor_dir": self.predictor_dir,
            "risk": self.risk,
            "prompt_weight": self.prompt_weight,
            **{f"tier_weight_{t}": w for t, w in self.tier_weight.items()},
            **describe_group("reclassify", self.reclassify),
            **describe_group("preemption", self.preemption),
            **describe_group("urgency", self.urgency),
            "boost_gamma": self.boost_gamma,
            "seconds_per_token": self.seconds_per_token,
            "recalibrate": self.recalibrate,
            "online": self.online if not isinstance(self.online, dict) else str(self.online),
            "admission_headroom": self.admission_headroom,
            "predictor_failed": self.lengths.failed,
        }
