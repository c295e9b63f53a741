"""``trail``: SRPT on the predicted remaining length with limited preemption (after TRAIL).

TRAIL (Shahout et al., "Don't Stop Me Now: Embedding Based Scheduling for LLMs", arXiv
2410.01035) re-predicts every running request's remaining output length while it decodes and
schedules shortest-predicted-remaining first, with *limited preemption*: a request may be
preempted only early in its execution, while little KV is at stake, and never once it has
generated more than ``preempt_limit`` (~80%) of its predicted length; at most half the batch
is preempted.

Ours, on the project's learned predictor (the same artifacts as ``sjf``/``drift``, through
:class:`~scheduler.policies.estimates.LearnedLengths`):

* **admission**: the predicted median output length (``p50``; + ``prompt_weight`` per prompt
  token), lowest first;
* **re-prediction**: running requests are re-keyed every ``rekey_every`` generated tokens
  (``scheduler/policies/preemptive.py``); a request is re-predicted with the drift model (p50 of
  the tokens still to come given those generated) when its generated count grew by
  ``max(min_delta_tokens, rel_delta * generated)`` since its last prediction, and in between its
  remaining estimate counts down with the tokens it generates (floor 1);
* **limited preemption**: a running request is a victim only while ``generated <
  preempt_limit * predicted total`` (total = generated at the last prediction + its remaining
  estimate); a waiting request that missed an admission round replaces the eligible running
  request with the largest remaining estimate when its own estimate is smaller by more than
  ``min_gain_tokens`` (0, as TRAIL) plus the recompute cost (``recompute_cost_per_token *
  (prompt + generated) * running``; TRAIL keeps a preempted request's KV, our engines recompute
  it, so the default charges the engines' cost, 0.0015 as ``srpt_oracle``), at most
  ``max_preempt_fraction`` (0.5) of the running batch per step.

Where ours differs from TRAIL (docs/BASELINES.md): TRAIL's predictor reads the serving model's
layer embeddings after every token; ours is the project's LightGBM drift model, re-predicted on a
progress schedule (the same as ``drift``'s) to keep the hot path cheap. "At most half the batch"
is applied per step. With the recompute cost at 0 (TRAIL's rule alone) the policy thrashes in our
memory-bound engines (docs/BASELINES.md). Memory preemption is the engines' (largest key = longest predicted
remaining work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from data.schema import runtime_class
from scheduler.policies.estimates import LearnedLengths
from scheduler.policies.preemptive import PreemptivePolicy
from scheduler.request import SchedRequest


class TrailPolicy(PreemptivePolicy):
    name: ClassVar[str] = "trail"

    def __init__(
        self,
        predictor_dir: str = "artifacts",
        prompt_weight: float = 0.0,
        preempt_limit: float = 0.8,
        max_preempt_fraction: float = 0.5,
        max_preempt_per_step: int | None = None,
        max_preemptions: int | None = None,
        min_gain_tokens: float = 0.0,
        recompute_cost_per_token: float = 0.0015,
        rekey_every: int = 32,
        min_delta_tokens: int = 32,
        rel_delta: float = 0.5,
        recalibrate: bool = False,
        require_drift: bool = True,
    ) -> None:
        super().__init__(
            max_preemptions=max_preemptions,
            max_preempt_per_step=max_preempt_per_step,
            max_preempt_fraction=max_preempt_fraction,
            min_gain_tokens=min_gain_tokens,
            recompute_cost_per_token=recompute_cost_per_token,
            rekey_every=rekey_every,
        )
        if not 0.0 <= preempt_limit <= 1.0:
            raise ValueError(f"trail: preempt_limit must be in [0, 1], got {preempt_limit!r}")
        self.predictor_dir = str(predictor_dir)
        self.lengths = LearnedLengths(
            predictor_dir, require_drift=require_drift, recalibrate=recalibrate
        )
        self.prompt_weight = float(prompt_weight)
        self.preempt_limit = float(preempt_limit)
        self.min_delta_tokens = int(min_delta_tokens)
        self.rel_delta = float(rel_delta)
        self._adm: dict[int, np.ndarray] = {}  # index -> admission (p50, p90)
        self._next_update: dict[int, int] = {}  # index -> generated count of next prediction

    # ------------------------------------------------------------------ estimates
    def _remaining_now(self, r: SchedRequest) -> float:
        """The latest remaining estimate, counted down by the tokens generated since."""
        return max(1.0, r.est_remaining - (r.num_output_tokens - r.est_updated_at_tokens))

    def _set(self, r: SchedRequest, p50: float, now: float) -> None:
        g = r.num_output_tokens
        r.est_remaining = p50
        r.est_updated_at_tokens = g
        total = g + p50
        r.record_estimate(now, total, runtime_class(r.prompt_tokens + total))
        self._next_update[r.index] = g + max(self.min_delta_tokens, int(self.rel_delta * g))

    def _key_of(self, r: SchedRequest, left_prompt: int) -> float:
        return self._remaining_now(r) + self.prompt_weight * left_prompt

    def _running_keys(self, running: Sequence[SchedRequest], now: float) -> None:
        nu = self._next_update
        todo = [
            r for r in running if r.num_output_tokens >= nu.get(r.index, 0) and r.index in self._adm
        ]
        if todo:
            adm = np.stack([self._adm[r.index] for r in todo])
            rem = self.lengths.remaining(todo, adm)
            for r, (p50, _p90) in zip(todo, rem.tolist()):
                self._set(r, p50, now)
        for r in running:
            r.sched_key = self._key_of(r, max(0, r.prompt_tokens - r.num_computed_tokens))

    def _requeue_key(self, r: SchedRequest, now: float) -> float:
        return self._key_of(r, r.prompt_tokens)

    def _eligible(self, r: SchedRequest) -> bool:
        if not super()._eligible(r):
            return False
        predicted_total = r.est_updated_at_tokens + r.est_remaining
        return r.num_output_tokens < self.preempt_limit * predicted_total

    # ------------------------------------------------------------------ hooks
    def prepare(self, requests: Sequence[SchedRequest]) -> None:
        self.lengths.featurize(requests)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        adm = np.asarray(self.lengths.admission(requests), dtype=np.float64)
        for r, row, (p50, p90) in zip(requests, adm, adm.tolist()):
            self._adm[r.index] = row
            r.est_output_tokens = p50
            r.est_output_p90 = p90
            self._set(r, p50, now)
            r.sched_key = self._key_of(r, r.prompt_tokens)
            self._enqueue(r, now)

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.observe(requests)
        self._drop(requests)
        super().on_finish(requests, now)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.forget(requests)  # features of aborted requests would leak otherwise
        self._drop(requests)
        super().on_abort(requests, now)

    def _drop(self, requests: Sequence[SchedRequest]) -> None:
        for r in requests:
            self._adm.pop(r.index, None)
            self._next_update.pop(r.index, None)

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "predictor_dir": self.predictor_dir,
            "prompt_weight": self.prompt_weight,
            "preempt_limit": self.preempt_limit,
            "min_delta_tokens": self.min_delta_tokens,
            "rel_delta": self.rel_delta,
            **self._describe_preemption(),
            "predictor_failed": self.lengths.failed,
        }
