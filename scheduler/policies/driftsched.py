"""``driftsched``: the paper's method as published.

Each prompt is classified by keywords into one of four categories; the token budget estimate is
``base[c] x bias[c] x tier_factor x length_factor`` with the per-category EMA bias correction
updated at every completion (``predictor.paper.PaperEMA``). Requests are served shortest
estimate first. The estimate is taken at arrival with the biases as they are then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from data.schema import runtime_class
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest


class DriftSchedPolicy(Policy):
    name: ClassVar[str] = "driftsched"

    def __init__(self, correction: bool = True, counting: str = "whitespace") -> None:
        from predictor.paper import PaperEMA

        self.ema = PaperEMA(correction=correction, counting=counting)
        self._cat: dict[int, str] = {}  # request index -> paper category
        self._n_in: dict[int, float] = {}  # request index -> input tokens as the paper counts

    def prepare(self, requests: Sequence[SchedRequest]) -> None:
        self._classify([r for r in requests if r.index not in self._cat])

    def _classify(self, requests: Sequence[SchedRequest]) -> None:
        from predictor.paper import classify_categories, count_input_tokens

        if not requests:
            return
        prompts = [r.prompt for r in requests]
        cats = classify_categories(prompts)
        n_in = count_input_tokens(prompts, self.ema.counting)
        for r, c, k in zip(requests, cats, n_in):
            self._cat[r.index] = c
            # no prompt text (length-only traces): the paper's factor from the token count
            self._n_in[r.index] = float(k) if r.prompt is not None else float(r.prompt_tokens)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._classify([r for r in requests if r.index not in self._cat])
        est = self.ema.estimate(
            [self._cat[r.index] for r in requests],
            [r.tier for r in requests],
            [self._n_in[r.index] for r in requests],
        )
        for r, e in zip(requests, est):
            r.est_output_tokens = r.est_remaining = r.sched_key = float(e)
            r.est_updated_at_tokens = 0
            r.record_estimate(now, float(e), runtime_class(r.prompt_tokens + e))

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            c = self._cat.pop(r.index, None)
            self._n_in.pop(r.index, None)
            if c is not None and r.num_output_tokens > 0:
                self.ema.update_one(c, r.num_output_tokens)

    def key(self, request: SchedRequest, now: float) -> float:
        return request.sched_key

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "correction": self.ema.correction,
            "counting": self.ema.counting,
        }
