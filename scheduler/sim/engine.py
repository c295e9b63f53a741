"""Discrete-event simulator of a vLLM-style continuous-batching engine.

One loop iteration is one engine step (vLLM v1 ``Scheduler.schedule`` + one forward pass):

1. requests whose ``arrival_s <= now`` join the waiting queue (``policy.on_arrival``, batched);
2. ``policy.on_step`` (only if the policy uses it), then voluntary ``policy.preempt``;
3. running requests are continued first, in admission order, each taking
   ``min(tokens still to compute, token budget)`` tokens (chunked prefill; a decode is one token).
   Their KV grows in blocks of ``block_size`` tokens; when no free block is left the running
   request with the *largest* policy key is preempted by recompute (its blocks are freed and it
   must recompute prompt + generated tokens when readmitted) -- possibly the request itself;
4. if no request was preempted for memory this step, waiting requests are admitted in policy order while the
   token budget, ``max_num_seqs`` and free blocks allow (the first one that does not fit stops
   admission, as vLLM does);
5. the step lasts ``cost.step_time(prefill tokens, decode seqs, KV tokens read, prefill pairs)``;
   a request whose computed tokens reach prompt + generated samples one output token at the end
   of the step (so the first token comes with the last prefill chunk) and finishes when it has
   generated its target length (the trace's true output length, capped by ``max_tokens`` and the
   context window).

``mode="microbatch"`` mimics the paper's execution instead: up to ``microbatch_size`` waiting
requests are collected for at most ``microbatch_window_s`` and run as one batch; the next batch
starts only when the slowest request of the previous one has finished.

Decode fast-forward (``fast_forward=True``, the default): while every running request is
decoding and nothing can be admitted or preempted, a step changes only time, one token per
request and the KV blocks of the requests whose context crosses a block boundary -- all
predictable. The engine then keeps aggregates over the running set (finish step of each request
in a heap, block demand per step by ``g mod block_size``, summed context, tier counts) and
simulates such steps in O(1) each, in windows that end at the next arrival, finish, block
shortage or the policy's ``fast_forward_horizon``; steps that also admit requests aggregate the
decoders and handle only the admissions one by one. Running requests' token fields are brought
up to date before any policy callback the policy overrides, general step or observer call. Step
times come from the same ``step_time`` arguments (a ``LinearCostModel`` is evaluated inline with
the same floating-point operations), so records and step tables are bit-identical to
``fast_forward=False`` (tests/scheduler/test_sim_fast_forward.py). An ``observer`` is called every
step and disables fast-forward unless it sets ``fast_forward_ok = True``.

The engine keeps no state between runs and uses no randomness: the same workload and policy give
identical records. If a run raises, the exception carries the records of the requests that had
ended (:func:`partial_result`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.schema import TIERS
from scheduler.engine import EngineResult, requests_from_frame, workload_frame
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest, Status
from scheduler.sim.columns import StepColumns, records_frame
from scheduler.sim.cost import LinearCostModel, accepts_prefill_seqs
from scheduler.sim.profiles import build_profile

MODES = ("continuous", "microbatch")


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


class SimEngine:
    """Simulated engine; parameters mirror vLLM's (``max_num_seqs``, ``max_num_batched_tokens``,
    ``block_size``, ``num_gpu_blocks``, ``gpu_memory_utilization``, ``max_model_len``)."""

    name = "sim"
    max_requests: int | None = None  # serves every request of the workload
    supports_live_faults = False  # faults.client / faults.engine need the live engine

    def __init__(
        self,
        profile: str = "l4-llama3-8b",
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 2048,
        block_size: int = 16,
        num_gpu_blocks: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        mode: str = "continuous",
        microbatch_size: int = 32,
        microbatch_window_s: float = 0.010,
        cost: LinearCostModel | None = None,
        capacity_sample: int = 2000,
        observer: Callable[[SimState], None] | None = None,
        fast_forward: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown sim mode {mode!r}; expected one of {list(MODES)}")
        if max_num_seqs < 1 or max_num_batched_tokens < 1 or block_size < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and block_size must be >= 1")
        self.profile = build_profile(profile, gpu_memory_utilization)
        self.cost = cost if cost is not None else self.profile.cost
        self.max_num_seqs = int(max_num_seqs)
        self.max_num_batched_tokens = int(max_num_batched_tokens)
        self.block_size = int(block_size)
        self.num_gpu_blocks = int(
            num_gpu_blocks
            if num_gpu_blocks is not None
            else self.profile.num_blocks(self.block_size)
        )
        capacity = self.num_gpu_blocks * self.block_size
        self.max_model_len = int(min(max_model_len or capacity, capacity))
        if self.max_num_batched_tokens > capacity:
            raise ValueError(
                f"max_num_batched_tokens={max_num_batched_tokens} exceeds the KV "
                f"capacity of {capacity} tokens ({self.num_gpu_blocks} blocks)"
            )
        self.mode = mode
        self.microbatch_size = int(microbatch_size)
        self.microbatch_window_s = float(microbatch_window_s)
        self.capacity_sample = int(capacity_sample)
        self.observer = observer
        self.fast_forward = bool(fast_forward)

    def describe(self) -> dict[str, object]:
        return {
            "engine": self.name,
            "mode": self.mode,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "block_size": self.block_size,
            "num_gpu_blocks": self.num_gpu_blocks,
            "kv_capacity_tokens": self.num_gpu_blocks * self.block_size,
            "max_model_len": self.max_model_len,
            "microbatch_size": self.microbatch_size,
            "microbatch_window_s": self.microbatch_window_s,
            **{k: v for k, v in self.profile.describe().items() if k != "kv_capacity_tokens"},
            **(self.cost.describe() if hasattr(self.cost, "describe") else {}),
        }

    # ------------------------------------------------------------------ capacity
    def capacity_rps(self, workload: Any) -> float:
        """Sustainable request rate for the workload's length mix.

        Measured, not modelled: up to ``capacity_sample`` requests (evenly spaced rows, no
        randomness) all arrive at t=0 and are served FIFO; capacity is the completion rate
        between 10% and 90% of completions (excluding the ramp and the drain tail).
        """
        from scheduler.policies.fifo import FIFOPolicy

        df = workload_frame(workload)
        if len(df) == 0:
            raise ValueError("cannot measure capacity on an empty workload")
        m = min(len(df), self.capacity_sample)
        rows = np.unique(np.linspace(0, len(df) - 1, m).round().astype(np.int64))
        sample = df.iloc[rows].reset_index(drop=True).copy()
        sample["arrival_s"] = 0.0
        saved, self.observer = self.observer, None
        try:
            res = self.run(sample, FIFOPolicy())
        finally:
            self.observer = saved
        fin = np.sort(res.records["finish_s"].to_numpy())
        lo, hi = int(0.1 * (len(fin) - 1)), int(0.9 * (len(fin) - 1))
        span = fin[hi] - fin[lo]
        if hi <= lo or span <= 0:
            return len(fin) / max(float(fin[-1]), 1e-9)
        return (hi - lo) / float(span)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SimEngine:
        return self  # nothing to start or stop: the simulator holds no resources

    def __exit__(self, *exc: object) -> None:
        return None

    # ------------------------------------------------------------------ run
    def run(
        self, workload: Any, policy: Policy, *, faults: Any = None, progress: str | None = None
    ) -> EngineResult:
        """Serve the workload (module docstring). If the policy (or anything else) raises mid-run,
        the exception propagates unchanged with the records of the requests that had ended so far
        attached as ``exc.partial_result`` (see :func:`partial_result`).

        ``faults``: a ``scheduler.faults.FaultPlan``; the simulator takes only predictor faults,
        which are injected into the policy before the run (``scheduler.faults``), so client or
        engine faults are a ``ValueError``. ``progress``: a label; quiet progress in simulated
        time (``scheduler.progress``) unless an ``observer`` is already set."""
        if faults is not None and getattr(faults, "live_only", False):
            raise ValueError(
                "faults: client and engine faults need the live engine (engine=vllm); the "
                "simulator supports faults.predictor only"
            )
        if progress is None or self.observer is not None:
            return self._run(workload, policy)
        from scheduler.progress import sim_observer

        self.observer = sim_observer(f"{progress} (sim)", workload)
        try:
            return self._run(workload, policy)
        finally:
            self.observer.close()
            self.observer = None

    def _run(self, workload: Any, policy: Policy) -> EngineResult:
        df = workload_frame(workload)
        reqs = requests_from_frame(df)
        seed = getattr(workload, "seed", None)
        cols = StepColumns()
        stats = {
            "preemptions": 0,
            "policy_preemptions": 0,
            "recomputed_tokens": 0,
            "computed_tokens": 0,
            "aborted": 0,
            "fast_forward_windows": 0,  # decode fast-forward windows (engine bookkeeping)
            "fast_forward_steps": 0,  # steps simulated inside them
            "aggregate_steps": 0,  # single steps with decodes aggregated (admissions, finishes)
        }
        try:
            now, step = self._serve(reqs, policy, cols, stats)
        except BaseException as e:  # KeyboardInterrupt too: keep what ended so far
            _attach_partial(e, reqs, cols, stats, self, policy, seed)
            raise
        steps = cols.frame()
        del cols  # (the step arrays: hundreds of MB at a million requests)
        records = records_frame(reqs, engine=self.name, policy=policy.name, seed=seed)
        meta = {**self.describe(), **stats, "steps": step, "makespan_s": now, "policy": policy.name}
        return EngineResult(records=records, steps=steps, meta=meta)

    def _serve(
        self, reqs: list[SchedRequest], policy: Policy, cols: StepColumns, stats: dict[str, int]
    ) -> tuple[float, int]:
        """The event loop; fills ``cols``, ``stats`` and the requests' fields in place.
        Returns (makespan s, steps)."""
        n = len(reqs)
        bs = self.block_size
        max_seqs = (
            self.max_num_seqs
            if self.mode == "continuous"
            else min(self.max_num_seqs, self.microbatch_size)
        )
        max_budget = self.max_num_batched_tokens
        step_time = self.cost.step_time
        seq_aware = accepts_prefill_seqs(step_time)  # fitted CPU profiles charge per prefill
        tier_id = {t: i for i, t in enumerate(TIERS)}
        tid = [tier_id[r.tier] for r in reqs]
        targets = [
            max(0, min(r.true_output_tokens, r.max_tokens, self.max_model_len - r.prompt_tokens))
            for r in reqs
        ]
        held = [0] * n
        version = [0] * n
        state = SimState(
            now=0.0,
            num_blocks=self.num_gpu_blocks,
            free_blocks=self.num_gpu_blocks,
            block_size=bs,
            held=held,
            running=[],
            waiting={},
            targets=targets,
        )
        running = state.running
        waiting = state.waiting
        n_wait = [0, 0, 0]
        heap: list[tuple[float, float, int, int]] = []

        dynamic = policy.dynamic_keys
        incremental = dynamic and policy.incremental_keys
        use_heap = (not dynamic) or incremental
        uses_step = policy.uses_step_hook
        uses_preempt = type(policy).preempt is not Policy.preempt
        key = policy.key
        microbatch = self.mode == "microbatch"
        observer = self.observer
        kv_cap = state.num_blocks * bs
        col_t, col_dt, col_kv, col_seg = cols.t, cols.dt, cols.kv, cols.seg

        # ---- decode fast-forward (module docstring) ----
        # A "stretch" is a period in which every running request is decoding (needs exactly one
        # token per step). Over it the engine keeps aggregates instead of walking the running
        # list every step: the steps at which each request finishes (fin_heap), how many
        # requests need a new KV block at each step (hist, by decode-step number mod
        # block_size), their summed context (ctx_sum) and tier counts (rc). A decode step then
        # costs O(1): g_dec counts them, and a running request's token fields are *lazy*, behind
        # by g_dec - base[index] steps, until materialize() brings them up to date -- before
        # any policy callback, general step or finish reads them.
        ff = self.fast_forward and (
            observer is None or bool(getattr(observer, "fast_forward_ok", False))
        )
        horizon = getattr(policy, "fast_forward_horizon", None)
        # a callback the policy does not override is a no-op and reads nothing: skip bringing
        # fields up to date for it (dynamic keys may read live state when arrivals are keyed)
        pcls = type(policy)
        sync_arrival = dynamic or any(
            getattr(pcls, h) is not getattr(Policy, h) for h in ("on_arrival", "on_abort")
        )
        sync_admit = pcls.on_admit is not Policy.on_admit
        sync_finish = pcls.on_finish is not Policy.on_finish
        sync_horizon = horizon is not None and (
            getattr(pcls, "fast_forward_horizon", None) is not Policy.fast_forward_horizon
        )
        cost = self.cost
        linear = type(cost) is LinearCostModel  # inline its step time (bit-identical)
        c0 = c_token = c_kv = c_decode = 0.0
        if linear:
            c0, c_token, c_kv, c_decode = cost.c0, cost.c_token, cost.c_kv, cost.c_decode
        g_dec = 0  # decode steps simulated by the aggregate path so far
        lagging = False  # some running request's fields are behind g_dec
        base = [0] * n  # request index -> g_dec at which its token fields are exact
        stretch = False  # the aggregates below describe the current running set
        fin_heap: list[tuple[int, int, int]] = []  # (g_dec when it finishes, order, index)
        pos_ctr = 0  # running order of stretch members (admissions append at the end)
        hist = [0] * bs  # hist[q]: members needing a new KV block at a step with g_dec%bs == q
        bucket = [0] * n  # request index -> its hist slot
        ctx_sum = 0  # computed tokens summed over the members (exact, never lazy)
        rc = [0, 0, 0]  # members per tier

        def enqueue(r: SchedRequest, now: float) -> None:
            r.status = Status.WAITING
            waiting[r.index] = r
            n_wait[tid[r.index]] += 1
            if use_heap:
                version[r.index] += 1
                heapq.heappush(heap, (key(r, now), r.arrival_s, r.index, version[r.index]))

        def dequeue(r: SchedRequest) -> None:
            del waiting[r.index]
            n_wait[tid[r.index]] -= 1

        def evict(r: SchedRequest, now: float) -> None:
            # preemption by recompute: drop the KV, keep the generated tokens
            state.free_blocks += held[r.index]
            held[r.index] = 0
            stats["recomputed_tokens"] += r.num_computed_tokens
            r.num_computed_tokens = 0
            r.num_preemptions += 1
            stats["preemptions"] += 1
            enqueue(r, now)

        def materialize() -> None:
            nonlocal lagging
            if lagging:
                g = g_dec
                for r in running:
                    idx = r.index
                    d = g - base[idx]
                    if d:
                        c = r.num_computed_tokens + d
                        r.num_computed_tokens = c
                        r.num_output_tokens += d
                        held[idx] = -(-c // bs)
                        base[idx] = g
                lagging = False

        policy.prepare(reqs)
        now = 0.0
        nxt = 0  # next arrival
        done = 0
        window_deadline = math.inf  # micro-batch collection deadline
        step = 0
        while done < n:
            # 1. arrivals
            if nxt < n and reqs[nxt].arrival_s <= now:
                if sync_arrival:
                    materialize()
                batch = []
                while nxt < n and reqs[nxt].arrival_s <= now:
                    batch.append(reqs[nxt])
                    nxt += 1
                ok = [r for r in batch if r.prompt_tokens < self.max_model_len]
                bad = [r for r in batch if r.prompt_tokens >= self.max_model_len]
                if bad:  # prompt longer than the context window: vLLM rejects it
                    for r in bad:
                        r.status = Status.ABORTED
                        r.finish_s = now
                    stats["aborted"] += len(bad)
                    done += len(bad)
                    policy.on_abort(bad, now)
                if ok:
                    policy.on_arrival(ok, now)
                    for r in ok:
                        enqueue(r, now)
            if not running and not waiting:
                if nxt >= n:
                    break
                now = reqs[nxt].arrival_s
                continue
            admit_open = True
            if microbatch and not running:
                if window_deadline == math.inf:
                    window_deadline = now + self.microbatch_window_s
                if len(waiting) < max_seqs and now < window_deadline:
                    now = min(window_deadline, reqs[nxt].arrival_s if nxt < n else math.inf)
                    continue
            elif microbatch:
                admit_open = False

            # 2. policy hooks
            w_counts = (n_wait[0], n_wait[1], n_wait[2])
            n_pre = 0  # preemptions this step (policy + memory)
            n_mem_pre = 0  # memory preemptions: vLLM admits nothing in such a step
            if uses_step or uses_preempt:
                materialize()
            if uses_step:
                policy.on_step(running, list(waiting.values()), now)
                if incremental:
                    for r in policy.take_changed():
                        if r.status is Status.WAITING:
                            version[r.index] += 1
                            heapq.heappush(
                                heap, (key(r, now), r.arrival_s, r.index, version[r.index])
                            )
            if uses_preempt and running:
                for r in policy.preempt(running, list(waiting.values()), now):
                    if r.status is Status.RUNNING:
                        running.remove(r)
                        r.n_policy_preemptions += 1
                        stats["policy_preemptions"] += 1
                        evict(r, now)
                        n_pre += 1
                        stretch = False

            # 2b. aggregate steps: every running request decodes and none is preempted
            m = len(running)
            if ff and m and not n_pre and m <= max_budget:
                if not stretch:
                    # every running request must be decoding; prefilling ones sit at the end
                    # of the running order, so check from there (cheap failure)
                    materialize()  # (lagging after a step that ended a stretch)
                    stretch = True
                    for r in reversed(running):
                        if not (
                            r.num_output_tokens > 0
                            and r.num_computed_tokens == r.prompt_tokens + r.num_output_tokens - 1
                        ):
                            stretch = False
                            break
                    if stretch:
                        fin_heap = [
                            (g_dec + targets[r.index] - r.num_output_tokens, pos, r.index)
                            for pos, r in enumerate(running)
                        ]
                        heapq.heapify(fin_heap)
                        pos_ctr = m
                        hist = [0] * bs
                        ctx_sum = 0
                        rc = [0, 0, 0]
                        for r in running:
                            idx = r.index
                            c = r.num_computed_tokens
                            q = (g_dec - c) % bs
                            bucket[idx] = q
                            hist[q] += 1
                            ctx_sum += c
                            rc[tid[idx]] += 1
                            base[idx] = g_dec
                free = state.free_blocks
                if stretch and hist[g_dec % bs] <= free:
                    # can anything be admitted during the coming steps? (free only shrinks)
                    budget = max_budget - m
                    blocked = True
                    if admit_open and waiting and m < max_seqs:
                        if budget <= 0:
                            pass
                        elif not use_heap:
                            blocked = False  # ranked() would be called: one step at a time
                        else:
                            while heap:
                                _, _, idx, ver = heap[0]
                                r = reqs[idx]
                                if ver != version[idx] or r.status is not Status.WAITING:
                                    heapq.heappop(heap)  # stale (what admission does first)
                                    continue
                                need = r.prompt_tokens + r.num_output_tokens
                                chunk = need if need < budget else budget
                                blocked = -(-chunk // bs) > free
                                break
                    if sync_horizon:
                        materialize()
                    if horizon is not None:
                        h = horizon(running, waiting, now)
                    else:  # a duck-typed policy without the method: the base class's rule
                        h = 1 if uses_step or uses_preempt else math.inf
                    w0, w1, w2 = w_counts
                    r0, r1, r2 = rc
                    if blocked:
                        # ---- a window of pure decode steps, one O(1) iteration each ----
                        a_next = reqs[nxt].arrival_s if nxt < n else math.inf
                        a = c0 + c_token * m
                        b = c_decode * m
                        f_next = fin_heap[0][0]
                        k = 0
                        while True:
                            nb = hist[g_dec % bs]
                            if nb > free:
                                break  # a memory preemption: left to a general step
                            kv = ctx_sum + m
                            if linear:  # == LinearCostModel.step_time(0, m, kv, 0.0, 0)
                                dt = a + c_kv * kv + b
                            elif seq_aware:
                                dt = step_time(0, m, kv, 0.0, prefill_seqs=0)
                            else:
                                dt = step_time(0, m, kv, 0.0)
                            t0 = now
                            now = t0 + dt
                            free -= nb
                            ctx_sum += m
                            g_dec += 1
                            k += 1
                            col_t.append(t0)
                            col_dt.append(dt)
                            if g_dec == f_next:
                                break  # its KV column is written after the finishes
                            col_kv.append(kv_cap - free * bs)
                            if now >= a_next or k >= h:
                                break
                        lagging = True
                        stats["fast_forward_windows"] += 1
                        stats["fast_forward_steps"] += k
                        stats["computed_tokens"] += k * m
                        step += k
                        seg = (0, m, 0, 0, w0, w1, w2, r0, r1, r2)
                        if g_dec == f_next:
                            if k > 1:
                                col_seg.extend((k - 1, *seg))
                            finished = []
                            while fin_heap and fin_heap[0][0] == g_dec:
                                finished.append(reqs[heapq.heappop(fin_heap)[2]])
                            for r in finished:
                                idx = r.index
                                c = r.num_computed_tokens + g_dec - base[idx]
                                r.num_output_tokens += g_dec - base[idx]
                                r.num_computed_tokens = c
                                base[idx] = g_dec
                                r.status = Status.FINISHED
                                r.finish_s = now
                                free += -(-c // bs)
                                held[idx] = 0
                                running.remove(r)
                                hist[bucket[idx]] -= 1
                                ctx_sum -= c
                                rc[tid[idx]] -= 1
                            done += len(finished)
                            state.free_blocks = free
                            if sync_finish:
                                materialize()
                            policy.on_finish(finished, now)
                            col_kv.append(kv_cap - free * bs)
                            col_seg.extend((1, *seg))
                        else:
                            col_seg.extend((k, *seg))
                        state.free_blocks = free
                    else:  # (admission is open: closed admission counts as blocked)
                        # ---- one step: members decode (aggregate), admissions prefill ----
                        free -= hist[g_dec % bs]
                        state.free_blocks = free
                        admitted: list[SchedRequest] = []
                        new: list[tuple[SchedRequest, int]] = []
                        order = None
                        if use_heap:
                            order = _heap_order(heap, reqs, version)
                        elif waiting and budget > 0 and len(running) < max_seqs:
                            materialize()
                            order = policy.ranked(list(waiting.values()), now)
                        if order is not None:
                            budget = self._admit_in_order(
                                order,
                                budget,
                                max_seqs,
                                bs,
                                now,
                                state,
                                dequeue,
                                running,
                                new,
                                admitted,
                            )
                            for r in admitted:
                                base[r.index] = g_dec
                        if admitted:
                            window_deadline = math.inf
                            if sync_admit:
                                materialize()
                            policy.on_admit(admitted, now)
                        free = state.free_blocks
                        pf = nps = 0
                        dec = m  # every member decodes
                        pairs = 0.0
                        kv = ctx_sum + m
                        rcs = [r0, r1, r2]
                        for r, c in new:  # as step 5 classifies them (scheduled after members)
                            ctx = r.num_computed_tokens
                            rcs[tid[r.index]] += 1
                            if (
                                c == 1
                                and r.num_output_tokens > 0
                                and ctx == r.prompt_tokens + r.num_output_tokens - 1
                            ):
                                dec += 1
                            else:
                                pf += c
                                nps += 1
                                pairs += c * (ctx + 0.5 * c)
                            kv += ctx + c
                        if linear and not new:  # == LinearCostModel.step_time(0, m, kv, 0.0, 0)
                            dt = c0 + c_token * m + c_kv * kv + c_decode * m
                        elif seq_aware:
                            dt = step_time(pf, dec, kv, pairs, prefill_seqs=nps)
                        else:
                            dt = step_time(pf, dec, kv, pairs)
                        t0 = now
                        now = t0 + dt
                        stats["computed_tokens"] += pf + dec
                        ctx_sum += m
                        g_dec += 1
                        lagging = True
                        finished = []
                        while fin_heap and fin_heap[0][0] == g_dec:
                            finished.append(reqs[heapq.heappop(fin_heap)[2]])
                        for r in finished:
                            idx = r.index
                            c = r.num_computed_tokens + g_dec - base[idx]
                            r.num_output_tokens += g_dec - base[idx]
                            r.num_computed_tokens = c
                            base[idx] = g_dec
                            free += -(-c // bs)
                            hist[bucket[idx]] -= 1
                            ctx_sum -= c
                            rc[tid[idx]] -= 1
                        for r, c in new:
                            idx = r.index
                            c = r.num_computed_tokens + c
                            r.num_computed_tokens = c
                            base[idx] = g_dec
                            if c == r.prompt_tokens + r.num_output_tokens:
                                r.num_output_tokens += 1
                                if r.num_output_tokens == 1:
                                    r.first_token_s = now
                                if r.num_output_tokens >= targets[idx]:
                                    finished.append(r)
                                    free += held[idx]
                                    continue
                                # prefill done: a member from the next step on
                                heapq.heappush(
                                    fin_heap,
                                    (g_dec + targets[idx] - r.num_output_tokens, pos_ctr, idx),
                                )
                                pos_ctr += 1
                                q = (g_dec - c) % bs
                                bucket[idx] = q
                                hist[q] += 1
                                ctx_sum += c
                                rc[tid[idx]] += 1
                            else:
                                stretch = False  # a chunked prefill goes on next step
                        if finished:
                            for r in finished:
                                r.status = Status.FINISHED
                                r.finish_s = now
                                held[r.index] = 0
                                running.remove(r)
                            done += len(finished)
                            state.free_blocks = free
                            if sync_finish:
                                materialize()
                            policy.on_finish(finished, now)
                        state.free_blocks = free
                        col_t.append(t0)
                        col_dt.append(dt)
                        col_kv.append(kv_cap - free * bs)
                        col_seg.extend((1, pf, dec, 0, len(admitted), w0, w1, w2, *rcs))
                        step += 1
                        stats["aggregate_steps"] += 1
                    if observer is not None:
                        state.now = now
                        state.scheduled = []
                        state.step = step
                        observer(state)
                    continue

            # 3. a general step: continue running requests
            materialize()
            stretch = False
            budget = max_budget
            scheduled: list[tuple[SchedRequest, int]] = []
            i = 0
            while i < len(running):
                r = running[i]
                need = r.prompt_tokens + r.num_output_tokens - r.num_computed_tokens
                chunk = need if need < budget else budget
                if chunk <= 0:
                    i += 1
                    continue
                nb = -(-(r.num_computed_tokens + chunk) // bs) - held[r.index]
                self_evicted = False
                while nb > state.free_blocks:
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
                    evict(victim, now)
                    n_pre += 1
                    n_mem_pre += 1
                    if victim is r:
                        self_evicted = True
                        break
                if self_evicted:
                    continue
                state.free_blocks -= nb
                held[r.index] += nb
                budget -= chunk
                scheduled.append((r, chunk))
                i += 1

            # 4. admission in policy order
            admitted = []
            if admit_open and n_mem_pre == 0 and waiting and budget > 0 and len(running) < max_seqs:
                order = (
                    _heap_order(heap, reqs, version)
                    if use_heap
                    else policy.ranked(list(waiting.values()), now)
                )
                budget = self._admit_in_order(
                    order, budget, max_seqs, bs, now, state, dequeue, running, scheduled, admitted
                )
                if admitted:
                    window_deadline = math.inf
                    policy.on_admit(admitted, now)
                    for r in admitted:
                        base[r.index] = g_dec

            if not scheduled:
                if running or n_pre:
                    continue  # everything was preempted this step; reschedule
                raise RuntimeError(
                    f"sim: no progress at t={now:.3f}s with {len(waiting)} waiting, nothing "
                    f"running and {state.free_blocks}/{state.num_blocks} free blocks"
                )

            # 5. one forward pass
            pf = dec = kv = nps = 0
            pairs = 0.0
            r_counts = [0, 0, 0]
            for r, c in scheduled:
                ctx = r.num_computed_tokens
                r_counts[tid[r.index]] += 1
                if (
                    c == 1
                    and r.num_output_tokens > 0
                    and ctx == r.prompt_tokens + r.num_output_tokens - 1
                ):
                    dec += 1
                else:
                    pf += c
                    nps += 1
                    pairs += c * (ctx + 0.5 * c)
                kv += ctx + c
            dt = (
                step_time(pf, dec, kv, pairs, prefill_seqs=nps)
                if seq_aware
                else step_time(pf, dec, kv, pairs)
            )
            t0 = now
            now = now + dt
            stats["computed_tokens"] += pf + dec
            finished = []
            for r, c in scheduled:
                r.num_computed_tokens += c
                if r.num_computed_tokens == r.prompt_tokens + r.num_output_tokens:
                    r.num_output_tokens += 1
                    if r.num_output_tokens == 1:
                        r.first_token_s = now
                    if r.num_output_tokens >= targets[r.index]:
                        finished.append(r)
            if finished:
                for r in finished:
                    r.status = Status.FINISHED
                    r.finish_s = now
                    state.free_blocks += held[r.index]
                    held[r.index] = 0
                    running.remove(r)
                done += len(finished)
                policy.on_finish(finished, now)

            col_t.append(t0)
            col_dt.append(dt)
            col_kv.append((state.num_blocks - state.free_blocks) * bs)
            col_seg.extend((1, pf, dec, n_pre, len(admitted), *w_counts, *r_counts))
            step += 1
            if observer is not None:
                state.now = now
                state.scheduled = scheduled
                state.step = step
                observer(state)
        return now, step

    @staticmethod
    def _admit_in_order(
        order: Iterable[SchedRequest],
        budget: int,
        max_seqs: int,
        bs: int,
        now: float,
        state: SimState,
        dequeue: Callable[[SchedRequest], None],
        running: list[SchedRequest],
        scheduled: list[tuple[SchedRequest, int]],
        admitted: list[SchedRequest],
    ) -> int:
        """Admit waiting requests in policy ``order`` while the step's token ``budget``, batch
        slots and free KV blocks allow (the first that does not fit stops admission: no
        skipping ahead); returns the budget left."""
        for r in order:
            if budget <= 0 or len(running) >= max_seqs:
                break
            need = r.prompt_tokens + r.num_output_tokens
            chunk = need if need < budget else budget  # chunked prefill
            nb = -(-chunk // bs)
            if nb > state.free_blocks:
                break
            SimEngine._admit(r, chunk, nb, now, state, dequeue, running, scheduled, admitted)
            budget -= chunk
        return budget

    @staticmethod
    def _admit(
        r: SchedRequest,
        chunk: int,
        nb: int,
        now: float,
        state: SimState,
        dequeue: Callable[[SchedRequest], None],
        running: list[SchedRequest],
        scheduled: list[tuple[SchedRequest, int]],
        admitted: list[SchedRequest],
    ) -> None:
        dequeue(r)
        r.status = Status.RUNNING
        if math.isnan(r.admitted_s):
            r.admitted_s = now
        state.free_blocks -= nb
        state.held[r.index] = nb
        running.append(r)
        scheduled.append((r, chunk))
        admitted.append(r)


def _heap_order(
    heap: list[tuple[Any, ...]], reqs: list[SchedRequest], version: list[int]
) -> Iterator[SchedRequest]:
    """Waiting requests in key order from the lazy heap (entries ``(key, seq, index,
    version)``): stale entries (re-keyed since, or no longer waiting: e.g. the request just
    yielded and admitted) are popped as they surface."""
    while heap:
        _, _, idx, ver = heap[0]
        r = reqs[idx]
        if ver != version[idx] or r.status is not Status.WAITING:
            heapq.heappop(heap)
            continue
        yield r


def partial_result(exc: BaseException) -> EngineResult | None:
    """The records a failed ``SimEngine.run`` kept, or None if ``exc`` carries none.

    ``records`` holds one row per request that had *ended* (finished or aborted) when the run
    raised, in the usual schema; requests still waiting or running are left out (their latency
    is unknown). ``records.attrs["incomplete"]`` and ``meta["incomplete"]`` are True;
    ``meta["unfinished_requests"]`` counts the left-out requests and ``meta["error"]`` names the
    exception. ``steps`` holds every step completed before the failure.
    """
    res = getattr(exc, "partial_result", None)
    return res if isinstance(res, EngineResult) else None


def _attach_partial(
    exc: BaseException,
    reqs: list[SchedRequest],
    cols: StepColumns,
    stats: dict[str, int],
    engine: SimEngine,
    policy: Policy,
    seed: int | None,
) -> None:
    """Set ``exc.partial_result`` (see :func:`partial_result`); never raises itself."""
    try:
        ended = [r for r in reqs if r.status in (Status.FINISHED, Status.ABORTED)]
        records = records_frame(ended, engine=engine.name, policy=policy.name, seed=seed)
        records.attrs["incomplete"] = True
        steps = cols.frame()
        end = float(steps["time_s"].iloc[-1] + steps["duration_s"].iloc[-1]) if len(steps) else 0.0
        meta = {
            **engine.describe(),
            **stats,
            "steps": len(steps),
            "makespan_s": end,
            "policy": policy.name,
            "incomplete": True,
            "unfinished_requests": len(reqs) - len(ended),
            "error": f"{type(exc).__name__}: {exc}",
        }
        exc.partial_result = EngineResult(records=records, steps=steps, meta=meta)  # type: ignore[attr-defined]
        exc.add_note(
            f"sim: records of the {len(ended)} requests that ended before the failure are "
            f"attached as .partial_result ({len(reqs) - len(ended)} unfinished left out)"
        )
    except Exception:  # the original error matters more than the partial records
        pass
