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

The engine keeps no state between runs and uses no randomness: the same workload and policy give
identical records.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data.schema import TIERS
from scheduler.engine import STEP_COLUMNS, EngineResult, requests_from_frame, workload_frame
from scheduler.policies.base import Policy
from scheduler.records import build_records
from scheduler.request import SchedRequest, Status
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

    # ------------------------------------------------------------------ run
    def run(self, workload: Any, policy: Policy) -> EngineResult:
        df = workload_frame(workload)
        reqs = requests_from_frame(df)
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

        # per-step columns
        col_t: list[float] = []
        col_dt: list[float] = []
        col_pf: list[int] = []
        col_dec: list[int] = []
        col_kv: list[int] = []
        col_pre: list[int] = []
        col_adm: list[int] = []
        col_w: list[list[int]] = [[], [], []]
        col_r: list[list[int]] = [[], [], []]
        stats = {
            "preemptions": 0,
            "policy_preemptions": 0,
            "recomputed_tokens": 0,
            "computed_tokens": 0,
            "aborted": 0,
        }

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

        policy.prepare(reqs)
        now = 0.0
        nxt = 0  # next arrival
        done = 0
        window_deadline = math.inf  # micro-batch collection deadline
        step = 0
        while done < n:
            # 1. arrivals
            if nxt < n and reqs[nxt].arrival_s <= now:
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
            if uses_step:
                policy.on_step(running, list(waiting.values()), now)
                if incremental:
                    for r in policy.take_changed():
                        if r.status is Status.WAITING:
                            version[r.index] += 1
                            heapq.heappush(
                                heap, (key(r, now), r.arrival_s, r.index, version[r.index])
                            )
            n_pre = 0  # preemptions this step (policy + memory)
            n_mem_pre = 0  # memory preemptions: vLLM admits nothing in such a step
            if uses_preempt and running:
                for r in policy.preempt(running, list(waiting.values()), now):
                    if r.status is Status.RUNNING:
                        running.remove(r)
                        r.n_policy_preemptions += 1
                        stats["policy_preemptions"] += 1
                        evict(r, now)
                        n_pre += 1

            # 3. continue running requests
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
            admitted: list[SchedRequest] = []
            if admit_open and n_mem_pre == 0 and waiting and budget > 0 and len(running) < max_seqs:
                if use_heap:
                    while heap and budget > 0 and len(running) < max_seqs:
                        _, _, idx, ver = heap[0]
                        r = reqs[idx]
                        if ver != version[idx] or r.status is not Status.WAITING:
                            heapq.heappop(heap)
                            continue
                        need = r.prompt_tokens + r.num_output_tokens
                        chunk = need if need < budget else budget
                        nb = -(-chunk // bs)
                        if nb > state.free_blocks:
                            break
                        heapq.heappop(heap)
                        self._admit(r, chunk, nb, now, state, dequeue, running, scheduled, admitted)
                        budget -= chunk
                else:
                    for r in policy.ranked(list(waiting.values()), now):
                        if budget <= 0 or len(running) >= max_seqs:
                            break
                        need = r.prompt_tokens + r.num_output_tokens
                        chunk = need if need < budget else budget
                        nb = -(-chunk // bs)
                        if nb > state.free_blocks:
                            break
                        self._admit(r, chunk, nb, now, state, dequeue, running, scheduled, admitted)
                        budget -= chunk
                if admitted:
                    window_deadline = math.inf
                    policy.on_admit(admitted, now)

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
            finished: list[SchedRequest] = []
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
            col_pf.append(pf)
            col_dec.append(dec)
            col_kv.append((state.num_blocks - state.free_blocks) * bs)
            col_pre.append(n_pre)
            col_adm.append(len(admitted))
            for t in range(3):
                col_w[t].append(w_counts[t])
                col_r[t].append(r_counts[t])
            step += 1
            if self.observer is not None:
                state.now = now
                state.scheduled = scheduled
                state.step = step
                self.observer(state)

        seed = getattr(workload, "seed", None)
        records = build_records(reqs, engine=self.name, policy=policy.name, seed=seed)
        steps = pd.DataFrame(
            {
                "time_s": col_t,
                "duration_s": col_dt,
                "prefill_tokens": col_pf,
                "decode_seqs": col_dec,
                "kv_tokens": col_kv,
                "preemptions": col_pre,
                "admitted": col_adm,
                **{f"waiting_{t}": col_w[i] for i, t in enumerate(TIERS)},
                **{f"running_{t}": col_r[i] for i, t in enumerate(TIERS)},
            },
            columns=list(STEP_COLUMNS),
        )
        for name, (dtype, _, _) in STEP_COLUMNS.items():
            steps[name] = steps[name].astype(dtype)
        meta = {**self.describe(), **stats, "steps": step, "makespan_s": now, "policy": policy.name}
        return EngineResult(records=records, steps=steps, meta=meta)

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
