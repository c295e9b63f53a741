"""Weighted fair sharing across tenants by token cost, in the spirit of the Virtual Token Counter
(Sheng et al., "Fairness in Serving Large Language Models", OSDI'24).

Every tenant has a counter of the service it received, in weighted tokens divided by the
tenant's weight: ``input_weight`` per prompt token when a request is first admitted and
``output_weight`` per generated token as it is generated (VTC uses 1 and 2). The waiting request
admitted next is the oldest one of the backlogged tenant with the smallest counter. When a tenant
becomes backlogged again its counter is lifted to the smallest counter among backlogged tenants
(or the largest counter when none is), so idle time cannot be banked (VTC's counter lift).

Keys change every step as tokens are generated, so this policy is dynamic; ``ranked`` merges
per-tenant FIFO queues instead of sorting the whole waiting queue, projecting each admission's
prompt cost onto the counter as VTC does when it dispatches several requests at once.

Generated tokens are charged lazily (``_sync``), at most once per engine step and only in steps
that read a counter (``ranked``, ``key``, ``on_arrival``): progress changes only between steps
(each with a new ``now``) and charges add up, so every read sees the same counters as charging
in every ``on_step`` would, without walking all running requests in the steps that read none
(most steps while every slot is taken; docs/BENCHMARKS.md: 5.7x less policy time per step).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

from scheduler.policies.base import Policy
from scheduler.request import SchedRequest, Status


class WeightedFairPolicy(Policy):
    name: ClassVar[str] = "weighted_fair"
    dynamic_keys: ClassVar[bool] = True
    uses_step_hook: ClassVar[bool] = False  # charging is lazy (_sync); on_step still works

    def __init__(
        self,
        tenant_weights: Mapping[str, float] | None = None,
        input_weight: float = 1.0,
        output_weight: float = 2.0,
    ) -> None:
        self.tenant_weights = dict(tenant_weights or {})  # tenant -> share weight (default 1)
        bad = {t: w for t, w in self.tenant_weights.items() if not w > 0}
        if bad:
            raise ValueError(f"weighted_fair: tenant weights must be > 0, got {bad}")
        self.input_weight = float(input_weight)
        self.output_weight = float(output_weight)
        self.counter: dict[str, float] = {}
        self._queues: dict[str, list[tuple[float, int, SchedRequest]]] = {}  # FIFO heaps
        self._n_queued: dict[str, int] = {}  # waiting requests per tenant (first admission)
        self._seen_out: dict[int, int] = {}  # request index -> output tokens already charged
        self._charged_prompt: set[int] = set()
        self._running: dict[int, SchedRequest] = {}
        self._synced_at: float | None = None  # `now` of the last _sync

    def _w(self, tenant: str) -> float:
        return self.tenant_weights.get(tenant, 1.0)

    def _push(self, r: SchedRequest) -> None:
        heapq.heappush(self._queues.setdefault(r.tenant, []), (r.arrival_s, r.index, r))

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._sync(now)  # the counter lift below reads counters
        for r in requests:
            t = r.tenant
            if self._n_queued.get(t, 0) == 0:  # tenant becomes backlogged: lift its counter
                active = [self.counter[u] for u, k in self._n_queued.items() if k > 0 and u != t]
                floor = min(active) if active else max(self.counter.values(), default=0.0)
                self.counter[t] = max(self.counter.get(t, 0.0), floor)
            self._n_queued[t] = self._n_queued.get(t, 0) + 1
            self._push(r)

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._running[r.index] = r
            if r.index not in self._charged_prompt:
                self._charged_prompt.add(r.index)
                self._n_queued[r.tenant] -= 1
                self.counter[r.tenant] = self.counter.get(
                    r.tenant, 0.0
                ) + self.input_weight * r.prompt_tokens / self._w(r.tenant)

    def _charge(self, r: SchedRequest) -> None:
        done = r.num_output_tokens - self._seen_out.get(r.index, 0)
        if done:
            self._seen_out[r.index] = r.num_output_tokens
            self.counter[r.tenant] += self.output_weight * done / self._w(r.tenant)

    def on_step(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        self._sync(now)

    def _sync(self, now: float) -> None:
        """Charge tokens generated since the last sync; re-queue preempted requests."""
        if now == self._synced_at:
            return  # already synced in this step: nothing progressed since
        self._synced_at = now
        for idx, r in list(self._running.items()):
            self._charge(r)
            if r.status is Status.WAITING:  # preempted since last step: back into its queue
                del self._running[idx]
                self._push(r)

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._charge(r)
            self._running.pop(r.index, None)
            self._seen_out.pop(r.index, None)
            self._charged_prompt.discard(r.index)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._running.pop(r.index, None)

    def key(self, request: SchedRequest, now: float) -> float:
        self._sync(now)
        return self.counter.get(request.tenant, 0.0)

    def ranked(self, waiting: Sequence[SchedRequest], now: float) -> Iterator[SchedRequest]:
        self._sync(now)
        proj = []
        for t, q in self._queues.items():
            while q and q[0][2].status is not Status.WAITING:
                heapq.heappop(q)  # admitted (or finished) since it was queued
            if q:
                proj.append((self.counter.get(t, 0.0), t))
        heapq.heapify(proj)
        taken: dict[str, int] = {}
        while proj:
            c, t = heapq.heappop(proj)
            q = self._queues[t]
            pos = taken.get(t, 0)
            # q is a heap: its i-th smallest needs a sort of the (short) prefix we have used
            items = heapq.nsmallest(pos + 1, q)
            if len(items) <= pos:
                continue
            r = items[pos][2]
            taken[t] = pos + 1
            if r.status is not Status.WAITING:
                heapq.heappush(proj, (c, t))
                continue
            yield r
            heapq.heappush(proj, (c + self.input_weight * r.prompt_tokens / self._w(t), t))

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "input_weight": self.input_weight,
            "output_weight": self.output_weight,
            **{f"weight_{t}": w for t, w in self.tenant_weights.items()},
        }
