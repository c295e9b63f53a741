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

Cost per engine step (docs/BENCHMARKS.md section 2): no scan of the running batch. Requests the
engine preempted for memory are found only when the running set changed size without a hook
(every other change comes through ``on_admit``/``on_finish``/``on_abort``/``preempt``); the
voluntary-preemption victim comes from a lazy max-heap of eligible running requests keyed by
``sched_key`` (ties: the earliest admitted, as ``max`` over the engine's running list), whose
stale entries are dropped when they reach the top. Same schedule as scanning every step
(``tests/scheduler/test_policies.py``); *when* re-prediction happens is unchanged (progress
thresholds ``min_delta_tokens``/``rel_delta``, checked every ``repredict_every`` steps), and the
batched drift-model call is what remains of the per-step cost.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from data.schema import TIER_SLOS, TIERS, runtime_class
from scheduler.policies.base import Policy
from scheduler.policies.estimates import LearnedLengths
from scheduler.request import SchedRequest, Status

URGENT_OFFSET = -1e12  # urgent keys: URGENT_OFFSET + deadline (EDF, ahead of every score)
THROUGHPUT_WINDOW = 256  # finished requests behind the measured seconds per token
DEFAULT_SECONDS_PER_TOKEN = 0.002  # before 32 have finished (~500 tok/s: one L4, batched)


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
        repredict_every: int | None = None,
        max_preemptions: int = 0,
        max_preempt_per_step: int = 1,
        urgent_preempt: bool = False,
        min_gain_tokens: float = 256.0,
        recompute_cost_per_token: float = 0.01,
        max_wait_s: float | None = None,
        guard_fraction: float = 0.5,
        slo_tiers: Sequence[str] = (),
        slo_fraction: float = 0.5,
        recalibrate: bool = False,
        require_drift: bool = True,
        boost_gamma: float | None = None,
        seconds_per_token: float | None = None,
    ) -> None:
        self.predictor_dir = str(predictor_dir)
        # learned gamma-Boost ranking (see _boosted): None = rank on the score itself
        if boost_gamma is not None and not boost_gamma > 0:
            raise ValueError(f"drift: boost_gamma {boost_gamma!r}: expected > 0 or null")
        self.boost_gamma = None if boost_gamma is None else float(boost_gamma)
        self.seconds_per_token = None if seconds_per_token is None else float(seconds_per_token)
        self._size_sum = 0.0  # admission p50s seen (for the boost's size scale)
        self._size_n = 0
        self._done: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW)
        self._done_tokens = 0
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
        # None: no re-prediction (admission estimates only)
        self.repredict_every = None if repredict_every is None else max(1, int(repredict_every))
        self.max_preemptions = int(max_preemptions)
        self.max_preempt_per_step = int(max_preempt_per_step)
        self.urgent_preempt = bool(urgent_preempt)
        self.min_gain_tokens = float(min_gain_tokens)
        self.recompute_cost_per_token = float(recompute_cost_per_token)
        # None: no starvation guard (only the SLO urgency of slo_tiers, if any)
        self.max_wait_s = math.inf if max_wait_s is None else float(max_wait_s)
        self.guard_fraction = float(guard_fraction)
        bad = [t for t in slo_tiers if t not in TIERS]
        if bad:
            raise ValueError(f"drift: slo_tiers {bad} not in {list(TIERS)}")
        self.slo_tiers = tuple(slo_tiers)
        self.slo_fraction = float(slo_fraction)
        # waiting time after which a request becomes urgent by the starvation guard (s)
        self._guard_after = self.guard_fraction * self.max_wait_s
        self._adm: dict[int, np.ndarray] = {}  # index -> admission (p50, p90), recalibrated
        self._next_update: dict[int, int] = {}  # index -> generated count for next prediction
        self._urgent: set[int] = set()
        self._promo: list[tuple[float, int]] = []  # (time it becomes urgent, index)
        self._reqs: dict[int, SchedRequest] = {}  # live requests by index
        self._running: dict[int, SchedRequest] = {}  # admitted and not (yet seen) preempted
        self._wait_heap: list[tuple[float, int, int]] = []  # (key, index, version) of waiting
        self._ver: dict[int, int] = {}
        self._changed: list[SchedRequest] = []
        # Running requests eligible for voluntary preemption, as a lazy max-heap of
        # (-sched_key, admission sequence, index): an entry is valid while the request still
        # runs with that key (checked when it reaches the top), so the victim is found in
        # O(log n) amortised instead of a scan of the running batch every step. The admission
        # sequence breaks ties as ``max`` over the engine's running list (admission order) did.
        self._victims: list[tuple[float, int, int]] = []
        self._seq: dict[int, int] = {}  # index -> admission sequence number
        self._next_seq = 0
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

    # ------------------------------------------------------------------ gamma-Boost
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
        """gamma-Boost (Yu & Scully, SIGMETRICS 2024) with the learned size: the key is the
        *boosted arrival time* ``arrival_s - tau * b(work)``, ``b(s) = -log(1 - exp(-g s)) / g``
        tokens, ``g = boost_gamma / mean predicted size``. Small jobs get large boosts (SJF on
        the prediction between close arrivals) but every boost is bounded, so a request that
        is predicted long is overtaken only by requests that arrived less than ``tau * b(1)``
        seconds after it: a starvation bound that holds under sustained overload, where an
        urgency rule ("oldest first once late") degrades to FIFO. gamma -> 0: SJF; large: FIFO."""
        g = self.boost_gamma / max(1.0, self._size_sum / max(1, self._size_n))  # type: ignore[operator]
        b = -math.log(-math.expm1(-g * max(1.0, work))) / g
        return r.arrival_s - self._tau() * b

    def _set(self, r: SchedRequest, p50: float, p90: float, now: float) -> None:
        r.est_remaining = p50
        r.est_updated_at_tokens = r.num_output_tokens
        total = r.num_output_tokens + p50
        r.record_estimate(now, total, runtime_class(r.prompt_tokens + total))
        if r.index not in self._urgent:
            score = self._score(r, p50, p90)
            r.sched_key = score if self.boost_gamma is None else self._boosted(r, score)
        g = r.num_output_tokens
        self._next_update[r.index] = g + max(self.min_delta_tokens, int(self.rel_delta * g))
        if r.index in self._running:
            self._push_victim(r)

    def _push_waiting(self, r: SchedRequest) -> None:
        v = self._ver.get(r.index, 0) + 1
        self._ver[r.index] = v
        heapq.heappush(self._wait_heap, (r.sched_key, r.index, v))

    def _push_victim(self, r: SchedRequest) -> None:
        if r.num_preemptions < self.max_preemptions and r.index not in self._urgent:
            heapq.heappush(self._victims, (-r.sched_key, self._seq[r.index], r.index))
            if len(self._victims) > 4 * len(self._running) + 256:
                self._compact_victims()

    def _compact_victims(self) -> None:
        # stale entries below the top are never popped: rebuild from the running set
        # (O(running), amortised over >= 3 * running pushes)
        self._victims = [
            (-r.sched_key, self._seq[i], i)
            for i, r in self._running.items()
            if r.status is Status.RUNNING
            and r.num_preemptions < self.max_preemptions
            and i not in self._urgent
        ]
        heapq.heapify(self._victims)

    def _top_victims(self, k: int) -> list[SchedRequest]:
        """The (up to) ``k`` eligible running requests with the largest keys (ties: the
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
                or r.num_preemptions >= self.max_preemptions
                or e[2] in self._urgent
            ):
                heapq.heappop(h)  # finished, preempted or no longer eligible: never again
                continue
            if -e[0] != r.sched_key:  # key changed outside _set (e.g. fallback keys): re-push
                heapq.heapreplace(h, (-r.sched_key, e[1], e[2]))
                continue
            if k == 1:
                return [r]  # the common case: peek, nothing to restore
            heapq.heappop(h)
            if taken and taken[-1] == e:
                continue  # duplicate entry (the key went back to an earlier value)
            taken.append(e)
            out.append(r)
        for e in taken:
            heapq.heappush(h, e)
        return out

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    def take_changed(self) -> Sequence[SchedRequest]:
        out, self._changed = self._changed, []
        return out

    # ------------------------------------------------------------------ hooks
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
            after = self._urgent_after(r)
            if math.isfinite(after):  # no guard and no SLO tier: never
                heapq.heappush(self._promo, (r.arrival_s + after, r.index))
            self._push_waiting(r)

    def _urgent_after(self, r: SchedRequest) -> float:
        """Waiting time (s) after which ``r`` becomes urgent: the guard's, or for a tier in
        ``slo_tiers`` ``slo_fraction`` of the request's own TTFT SLO (the client's, else its
        tier's ``data.schema.TIER_SLOS``) when that comes sooner."""
        if r.tier not in self.slo_tiers:
            return self._guard_after
        slo = r.slo_ttft_s if math.isfinite(r.slo_ttft_s) else TIER_SLOS[r.tier][0]
        return min(self._guard_after, self.slo_fraction * slo)

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._adopt(r)

    def _adopt(self, r: SchedRequest) -> None:
        self._running[r.index] = r
        self._seq[r.index] = self._next_seq
        self._next_seq += 1
        self._push_victim(r)

    def _reconcile(self, running: Sequence[SchedRequest]) -> None:
        """Our running set differs from the engine's: requests it preempted for memory (they
        left ``running`` without a hook) go back to the waiting heap; running requests we never
        saw admitted (a policy that took over a live run) are adopted."""
        for idx in [i for i, r in self._running.items() if r.status is Status.WAITING]:
            self._push_waiting(self._running.pop(idx))
        if len(self._running) != len(running):
            for r in running:
                if r.index not in self._running and r.index in self._reqs:
                    self._adopt(r)

    def on_step(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        self._prev_step, self._now = self._now, now
        # requests preempted for memory since the last step: back into our view of the waiting
        # queue. Every other change of the running set comes through a hook (on_admit,
        # on_finish, on_abort, our own preempt), so the sets can only differ in size after such
        # a preemption: compare sizes (O(1)) instead of scanning the batch every step.
        if len(self._running) != len(running):
            self._reconcile(running)
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
        if self.repredict_every is None or not waiting or self._step % self.repredict_every:
            return
        nu = self._next_update
        todo = [r for r in running if r.num_output_tokens >= nu.get(r.index, 0)]
        if todo:
            adm = np.stack([self._adm[r.index] for r in todo])
            rem = self.lengths.remaining(todo, adm)
            for r, (p50, p90) in zip(todo, rem.tolist()):  # floats, not numpy row views
                self._set(r, p50, p90, now)

    def fast_forward_horizon(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> float:
        """Unbounded when no step hook can change anything while only decode progresses: no
        re-prediction, no voluntary preemption and no urgency promotion pending (the default
        configuration); else every step."""
        if self.repredict_every is None and self.max_preemptions <= 0 and not self._promo:
            return math.inf
        return 1

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
        victims = self._top_victims(self.max_preempt_per_step)
        if not victims:
            return []
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
            "boost_gamma": self.boost_gamma,
            "seconds_per_token": self.seconds_per_token,
            "predictor_failed": self.lengths.failed,
        }
