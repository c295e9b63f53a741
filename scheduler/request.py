"""The per-request state both engines share with policies.

An engine (simulator or live vLLM adapter) owns one :class:`SchedRequest` per submitted request
and updates its progress fields; a policy reads them and writes only its own estimate fields
(``est_*``) and ``sched_key``. The true output length is known to the engine only: policies other
than ``oracle`` must never read ``true_output_tokens`` (the oracle is the clairvoyant reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    WAITING = "waiting"  # queued: never admitted, or preempted and waiting for re-admission
    RUNNING = "running"  # holds KV blocks and is in the running batch
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False, slots=True)
class SchedRequest:
    # --- identity and admission-time features (from the workload row) ---
    request_id: str
    index: int  # row position in the workload table (stable tie-break, record order)
    tenant: str
    tier: str
    category: str
    source: str
    model: str
    prompt: str | None
    prompt_tokens: int
    max_tokens: int
    arrival_s: float
    # known to the engine only (trace-driven length); policies except `oracle` must not read it
    true_output_tokens: int
    # the client's own targets (live server metadata, s; NaN: none given, the tier's apply)
    slo_ttft_s: float = math.nan
    slo_tpot_s: float = math.nan

    # --- progress, written by the engine ---
    status: Status = Status.WAITING
    num_output_tokens: int = 0  # tokens generated so far (survives preemption by recompute)
    num_computed_tokens: int = 0  # prompt + output tokens whose KV is computed right now
    num_preemptions: int = 0
    # num_output_tokens when last (re-)admitted: progress since then is what a victim rule's
    # protection window counts (scheduler.policies.victims)
    admit_output_tokens: int = 0
    recomputed_tokens: int = 0  # computed KV tokens thrown away by preemptions (recompute tax)
    admitted_s: float = math.nan  # first time it was scheduled
    first_token_s: float = math.nan
    finish_s: float = math.nan
    output_token_ids: list[int] | None = None  # live engine only, when a predictor reads text
    # the trace's full output text (replayed ShareGPT workloads), engine-side like
    # true_output_tokens: predictors read only its first num_output_tokens tokens, through
    # predictor.text_progress.PartialText
    output_text: str | None = None

    # --- estimates, written by the policy (tokens) ---
    est_output_tokens: float = math.nan  # total output length estimated at admission (median)
    est_output_p90: float = math.nan  # upper quantile at admission
    est_remaining: float = math.nan  # latest estimate of tokens still to generate
    est_updated_at_tokens: int = -1  # num_output_tokens when est_remaining was last computed
    est_class: str = ""  # runtime class the policy currently assigns (short | medium | long)
    n_reclassified: int = 0  # times est_class changed after admission
    n_policy_preemptions: int = 0  # preemptions the policy asked for (subset of num_preemptions)
    sched_key: float = 0.0  # policy-maintained ordering key, lower is served sooner
    # (time s, tokens generated, estimated total output tokens): the estimate trajectory
    est_history: list[tuple[float, int, float]] = field(default_factory=list)

    @property
    def remaining_true(self) -> int:
        """True tokens left to generate. Engine and oracle only."""
        return self.true_output_tokens - self.num_output_tokens

    @property
    def total_tokens_needed(self) -> int:
        """KV slots the request holds when it finishes (prompt + true output)."""
        return self.prompt_tokens + self.true_output_tokens

    def record_estimate(self, now: float, est_total: float, klass: str) -> None:
        """Store a (re-)prediction and count a reclassification when the class changes."""
        self.est_history.append((now, self.num_output_tokens, float(est_total)))
        if self.est_class and klass != self.est_class:
            self.n_reclassified += 1
        self.est_class = klass
