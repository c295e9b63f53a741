"""SJF: shortest estimated job first, by the learned admission estimate (median output length).

The estimate is made once, at arrival, and never revised: the ablation of ``drift`` without
re-prediction, preemption or guards. Ties (and equal estimates) go to the earlier arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from data.schema import runtime_class
from scheduler.policies.base import Policy
from scheduler.policies.estimates import LearnedLengths
from scheduler.request import SchedRequest


class SJFPolicy(Policy):
    name: ClassVar[str] = "sjf"

    def __init__(
        self,
        predictor_dir: str = "artifacts",
        prompt_weight: float = 0.0,
        recalibrate: bool = False,
    ) -> None:
        self.predictor_dir = str(predictor_dir)
        self.prompt_weight = float(prompt_weight)  # tokens of work per prompt token
        self.lengths = LearnedLengths(predictor_dir, require_drift=False, recalibrate=recalibrate)

    def prepare(self, requests: Sequence[SchedRequest]) -> None:
        self.lengths.featurize(requests)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        adm = self.lengths.admission(requests)
        for r, (p50, p90) in zip(requests, adm):
            r.est_output_tokens = r.est_remaining = float(p50)
            r.est_output_p90 = float(p90)
            r.est_updated_at_tokens = 0
            r.record_estimate(now, float(p50), runtime_class(r.prompt_tokens + p50))
            r.sched_key = float(p50) + self.prompt_weight * r.prompt_tokens

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.observe(requests)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self.lengths.forget(requests)  # features of aborted requests would leak otherwise

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "predictor_dir": self.predictor_dir,
            "prompt_weight": self.prompt_weight,
            "predictor_failed": self.lengths.failed,
        }
