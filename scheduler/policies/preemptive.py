"""Shared machinery of the preemptive baselines (``uniboost``, ``trail``, ``srpt_oracle``).

:class:`PreemptivePolicy` keeps the bookkeeping every policy with voluntary preemption needs in
both engines, so that each baseline only says how it keys a request and when a swap pays:

* a lazy min-heap of waiting requests keyed by ``sched_key`` (versioned: an entry is valid
  while the request waits with that key), whose head gives the preemption candidates;
* the running set: requests the engine preempted for memory (``on_preempt``) are re-keyed
  (``_requeue_key``) at the next ``on_step``, as re-entering the queue at that step, and
  reported through ``take_changed``;
* **re-keying of running requests in batches**, every ``rekey_every`` generated tokens of a
  reference running request (progress, not hook calls: the simulator's decode fast-forward
  skips hooks), after which the eligible victims are sorted once, largest key first. Between
  re-keyings only decode progress happens, so a victim's key is at most ``rekey_every`` tokens
  stale and the recompute cost of preempting it only grows: ``fast_forward_horizon`` is the
  number of tokens to the next re-keying;
* ``preempt``: the waiting requests that already missed an admission round, best first, are
  paired with the eligible running requests, worst first; a pair is swapped while
  ``_gain_tokens(victim, candidate)`` exceeds ``min_gain_tokens`` plus the recompute cost
  ``recompute_cost_per_token * (victim prompt + generated tokens) * running requests`` (the
  recompute prefill stalls the whole batch), at most ``max_preempt_per_step`` and
  ``max_preempt_fraction`` of the batch per step and ``max_preemptions`` times per request.

Every engine calls ``key`` for the memory victim; subclasses return ``sched_key`` or a live
value. Per step (no re-keying, nothing to preempt) the cost is O(1) plus the engine's waiting
list; a re-keying is O(running log running), amortised over ``rekey_every`` steps.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import ClassVar

from scheduler.policies.base import Policy
from scheduler.request import SchedRequest, Status


def recompute_tokens(r: SchedRequest) -> int:
    """Tokens a preemption by recompute throws away and must compute again (prompt + output)."""
    return r.prompt_tokens + r.num_output_tokens


class PreemptivePolicy(Policy):
    """Base of the preemptive baselines (module docstring); subclasses set ``sched_key`` of new
    requests in ``on_arrival`` and then call :meth:`_enqueue`."""

    dynamic_keys: ClassVar[bool] = True
    incremental_keys: ClassVar[bool] = True
    uses_step_hook: ClassVar[bool] = True

    def __init__(
        self,
        max_preemptions: int | None = 1,
        max_preempt_per_step: int | None = 1,
        max_preempt_fraction: float = 0.5,
        min_gain_tokens: float = 0.0,
        recompute_cost_per_token: float = 0.0,
        rekey_every: int = 16,
    ) -> None:
        if max_preemptions is not None and max_preemptions < 0:
            raise ValueError(f"{self.name}: max_preemptions must be >= 0 or null")
        if not 0.0 <= max_preempt_fraction <= 1.0:
            raise ValueError(
                f"{self.name}: max_preempt_fraction must be in [0, 1], got {max_preempt_fraction}"
            )
        self.max_preemptions = None if max_preemptions is None else int(max_preemptions)
        self.max_preempt_per_step = (
            None if max_preempt_per_step is None else int(max_preempt_per_step)
        )
        self.max_preempt_fraction = float(max_preempt_fraction)
        self.min_gain_tokens = float(min_gain_tokens)
        self.recompute_cost_per_token = float(recompute_cost_per_token)
        self.rekey_every = max(1, int(rekey_every))
        self._reqs: dict[int, SchedRequest] = {}  # live (arrived, not ended) by index
        self._running: dict[int, SchedRequest] = {}  # admitted, not (yet seen) preempted
        self._wait: list[tuple[float, float, int, int]] = []  # (key, arrival, index, version)
        self._ver: dict[int, int] = {}
        self._enq_t: dict[int, float] = {}  # index -> time it (re-)entered the queue
        self._changed: list[SchedRequest] = []
        self._preempted: list[SchedRequest] = []  # reported by on_preempt, requeued in on_step
        self._victims: list[SchedRequest] = []  # eligible running, largest key first
        self._ref: SchedRequest | None = None  # running request whose progress times re-keying
        self._ref_tokens = 0  # its generated tokens at the last re-keying
        self._prev_step = -math.inf  # time of the previous on_step
        self._now = -math.inf

    # ------------------------------------------------------------------ subclass API
    def _running_keys(self, running: Sequence[SchedRequest], now: float) -> None:
        """Re-key running requests (set ``sched_key``; batched: predictors run here)."""
        for r in running:
            r.sched_key = self.key(r, now)

    def _requeue_key(self, r: SchedRequest, now: float) -> float:
        """Key of a running request that goes back to the queue (its KV is dropped)."""
        return r.sched_key

    def _gain_tokens(self, victim: SchedRequest, cand: SchedRequest) -> float:
        """What swapping ``victim`` for ``cand`` gains, in tokens of work."""
        return victim.sched_key - cand.sched_key

    def _eligible(self, r: SchedRequest) -> bool:
        """Whether a running request may be preempted voluntarily at all."""
        return self.max_preemptions is None or r.num_preemptions < self.max_preemptions

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    # ------------------------------------------------------------------ bookkeeping
    def _enqueue(self, r: SchedRequest, now: float) -> None:
        self._reqs[r.index] = r
        v = self._ver.get(r.index, 0) + 1
        self._ver[r.index] = v
        self._enq_t[r.index] = now
        heapq.heappush(self._wait, (r.sched_key, r.arrival_s, r.index, v))

    def _requeue(self, r: SchedRequest, now: float) -> None:
        """A running request went back to the queue (by us or by the engine for memory)."""
        self._running.pop(r.index, None)
        r.sched_key = self._requeue_key(r, now)
        self._enqueue(r, now)
        self._changed.append(r)

    def take_changed(self) -> Sequence[SchedRequest]:
        out, self._changed = self._changed, []
        return out

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._running[r.index] = r

    def _forget(self, requests: Sequence[SchedRequest]) -> None:
        for r in requests:
            for d in (self._reqs, self._running, self._ver, self._enq_t):
                d.pop(r.index, None)
        # (an ended reference request is replaced in on_step, carrying its progress)
        if not self._reqs:  # nothing live: drop stale heap entries and victim references
            self._wait.clear()
            self._victims = []
            self._changed.clear()
            self._preempted.clear()
            self._ref = None

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._forget(requests)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._forget(requests)

    def on_preempt(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._preempted.extend(requests)  # (our own victims left _running in preempt)

    def _reconcile(self, running: Sequence[SchedRequest], now: float) -> None:
        preempted, self._preempted = self._preempted, []
        for r in preempted:
            if r.index in self._running and r.status is Status.WAITING:
                self._requeue(r, now)  # preempted by the engine for memory
        if len(self._running) != len(running):
            for r in running:  # running requests we never saw admitted (a live take-over)
                if r.index not in self._running and r.index in self._reqs:
                    self._running[r.index] = r

    def _tokens_to_rekey(self) -> int:
        ref = self._ref
        if ref is None or ref.status is not Status.RUNNING:
            return 0
        return self.rekey_every - (ref.num_output_tokens - self._ref_tokens)

    def on_step(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        self._prev_step, self._now = self._now, now
        # every change of the running set comes through a hook: O(1) unless something was
        # preempted (or a live run was taken over)
        if self._preempted or len(self._running) != len(running):
            self._reconcile(running, now)
        ref = self._ref
        if ref is not None and ref.status is not Status.RUNNING and running:
            # the reference left the batch: hand its progress to another running request, so
            # re-keying keeps its cadence (a finish or preemption alone forces none)
            done = ref.num_output_tokens - self._ref_tokens
            self._ref = running[0]
            self._ref_tokens = running[0].num_output_tokens - done
        if running and self._tokens_to_rekey() <= 0:
            self._rekey(running, now)

    def _rekey(self, running: Sequence[SchedRequest], now: float) -> None:
        self._running_keys(running, now)
        self._ref = running[0]
        self._ref_tokens = running[0].num_output_tokens
        elig = [r for r in running if self._eligible(r)]
        # largest key first; ties: the later arrival (as the engines' memory victim)
        elig.sort(key=lambda r: (r.sched_key, r.arrival_s, r.index), reverse=True)
        self._victims = elig

    # ------------------------------------------------------------------ preemption
    def _head(self) -> SchedRequest | None:
        """The best waiting request (stale heap entries are dropped on the way)."""
        h = self._wait
        while h:
            _key, _arr, idx, v = h[0]
            r = self._reqs.get(idx)
            if r is None or v != self._ver.get(idx) or r.status is not Status.WAITING:
                heapq.heappop(h)
                continue
            return r
        return None

    def _pop_candidate(self, taken: list[tuple[float, float, int, int]]) -> SchedRequest | None:
        """Pop the best waiting request that already missed an admission round (its entry goes
        to ``taken``, to be pushed back); None when the head may still be admitted this round."""
        h = self._wait
        while h:
            _key, _arr, idx, v = h[0]
            r = self._reqs.get(idx)
            if r is None or v != self._ver.get(idx) or r.status is not Status.WAITING:
                heapq.heappop(h)  # admitted, ended or re-keyed since: never valid again
                continue
            if self._enq_t.get(idx, math.inf) > self._prev_step:
                return None
            taken.append(heapq.heappop(h))
            return r
        return None

    def preempt(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> list[SchedRequest]:
        if not waiting or not running or self.max_preemptions == 0:
            return []
        # at most this fraction of the batch (but one request when the fraction is > 0)
        k = max(int(self.max_preempt_fraction * len(running)), self.max_preempt_fraction > 0)
        if self.max_preempt_per_step is not None:
            k = min(k, self.max_preempt_per_step)
        if k <= 0 or not self._victims:
            return []
        out: list[SchedRequest] = []
        taken: list[tuple[float, float, int, int]] = []
        vi = 0
        n_run = len(running)
        victims = self._victims
        # candidates best first, victims worst first, fetched lazily: the common step (the first
        # pair does not pay) touches one heap entry and one victim
        while len(out) < k:
            c = self._pop_candidate(taken)
            if c is None:
                break
            v = None
            while vi < len(victims):
                q = victims[vi]
                vi += 1
                if q.status is Status.RUNNING and q.index in self._running and self._eligible(q):
                    v = q
                    break
            if v is None:
                break
            cost = self.recompute_cost_per_token * recompute_tokens(v) * n_run
            if self._gain_tokens(v, c) <= self.min_gain_tokens + cost:
                break  # pairs are sorted: later ones gain less
            out.append(v)
        for e in taken:
            heapq.heappush(self._wait, e)
        for v in out:
            self._requeue(v, now)
        return out

    def fast_forward_horizon(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> float:
        """Decode progress alone changes no decision before the next re-keying: sched_keys are
        fixed in between and recompute costs only grow, and the candidates of ``preempt`` are
        the same requests (nothing arrives or ends inside a fast-forward window)."""
        if self._preempted or len(self._running) != len(running):
            return 1  # an engine preemption still to requeue
        head = self._head()
        if head is not None and self._enq_t.get(head.index, math.inf) > self._prev_step:
            return 1  # the best waiting request becomes a preemption candidate next step
        return max(1, self._tokens_to_rekey())

    def _describe_preemption(self) -> dict[str, object]:
        return {
            "max_preemptions": self.max_preemptions,
            "max_preempt_per_step": self.max_preempt_per_step,
            "max_preempt_fraction": self.max_preempt_fraction,
            "min_gain_tokens": self.min_gain_tokens,
            "recompute_cost_per_token": self.recompute_cost_per_token,
            "rekey_every": self.rekey_every,
        }
