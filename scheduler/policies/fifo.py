"""FIFO: global arrival order (vLLM's default first-come-first-served)."""

from __future__ import annotations

from typing import ClassVar

from scheduler.policies.base import Policy
from scheduler.request import SchedRequest


class FIFOPolicy(Policy):
    name: ClassVar[str] = "fifo"

    def key(self, request: SchedRequest, now: float) -> float:
        return request.arrival_s
