"""Strict priority: premium > standard > batch, FIFO within a tier."""

from __future__ import annotations

from typing import ClassVar

from data.schema import TIERS
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest

# Keys are tier * TIER_STRIDE + arrival_s: a stride far above any run length (s) keeps tiers
# strictly ordered while a float64 still resolves arrival times to ~1e-7 s.
TIER_STRIDE = 1e9
TIER_RANK: dict[str, int] = {t: i for i, t in enumerate(TIERS)}


class PriorityPolicy(Policy):
    name: ClassVar[str] = "priority"

    def key(self, request: SchedRequest, now: float) -> float:
        return TIER_RANK[request.tier] * TIER_STRIDE + request.arrival_s
