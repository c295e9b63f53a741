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
(so they reach an engine core in its own process); each request may carry a per-run policy
spec in ``SamplingParams.extra_args["driftsched"]``; in-process, a policy object can be
injected with ``PolicyDriver.inject_policy``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from scheduler.live.driver import META_KEY, PolicyDriver, StepRecord, request_meta
from scheduler.request import SchedRequest

_ABORTED = (RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR)
_PENDING_KEY = math.inf  # priority of a request before its first key (admitted last)


def _priority(m: SchedRequest, key: float) -> tuple[float, float, int]:
    return (key, m.arrival_s, m.index)


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
        self.drift = PolicyDriver(cfg.get("policy"), cfg.get("fallback"), cfg.get("sink"))
        self._drift_open_steps: deque[tuple[StepRecord, float]] = deque()
        self._drift_new: list[Request] = []  # added since the last keys were computed
        self._drift_req_of: dict[int, Request] = {}  # id(mirror) -> vLLM request

    # ------------------------------------------------------------------ request lifecycle
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:  # streaming continuation: not a new request
            super().add_request(request)
            return
        sp = request.sampling_params
        meta = request_meta(sp.extra_args if sp is not None else None)
        self.drift.ensure_run(meta)  # may build the run's policy: not counted as overhead
        t = time.monotonic()
        m = self.drift.add(request.request_id, meta, request.num_prompt_tokens, request.max_tokens)
        # A tuple priority before the heap push: int and tuple priorities must never mix.
        request.priority = _priority(m, _PENDING_KEY)
        self._drift_req_of[id(m)] = request
        super().add_request(request)
        self._drift_new.append(request)
        self.drift.overhead_us += (time.monotonic() - t) * 1e6

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

    def _drift_preempt(self, victims: list[SchedRequest], running: list[SchedRequest]) -> set[str]:
        by_mirror = {id(m): r for r, m in zip(self._drift_running_reqs, running)}
        done: set[str] = set()
        ts = time.monotonic()
        for m in victims:
            req = by_mirror.get(id(m))
            if req is None or req.status != RequestStatus.RUNNING:
                continue
            if not self._request_blocks_can_be_freed(req):
                continue
            self.running.remove(req)
            self._preempt_request(req, ts, drop_stale_output=self.requires_kv_delivery)
            self.drift.preempted(req.request_id, by_policy=True)
            done.add(req.request_id)
        return done

    def _drift_apply_keys(self, now: float) -> None:
        d = self.drift
        policy = d.run.policy if d.run is not None else None
        if policy is None:
            return
        live = d.mirrors
        touched_waiting = True  # whether a waiting request's priority may have changed
        if policy.dynamic_keys and not policy.incremental_keys:
            reqs = [r for r in self.running if r.request_id in live]
            reqs += [r for r in self.waiting._heap if r.request_id in live]
            reqs += [r for r in self.kv_holding_waiting._heap if r.request_id in live]
        else:
            # Static keys: new arrivals only. Incremental: arrivals, the waiting requests the
            # policy reports as changed, and the running ones (their keys pick vLLM's
            # KV-pressure victim); O(changed + max_num_seqs) keys per step.
            reqs = [r for r in self._drift_new if r.request_id in live]
            if policy.dynamic_keys:
                by_mirror = self._drift_req_of
                reqs += [by_mirror[id(m)] for m in d.take_changed() if id(m) in by_mirror]
                touched_waiting = bool(reqs)
                reqs += [r for r in self.running if r.request_id in live]
                reqs = list({id(r): r for r in reqs}.values())
        self._drift_new = []
        if not reqs:
            return
        mirrors = [live[r.request_id] for r in reqs]
        keys = d.keys(mirrors, now)
        for r, m, k in zip(reqs, mirrors, keys):
            r.priority = _priority(m, k)
        if not touched_waiting:
            return  # only running requests were re-keyed: the waiting heaps are intact
        heapq.heapify(self.waiting._heap)
        heapq.heapify(self.kv_holding_waiting._heap)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        d = self.drift
        t_start = time.monotonic()
        vol: set[str] = set()
        waiting_by_tier = dict(d.waiting_by_tier)
        if d.run is not None:
            running = self._drift_sync_running()
            self._drift_running_reqs = [r for r in self.running if r.request_id in d.mirrors]
            victims = d.begin_step(running)
            if victims:
                vol = self._drift_preempt(victims, running)
            self._drift_apply_keys(d.now())
        t_policy = time.monotonic()
        out = super().schedule(*args, **kwargs)
        t_sched = time.monotonic()
        if d.run is None:
            return out
        # Admissions: running requests whose mirror was waiting.
        admitted = [r.request_id for r in self.running if r.request_id in d.waiting]
        if admitted:
            d.admitted(admitted)
        t_adm = time.monotonic()
        n_kv = 0
        for rid in out.preempted_req_ids:
            req = self.requests.get(rid)
            if req is None:
                continue
            if rid not in vol and d.preempted(rid, by_policy=False) is not None:
                n_kv += 1  # vLLM preempted it under KV pressure
            m = d.mirrors.get(rid)
            if m is not None:
                m.num_preemptions = req.num_preemptions
                m.num_output_tokens = req.num_output_tokens
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
        for r in self.running:
            m = d.mirrors.get(r.request_id)
            if m is not None:
                rbt[m.tier] = rbt.get(m.tier, 0) + 1
        rec.running_by_tier = rbt
        t_end = time.monotonic()
        # Policy overhead: before vLLM's schedule() and the admission hooks after it; the
        # step bookkeeping for the steps table is not the policy's and is not counted.
        rec.policy_us = ((t_policy - t_start) + (t_adm - t_sched)) * 1e6 + d.overhead_us
        d.overhead_us = 0.0
        self._drift_open_steps.append((rec, t_end))
        return out

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        t_in = time.monotonic()
        rec = None
        if self._drift_open_steps:
            rec, t_sched_end = self._drift_open_steps.popleft()
            rec.exec_s = t_in - t_sched_end
        out = super().update_from_output(scheduler_output, model_runner_output)
        d = self.drift
        if d.run is not None:
            t = time.monotonic()
            d.report_ended(flush=False)
            if rec is not None:
                t_out = time.monotonic()
                rec.policy_us += (t_out - t) * 1e6
                rec.update_s = t_out - t_in
                rec.t_end = t_out - d.run.t0
                # Whether the engine goes straight on to the next step: the wall time from
                # this step's start to the next one's is then the step's full cost (model,
                # scheduler, output processing, client loop) -- what the simulator's step is.
                rec.unfinished_after = sum(self.get_request_counts())
                d.record_step(rec)
            if d.has_unflushed_requests():
                d.flush()  # sink I/O: not policy time
        return out


class DriftScheduler(_DriftMixin, Scheduler):
    """vLLM's synchronous v1 Scheduler driven by a DriftSched Policy (CPU, or async off)."""


class DriftAsyncScheduler(_DriftMixin, AsyncScheduler):
    """vLLM's AsyncScheduler (the GPU default) driven by a DriftSched Policy."""


def scheduler_cls_for(async_scheduling: bool | None) -> str:
    """Qualified name of the adapter class matching vLLM's resolved ``async_scheduling``."""
    cls = DriftAsyncScheduler if async_scheduling else DriftScheduler
    return f"{cls.__module__}.{cls.__qualname__}"
