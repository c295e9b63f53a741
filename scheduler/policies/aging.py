"""The paper's aging rule: score = tier base (premium 1, standard 2, batch 3) - rate x waited s.

Lowest score first. ``base - rate * (now - arrival)`` ranks requests exactly like the
time-invariant ``base + rate * arrival`` (the ``rate * now`` term is common to every request), so
the key is static and engines keep a heap. With the paper's rate 0.01/s a batch request (base 3)
that has waited more than 200 s beats a fresh premium request (base 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from data.schema import TIERS
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest

PAPER_BASE: dict[str, float] = {"premium": 1.0, "standard": 2.0, "batch": 3.0}


class AgingPolicy(Policy):
    name: ClassVar[str] = "aging"

    def __init__(self, base: Mapping[str, float] | None = None, rate_per_s: float = 0.01) -> None:
        base = dict(PAPER_BASE if base is None else base)
        missing = [t for t in TIERS if t not in base]
        if missing:
            raise ValueError(
                f"aging: base score missing for tier(s) {missing}; expected one per "
                f"tier in {list(TIERS)}"
            )
        if not rate_per_s > 0:
            raise ValueError(f"aging: rate_per_s must be > 0, got {rate_per_s!r}")
        self.base = {t: float(base[t]) for t in TIERS}
        self.rate_per_s = float(rate_per_s)

    def score(self, request: SchedRequest, now: float) -> float:
        """The paper's score at time ``now`` (lower is served sooner)."""
        return self.base[request.tier] - self.rate_per_s * (now - request.arrival_s)

    def key(self, request: SchedRequest, now: float) -> float:
        # == score(request, now) + rate * now: same order at every instant, independent of now
        return self.base[request.tier] + self.rate_per_s * request.arrival_s

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "rate_per_s": self.rate_per_s,
            **{f"base_{t}": b for t, b in self.base.items()},
        }
