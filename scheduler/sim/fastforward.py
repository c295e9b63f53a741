"""Decode fast-forward: aggregates over a stretch of pure decode steps (engine docstring).

A *stretch* is a period in which every running request (a *member*) is decoding: it needs
exactly one token per step. Over a stretch the loop keeps aggregates instead of walking the
running list every step, so a decode step costs O(1):

* ``g``: decode steps simulated by the aggregate path so far (a global step counter);
* ``fin_heap``: ``(g at which it finishes, running order, index)`` per member;
* ``hist[q]``: members needing a new KV block at a step with ``g % block_size == q`` (a member
  with ``c`` computed tokens at ``g0`` crosses a block boundary every ``block_size`` steps);
* ``ctx_sum``: computed tokens summed over the members (exact, never lazy);
* ``rc[t]``: members per tier (``TIERS`` order).

A member's token fields (``num_computed_tokens``, ``num_output_tokens``) and its ``held`` blocks
are *lazy*: behind by ``g - base[index]`` steps until :meth:`DecodeAggregates.materialize`
brings them up to date, which the loop does before any policy callback the policy overrides,
general step or observer call. :func:`decode_window` is the O(1)-per-step inner loop.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING

from scheduler.request import SchedRequest

if TYPE_CHECKING:
    from scheduler.sim.columns import StepColumns


class DecodeAggregates:
    """The stretch aggregates of one run (module docstring); ``held`` is the KV ``held`` list."""

    __slots__ = (
        "base",
        "bs",
        "bucket",
        "ctx_sum",
        "fin_heap",
        "g",
        "held",
        "hist",
        "lagging",
        "pos",
        "rc",
        "stretch",
        "targets",
        "tid",
    )

    def __init__(
        self, n: int, bs: int, held: list[int], targets: list[int], tid: list[int], n_tiers: int
    ) -> None:
        self.bs = bs
        self.held = held
        self.targets = targets  # request index -> output tokens it must generate
        self.tid = tid  # request index -> tier number
        self.g = 0
        self.lagging = False  # some running request's fields are behind g
        self.base = [0] * n  # request index -> g at which its token fields are exact
        self.stretch = False  # the aggregates describe the current running set
        self.fin_heap: list[tuple[int, int, int]] = []
        self.pos = 0  # running order of members (admissions join at the end)
        self.hist = [0] * bs
        self.bucket = [0] * n  # request index -> its hist slot
        self.ctx_sum = 0
        self.rc = [0] * n_tiers

    def materialize(self, running: list[SchedRequest]) -> None:
        """Bring every running request's token fields and held blocks up to ``g``."""
        if not self.lagging:
            return
        g, base, held, bs = self.g, self.base, self.held, self.bs
        for r in running:
            idx = r.index
            d = g - base[idx]
            if d:
                c = r.num_computed_tokens + d
                r.num_computed_tokens = c
                r.num_output_tokens += d
                held[idx] = -(-c // bs)
                base[idx] = g
        self.lagging = False

    def start(self, running: list[SchedRequest]) -> bool:
        """Start a stretch over ``running`` if every request in it is decoding; returns
        ``stretch``. Prefilling requests sit at the end of the running order, so the check runs
        from there (cheap failure)."""
        self.materialize(running)  # (lagging after a step that ended a stretch)
        for r in reversed(running):  # decoding: prompt and all but the last token computed
            if not (
                r.num_output_tokens > 0
                and r.num_computed_tokens == r.prompt_tokens + r.num_output_tokens - 1
            ):
                self.stretch = False
                return False
        self.stretch = True
        g, bs, targets, tid, base, bucket = (
            self.g,
            self.bs,
            self.targets,
            self.tid,
            self.base,
            self.bucket,
        )
        self.fin_heap = [
            (g + targets[r.index] - r.num_output_tokens, pos, r.index)
            for pos, r in enumerate(running)
        ]
        heapq.heapify(self.fin_heap)
        self.pos = len(running)
        hist = self.hist = [0] * bs
        rc = self.rc = [0] * len(self.rc)
        ctx_sum = 0
        for r in running:
            idx = r.index
            c = r.num_computed_tokens
            q = (g - c) % bs
            bucket[idx] = q
            hist[q] += 1
            ctx_sum += c
            rc[tid[idx]] += 1
            base[idx] = g
        self.ctx_sum = ctx_sum
        return True

    def join(self, r: SchedRequest) -> None:
        """``r`` (exact at ``g``) finished its prefill this step: a member from the next on."""
        idx, g, c = r.index, self.g, r.num_computed_tokens
        heapq.heappush(self.fin_heap, (g + self.targets[idx] - r.num_output_tokens, self.pos, idx))
        self.pos += 1
        q = (g - c) % self.bs
        self.bucket[idx] = q
        self.hist[q] += 1
        self.ctx_sum += c
        self.rc[self.tid[idx]] += 1

    def pop_finished(self, reqs: list[SchedRequest]) -> list[SchedRequest]:
        """Members that finish at ``g``, brought up to date (fields and held blocks) and taken
        out of the aggregates, in finish-heap order."""
        fin_heap, g, base = self.fin_heap, self.g, self.base
        out = []
        while fin_heap and fin_heap[0][0] == g:
            r = reqs[heapq.heappop(fin_heap)[2]]
            idx = r.index
            c = r.num_computed_tokens + g - base[idx]
            r.num_output_tokens += g - base[idx]
            r.num_computed_tokens = c
            base[idx] = g
            self.held[idx] = -(-c // self.bs)
            self.hist[self.bucket[idx]] -= 1
            self.ctx_sum -= c
            self.rc[self.tid[idx]] -= 1
            out.append(r)
        return out


def decode_window(
    agg: DecodeAggregates,
    cols: StepColumns,
    m: int,
    now: float,
    free: int,
    kv_cap: int,
    stop_at: float,
    max_steps: float,
    coef: tuple[float, float, float, float] | None,
    step_dt: Callable[[int], float] | None,
) -> tuple[float, int, int]:
    """Simulate pure decode steps of the ``m`` members from ``now`` with ``free`` KV blocks
    (``kv_cap`` tokens in all); returns (now, free blocks, steps simulated >= 1) and leaves
    ``agg`` at the window's end (lagging).

    Appends each step's ``t``/``dt``/``kv`` to ``cols`` (not its segment). Stops before a step
    that needs more blocks than are free (a memory preemption: left to a general step), after
    the step at which a member finishes (its ``kv`` column is then left to the caller, to be
    written after the finishes), once ``now >= stop_at`` (the next arrival) or after
    ``max_steps`` steps (the policy's horizon). A ``LinearCostModel``'s ``coef`` ``(c0,
    c_token, c_kv, c_decode)`` is evaluated inline with ``step_time``'s floating-point
    operations in the same order; any other cost goes through ``step_dt(kv tokens)`` (then given). The
    caller checked that the first step fits. One local-variable loop: the simulator's hot path.
    """
    hist, bs, g, ctx_sum = agg.hist, agg.bs, agg.g, agg.ctx_sum
    f_next = agg.fin_heap[0][0]
    col_t, col_dt, col_kv = cols.t, cols.dt, cols.kv
    linear = coef is not None
    c0, c_token, c_kv, c_decode = coef if coef is not None else (0.0, 0.0, 0.0, 0.0)
    a = c0 + c_token * m
    b = c_decode * m
    k = 0
    while True:
        nb = hist[g % bs]
        if nb > free:
            break  # a memory preemption: left to a general step
        kv = ctx_sum + m
        dt = a + c_kv * kv + b if linear else step_dt(kv)  # type: ignore[misc]
        t0 = now
        now = t0 + dt
        free -= nb
        ctx_sum += m
        g += 1
        k += 1
        col_t.append(t0)
        col_dt.append(dt)
        if g == f_next:
            break  # its KV column is written after the finishes
        col_kv.append(kv_cap - free * bs)
        if now >= stop_at or k >= max_steps:
            break
    agg.g = g
    agg.ctx_sum = ctx_sum
    agg.lagging = True
    return now, free, k
