"""``srpt_oracle``: preemptive SRPT with the *true* lengths and the recompute cost of a preemption.

The reference beyond the non-preemptive ``oracle`` (``scheduler/policies/oracle.py``): like it,
it reads ``true_output_tokens`` (the only other policy allowed to) and ranks every request by its
true remaining work ``min(true, max_tokens) - generated`` (+ ``prompt_weight`` per prompt token
still to compute). Unlike it, a running request is preempted (recompute) for a waiting one with
less remaining work when the swap pays for its recompute:

    gain = min(remaining(victim) - remaining(candidate), next_finish)
         > min_gain_tokens + recompute_cost_per_token * (victim prompt + generated) * running

``next_finish`` (the smallest true remaining work in the running batch) bounds what the
candidate can gain: a slot frees by itself that soon. On a single-sequence server it is the
victim's own remaining work, so the rule is textbook SRPT there (preemption free when the cost
is 0); in a large batch it is what keeps SRPT from preempting for requests that a finishing
request would make room for a few steps later anyway.

The cost term reads: a preemption by recompute throws the victim's KV away, and recomputing
``prompt + generated`` tokens of prefill stalls every running request for that long; one
prefill token costs about ``recompute_cost_per_token`` decode steps (default 0.0015: on the
default L4 / Llama-3-8B profile a prefill token costs ~0.15 ms, ``c_token``, against a decode
step of ~0.1 s with a hundred or more running requests, ``scheduler/sim/profiles.py``). Candidates must have missed one admission round
(a request that fits in a free slot is not a reason to preempt); at most
``max_preempt_per_step`` swaps per step and ``max_preemptions`` per request (null: unbounded).

Keys are the true remaining work, read live by ``key`` (the engines' memory victim is the
running request with the most remaining work); the victim order is refreshed every
``rekey_every`` generated tokens (``scheduler/policies/preemptive.py``), which is also the decode
fast-forward horizon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from scheduler.policies.preemptive import PreemptivePolicy
from scheduler.request import SchedRequest


def true_remaining(r: SchedRequest) -> int:
    """True output tokens still to generate (engine-side field: oracles only)."""
    return min(r.true_output_tokens, r.max_tokens) - r.num_output_tokens


class SRPTOraclePolicy(PreemptivePolicy):
    name: ClassVar[str] = "srpt_oracle"

    def __init__(
        self,
        prompt_weight: float = 0.0,
        min_gain_tokens: float = 0.0,
        recompute_cost_per_token: float = 0.0015,
        max_preemptions: int | None = None,
        max_preempt_per_step: int | None = 1,
        rekey_every: int = 16,
    ) -> None:
        super().__init__(
            max_preemptions=max_preemptions,
            max_preempt_per_step=max_preempt_per_step,
            max_preempt_fraction=1.0,
            min_gain_tokens=min_gain_tokens,
            recompute_cost_per_token=recompute_cost_per_token,
            rekey_every=rekey_every,
        )
        self.prompt_weight = float(prompt_weight)  # tokens of work per uncomputed prompt token
        self._next_finish = 0.0  # min true remaining over the running batch at the last re-key

    def key(self, request: SchedRequest, now: float) -> float:
        left_prompt = max(0, request.prompt_tokens - request.num_computed_tokens)
        return true_remaining(request) + self.prompt_weight * left_prompt

    def _running_keys(self, running: Sequence[SchedRequest], now: float) -> None:
        # one pass: keys and the first slot the batch frees by itself (min true remaining)
        pw = self.prompt_weight
        nf = math.inf
        for r in running:
            rem = min(r.true_output_tokens, r.max_tokens) - r.num_output_tokens
            r.sched_key = rem + pw * max(0, r.prompt_tokens - r.num_computed_tokens) if pw else rem
            if rem < nf:
                nf = rem
        self._next_finish = nf

    def _gain_tokens(self, victim: SchedRequest, cand: SchedRequest) -> float:
        # the candidate saves at most the wait until a running request finishes anyway (the
        # re-keying is at most rekey_every tokens old: count the progress since)
        since = self.rekey_every - self._tokens_to_rekey()
        return min(true_remaining(victim) - cand.sched_key, self._next_finish - since)

    def _requeue_key(self, r: SchedRequest, now: float) -> float:
        return true_remaining(r) + self.prompt_weight * r.prompt_tokens  # its KV is dropped

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            r.est_output_tokens = r.est_output_p90 = float(min(r.true_output_tokens, r.max_tokens))
            r.sched_key = self.key(r, now)
            self._enqueue(r, now)

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "prompt_weight": self.prompt_weight,
            **self._describe_preemption(),
        }
