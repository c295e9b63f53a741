"""The mechanisms of ``drift`` (``scheduler.policies.drift``), one small config each.

Each mechanism is a config group of the policy: the policy takes a mapping (a Hydra node) or
``None``, and ``None`` switches the mechanism off. A mapping is checked here, so a typo or an
impossible value fails when the policy is built (``report.jobs.prepare``, before any engine
starts), naming the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from data.schema import TIERS

T = TypeVar("T")


def from_mapping(cls: type[T], node: Mapping[str, Any] | None, where: str) -> T | None:
    """``cls(**node)`` with unknown keys named; ``None`` stays ``None`` (mechanism off)."""
    if node is None:
        return None
    if isinstance(node, cls):
        return node
    if not isinstance(node, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields or null")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(node) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    return cls(**dict(node))


@dataclass(frozen=True)
class Reclassify:
    """Re-predict a request's remaining tokens with the drift model when something informative
    happens, not on a clock: it is preempted (its new order key as it re-enters the queue) or a
    running request passes its latest predicted median (an overrun: the victim rule then reads
    the new estimate). Running requests are never re-keyed otherwise."""

    preempted: bool = True  # re-predict a preempted request before it waits again
    overrun: bool = True  # re-predict a running request that passes its predicted p50
    min_delta_tokens: int = 32  # tokens between two estimates of one request, at least

    def __post_init__(self) -> None:
        if not (self.preempted or self.overrun):
            raise ValueError("drift.reclassify: preempted and overrun both false; use null")
        if self.min_delta_tokens < 1:
            raise ValueError(f"drift.reclassify.min_delta_tokens {self.min_delta_tokens}: >= 1")


@dataclass(frozen=True)
class Preemption:
    """Voluntary, bounded preemption: the running request with the most predicted work left is
    preempted (recompute) for the best waiting request that already missed an admission round
    when the gain in work exceeds ``min_gain_tokens`` plus the recompute cost
    (``recompute_cost_per_token`` x tokens to recompute x running requests: the recompute
    prefill stalls the whole batch)."""

    max_per_request: int = 1  # voluntary preemptions of one request, at most
    per_step: int = 1  # voluntary preemptions per engine step, at most
    min_gain_tokens: float = 256.0
    recompute_cost_per_token: float = 0.01
    urgent: bool = False  # urgent waiting requests (``urgency``) preempt without the gain test

    def __post_init__(self) -> None:
        if self.max_per_request < 1 or self.per_step < 1:
            raise ValueError(
                "drift.preemption: max_per_request and per_step must be >= 1 (null: no "
                "voluntary preemption)"
            )


@dataclass(frozen=True)
class Urgency:
    """Tier SLO urgency and a starvation guard: a waiting request that has not started becomes
    *urgent* after ``slo_fraction`` of its own TTFT SLO (tiers in ``slo_tiers``) or
    ``guard_fraction * max_wait_s`` (every tier); urgent requests go first, earliest urgency
    time first (EDF)."""

    slo_tiers: Sequence[str] = ()
    slo_fraction: float = 0.5
    max_wait_s: float | None = None  # None: no starvation guard
    guard_fraction: float = 0.5

    def __post_init__(self) -> None:
        tiers = tuple(self.slo_tiers)
        object.__setattr__(self, "slo_tiers", tiers)
        bad = [t for t in tiers if t not in TIERS]
        if bad:
            raise ValueError(f"drift.urgency.slo_tiers {bad}: expected tiers of {list(TIERS)}")
        if not tiers and self.max_wait_s is None:
            raise ValueError(
                "drift.urgency: no slo_tiers and no max_wait_s make nobody urgent; use null"
            )
        if self.max_wait_s is not None and not self.max_wait_s > 0:
            raise ValueError(f"drift.urgency.max_wait_s {self.max_wait_s!r}: expected > 0")
        if not 0 < self.slo_fraction <= 1 or not 0 < self.guard_fraction <= 1:
            raise ValueError("drift.urgency: slo_fraction and guard_fraction must be in (0, 1]")

    @property
    def guard_after_s(self) -> float:
        """Waiting time after which any request is urgent (inf without a guard)."""
        return math.inf if self.max_wait_s is None else self.guard_fraction * self.max_wait_s


def describe_group(prefix: str, cfg: Any) -> dict[str, object]:
    """Flat ``describe()`` entries of one mechanism (``<prefix>: None`` when off)."""
    if cfg is None:
        return {prefix: None}
    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f"{prefix}.{f.name}"] = ",".join(v) if isinstance(v, tuple) else v
    return out
