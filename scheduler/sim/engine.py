"""Discrete-event simulator of a vLLM-style continuous-batching engine.

One loop iteration is one engine step (vLLM v1 ``Scheduler.schedule`` + one forward pass):

1. requests whose ``arrival_s <= now`` join the waiting queue (``policy.on_arrival``, batched);
2. ``policy.on_step`` (only if the policy uses it), then voluntary ``policy.preempt``;
3. running requests are continued first, in admission order, each taking
   ``min(tokens still to compute, token budget)`` tokens (chunked prefill; a decode is one token).
   Their KV grows in blocks of ``block_size`` tokens; when no free block is left the running
   request with the *largest* ``policy.victim_key`` (the order key unless the policy has a
   victim rule) is preempted by recompute (its blocks are freed and it must recompute prompt +
   generated tokens when readmitted; ``policy.on_preempt``) -- possibly the request itself,
   which ends the pass over running requests for this step, as in vLLM;
4. if no request was preempted for memory this step, waiting requests are admitted in policy
   order while the token budget, ``max_num_seqs`` and free blocks allow; a request is admitted
   only if blocks for its whole current sequence (prompt + generated) are free, then gets its
   first chunk (vLLM 0.32's ``scheduler_reserve_full_isl``, on by default; checked against
   vLLM in docs/LIVE.md, "Preemptions"); the first one that does not fit stops admission;
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

Code layout: this module is the public face (``SimEngine``: parameters, ``run``,
``capacity_rps``, ``describe``; ``SimState``; :func:`partial_result`). The loop is
``scheduler.sim.loop.Run``, one method per phase above: ``arrivals`` (1), ``batch_gate``
(micro-batch collection), ``policy_hooks`` (2), then ``fast_step`` (the fast-forward: ``window``
or ``aggregate_step``) or ``general_step``: ``continue_running`` with ``preempt_for_memory``
(3), ``admit_in_order`` (4), ``forward`` + ``advance`` (5: step time, tokens, first token) and
``finish``; both paths share admission, ``steptime.classify`` (step-time arguments), ``step_dt`` (``steptime.StepTimer``),
``advance``, ``finish`` and ``record`` (the step-table row). Its state lives in three objects:
``kv.KVBlocks`` (free/held blocks), ``waiting.WaitingQueue`` (the keyed lazy heap, the
waiting dict, per-tier counts) and ``fastforward.DecodeAggregates`` (the stretch aggregates and
the lazy token fields; ``fastforward.decode_window`` is the O(1)-per-step inner loop). Tier
counters are sized from ``data.schema.TIERS``.

The engine keeps no state between runs and uses no randomness: the same workload and policy give
identical records. If a run raises, the exception carries the records of the requests that had
ended (:func:`partial_result`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from scheduler.engine import EngineResult, requests_from_frame, workload_frame
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest, Status
from scheduler.sim.columns import StepColumns, records_frame
from scheduler.sim.cost import LinearCostModel
from scheduler.sim.loop import Run, SimState
from scheduler.sim.profiles import build_profile

__all__ = ["MODES", "SimEngine", "SimState", "partial_result"]

MODES = ("continuous", "microbatch")


class SimEngine:
    """Simulated engine; parameters mirror vLLM's (``max_num_seqs``, ``max_num_batched_tokens``,
    ``block_size``, ``num_gpu_blocks``, ``gpu_memory_utilization``, ``max_model_len``)."""

    name = "sim"
    max_requests: int | None = None  # serves every request of the workload
    supports_live_faults = False  # faults.client / faults.engine need the live engine
    supports_admission_headroom = True  # a policy's admission gate (scheduler.policies.base)

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
        """The event loop (:class:`scheduler.sim.loop.Run`); fills ``cols``, ``stats`` and the
        requests' fields in place. Returns (makespan s, steps)."""
        return Run(self, reqs, policy, cols, stats).serve()


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
