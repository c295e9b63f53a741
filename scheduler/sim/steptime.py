"""What one simulated step costs: the batch's composition -> the cost model's arguments -> seconds.

:func:`classify` turns a step's ``(request, tokens)`` batch into ``step_time``'s arguments
(prefill tokens, decode seqs, KV tokens read, prefill (query, key) pairs, prefill seqs) and the
per-tier running counts; :class:`StepTimer` evaluates the engine's cost model on them. Both
the reference step and the decode fast path of :mod:`scheduler.sim.loop` go through these two,
so the fast path's step times are the reference's to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from scheduler.request import SchedRequest
from scheduler.sim.cost import LinearCostModel, accepts_prefill_seqs


def classify(
    batch: Iterable[tuple[SchedRequest, int]],
    tid: list[int],
    counts: list[int],
    pf: int = 0,
    dec: int = 0,
    kv: int = 0,
    pairs: float = 0.0,
    nps: int = 0,
) -> tuple[int, int, int, float, int]:
    """Step classification: add the ``(request, tokens)`` of ``batch`` (fields before the
    step) to the step-time arguments (prefill tokens, decode seqs, KV tokens read, prefill
    (query, key) pairs, prefill seqs) and to the per-tier running ``counts``. A decode is one
    token for a request whose prompt and all but its last sampled token are computed
    (the test of ``DecodeAggregates.start``)."""
    for r, c in batch:
        ctx = r.num_computed_tokens
        counts[tid[r.index]] += 1
        if c == 1 and r.num_output_tokens > 0 and ctx == r.prompt_tokens + r.num_output_tokens - 1:
            dec += 1
        else:
            pf += c
            nps += 1
            pairs += c * (ctx + 0.5 * c)
        kv += ctx + c
    return pf, dec, kv, pairs, nps


class StepTimer:
    """A cost model's ``step_time`` as the loop calls it, once per simulated step."""

    def __init__(self, cost: Any) -> None:
        self.step_time = cost.step_time
        self.seq_aware = accepts_prefill_seqs(cost.step_time)  # fitted CPU profiles: per prefill
        # A LinearCostModel's coefficients (c0, c_token, c_kv, c_decode): decode-only steps and
        # the decode window evaluate it inline (bit-identical); None for any other cost model.
        self.coef: tuple[float, float, float, float] | None = None
        if type(cost) is LinearCostModel:
            self.coef = (cost.c0, cost.c_token, cost.c_kv, cost.c_decode)

    def dt(self, pf: int, dec: int, kv: int, pairs: float, nps: int) -> float:
        """The step's duration (s); a decode-only step of a ``LinearCostModel`` is evaluated
        inline with ``step_time``'s floating-point operations (its zero terms dropped)."""
        coef = self.coef
        if coef is not None and pf == 0:
            c0, c_token, c_kv, c_decode = coef
            return c0 + c_token * dec + c_kv * kv + c_decode * dec
        if self.seq_aware:
            return self.step_time(pf, dec, kv, pairs, prefill_seqs=nps)
        return self.step_time(pf, dec, kv, pairs)

    def decode_dt(self, m: int) -> Callable[[int], float] | None:
        """``decode_window``'s step time for ``m`` decoders as a function of the KV tokens
        read; None when the window evaluates ``coef`` inline."""
        if self.coef is not None:
            return None
        return lambda kv: self.dt(0, m, kv, 0.0, 0)
