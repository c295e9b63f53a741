"""The simulator's event loop, one method per phase of a step (``scheduler.sim.engine``'s
module docstring describes the phases and the decode fast-forward).

:class:`Run` holds the state of one ``SimEngine.run``: the clock (``now``, ``step``), the
arrival cursor (``nxt``), the ended count (``done``), the running list, and three objects with
their own invariants -- the KV blocks (:class:`~scheduler.sim.kv.KVBlocks`), the keyed waiting
queue (:class:`~scheduler.sim.waiting.WaitingQueue`) and the decode fast-forward aggregates
(:class:`~scheduler.sim.fastforward.DecodeAggregates`). :meth:`Run.serve` is the loop:

    arrivals -> batch gate (micro-batch) -> policy hooks -> fast step (aggregate decode window
    or one aggregate step), else general step: continue running (memory preemption) -> admit
    -> forward pass -> finish

Finishing a request (:meth:`Run.finish`), sampling a token (:meth:`Run.advance`), step
classification and step time (:mod:`scheduler.sim.steptime`: ``classify``, ``StepTimer``, as
``Run.step_dt``) and admission (:meth:`Run.admit_in_order`) are shared by the general step and
the fast path, so the reference path (``fast_forward=False``: general steps only) is the oracle
of the fast one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data.schema import TIERS
from scheduler.policies.base import Policy
from scheduler.policies.victims import expected_remaining_or_zero
from scheduler.request import SchedRequest, Status
from scheduler.sim.columns import StepColumns
from scheduler.sim.fastforward import DecodeAggregates, decode_window
from scheduler.sim.kv import KVBlocks
from scheduler.sim.steptime import StepTimer, classify
from scheduler.sim.waiting import WaitingQueue

if TYPE_CHECKING:
    from scheduler.sim.engine import SimEngine


@dataclass
class SimState:
    """The engine's live state, handed to an ``observer`` after every step (tests, debugging)."""

    now: float
    num_blocks: int
    free_blocks: int
    block_size: int
    held: list[int]  # blocks held per request index
    running: list[SchedRequest]
    waiting: dict[int, SchedRequest]  # request index -> request, arrival order of enqueueing
    scheduled: list[tuple[SchedRequest, int]] = field(default_factory=list)  # (request, tokens)
    targets: list[int] = field(default_factory=list)  # output tokens each request must generate
    step: int = 0


class Run:
    """One ``SimEngine.run``: fills ``cols``, ``stats`` and the requests' fields in place."""

    def __init__(
        self,
        eng: SimEngine,
        reqs: list[SchedRequest],
        policy: Policy,
        cols: StepColumns,
        stats: dict[str, int],
    ) -> None:
        self.reqs, self.n, self.policy, self.cols, self.stats = reqs, len(reqs), policy, cols, stats
        self.bs = bs = eng.block_size
        self.max_model_len = eng.max_model_len
        self.microbatch = eng.mode == "microbatch"
        self.window_s = eng.microbatch_window_s
        self.max_seqs = min(eng.max_num_seqs, eng.microbatch_size if self.microbatch else 1 << 62)
        self.max_budget = eng.max_num_batched_tokens
        self.observer = eng.observer
        tier_id = {t: i for i, t in enumerate(TIERS)}
        self.tid = tid = [tier_id[r.tier] for r in reqs]
        self.targets = [
            max(0, min(r.true_output_tokens, r.max_tokens, eng.max_model_len - r.prompt_tokens))
            for r in reqs
        ]
        self.kv = KVBlocks(eng.num_gpu_blocks, bs, self.n)
        self.running: list[SchedRequest] = []
        self.state = SimState(
            now=0.0,
            num_blocks=eng.num_gpu_blocks,
            free_blocks=eng.num_gpu_blocks,
            block_size=bs,
            held=self.kv.held,
            running=self.running,
            waiting={},
            targets=self.targets,
        )
        self.waiting = self.state.waiting
        self._policy_flags(policy)
        self.queue = WaitingQueue(
            reqs, tid, len(TIERS), policy.key, self.use_heap, self.state.waiting
        )
        self.agg = DecodeAggregates(self.n, bs, self.kv.held, self.targets, tid, len(TIERS))
        self.timer = StepTimer(eng.cost)
        self.step_dt = self.timer.dt  # the step's duration (s) from classify's arguments
        self.ff = eng.fast_forward and (
            self.observer is None or bool(getattr(self.observer, "fast_forward_ok", False))
        )
        self.now = 0.0
        self.step = 0
        self.nxt = 0  # next arrival
        self.done = 0  # requests ended (finished or aborted)
        self.window_deadline = math.inf  # micro-batch collection deadline

    def _policy_flags(self, policy: Policy) -> None:
        """Which hooks to call, and which callbacks need the lazy token fields brought up to
        date first: a callback the policy does not override is a no-op and reads nothing
        (dynamic keys may read live state when arrivals are keyed)."""
        pcls = type(policy)
        self.dynamic = policy.dynamic_keys
        self.incremental = self.dynamic and policy.incremental_keys
        self.use_heap = (not self.dynamic) or self.incremental
        self.uses_step = policy.uses_step_hook
        self.uses_preempt = pcls.preempt is not Policy.preempt
        self.hooked = self.uses_step or self.uses_preempt
        self.horizon = getattr(policy, "fast_forward_horizon", None)
        self.sync_arrival = self.dynamic or any(
            getattr(pcls, h) is not getattr(Policy, h) for h in ("on_arrival", "on_abort")
        )
        self.sync_admit = pcls.on_admit is not Policy.on_admit
        self.sync_finish = pcls.on_finish is not Policy.on_finish
        self.sync_preempt = pcls.on_preempt is not Policy.on_preempt
        # the memory victim: the order key unless a victim rule (or an override) says otherwise
        custom_victim = policy.victim is not None or pcls.victim_key is not Policy.victim_key
        self.victim_key = policy.victim_key if custom_victim else policy.key
        self.headroom = policy.admission_headroom  # the admission gate (Policy's doc)
        self.sync_horizon = self.horizon is not None and (
            getattr(pcls, "fast_forward_horizon", None) is not Policy.fast_forward_horizon
        )

    # ------------------------------------------------------------------ the loop
    def serve(self) -> tuple[float, int]:
        """The event loop; returns (makespan s, steps)."""
        self.policy.prepare(self.reqs)
        running, waiting, reqs = self.running, self.waiting, self.reqs
        while self.done < self.n:
            if self.nxt < self.n and reqs[self.nxt].arrival_s <= self.now:
                self.arrivals()
            if not running and not waiting:
                if self.nxt >= self.n:
                    break
                self.now = reqs[self.nxt].arrival_s
                continue
            admit_open = self.batch_gate() if self.microbatch else True
            if admit_open is None:
                continue
            w_counts = tuple(self.queue.counts)
            n_pre = self.policy_hooks() if self.hooked else 0
            if self.ff and self.fast_step(admit_open, w_counts, n_pre):
                continue
            self.general_step(admit_open, w_counts, n_pre)
        return self.now, self.step

    def materialize(self) -> None:
        self.agg.materialize(self.running)

    # ------------------------------------------------------------------ 1. arrivals
    def arrivals(self) -> None:
        """(Called when one has arrived.) Requests whose ``arrival_s <= now`` join the waiting queue (one batched hook); a
        prompt that does not fit the context window is aborted, as vLLM rejects it."""
        reqs, n, now = self.reqs, self.n, self.now
        if self.sync_arrival:
            self.materialize()
        batch = []
        while self.nxt < n and reqs[self.nxt].arrival_s <= now:
            batch.append(reqs[self.nxt])
            self.nxt += 1
        ok = [r for r in batch if r.prompt_tokens < self.max_model_len]
        bad = [r for r in batch if r.prompt_tokens >= self.max_model_len]
        if bad:
            for r in bad:
                r.status = Status.ABORTED
                r.finish_s = now
            self.stats["aborted"] += len(bad)
            self.done += len(bad)
            self.policy.on_abort(bad, now)
        if ok:
            self.policy.on_arrival(ok, now)
            for r in ok:
                self.queue.push(r, now)

    def batch_gate(self) -> bool | None:
        """(Micro-batch mode.) Whether admission is open this step; None: a micro-batch is still being collected
        (the clock moved to the window's end or the next arrival)."""
        if self.running:
            return False  # the next batch starts when the slowest of this one finished
        if self.window_deadline == math.inf:
            self.window_deadline = self.now + self.window_s
        if len(self.waiting) < self.max_seqs and self.now < self.window_deadline:
            a_next = self.reqs[self.nxt].arrival_s if self.nxt < self.n else math.inf
            self.now = min(self.window_deadline, a_next)
            return None
        return True

    # ------------------------------------------------------------------ 2. policy hooks
    def policy_hooks(self) -> int:
        """``on_step`` and voluntary ``preempt``; returns the policy preemptions."""
        policy, now, running = self.policy, self.now, self.running
        n_pre = 0
        if self.uses_step or self.uses_preempt:
            self.materialize()
        if self.uses_step:
            policy.on_step(running, list(self.waiting.values()), now)
            if self.incremental:
                for r in policy.take_changed():
                    if r.status is Status.WAITING:
                        self.queue.rekey(r, now)
        if self.uses_preempt and running:
            evicted = []
            for r in policy.preempt(running, list(self.waiting.values()), now):
                if r.status is Status.RUNNING:
                    running.remove(r)
                    r.n_policy_preemptions += 1
                    self.stats["policy_preemptions"] += 1
                    self.evict(r)
                    evicted.append(r)
                    self.agg.stretch = False
            n_pre = len(evicted)
            if evicted and self.sync_preempt:
                policy.on_preempt(evicted, now)
        return n_pre

    def evict(self, r: SchedRequest) -> None:
        """Preemption by recompute: drop the KV, keep the generated tokens, wait again."""
        self.kv.release(r.index)
        self.stats["recomputed_tokens"] += r.num_computed_tokens
        r.recomputed_tokens += r.num_computed_tokens
        r.num_computed_tokens = 0
        r.num_preemptions += 1
        self.stats["preemptions"] += 1
        self.queue.push(r, self.now)

    # ------------------------------------------------------------------ general step
    def general_step(self, admit_open: bool, w_counts: tuple[int, ...], n_pre: int) -> None:
        """Steps 3-5 request by request (the reference path)."""
        self.materialize()
        self.agg.stretch = False
        scheduled, budget, n_mem_pre = self.continue_running()
        n_pre += n_mem_pre
        admitted: list[SchedRequest] = []
        if (
            admit_open
            and n_mem_pre == 0  # vLLM admits nothing in a step that preempted for memory
            and self.waiting
            and budget > 0
            and len(self.running) < self.max_seqs
        ):
            order = self.queue.order() if self.use_heap else self.ranked()
            self.admit_in_order(order, budget, scheduled, admitted)
            self.admitted(admitted)
        if not scheduled:
            if self.running or n_pre:
                return  # everything was preempted this step; reschedule
            raise RuntimeError(
                f"sim: no progress at t={self.now:.3f}s with {len(self.waiting)} waiting, "
                f"nothing running and {self.kv.free}/{self.kv.num_blocks} free blocks"
            )
        r_counts = [0] * len(TIERS)
        pf, dec, kv, pairs, nps = classify(scheduled, self.tid, r_counts)
        t0 = self.forward(pf, dec, kv, pairs, nps)
        self.finish(self.advance(scheduled)[0])
        self.record(t0, pf, dec, n_pre, len(admitted), w_counts, r_counts)
        self.observe(scheduled)

    def continue_running(self) -> tuple[list[tuple[SchedRequest, int]], int, int]:
        """Step 3: running requests first, in admission order, each taking ``min(tokens still
        to compute, token budget)``; when the blocks its KV grows into are not free, the running
        request with the largest key is preempted (possibly itself). Returns (scheduled, budget
        left, memory preemptions)."""
        running, kv, held, bs = self.running, self.kv, self.kv.held, self.bs
        budget = self.max_budget
        scheduled: list[tuple[SchedRequest, int]] = []
        evicted: list[SchedRequest] = []
        i = 0
        while i < len(running):
            r = running[i]
            need = r.prompt_tokens + r.num_output_tokens - r.num_computed_tokens
            chunk = need if need < budget else budget
            if chunk <= 0:
                i += 1
                continue
            nb = -(-(r.num_computed_tokens + chunk) // bs) - held[r.index]
            if nb > kv.free:
                i, budget, self_evicted = self.preempt_for_memory(
                    r, nb, i, budget, scheduled, evicted
                )
                if self_evicted:
                    break  # vLLM: a request that preempted itself ends the running pass
            kv.free -= nb
            held[r.index] += nb
            budget -= chunk
            scheduled.append((r, chunk))
            i += 1
        if evicted and self.sync_preempt:
            self.policy.on_preempt(evicted, self.now)
        return scheduled, budget, len(evicted)

    def preempt_for_memory(
        self,
        r: SchedRequest,
        nb: int,
        i: int,
        budget: int,
        scheduled: list[tuple[SchedRequest, int]],
        evicted: list[SchedRequest],
    ) -> tuple[int, int, bool]:
        """Preempt running requests, largest victim key first, until ``nb`` blocks are free for
        ``r`` (at position ``i``) or ``r`` itself was preempted; a victim scheduled earlier this
        step gives its tokens back. Victims are appended to ``evicted``. Returns (i, budget,
        whether r was preempted)."""
        running, key, now = self.running, self.victim_key, self.now
        while nb > self.kv.free:
            victim = max(running, key=lambda q: (key(q, now), q.arrival_s, q.index))
            pos = running.index(victim)
            running.pop(pos)
            if pos < i:
                i -= 1
                for j, (q, c) in enumerate(scheduled):
                    if q is victim:
                        budget += c
                        scheduled.pop(j)
                        break
            self.evict(victim)
            evicted.append(victim)
            if victim is r:
                return i, budget, True
        return i, budget, False

    # ------------------------------------------------------------------ 4. admission
    def ranked(self) -> Iterable[SchedRequest]:
        return self.policy.ranked(list(self.waiting.values()), self.now)

    def admit_in_order(
        self,
        order: Iterable[SchedRequest],
        budget: int,
        scheduled: list[tuple[SchedRequest, int]],
        admitted: list[SchedRequest],
    ) -> int:
        """Admit waiting requests in policy ``order`` while the step's token ``budget``, batch
        slots and free KV blocks allow (the first that does not fit stops admission: no
        skipping ahead); returns the budget left."""
        running, kv, base, g = self.running, self.kv, self.agg.base, self.agg.g
        reserve = self.reserve_tokens()
        for r in order:
            if budget <= 0 or len(running) >= self.max_seqs:
                break
            need = r.prompt_tokens + r.num_output_tokens
            # vLLM 0.32 (scheduler_reserve_full_isl, on by default) admits a request only when
            # blocks for its whole current sequence are free, and then allocates the first
            # chunk: without this gate a partial chunk is admitted and evicted again at once;
            # the policy's admission headroom keeps ``reserve`` tokens free on top
            if kv.blocks(need) + int(reserve // self.bs) > kv.free:
                break
            if self.headroom is not None:
                reserve += self.headroom * expected_remaining_or_zero(r)
            chunk = need if need < budget else budget  # chunked prefill
            nb = kv.blocks(chunk)
            self.queue.remove(r)
            r.status = Status.RUNNING
            if math.isnan(r.admitted_s):
                r.admitted_s = self.now
            kv.assign(r.index, nb)
            r.admit_output_tokens = r.num_output_tokens
            base[r.index] = g  # exact fields (a preempted request's base is stale)
            running.append(r)
            scheduled.append((r, chunk))
            admitted.append(r)
            budget -= chunk
        return budget

    def reserve_tokens(self) -> float:
        """KV tokens the admission gate keeps free: ``admission_headroom`` x the running
        requests' expected remaining output tokens (0 without a headroom)."""
        if self.headroom is None or not self.running:
            return 0.0
        self.materialize()  # expected_remaining reads the generated-token counts
        return self.headroom * sum(expected_remaining_or_zero(r) for r in self.running)

    def reserve_horizon(self, m: int) -> float:
        """Decode steps (counting this one) in which the reserve cannot shrink enough to admit
        the queue's head, bounding a fast-forward window: per step the reserve drops by at most
        ``headroom * m`` tokens and free blocks only shrink, so the head stays out while
        ``headroom * (R - k m) >= (F + 1) * block_size`` (F: free blocks beyond the head's)."""
        r = self.queue.head()
        if self.headroom is None or r is None or not self.headroom > 0:
            return math.inf
        spare = self.kv.free - self.kv.blocks(r.prompt_tokens + r.num_output_tokens)
        if spare < 0:
            return math.inf  # no room even without the reserve: only a finish frees blocks
        base = self.reserve_tokens() / self.headroom
        k = math.floor((base - (spare + 1) * self.bs / self.headroom) / m)
        return max(1, k)

    def admitted(self, admitted: list[SchedRequest]) -> None:
        if admitted:
            self.window_deadline = math.inf
            if self.sync_admit:
                self.materialize()
            self.policy.on_admit(admitted, self.now)

    # ------------------------------------------------------------------ 5. forward pass
    def forward(self, pf: int, dec: int, kv: int, pairs: float, nps: int) -> float:
        """Advance the clock by one forward pass; returns the step's start time."""
        t0 = self.now
        self.dt = self.step_dt(pf, dec, kv, pairs, nps)
        self.now = t0 + self.dt
        self.stats["computed_tokens"] += pf + dec
        return t0

    def advance(
        self,
        batch: list[tuple[SchedRequest, int]],
        sampled: list[SchedRequest] | None = None,
    ) -> tuple[list[SchedRequest], bool]:
        """Each ``(request, tokens)`` of ``batch`` computed its tokens in the step that ended at
        ``now``: once prompt and generated tokens are all computed a request samples one output
        token (the first comes with the last prefill chunk) and finishes at its target length.
        Returns (finished, whether a chunked prefill goes on); the requests that sampled a
        token and go on are appended to ``sampled`` if given."""
        now, targets = self.now, self.targets
        finished: list[SchedRequest] = []
        prefilling = False
        for r, c in batch:
            c += r.num_computed_tokens
            r.num_computed_tokens = c
            if c != r.prompt_tokens + r.num_output_tokens:
                prefilling = True
                continue
            r.num_output_tokens += 1
            if r.num_output_tokens == 1:
                r.first_token_s = now
            if r.num_output_tokens >= targets[r.index]:
                finished.append(r)
            elif sampled is not None:
                sampled.append(r)
        return finished, prefilling

    # ------------------------------------------------------------------ 6. finish
    def finish(self, finished: list[SchedRequest]) -> None:
        """``finished`` (fields exact) end now: their blocks are freed, one batched hook."""
        if not finished:
            return
        now, kv, running = self.now, self.kv, self.running
        for r in finished:
            r.status = Status.FINISHED
            r.finish_s = now
            kv.release(r.index)
            running.remove(r)
        self.done += len(finished)
        if self.sync_finish:
            self.materialize()
        self.policy.on_finish(finished, now)

    def record(
        self,
        t0: float,
        pf: int,
        dec: int,
        n_pre: int,
        n_admitted: int,
        w_counts: tuple[int, ...],
        r_counts: list[int],
    ) -> None:
        """One row of the step table (:class:`StepColumns`)."""
        cols = self.cols
        cols.t.append(t0)
        cols.dt.append(self.dt)
        cols.kv.append(self.kv.used_tokens())
        cols.seg.extend((1, pf, dec, n_pre, n_admitted, *w_counts, *r_counts))
        self.step += 1

    def observe(self, scheduled: list[tuple[SchedRequest, int]]) -> None:
        if self.observer is not None:
            state = self.state
            state.now = self.now
            state.free_blocks = self.kv.free
            state.scheduled = scheduled
            state.step = self.step
            self.observer(state)

    # ------------------------------------------------------------------ fast path
    def fast_step(self, admit_open: bool, w_counts: tuple[int, ...], n_pre: int) -> bool:
        """Steps 3-5 with the decoders aggregated, when every running request decodes and none
        is preempted: a window of pure decode steps, or one step that also admits. Returns
        False (nothing done) when a general step is needed."""
        m = len(self.running)
        if not m or n_pre or m > self.max_budget:
            return False
        agg = self.agg
        if not agg.stretch and not agg.start(self.running):
            return False
        if agg.hist[agg.g % self.bs] > self.kv.free:
            return False  # a memory preemption: a general step
        budget = self.max_budget - m
        blocked = self.admission_blocked(admit_open, budget, m)
        if self.sync_horizon:
            self.materialize()
        if self.horizon is not None:
            h = self.horizon(self.running, self.waiting, self.now)
        else:  # a duck-typed policy without the method: the base class's rule
            h = 1 if self.uses_step or self.uses_preempt else math.inf
        if blocked:
            if self.headroom is not None:
                h = min(h, self.reserve_horizon(m))
            self.window(m, h, w_counts)
        else:
            self.aggregate_step(m, budget, w_counts)
        if self.observer is not None:
            self.observe([])
        return True

    def admission_blocked(self, admit_open: bool, budget: int, m: int) -> bool:
        """Whether nothing can be admitted during the coming decode steps (free blocks only
        shrink over them); an open admission without the heap is never blocked (``ranked``
        is called one step at a time)."""
        if not (admit_open and self.waiting and m < self.max_seqs) or budget <= 0:
            return True
        if not self.use_heap:
            return False
        r = self.queue.head()
        if r is None:
            return True
        need = self.kv.blocks(r.prompt_tokens + r.num_output_tokens)
        return need + int(self.reserve_tokens() // self.bs) > self.kv.free

    def window(self, m: int, h: float, w_counts: tuple[int, ...]) -> None:
        """A window of pure decode steps (:func:`decode_window`), then the finishes of the
        step that ended it, if any."""
        agg, kv, stats, reqs = self.agg, self.kv, self.stats, self.reqs
        a_next = reqs[self.nxt].arrival_s if self.nxt < self.n else math.inf
        f_next = agg.fin_heap[0][0]
        kv_cap = kv.num_blocks * self.bs
        seg = (0, m, 0, 0, *w_counts, *agg.rc)
        timer = self.timer
        self.now, kv.free, k = decode_window(
            agg, self.cols, m, self.now, kv.free, kv_cap, a_next, h, timer.coef, timer.decode_dt(m)
        )
        stats["fast_forward_windows"] += 1
        stats["fast_forward_steps"] += k
        stats["computed_tokens"] += k * m
        self.step += k
        if agg.g != f_next:
            self.cols.seg.extend((k, *seg))
            return
        if k > 1:
            self.cols.seg.extend((k - 1, *seg))
        self.finish(agg.pop_finished(reqs))
        self.cols.kv.append(kv.used_tokens())
        self.cols.seg.extend((1, *seg))

    def aggregate_step(self, m: int, budget: int, w_counts: tuple[int, ...]) -> None:
        """One step in which the ``m`` members decode (aggregated) and waiting requests are
        admitted one by one (they prefill)."""
        agg, kv = self.agg, self.kv
        kv.free -= agg.hist[agg.g % self.bs]
        admitted: list[SchedRequest] = []
        new: list[tuple[SchedRequest, int]] = []
        order = None
        if self.use_heap:
            order = self.queue.order()
        elif self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            self.materialize()
            order = self.ranked()
        if order is not None:
            self.admit_in_order(order, budget, new, admitted)
        self.admitted(admitted)
        r_counts = list(agg.rc)
        pf, dec, kvt, pairs, nps = classify(new, self.tid, r_counts, dec=m, kv=agg.ctx_sum + m)
        t0 = self.forward(pf, dec, kvt, pairs, nps)
        agg.ctx_sum += m
        agg.g += 1
        agg.lagging = True
        finished = agg.pop_finished(self.reqs) if agg.fin_heap[0][0] == agg.g else []
        sampled: list[SchedRequest] = []
        done, prefilling = self.advance(new, sampled)  # (scheduled after the members)
        for r, _ in new:
            agg.base[r.index] = agg.g
        for r in sampled:
            agg.join(r)  # prefill done: a member from the next step on
        if prefilling:
            agg.stretch = False  # a chunked prefill goes on next step
        if finished or done:
            self.finish(finished + done)
        self.record(t0, pf, dec, 0, len(admitted), w_counts, r_counts)
        self.stats["aggregate_steps"] += 1
