"""A policy that fails mid-run: a sweep job that raises inside the tracked section."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from scheduler.policies.fifo import FIFOPolicy
from scheduler.request import SchedRequest


class FailingPolicy(FIFOPolicy):
    name: ClassVar[str] = "failing"

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        raise RuntimeError("deliberate failure inside a sweep job")
