"""Memory-victim rules: which running request an engine preempts when KV blocks run out.

Order and victim are separate questions. The admission order (``Policy.key``) says which waiting
request to serve next; the victim rule says which running request to throw away when the batch
outgrows the KV cache. vLLM's priority scheduler answers the second with the first (it evicts
``max(running, key=(priority, arrival))``), so a request the policy ranks long is the victim
every time memory runs short: it is evicted, re-admitted as soon as blocks free, recomputes its
prompt and output, and is evicted again (the ping-pong of vLLM PR #54530; up to 61 times for one
request under `sjf` on our suite at loads 0.95-1.1, docs/ABLATIONS.md).

A rule gives every running request a *victim key*; the engine evicts the running request with
the largest ``(victim key, arrival_s, index)``. Running and waiting requests are never compared
with each other, so inside vLLM the adapter sets running requests' ``priority`` from the victim
key and waiting requests' from the order key (``scheduler.live.adapter``). The shape maps onto
vLLM's proposed victim-selection extension point (RFC #54644: a function of the running
requests, least-computed-first as its first built-in) and its plugin framework (RFC #51608).

``None`` (no rule, every policy's default) is vLLM's rule: the victim key is the order key.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Protocol

from scheduler.request import SchedRequest

# Offset that puts a protected request behind every unprotected one (victim keys of unprotected
# requests are bounded by tokens, |key| < 1e12); among protected requests (every running request
# protected: memory must still be freed) the one evicted fewest times goes first
# (PROTECTED_STEP per earlier eviction), so evictions are spread and the cap is exceeded only
# when everything running is at it. (Plain least-computed-first, without the protection window
# and the cap, let single requests be evicted 17-57 times on memory_bound, measured before the
# simulator's admission fix of 2026-12: the newest request is always the least computed.)
PROTECTED_OFFSET = -1e15
PROTECTED_STEP = 1e12


class VictimRule(Protocol):
    """What an engine needs of a victim rule (``Policy.victim``)."""

    name: str

    def victim_key(self, request: SchedRequest, now: float) -> float:
        """Larger is evicted first (a pure function of the request's state)."""
        ...

    def describe(self) -> dict[str, object]:
        """Flat parameters, prefixed ``victim``, for ``describe()`` and summary.json."""
        ...

    def spec(self) -> dict[str, object]:
        """A Hydra spec (``_target_`` + parameters) that rebuilds the rule."""
        ...


def expected_remaining(r: SchedRequest) -> float:
    """Tokens the policy expects ``r`` still to generate (never below one token; NaN without an
    estimate), read by the cost-aware victim rule and the admission gate.

    While ``r``'s estimate is its admission one (``est_remaining`` = ``est_output_tokens`` =
    p50, with a p90 above it): the *median of what remains given the g tokens generated so
    far*, under the log-normal through (p50, p90) (:func:`residual_median`). A request that has
    outlived its median is not "about to finish" (the linear rule ``p50 - g``, floored at one
    token, said so): under a log-normal its remaining life grows with its age. Measured
    (drift with the gate, 4 suite workloads x 2 loads, seeds 0-1, paired): mean E2E lower on 7
    of 8 cells (long_generators@1.1 -4.4%), preemptions and recompute tax down ~1/3. Any other
    estimate (a re-prediction at ``est_updated_at_tokens`` > 0, or no p90): that estimate less
    the tokens generated since."""
    est = r.est_remaining
    if math.isnan(est):
        return math.nan
    done_since = r.num_output_tokens - max(r.est_updated_at_tokens, 0)
    p50, p90 = r.est_output_tokens, r.est_output_p90
    if done_since > 0 and r.est_updated_at_tokens <= 0 and est == p50 and p90 > p50 > 0:
        return max(1.0, residual_median(p50, p90, r.num_output_tokens))
    return max(1.0, est - done_since)


_N = NormalDist()
_Z90 = _N.inv_cdf(0.9)  # 1.2816: the p90's z-score
_Q_MAX = 1.0 - 1e-12  # inv_cdf's domain: beyond it the request is ~sigma * 7 past its median


def residual_median(p50: float, p90: float, g: float) -> float:
    """Median remaining tokens of a log-normal length ``L`` (median ``p50``, 90th percentile
    ``p90``; tokens) given ``L > g``: ``F^-1(F(g) + (1 - F(g)) / 2) - g``. Equals ``p50 - g``
    at g = 0; ``residual_median(g) + g`` never decreases in g, so the remaining drops by at most
    one token per token generated (the gate's fast-forward bound, ``Run.reserve_horizon``)."""
    sigma = math.log(p90 / p50) / _Z90
    q = _N.cdf(math.log(g / p50) / sigma) if g > 0 else 0.0
    q = min(q + 0.5 * (1.0 - q), _Q_MAX)
    return p50 * math.exp(sigma * _N.inv_cdf(q)) - g


def expected_remaining_or_zero(r: SchedRequest | None) -> float:
    """:func:`expected_remaining`, 0 without a request or an estimate: what the admission gate
    (``Policy.admission_headroom``) reserves for ``r``, in both engines."""
    e = math.nan if r is None else expected_remaining(r)
    return 0.0 if math.isnan(e) else e


class CostAwareVictim:
    """Evict where the recompute waste is small relative to the work the request still has.

    ``victim key = remaining_weight * expected remaining tokens - computed tokens`` (tokens):
    a preemption by recompute throws away the victim's computed KV (``num_computed_tokens``,
    also the memory it frees), while keeping a request that still has much to generate holds
    its growing KV for that long. ``remaining_weight = 0`` is least-computed-first (RFC #54644's
    built-in); a request without an estimate counts as 0 expected tokens (least-computed-first).

    Anti-thrash, both in tokens of progress so they mean the same in any engine:

    * ``protect_tokens``: a re-admitted request (evicted before) is protected until it has
      generated this many tokens since its re-admission: it paid its recompute, evicting it
      again before it made progress wastes the recompute a second time;
    * ``max_evictions``: a request evicted this many times is protected for good.

    Protected requests are evicted only when every running request is protected (memory must be
    freed), then the one evicted fewest times first: the cap can be exceeded only when every
    running request is at it (e.g. two requests whose KV together outgrows the cache).
    """

    name = "cost_aware"

    def __init__(
        self, remaining_weight: float = 1.0, protect_tokens: int = 64, max_evictions: int = 6
    ) -> None:
        if not remaining_weight >= 0:
            raise ValueError(f"victim.remaining_weight {remaining_weight!r}: expected >= 0")
        if protect_tokens < 0 or max_evictions < 1:
            raise ValueError(
                f"victim: protect_tokens {protect_tokens!r} must be >= 0 and max_evictions "
                f"{max_evictions!r} >= 1"
            )
        self.remaining_weight = float(remaining_weight)
        self.protect_tokens = int(protect_tokens)
        self.max_evictions = int(max_evictions)

    def protected(self, r: SchedRequest) -> bool:
        n = r.num_preemptions
        if n >= self.max_evictions:
            return True
        return n > 0 and r.num_output_tokens - r.admit_output_tokens < self.protect_tokens

    def victim_key(self, r: SchedRequest, now: float) -> float:
        rem = expected_remaining(r) if self.remaining_weight else 0.0
        base = (0.0 if math.isnan(rem) else self.remaining_weight * rem) - r.num_computed_tokens
        if self.protected(r):
            return PROTECTED_OFFSET - PROTECTED_STEP * r.num_preemptions + base
        return base

    def spec(self) -> dict[str, object]:
        """The Hydra spec that rebuilds this rule (another process: ``scheduler.live``)."""
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "remaining_weight": self.remaining_weight,
            "protect_tokens": self.protect_tokens,
            "max_evictions": self.max_evictions,
        }

    def describe(self) -> dict[str, object]:
        return {
            "victim": self.name,
            "victim_remaining_weight": self.remaining_weight,
            "victim_protect_tokens": self.protect_tokens,
            "victim_max_evictions": self.max_evictions,
        }


def describe_victim(rule: VictimRule | None) -> dict[str, object]:
    """``describe()`` entries of a policy's victim rule (``order_key``: vLLM's rule)."""
    return {"victim": "order_key"} if rule is None else rule.describe()


def order_key() -> None:
    """vLLM's rule as a config target (``conf/victim/order_key.yaml``): no rule of its own, so
    the victim key is the order key (it replaces a policy's default rule, e.g. drift's)."""
    return None
