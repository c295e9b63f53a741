"""The memory-victim rule (``scheduler.policies.victims``) and the ``on_preempt`` contract.

Promises pinned here: the rule's key orders victims as documented (least waste relative to the
work left; protected requests last), the simulator evicts by ``victim_key`` and reports every
preemption through ``on_preempt``, a request that ping-pongs under vLLM's rule is bounded under
the cost-aware rule, and a preset's ``victim`` node reaches the policy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from scheduler.engine import requests_from_frame
from scheduler.policies.base import Policy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.victims import (
    PROTECTED_OFFSET,
    CostAwareVictim,
    expected_remaining,
    residual_median,
)
from scheduler.request import SchedRequest, Status
from scheduler.sim.engine import SimEngine
from scheduler.sim.synthetic import synthetic_frame


def req(index: int, computed: int, out: int, est: float = math.nan, **kw) -> SchedRequest:
    r = requests_from_frame(synthetic_frame(1, seed=index))[0]
    r.index = index
    r.num_computed_tokens, r.num_output_tokens = computed, out
    r.est_remaining, r.est_updated_at_tokens = est, 0
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_cost_aware_key_prefers_little_waste_and_much_remaining_work() -> None:
    rule = CostAwareVictim(remaining_weight=1.0, protect_tokens=16, max_evictions=3)
    a = req(0, computed=100, out=10, est=500.0)  # 490 left, 100 wasted -> 390
    b = req(1, computed=400, out=10, est=500.0)  # 490 left, 400 wasted -> 90
    c = req(2, computed=100, out=10)  # no estimate: least-computed-first -> -100
    keys = [rule.victim_key(r, 0.0) for r in (a, b, c)]
    assert keys == [390.0, 90.0, -100.0]
    assert expected_remaining(req(3, 0, 600, est=500.0)) == 1.0  # overrun: at least one token
    lcf = CostAwareVictim(remaining_weight=0.0)
    assert lcf.victim_key(a, 0.0) > lcf.victim_key(b, 0.0)  # fewer computed tokens first


def test_expected_remaining_given_survival_under_the_admission_distribution() -> None:
    """With an admission (p50, p90), what remains is the median remaining life given the tokens
    generated: p50 - g at the start, then it grows again past the median (a log-normal's
    remaining life grows with age), and never drops faster than one token per token."""
    kw = {"est_output_tokens": 100.0, "est_output_p90": 300.0}
    assert expected_remaining(req(0, 0, 0, est=100.0, **kw)) == 100.0
    assert expected_remaining(req(0, 0, 1, est=100.0, **kw)) == pytest.approx(99.0, abs=1e-3)
    at_median = expected_remaining(req(0, 0, 100, est=100.0, **kw))
    far = expected_remaining(req(0, 0, 1000, est=100.0, **kw))
    assert 1.0 < at_median < far  # an overrun is not "about to finish" (linear: 1 token)
    # the median of L | L > g: half the fitted log-normal's mass above g lies beyond g + rem
    sigma = math.log(3.0) / 1.2815515655446004
    cdf = lambda x: 0.5 * math.erfc(-math.log(x / 100.0) / (sigma * math.sqrt(2)))  # noqa: E731
    assert 1 - cdf(1000 + far) == pytest.approx(0.5 * (1 - cdf(1000)), rel=1e-9)
    ends = [g + residual_median(100.0, 300.0, g) for g in range(0, 3000, 7)]
    assert all(b >= a for a, b in itertools.pairwise(ends))  # the fast-forward bound
    # a re-prediction (estimate made at g > 0) or no p90: that estimate less the progress since
    re = req(0, 0, 150, est=80.0, **kw)
    re.est_updated_at_tokens = 120
    assert expected_remaining(re) == 50.0
    assert expected_remaining(req(0, 0, 30, est=100.0)) == 70.0


def test_protection_window_and_eviction_cap_put_requests_last() -> None:
    rule = CostAwareVictim(remaining_weight=1.0, protect_tokens=16, max_evictions=2)
    fresh = req(0, computed=50, out=5, est=100.0, num_preemptions=1, admit_output_tokens=0)
    assert rule.protected(fresh)  # 5 tokens since re-admission < 16
    later = req(1, computed=50, out=40, est=100.0, num_preemptions=1, admit_output_tokens=20)
    assert not rule.protected(later)  # 20 tokens since re-admission
    capped = req(2, computed=50, out=40, est=100.0, num_preemptions=2, admit_output_tokens=0)
    assert rule.protected(capped)
    never = req(3, computed=10_000, out=1, est=1.0)  # huge waste, but unprotected
    keys = {r.index: rule.victim_key(r, 0.0) for r in (fresh, later, capped, never)}
    assert max(keys, key=keys.get) == 3 or keys[3] > keys[0]
    assert keys[0] < PROTECTED_OFFSET / 2 and keys[2] < keys[0]  # evicted fewer times: first
    with pytest.raises(ValueError, match="remaining_weight"):
        CostAwareVictim(remaining_weight=-1.0)
    with pytest.raises(ValueError, match="max_evictions"):
        CostAwareVictim(max_evictions=0)


class Recording(FIFOPolicy):
    """FIFO that records every on_preempt and the state of the requests it got."""

    def __init__(self, victim: object = None) -> None:
        super().__init__()
        self.victim = victim  # type: ignore[assignment]
        self.preempted: list[tuple[int, str, int]] = []

    def on_preempt(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            assert r.status is Status.WAITING and r.num_computed_tokens == 0
            self.preempted.append((r.index, r.status.value, r.num_preemptions))


def tight_engine() -> SimEngine:
    return SimEngine(num_gpu_blocks=120, max_num_batched_tokens=512, max_num_seqs=32)


@pytest.mark.parametrize("victim", [None, CostAwareVictim()])
def test_sim_reports_every_preemption_through_on_preempt(victim) -> None:
    df = synthetic_frame(150, seed=3, rate_rps=25.0, output_median=150)
    pol = Recording(victim)
    res = tight_engine().run(df, pol)
    assert res.meta["preemptions"] > 0
    assert len(pol.preempted) == res.meta["preemptions"]
    per_req = pd.Series([i for i, _, _ in pol.preempted]).value_counts()
    rec = res.records.set_index("index")
    assert (rec.loc[per_req.index, "num_preemptions"] == per_req).all()


class LongLast(Policy):
    """Static keys by true length: the longest request is always vLLM's victim."""

    name = "longlast"

    def key(self, request: SchedRequest, now: float) -> float:
        return float(request.true_output_tokens)


def ping_pong_frame() -> pd.DataFrame:
    """One long request among a stream of short ones on a KV cache that holds ~2 of them."""
    df = synthetic_frame(80, seed=5, rate_rps=1.0, output_median=60, sigma=0.3)
    df.loc[0, "output_tokens"] = 1500
    df["max_tokens"] = np.maximum(df["max_tokens"], df["output_tokens"])
    return df


def test_a_request_that_ping_pongs_under_vllms_rule_is_bounded_under_the_cost_aware_rule() -> None:
    df = ping_pong_frame()
    eng = SimEngine(num_gpu_blocks=130, block_size=16, max_num_batched_tokens=512)
    vllm_rule = eng.run(df, LongLast()).records
    assert vllm_rule["num_preemptions"].max() > 8  # the long request ping-pongs
    rule = CostAwareVictim(protect_tokens=32, max_evictions=3)
    pol = LongLast()
    pol.victim = rule
    snaps: list[dict[int, SimpleNamespace]] = []
    waiting: list[set[int]] = []

    def observer(state) -> None:
        waiting.append(set(state.waiting))
        snaps.append(
            {
                r.index: SimpleNamespace(
                    num_preemptions=r.num_preemptions,
                    num_output_tokens=r.num_output_tokens,
                    admit_output_tokens=r.admit_output_tokens,
                )
                for r in state.running
            }
        )

    eng.observer = observer
    ours = eng.run(df, pol).records
    assert (ours["status"] == "finished").all()
    assert ours["num_preemptions"].max() <= 4  # the cap (3) plus one when all were protected
    # a request inside its protection window is evicted only when every request that stayed
    # running was protected too (one step of progress of slack)
    evictions = protected_evictions = 0
    for (before, after), now_waiting in zip(itertools.pairwise(snaps), waiting[1:]):
        gone = [i for i in before if i not in after and i in now_waiting]  # evicted, not ended
        stayed = [i for i in before if i in after]
        for i in gone:
            b = before[i]
            b.num_output_tokens += 1  # the step's token (the eviction comes after it)
            evictions += 1
            if rule.protected(b):
                protected_evictions += 1
                unprotected = [j for j in stayed if not rule.protected(before[j])]
                assert not unprotected, (i, unprotected)
    assert evictions > 0 and protected_evictions < evictions
    eng.observer = None


def test_presets_set_the_victim_rule(tiny_artifacts: Path) -> None:
    from report.jobs import build_policy, compose

    base = [f"predictor_dir={tiny_artifacts}"]
    drift = build_policy(compose([*base, "+policy=drift"]).policy)
    assert isinstance(drift.victim, CostAwareVictim)  # drift's default rule
    vllm = build_policy(compose([*base, "+policy=drift", "+victim@policy.victim=order_key"]).policy)
    assert vllm.victim is None  # vLLM's rule: the order key
    sjf = build_policy(compose([*base, "+policy=sjf"]).policy)
    assert sjf.victim is None  # baselines stay faithful by default
    lcf = build_policy(
        compose([*base, "+policy=sjf", "+victim@policy.victim=least_computed"]).policy
    )
    assert isinstance(lcf.victim, CostAwareVictim) and lcf.victim.remaining_weight == 0.0
