"""The paper's weighted tier cycle: 10 admission slots P,P,P,P,P,S,S,S,B,B (50/30/20%).

Realised as a static key (engines keep a heap): the k-th request of tier t takes the k-th slot
of t in the repeating cycle, ``key = cycle_index * len(cycle) + slot``. Serving lowest key first
walks the cycle; a tier with nothing waiting simply has no key in the queue, so its slots are
skipped (work-conserving). A tier that was idle restarts at the current cycle (its counter is
lifted to the cycle of the last admitted request), so it cannot bank slots while idle and then
burst ahead -- the virtual-clock rule of weighted fair queueing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from data.schema import TIERS
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest

PAPER_CYCLE: tuple[str, ...] = ("premium",) * 5 + ("standard",) * 3 + ("batch",) * 2


class WeightedPolicy(Policy):
    name: ClassVar[str] = "weighted"

    def __init__(self, cycle: Sequence[str] | None = None) -> None:
        cyc = tuple(PAPER_CYCLE if cycle is None else cycle)
        bad = [t for t in cyc if t not in TIERS]
        if bad or not cyc:
            raise ValueError(
                f"weighted: cycle {list(cyc)} must be a non-empty list of tiers from {list(TIERS)}"
            )
        self.cycle = cyc
        self._slots = {t: [i for i, c in enumerate(cyc) if c == t] for t in TIERS}
        self._next = dict.fromkeys(TIERS, 0)  # next sequence number per tier
        self._keys: dict[int, float] = {}  # request index -> key (fixed at arrival)
        self._clock = 0.0  # key of the most recently admitted request (virtual time)

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        length = len(self.cycle)
        cur_cycle = int(self._clock // length)
        for r in requests:
            slots = self._slots[r.tier]
            if not slots:  # a tier absent from the cycle is served only when nothing else waits
                self._keys[r.index] = 1e15 + r.arrival_s
                continue
            k = max(self._next[r.tier], cur_cycle * len(slots))
            self._keys[r.index] = (k // len(slots)) * length + slots[k % len(slots)]
            self._next[r.tier] = k + 1

    def on_admit(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            k = self._keys[r.index]
            if k > self._clock and k < 1e15:
                self._clock = k

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self._keys.pop(r.index, None)

    on_abort = on_finish

    def key(self, request: SchedRequest, now: float) -> float:
        return self._keys[request.index]

    def describe(self) -> dict[str, object]:
        return {"policy": self.name, "cycle": ",".join(t[0].upper() for t in self.cycle)}
