"""Decode fast-forward is exact, and a failed run keeps its partial records.

``SimEngine(fast_forward=True)`` simulates runs of pure decode steps in bulk; every record and
every row of the step table must be bit-identical to stepping one step at a time
(``fast_forward=False``), for every policy, under memory pressure, chunked prefill, seat limits,
micro-batching and custom cost models.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scheduler.engine import requests_from_frame
from scheduler.policies.aging import AgingPolicy
from scheduler.policies.driftsched import DriftSchedPolicy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.oracle import OraclePolicy
from scheduler.policies.priority import PriorityPolicy
from scheduler.policies.weighted import WeightedPolicy
from scheduler.policies.weighted_fair import WeightedFairPolicy
from scheduler.records import RECORD_COLUMNS
from scheduler.request import SchedRequest, Status
from scheduler.sim.cost import LinearCostModel
from scheduler.sim.engine import SimEngine, SimState, partial_result
from scheduler.sim.synthetic import synthetic_frame
from tests.tiny_predictor import drift_kwargs, with_prompts

FF_STATS = ("fast_forward_windows", "fast_forward_steps", "aggregate_steps")


class HorizonFIFO(FIFOPolicy):
    """FIFO with a do-nothing step hook and a declared horizon: exercises skipped hook calls."""

    uses_step_hook = True

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.calls = 0

    def on_step(self, running, waiting, now) -> None:
        self.calls += 1
        for r in running:  # reads progress: must see up-to-date fields
            assert r.num_computed_tokens <= r.prompt_tokens + r.num_output_tokens

    def fast_forward_horizon(self, running, waiting, now) -> float:
        return self.horizon


class OpaqueCost:
    """A cost object that is not a LinearCostModel (the engine must call its step_time)."""

    def __init__(self) -> None:
        self.inner = LinearCostModel(c0=0.013, c_token=2.1e-4, c_kv=3.3e-7, c_pair=1e-8)

    def step_time(self, prefill_tokens, decode_seqs, kv_tokens, prefill_pairs=0.0):
        return self.inner.step_time(prefill_tokens, decode_seqs, kv_tokens, prefill_pairs)


def both(df: pd.DataFrame, make_policy, **kw):
    on = SimEngine(fast_forward=True, **kw).run(df, make_policy())
    off = SimEngine(fast_forward=False, **kw).run(df, make_policy())
    return on, off


def assert_identical(on, off) -> None:
    pd.testing.assert_frame_equal(on.records, off.records, check_exact=True)
    pd.testing.assert_frame_equal(on.steps, off.steps, check_exact=True)
    assert {k: v for k, v in on.meta.items() if k not in FF_STATS} == {
        k: v for k, v in off.meta.items() if k not in FF_STATS
    }
    assert off.meta["fast_forward_steps"] == off.meta["aggregate_steps"] == 0


def random_case(seed: int) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(100 + seed)
    df = synthetic_frame(
        int(rng.integers(60, 160)),
        seed=seed,
        rate_rps=float(rng.uniform(1, 12)),
        prompt_median=float(rng.uniform(20, 400)),
        output_median=float(rng.uniform(10, 250)),
        max_output=700,
        max_prompt=900,
    )
    df["max_tokens"] = rng.integers(50, 800, size=len(df))
    kw = {
        "num_gpu_blocks": int(rng.integers(70, 400)),
        "block_size": int(rng.choice([1, 4, 16])),
        "max_num_batched_tokens": int(rng.integers(40, 600)),
        "max_num_seqs": int(rng.integers(2, 40)),
    }
    # the KV cache must hold one full token budget; with block_size 1 it is tiny (many preemptions)
    need = -(-max(kw["max_num_batched_tokens"], 300) // kw["block_size"])
    kw["num_gpu_blocks"] = max(kw["num_gpu_blocks"], need)
    return df, kw


POLICIES = {
    "fifo": FIFOPolicy,
    "priority": PriorityPolicy,
    "aging": AgingPolicy,
    "weighted": WeightedPolicy,
    "weighted_fair": WeightedFairPolicy,
    "oracle": OraclePolicy,
    "oracle_preemptive": lambda: OraclePolicy(preemptive=True),
    "driftsched": DriftSchedPolicy,
    "horizon3": lambda: HorizonFIFO(3),
    "horizon_inf": lambda: HorizonFIFO(math.inf),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_fast_forward_records_are_bit_identical(name: str, seed: int) -> None:
    df, kw = random_case(seed)
    if name == "driftsched":
        df = with_prompts(df, seed)
    on, off = both(df, POLICIES[name], **kw)
    assert_identical(on, off)
    assert len(on.records) == len(df)


def test_fast_forward_skips_most_steps_on_a_decode_heavy_trace() -> None:
    df = synthetic_frame(300, seed=7, rate_rps=3.0, prompt_median=100, output_median=300)
    on, off = both(df, FIFOPolicy, num_gpu_blocks=4000)
    assert_identical(on, off)
    assert on.meta["fast_forward_steps"] > 0.7 * on.meta["steps"]
    assert on.meta["fast_forward_windows"] < on.meta["fast_forward_steps"] / 3


@pytest.mark.parametrize("mode", ["continuous", "microbatch"])
def test_fast_forward_is_exact_with_preemption_modes_and_cost_objects(mode: str) -> None:
    df = synthetic_frame(250, seed=9, rate_rps=40.0, prompt_median=80, output_median=250)
    for cost in (None, OpaqueCost()):
        kw = {"num_gpu_blocks": 110, "max_num_batched_tokens": 256, "mode": mode, "cost": cost}
        on, off = both(df, FIFOPolicy, **kw)
        assert_identical(on, off)
        if mode == "continuous":
            assert on.meta["preemptions"] > 0 and on.meta["fast_forward_steps"] > 0


def test_learned_policy_is_exact_and_hook_calls_follow_the_horizon(tiny_artifacts: Path) -> None:
    from scheduler.policies.sjf import SJFPolicy

    df = with_prompts(synthetic_frame(120, seed=2, rate_rps=5.0, output_median=120))
    on, off = both(df, lambda: SJFPolicy(str(tiny_artifacts)), num_gpu_blocks=300)
    assert_identical(on, off)
    # a hook policy with horizon h is called at most once per h steps inside windows
    pols = {}
    for ff in (True, False):
        pols[ff] = HorizonFIFO(4)
        res = SimEngine(fast_forward=ff, num_gpu_blocks=2000).run(df, pols[ff])
    assert pols[False].calls == len(res.steps)
    assert pols[True].calls < pols[False].calls


def test_observers_see_every_step_unless_they_accept_fast_forward() -> None:
    df = synthetic_frame(80, seed=1, rate_rps=2.0, output_median=200)
    seen: list[int] = []

    def every(s: SimState) -> None:
        seen.append(s.step)

    res = SimEngine(observer=every).run(df, FIFOPolicy())
    assert seen == list(range(1, len(res.steps) + 1))
    assert res.meta["fast_forward_steps"] == 0

    coarse: list[tuple[int, float]] = []

    def progress(s: SimState) -> None:
        coarse.append((s.step, s.now))

    progress.fast_forward_ok = True  # type: ignore[attr-defined]
    res2 = SimEngine(observer=progress).run(df, FIFOPolicy())
    pd.testing.assert_frame_equal(res.records, res2.records, check_exact=True)
    assert res2.meta["fast_forward_steps"] > 0
    assert len(coarse) < len(res2.steps) and coarse[-1][0] == len(res2.steps)
    assert [c[0] for c in coarse] == sorted({c[0] for c in coarse})  # increasing


class FailingPolicy(FIFOPolicy):
    """Raises on the ``fail_at``-th finish batch."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.batches = 0

    def on_finish(self, requests: list[SchedRequest], now: float) -> None:
        self.batches += 1
        if self.batches == self.fail_at:
            raise ZeroDivisionError("policy bug")


@pytest.mark.parametrize("ff", [True, False])
def test_a_failing_policy_leaves_partial_records_on_the_exception(ff: bool) -> None:
    df = synthetic_frame(60, seed=4, rate_rps=3.0)
    full = SimEngine(fast_forward=ff).run(df, FIFOPolicy())
    with pytest.raises(ZeroDivisionError, match="policy bug") as info:  # the type is kept
        SimEngine(fast_forward=ff).run(df, FailingPolicy(fail_at=20))
    part = partial_result(info.value)
    assert part is not None
    assert any("partial_result" in note for note in info.value.__notes__)
    rec = part.records
    assert part.meta["incomplete"] is True and rec.attrs["incomplete"] is True
    assert "ZeroDivisionError: policy bug" in part.meta["error"]
    assert list(rec.columns)[2:] == list(RECORD_COLUMNS)
    assert 0 < len(rec) < len(df)
    assert part.meta["unfinished_requests"] == len(df) - len(rec)
    assert (rec["status"] == "finished").all()
    # the requests that ended before the failure have exactly the rows of the full run
    expect = full.records.set_index("index").loc[rec["index"]].reset_index()
    pd.testing.assert_frame_equal(
        rec.reset_index(drop=True)[expect.columns], expect, check_exact=True
    )
    # the step table stops at the failing step: a prefix of the full run's
    n = len(part.steps)
    assert 0 < n < len(full.steps)
    pd.testing.assert_frame_equal(part.steps, full.steps.iloc[:n], check_exact=True)
    assert partial_result(ValueError("unrelated")) is None


def test_an_interrupt_keeps_partial_records_too() -> None:
    class Interrupting(FIFOPolicy):
        def on_arrival(self, requests, now) -> None:
            if now > 5.0:
                raise KeyboardInterrupt

    df = synthetic_frame(60, seed=4, rate_rps=3.0)
    with pytest.raises(KeyboardInterrupt) as info:
        SimEngine().run(df, Interrupting())
    part = partial_result(info.value)
    assert part is not None and part.meta["incomplete"] is True
    assert part.meta["unfinished_requests"] > 0


def test_column_wise_records_equal_the_shared_record_builder() -> None:
    from scheduler.records import build_records
    from scheduler.sim.columns import records_frame

    df = synthetic_frame(40, seed=8, rate_rps=5.0)
    df.loc[3, "prompt_tokens"] = 10_000  # aborted: longer than the context window
    res = SimEngine(num_gpu_blocks=300).run(df, DriftSchedPolicy())  # writes estimates
    assert res.records.loc[3, "status"] == "aborted"
    assert res.records["n_estimates"].gt(0).any()
    reqs = requests_from_frame(df)
    for r, row in zip(reqs, res.records.itertuples()):
        r.status = Status(row.status)
        r.num_output_tokens = row.output_tokens
        r.finish_s = row.finish_s
        if row.index % 2:
            r.record_estimate(1.5, 7.0, "short")
    a = build_records(reqs, engine="sim", policy="p", seed=4)
    b = records_frame(reqs, engine="sim", policy="p", seed=4)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.attrs == b.attrs
    empty = records_frame([], engine="sim", policy="p")
    pd.testing.assert_frame_equal(empty, build_records([], engine="sim", policy="p"))


@pytest.mark.parametrize("seed", range(3))
def test_learned_hook_policies_are_exact(seed: int, tiny_artifacts: Path) -> None:
    """drift's hooks (re-predictions at overruns, preemptions, urgency) with its horizon (the
    next possible overrun): the decode windows and aggregate steps between hook calls must be
    exact."""
    from scheduler.policies.drift import DriftPolicy

    df, kw = random_case(seed)
    df = with_prompts(df, seed)
    makers = {
        "drift": lambda: DriftPolicy(
            str(tiny_artifacts), **drift_kwargs(reclassify={"min_delta_tokens": 4})
        ),
        "drift_preemptive": lambda: DriftPolicy(
            str(tiny_artifacts),
            **drift_kwargs(
                preemption={"min_gain_tokens": 0.0, "urgent": True},
                urgency={"max_wait_s": 20.0},
            ),
        ),
        "drift_overruns_only": lambda: DriftPolicy(
            str(tiny_artifacts),
            **drift_kwargs(preemption=None, urgency=None, reclassify={"preempted": False}),
        ),
    }
    for make in makers.values():
        on, off = both(df, make, **kw)
        assert_identical(on, off)
        assert on.meta["fast_forward_steps"] + on.meta["aggregate_steps"] > 0
