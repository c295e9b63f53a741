"""vLLM scheduler subclasses that run a DriftSched Policy inside the engine (no fork of vLLM).

Selected with ``scheduler_cls`` and ``scheduling_policy="priority"``. vLLM's priority mode orders
its waiting heap by ``Request.__lt__`` = ``(priority, arrival_time, request_id)`` and, when a
running request cannot get KV blocks, preempts ``max(running, key=(priority, arrival_time))``.
We set ``Request.priority`` to the tuple ``(key, arrival_s, index)``, which makes vLLM's heap
order exactly the policy contract's ``(key, arrival_s, index)`` admission order and makes its
KV-pressure victim the running request with the largest key (ties: the latest arrival). Only
``Request.__lt__`` and that ``max`` read ``priority`` in vLLM 0.32.0; the internals test in
``tests/scheduler/live`` pins this.

Per ``schedule()`` call (one engine step):

1. sync the mirrors of running requests (tokens generated, computed, preemptions, token ids);
2. the driver delivers arrivals/ends, calls ``on_step`` and ``preempt`` (batched);
3. voluntary preemptions: vLLM's own ``_preempt_request`` (recompute), so the model runner
   sees them in ``preempted_req_ids`` exactly like KV-pressure preemptions;
4. keys -> ``priority`` for waiting and running requests (all of them when the policy has
   ``dynamic_keys``, new arrivals only otherwise) and re-heapify the waiting queues;
5. vLLM's ``schedule()`` continues running requests, admits waiting ones in heap order within
   its token budget, ``max_num_seqs`` and KV blocks, and preempts by priority under pressure;
6. admissions (``on_admit``) and vLLM's preemptions update the mirrors; the step's composition
   is recorded. ``update_from_output`` closes the step record (model time) and reports ends.

The policy spec, fallback spec and default sink come from ``additional_config["driftsched"]``
(so they reach an engine core in its own process) and are built when the scheduler is created
(a bad spec fails the engine's start-up); a trusted toolkit client may carry a per-run policy
spec in ``SamplingParams.extra_args["driftsched"]``; in-process, a policy object can be
injected with ``PolicyDriver.inject_policy``. Server clients describe their requests with flat
``driftsched_*`` keys (:mod:`scheduler.live.metadata`); prompts without text are decoded from
their token ids with the served model's tokenizer.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from itertools import islice
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from scheduler.live.driver import META_KEY, PolicyDriver, StepRecord
from scheduler.policies.victims import expected_remaining_or_zero
from scheduler.request import SchedRequest

_ABORTED = (RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR)
_PENDING_KEY = math.inf  # priority of a request before its first key (admitted last)
# CPU time of the calling thread: the policy share without other processes' time slices (the
# in-process engine runs schedule, the forward pass and update_from_output on one thread)
_cpu = time.thread_time
FLUSH_EVERY_S = 0.25  # most time finished requests' sink lines wait while the engine is busy


# additional_config["driftsched"]: policy / fallback (Hydra specs), sink (a directory),
# decode_prompts (prompt text decoded from token ids for requests that carry none; default on)
CONFIG_KEYS = frozenset({"policy", "fallback", "sink", "decode_prompts"})


def _prompt_decoder(model_config: Any) -> Any:
    """Token ids -> prompt text with the served model's own tokenizer (vLLM's cached one), so
    a learned predictor reads text in the server too (the engine core sees ids only). For a
    chat request the text includes the chat template's markup, special tokens dropped."""
    if getattr(model_config, "skip_tokenizer_init", False):
        return None
    from vllm.tokenizers.registry import cached_tokenizer_from_config

    tok = cached_tokenizer_from_config(model_config)
    return lambda ids: tok.decode(list(ids), skip_special_tokens=True)


def _priority(m: SchedRequest, key: float) -> tuple[float, float, int]:
    return (key, m.arrival_s, m.index)


def _sift_up(heap: list, pos: int) -> None:
    """Move ``heap[pos]`` towards the root until its parent is not larger (min-heap)."""
    item = heap[pos]
    while pos > 0:
        parent = (pos - 1) >> 1
        up = heap[parent]
        if not item < up:
            break
        heap[pos] = up
        pos = parent
    heap[pos] = item


def _requeue(heaps: tuple[list, ...], req: Request, lower: bool) -> None:
    """Restore the heap that holds ``req`` after its priority changed (O(n) find in C, then
    O(log n) ``Request.__lt__`` calls instead of a heapify's O(n))."""
    for h in heaps:
        # new arrivals sit at the tail (pending priority): look there first
        start = max(0, len(h) - 64)
        try:
            pos = h.index(req, start)
        except ValueError:
            try:
                pos = h.index(req, 0, start)
            except ValueError:
                continue
        if lower:
            _sift_up(h, pos)
        else:
            _sift_down(h, pos)
        return


def _sift_down(heap: list, pos: int) -> None:
    """Move ``heap[pos]`` towards the leaves while a child is smaller (min-heap)."""
    item = heap[pos]
    n = len(heap)
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        right = child + 1
        if right < n and heap[right] < heap[child]:
            child = right
        if not heap[child] < item:
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = item


class _DriftMixin:
    """Shared by the sync and async scheduler subclasses (see the module docstring)."""

    drift: PolicyDriver

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.policy != SchedulingPolicy.PRIORITY:
            raise ValueError(
                "driftsched: the policy adapter needs scheduling_policy='priority' "
                f"(got {self.policy.value!r}); set it in the engine config"
            )
        cfg = dict((self.vllm_config.additional_config or {}).get(META_KEY, {}) or {})
        unknown = sorted(set(cfg) - CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"driftsched: additional_config['{META_KEY}'] has unknown key(s) {unknown}; "
                f"expected some of {sorted(CONFIG_KEYS)}"
            )
        self.drift = PolicyDriver(
            cfg.get("policy"),
            cfg.get("fallback"),
            cfg.get("sink"),
            prefix_caching=bool(self.cache_config.enable_prefix_caching),
        )
        self.drift.build_default()  # a bad spec fails here, at engine start-up
        if cfg.get("decode_prompts", True):
            self.drift.decode = _prompt_decoder(self.vllm_config.model_config)
        # (record, wall time schedule() returned, thread CPU time schedule() started)
        self._drift_open_steps: deque[tuple[StepRecord, float, float]] = deque()
        self._drift_add_cpu_us = 0.0  # add_request CPU time since the last step
        self._drift_new: list[Request] = []  # added since the last keys were computed
        self._drift_req_of: dict[int, Request] = {}  # id(mirror) -> vLLM request
        self._drift_epoch = 0  # steps that picked admissions from Policy.ranked
        self._drift_flushed_at = time.monotonic()  # last sink write of finished requests
        # Write the sink when the engine goes idle (a run's end). An in-process VllmEngine turns
        # this off and flushes after the replay instead: the client then gets its last outputs
        # without waiting for the run's JSON lines (they are read only after the replay).
        self.drift_flush_when_idle = True

    # ------------------------------------------------------------------ request lifecycle
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:  # streaming continuation: not a new request
            super().add_request(request)
            return
        sp = request.sampling_params
        d = self.drift
        meta, source = d.meta_of(
            sp.extra_args if sp is not None else None, request.priority, request.request_id
        )
        d.ensure_run(meta)  # may build the run's policy: not counted as overhead
        t, c = time.monotonic(), _cpu()
        m = d.add(
            request.request_id,
            meta,
            request.num_prompt_tokens,
            request.max_tokens,
            prompt_ids=request.prompt_token_ids,
            trusted=source == "nested",
        )
        # A tuple priority before the heap push: int and tuple priorities must never mix.
        request.priority = _priority(m, _PENDING_KEY)
        self._drift_req_of[id(m)] = request
        super().add_request(request)
        self._drift_new.append(request)
        self.drift.overhead_us += (time.monotonic() - t) * 1e6
        self._drift_add_cpu_us += (_cpu() - c) * 1e6

    def _free_request(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        out = super()._free_request(request, *args, **kwargs)
        m = self.drift.mirrors.get(request.request_id)
        if m is not None:
            self._drift_req_of.pop(id(m), None)
            m.num_output_tokens = request.num_output_tokens
            m.num_preemptions = request.num_preemptions
        self.drift.ended_request(request.request_id, aborted=request.status in _ABORTED)
        return out

    def finish_requests(self, request_ids: Any, finished_status: RequestStatus) -> list[Request]:
        out = super().finish_requests(request_ids, finished_status)
        # Aborts arrive between steps: report them now so no policy state outlives them.
        if self.drift.run is not None:
            self.drift.report_ended()
        return out

    # ------------------------------------------------------------------ the step
    def _drift_sync_running(self) -> list[SchedRequest]:
        mirrors = self.drift.mirrors
        out = []
        for r in self.running:
            m = mirrors.get(r.request_id)
            if m is None:
                continue
            m.num_output_tokens = r.num_output_tokens
            m.num_computed_tokens = r.num_computed_tokens
            m.num_preemptions = r.num_preemptions
            m.output_token_ids = r.output_token_ids  # a read-only view, no copy
            out.append(m)
        return out

    def _drift_preempt(self, victims: list[SchedRequest]) -> dict[str, SchedRequest]:
        """Voluntary preemptions (vLLM's own ``_preempt_request``): vLLM id -> mirror."""
        done: dict[str, SchedRequest] = {}
        ts = time.monotonic()
        for m in victims:
            req = self._drift_req_of.get(id(m))
            if req is None or req.status != RequestStatus.RUNNING:
                continue
            if not self._request_blocks_can_be_freed(req):
                continue
            self.running.remove(req)
            self._preempt_request(req, ts, drop_stale_output=self.requires_kv_delivery)
            if self.drift.preempted(req.request_id, by_policy=True) is not None:
                done[req.request_id] = m
        return done

    def _drift_victim_priorities(self, now: float) -> None:
        """A policy with a victim rule of its own: running requests' priorities are their
        victim keys (vLLM evicts the largest), every step (at most ``max_num_seqs``)."""
        d = self.drift
        live = d.mirrors
        running = [r for r in self.running if r.request_id in live]
        if running:
            mirrors = [live[r.request_id] for r in running]
            for r, m, k in zip(running, mirrors, d.victim_keys(mirrors, now)):
                r.priority = _priority(m, k)

    def _drift_requeue_preempted(self, mirrors: list[SchedRequest], now: float) -> None:
        """Preempted requests re-entered vLLM's waiting heap with their victim priorities:
        give them their order keys back (running and waiting keys are never compared)."""
        reqs = [self._drift_req_of.get(id(m)) for m in mirrors]
        pairs = [(r, m) for r, m in zip(reqs, mirrors) if r is not None]
        if not pairs:
            return
        heaps = (self.waiting._heap, self.kv_holding_waiting._heap)
        keys = self.drift.keys([m for _, m in pairs], now)
        for (r, m), k in zip(pairs, keys):
            old = r.priority
            r.priority = _priority(m, k)
            _requeue(heaps, r, lower=r.priority < old)

    def _drift_apply_keys(self, now: float) -> None:
        """Keys -> vLLM priorities, touching as little of vLLM's waiting heap as possible.

        vLLM compares requests with a Python ``Request.__lt__`` (~1 us a comparison), so a
        re-heapify of a deep queue costs more than the policy itself; instead:

        * static keys: key the new arrivals only and sift each up from the heap's tail, where
          their pending priority left them (heapify only for a large burst);
        * incremental (``take_changed``): the same for arrivals and changed waiting requests;
        * dynamic, non-incremental: no waiting key at all unless a slot is free; then the head
          of ``Policy.ranked`` (one request per free slot) gets "front" priorities that vLLM
          pops in that order, ahead of every other waiting request (see ``_drift_rank_head``).

        Running requests of dynamic policies are re-keyed every step (at most ``max_num_seqs``):
        their priorities pick vLLM's KV-pressure victim.
        """
        d = self.drift
        policy = d.run.policy if d.run is not None else None
        if policy is None:
            return
        live = d.mirrors
        new = [r for r in self._drift_new if r.request_id in live]
        self._drift_new = []
        by_mirror = self._drift_req_of
        if not policy.dynamic_keys:
            self._drift_key_waiting(new, now)
            return
        if policy.incremental_keys:
            changed = [by_mirror[id(m)] for m in d.take_changed() if id(m) in by_mirror]
            self._drift_key_waiting(list({id(r): r for r in (*new, *changed)}.values()), now)
        else:
            self._drift_rank_head(policy, new, now)
        running = [r for r in self.running if r.request_id in live]
        if running:
            mirrors = [live[r.request_id] for r in running]
            for r, m, k in zip(running, mirrors, d.keys(mirrors, now)):
                r.priority = _priority(m, k)

    def _drift_key_waiting(self, reqs: list[Request], now: float) -> None:
        """Set the priorities of these waiting requests and restore vLLM's heap order."""
        if not reqs:
            return
        d = self.drift
        mirrors = [d.mirrors[r.request_id] for r in reqs]
        keys = d.keys(mirrors, now)
        heaps = (self.waiting._heap, self.kv_holding_waiting._heap)
        if len(reqs) > 8 + sum(map(len, heaps)) // 16:  # a burst: one heapify is cheaper
            for r, m, k in zip(reqs, mirrors, keys):
                r.priority = _priority(m, k)
            for h in heaps:
                heapq.heapify(h)
            return
        for r, m, k in zip(reqs, mirrors, keys):
            old = r.priority
            r.priority = _priority(m, k)
            _requeue(heaps, r, lower=r.priority < old)

    def _drift_rank_head(self, policy: Any, new: list[Request], now: float) -> None:
        """Dynamic, non-incremental policies: one ``ranked`` request per free slot goes first.

        vLLM pops waiting requests only while a running slot is free, so with ``k`` free slots
        the admission order is decided by the first ``k`` requests of ``Policy.ranked``. They
        get priorities ``(-inf, -epoch, rank)``, which sort before every key and before the
        picks of earlier steps; every other waiting request keeps its old priority (new arrivals
        their pending one), never read before it is picked in turn. Should vLLM pop more than
        ``k`` (it skips requests blocked on remote KV or grammar), the rest come in their
        earlier order. If ``ranked`` raises, the step falls back to keying every waiting
        request (the fallback policy's keys when ``key`` raises too)."""
        d = self.drift
        live = d.mirrors
        heaps = (self.waiting._heap, self.kv_holding_waiting._heap)
        n_wait = sum(map(len, heaps))
        free = self.max_num_active_reqs - len(self.running) - self.num_waiting_for_streaming_input
        if not n_wait or free <= 0:
            return  # nothing can be admitted this step: waiting keys are not read
        waiting = list(d.waiting.values())
        k = min(free, len(waiting))
        picks = d._safe(
            "ranked", lambda p: list(islice(p.ranked(waiting, now), k)), feed_fallback=False
        )
        by_mirror = self._drift_req_of
        reqs = [by_mirror.get(id(m)) for m in picks] if picks is not None else None
        if reqs is None or any(r is None or r.request_id not in live for r in reqs):
            if picks is not None:
                d._fault("ranked", None, "returned a request that is not waiting")
            waiting_reqs = [r for h in heaps for r in h if r.request_id in live]
            mirrors = [live[r.request_id] for r in waiting_reqs]
            for r, m, key in zip(waiting_reqs, mirrors, d.keys(mirrors, now)):
                r.priority = _priority(m, key)
            for h in heaps:
                heapq.heapify(h)
            return
        d.keys([live[r.request_id] for r in reqs], now)  # sched_key for records; NaN -> fault
        self._drift_epoch += 1
        for rank, r in enumerate(reqs):
            r.priority = (-math.inf, -self._drift_epoch, rank)
            _requeue(heaps, r, lower=True)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        d = self.drift
        t_start, c_start = time.monotonic(), _cpu()
        vol: dict[str, SchedRequest] = {}
        waiting_by_tier = dict(d.waiting_by_tier)
        custom_victim = d.custom_victim()
        if d.run is not None:
            vol = self._drift_policy_phase(custom_victim)
        held = self._drift_gate()
        t_policy, c_policy = time.monotonic(), _cpu()
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            if held:  # back into the waiting heap, in priority order again
                self.waiting._heap.extend(held)
                heapq.heapify(self.waiting._heap)
        t_sched, c_sched = time.monotonic(), _cpu()
        if d.run is None:
            return out
        # Admissions: running requests whose mirror was waiting.
        admitted = [r.request_id for r in self.running if r.request_id in d.waiting]
        if admitted:
            d.admitted(admitted)
        t_adm, c_adm = time.monotonic(), _cpu()
        n_kv = self._drift_sync_preempted(out, vol, custom_victim)
        rec = StepRecord(
            step=d.step_no,
            t_start=t_start - d.run.t0,
            sched_s=t_sched - t_start,
            num_running=len(self.running),
            num_policy_preempted=len(vol),
            num_preempted=n_kv,
            num_admitted=len(admitted),
            waiting_by_tier=waiting_by_tier,
        )
        d.step_no += 1
        self._drift_step_composition(rec, out)
        t_end = time.monotonic()
        # Policy overhead: before vLLM's schedule() and the admission hooks after it; the
        # step bookkeeping for the steps table is not the policy's and is not counted.
        rec.policy_us = ((t_policy - t_start) + (t_adm - t_sched)) * 1e6 + d.overhead_us
        rec.policy_cpu_us = ((c_policy - c_start) + (c_adm - c_sched)) * 1e6
        rec.policy_cpu_us += self._drift_add_cpu_us
        d.overhead_us = self._drift_add_cpu_us = 0.0
        self._drift_open_steps.append((rec, t_end, c_start))
        return out

    def _drift_gate(self) -> list[Request]:
        """The policy's admission gate (``Policy.admission_headroom``, as the simulator's
        ``Run.admit_in_order``): walking the waiting heap in priority order, keep the requests
        whose whole sequence fits with ``headroom x`` the running (and kept) requests' expected
        remaining tokens still free; the rest are held out of the heap for this ``schedule()``
        and returned (the caller puts them back). vLLM then admits at most the kept ones."""
        run = self.drift.run
        h = getattr(run.policy, "admission_headroom", None) if run is not None else None
        heap = self.waiting._heap
        if h is None or not heap:
            return []
        mirrors, bs = self.drift.mirrors, self.block_size
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        reserve = h * sum(
            expected_remaining_or_zero(mirrors.get(r.request_id)) for r in self.running
        )
        order, keep = list(heap), []
        while order:
            r = heapq.heappop(order)
            need = -(-r.num_tokens // bs)
            if need + int(reserve // bs) > free:
                order.append(r)
                break
            keep.append(r)
            free -= need
            reserve += h * expected_remaining_or_zero(mirrors.get(r.request_id))
        if not order:
            return []
        heap[:] = keep  # a prefix in priority order is already a heap
        return order

    def _drift_policy_phase(self, custom_victim: bool) -> dict[str, SchedRequest]:
        """Steps 1-4 of the module docstring, before vLLM's ``schedule()``: mirrors synced, the
        driver's step (arrivals, ends, ``on_step``, ``preempt``), voluntary preemptions, keys
        -> priorities. Returns the policy's preemptions (vLLM id -> mirror)."""
        d = self.drift
        vol: dict[str, SchedRequest] = {}
        running = self._drift_sync_running()
        victims = d.begin_step(running)
        now = d.now()
        if victims:
            vol = self._drift_preempt(victims)
            if custom_victim:
                self._drift_requeue_preempted(list(vol.values()), now)
        self._drift_apply_keys(now)
        if custom_victim:
            self._drift_victim_priorities(now)
        return vol

    def _drift_sync_preempted(
        self, out: Any, vol: dict[str, SchedRequest], custom_victim: bool
    ) -> int:
        """The step's preemptions into the mirrors; the ones vLLM made under KV pressure (not
        in ``vol``) are reported to the driver as such. All are reported to the policy, in one
        batch. Returns the number of KV-pressure preemptions."""
        d = self.drift
        kv_victims: list[SchedRequest] = []
        for rid in out.preempted_req_ids:
            req = self.requests.get(rid)
            if req is None:
                continue
            if rid not in vol:
                m = d.preempted(rid, by_policy=False)
                if m is not None:
                    kv_victims.append(m)  # vLLM preempted it under KV pressure
            m = d.mirrors.get(rid)
            if m is not None:
                m.num_preemptions = req.num_preemptions
                m.num_output_tokens = req.num_output_tokens
        if kv_victims and custom_victim:
            self._drift_requeue_preempted(kv_victims, d.now())
        d.report_preempted([*vol.values(), *kv_victims])
        return len(kv_victims)

    def _drift_step_composition(self, rec: StepRecord, out: Any) -> None:
        """What the step computes, for the steps table: prefill and decode work (tokens, KV
        read, (query, key) pairs), the queue, KV use and the running requests per tier."""
        for rid, n in out.num_scheduled_tokens.items():
            req = self.requests.get(rid)
            if req is None:
                continue
            before = req.num_computed_tokens - n  # _update_after_schedule already advanced it
            rec.kv_tokens += before + n
            if n == 1 and before >= req.num_prompt_tokens:
                rec.decode_seqs += 1
            else:
                rec.prefill_seqs += 1
                rec.prefill_tokens += n
                rec.prefill_pairs += n * (before + n / 2.0)
        rec.num_waiting = self.get_request_counts()[1]
        rec.kv_usage = float(self.kv_cache_manager.usage)
        rec.kv_tokens_held = int(
            round(rec.kv_usage * self.cache_config.num_gpu_blocks) * self.block_size
        )
        rbt: dict[str, int] = {}
        mirrors = self.drift.mirrors
        for r in self.running:
            m = mirrors.get(r.request_id)
            if m is not None:
                rbt[m.tier] = rbt.get(m.tier, 0) + 1
        rec.running_by_tier = rbt

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        t_in = time.monotonic()
        rec = None
        if self._drift_open_steps:
            rec, t_sched_end, c_start = self._drift_open_steps.popleft()
            rec.exec_s = t_in - t_sched_end
        out = super().update_from_output(scheduler_output, model_runner_output)
        d = self.drift
        if d.run is not None:
            t, c = time.monotonic(), _cpu()
            d.report_ended(flush=False)
            if rec is not None:
                t_out, c_out = time.monotonic(), _cpu()
                rec.policy_us += (t_out - t) * 1e6
                rec.policy_cpu_us += (c_out - c) * 1e6
                rec.cpu_s = c_out - c_start
                rec.update_s = t_out - t_in
                rec.t_end = t_out - d.run.t0
                # Whether the engine goes straight on to the next step: the wall time from
                # this step's start to the next one's is then the step's full cost (model,
                # scheduler, output processing, client loop) -- what the simulator's step is.
                rec.unfinished_after = sum(self.get_request_counts())
                d.record_step(rec)
            # Sink I/O (not policy time) costs more than the adapter's per-step work: write the
            # finished requests' lines when the engine goes idle (a run's end) or every
            # FLUSH_EVERY_S, not in every step that finishes one (an in-process failure
            # flushes the rest; a dead engine-core process loses at most FLUSH_EVERY_S).
            if d.has_unflushed_requests() and (
                rec is None
                or (rec.unfinished_after == 0 and self.drift_flush_when_idle)
                or time.monotonic() - self._drift_flushed_at >= FLUSH_EVERY_S
            ):
                d.flush()
                self._drift_flushed_at = time.monotonic()
        return out


class DriftScheduler(_DriftMixin, Scheduler):
    """vLLM's synchronous v1 Scheduler driven by a DriftSched Policy (CPU, or async off)."""


class DriftAsyncScheduler(_DriftMixin, AsyncScheduler):
    """vLLM's AsyncScheduler (the GPU default) driven by a DriftSched Policy."""


def drift_scheduler(vllm_config: Any, **kwargs: Any) -> _DriftMixin:
    """``scheduler_cls`` for servers: the adapter matching the ``async_scheduling`` vLLM
    resolved (its platform hook has the last word: on on GPU, off on CPU), so one
    ``--scheduler-cls scheduler.live.adapter.drift_scheduler`` serves on both."""
    cls = DriftAsyncScheduler if vllm_config.scheduler_config.async_scheduling else DriftScheduler
    return cls(vllm_config=vllm_config, **kwargs)


def scheduler_cls_for(async_scheduling: bool | None) -> str:
    """Qualified name of the adapter class matching vLLM's resolved ``async_scheduling``."""
    cls = DriftAsyncScheduler if async_scheduling else DriftScheduler
    return f"{cls.__module__}.{cls.__qualname__}"
