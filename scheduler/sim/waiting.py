"""The simulator's waiting queue: requests keyed by the policy, with per-tier counts.

For static keys (and dynamic ones the policy re-keys incrementally, ``take_changed``) waiting
requests sit in a lazy heap of ``(key, arrival_s, index, version)`` entries: re-keying pushes a
new entry with a bumped version instead of searching the heap, and stale entries (an old
version, or a request no longer waiting) are dropped when they surface. Otherwise the policy
ranks ``waiting`` itself every step (``policy.ranked``). ``waiting`` (index -> request, in
enqueueing order) is the dict the observer's ``SimState.waiting`` and the policy hooks see.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

from scheduler.request import SchedRequest, Status


class WaitingQueue:
    """Waiting requests of one run; ``tid[index]`` is a request's tier number (``TIERS`` order)."""

    __slots__ = ("counts", "heap", "key", "reqs", "tid", "use_heap", "version", "waiting")

    def __init__(
        self,
        reqs: list[SchedRequest],
        tid: list[int],
        n_tiers: int,
        key: Callable[[SchedRequest, float], Any],
        use_heap: bool,
        waiting: dict[int, SchedRequest],
    ) -> None:
        self.reqs = reqs
        self.tid = tid
        self.key = key
        self.use_heap = use_heap
        self.waiting = waiting
        self.counts = [0] * n_tiers  # waiting requests per tier
        self.heap: list[tuple[Any, float, int, int]] = []  # (key, arrival_s, index, version)
        self.version = [0] * len(reqs)  # request index -> version of its live heap entry

    def __len__(self) -> int:
        return len(self.waiting)

    def push(self, r: SchedRequest, now: float) -> None:
        """``r`` (new or preempted) starts waiting, keyed at ``now``."""
        r.status = Status.WAITING
        self.waiting[r.index] = r
        self.counts[self.tid[r.index]] += 1
        if self.use_heap:
            self.rekey(r, now)

    def rekey(self, r: SchedRequest, now: float) -> None:
        """Re-rank a waiting ``r`` (its key changed): its older heap entries turn stale."""
        self.version[r.index] += 1
        heapq.heappush(self.heap, (self.key(r, now), r.arrival_s, r.index, self.version[r.index]))

    def remove(self, r: SchedRequest) -> None:
        """``r`` stops waiting (admitted); its heap entry turns stale."""
        del self.waiting[r.index]
        self.counts[self.tid[r.index]] -= 1

    def tier_counts(self) -> tuple[int, ...]:
        return tuple(self.counts)

    def order(self) -> Iterator[SchedRequest]:
        """Waiting requests in key order (heap only; see :func:`heap_order`)."""
        return heap_order(self.heap, self.reqs, self.version)

    def head(self) -> SchedRequest | None:
        """The first request in key order (heap only), dropping stale entries on the way."""
        return next(self.order(), None)


def heap_order(
    heap: list[tuple[Any, ...]], reqs: list[SchedRequest], version: list[int]
) -> Iterator[SchedRequest]:
    """Waiting requests in key order from the lazy heap (entries ``(key, seq, index,
    version)``): stale entries (re-keyed since, or no longer waiting: e.g. the request just
    yielded and admitted) are popped as they surface."""
    while heap:
        _, _, idx, ver = heap[0]
        r = reqs[idx]
        if ver != version[idx] or r.status is not Status.WAITING:
            heapq.heappop(heap)
            continue
        yield r
