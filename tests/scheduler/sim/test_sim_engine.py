"""Simulator invariants: completion, token conservation, KV accounting, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from scheduler.engine import STEP_COLUMNS
from scheduler.policies.aging import AgingPolicy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.oracle import OraclePolicy
from scheduler.policies.priority import PriorityPolicy
from scheduler.policies.weighted import WeightedPolicy
from scheduler.policies.weighted_fair import WeightedFairPolicy
from scheduler.records import RECORD_COLUMNS
from scheduler.sim.cost import LinearCostModel, fit_vidur_mlp
from scheduler.sim.engine import SimEngine
from scheduler.sim.profiles import PROFILES, VIDUR_DIR, build_profile
from scheduler.sim.synthetic import synthetic_frame
from tests.scheduler.sim.invariants import StepInvariants

POLICIES = [
    FIFOPolicy,
    PriorityPolicy,
    AgingPolicy,
    WeightedPolicy,
    WeightedFairPolicy,
    OraclePolicy,
]


def run_checked(df: pd.DataFrame, policy, **kw):
    eng = SimEngine(**kw)
    chk = StepInvariants(eng)
    eng.observer = chk
    res = eng.run(df, policy)
    assert chk.steps == len(res.steps) > 0
    return eng, res


def check_result(df: pd.DataFrame, res) -> None:
    rec = res.records
    # every request appears exactly once and finishes
    assert len(rec) == len(df)
    assert rec["request_id"].tolist() == df["request_id"].tolist()
    assert (rec["status"] == "finished").all()
    # tokens conserved: each request generated exactly its target
    target = np.minimum(df["output_tokens"], df["max_tokens"]).to_numpy()
    assert (rec["output_tokens"].to_numpy() == target).all()
    # computed tokens = prompt + output - 1 per request, plus what preemption recomputed
    need = int((df["prompt_tokens"] + target - 1).sum())
    assert res.meta["computed_tokens"] == need + res.meta["recomputed_tokens"]
    assert (
        int(res.steps["prefill_tokens"].sum() + res.steps["decode_seqs"].sum())
        == res.meta["computed_tokens"]
    )
    assert res.meta["preemptions"] == int(rec["num_preemptions"].sum())
    # causality
    assert (rec["admitted_s"] >= rec["arrival_s"]).all()
    assert (rec["first_token_s"] > rec["admitted_s"]).all()
    assert (rec["finish_s"] >= rec["first_token_s"]).all()
    assert list(rec.columns)[2:] == list(RECORD_COLUMNS)
    assert list(res.steps.columns) == list(STEP_COLUMNS)
    assert (res.steps["kv_tokens"] <= res.meta["kv_capacity_tokens"]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("policy_cls", POLICIES)
def test_random_workloads_keep_invariants_every_step(seed: int, policy_cls) -> None:
    rng = np.random.default_rng(seed)
    df = synthetic_frame(
        120,
        seed=seed,
        rate_rps=float(rng.uniform(2, 8)),
        prompt_median=float(rng.uniform(20, 400)),
        output_median=float(rng.uniform(10, 200)),
        max_output=600,
        max_prompt=900,
    )
    # a tiny KV cache (memory preemptions) and a small token budget (chunked prefill)
    _, res = run_checked(
        df,
        policy_cls(),
        num_gpu_blocks=int(rng.integers(80, 200)),
        block_size=16,
        max_num_batched_tokens=int(rng.integers(64, 512)),
        max_num_seqs=int(rng.integers(2, 32)),
    )
    check_result(df, res)


def test_memory_pressure_preempts_and_still_conserves_tokens() -> None:
    df = synthetic_frame(
        200,
        seed=5,
        rate_rps=50.0,
        prompt_median=100,
        output_median=300,
        max_output=800,
        max_prompt=400,
    )
    _, res = run_checked(df, FIFOPolicy(), num_gpu_blocks=90, max_num_batched_tokens=256)
    assert res.meta["preemptions"] > 0 and res.meta["recomputed_tokens"] > 0
    check_result(df, res)


def test_same_seed_gives_identical_records() -> None:
    df = synthetic_frame(300, seed=3, rate_rps=4.0)
    a = SimEngine(num_gpu_blocks=300).run(df, WeightedFairPolicy())
    b = SimEngine(num_gpu_blocks=300).run(df, WeightedFairPolicy())
    pd.testing.assert_frame_equal(a.records, b.records)
    pd.testing.assert_frame_equal(a.steps, b.steps)


def test_prompt_longer_than_context_is_aborted_not_dropped() -> None:
    df = synthetic_frame(5, seed=0, rate_rps=1.0)
    df.loc[2, "prompt_tokens"] = 5000
    res = SimEngine(num_gpu_blocks=200).run(df, FIFOPolicy())  # 3200-token cache
    assert len(res.records) == 5
    assert res.records.loc[2, "status"] == "aborted"
    assert (res.records.drop(index=2)["status"] == "finished").all()


def test_microbatch_mode_runs_batches_to_completion() -> None:
    df = synthetic_frame(100, seed=4, rate_rps=200.0, output_median=50)
    eng = SimEngine(mode="microbatch", microbatch_size=8, microbatch_window_s=0.01)
    res = eng.run(df, FIFOPolicy())
    rec = res.records
    assert (rec["status"] == "finished").all()
    # a batch is admitted only when the previous one has completely finished
    adm = rec.groupby("admitted_s")
    assert adm.size().max() <= 8
    starts = sorted(adm.groups)
    for prev, nxt in itertools.pairwise(starts):
        assert rec.loc[adm.groups[prev], "finish_s"].max() <= nxt + 1e-12
    # at most 10 ms are spent collecting a batch that is not full
    first = rec.sort_values("arrival_s").iloc[0]
    assert first["admitted_s"] <= first["arrival_s"] + 0.01 + 1e-9


def test_step_time_follows_the_cost_model() -> None:
    cost = LinearCostModel(c0=0.01, c_token=0.001, c_kv=0.0, c_pair=0.0)
    df = pd.DataFrame(
        {
            "request_id": ["a"],
            "tenant": ["t"],
            "tier": ["premium"],
            "arrival_s": [0.0],
            "prompt_tokens": [10],
            "output_tokens": [3],
            "max_tokens": [100],
        }
    )
    res = SimEngine(cost=cost, num_gpu_blocks=200).run(df, FIFOPolicy())
    # one prefill step of 10 tokens, then two decode steps of one sequence
    assert res.steps["duration_s"].tolist() == pytest.approx([0.02, 0.011, 0.011])
    rec = res.records.iloc[0]
    assert rec["first_token_s"] == pytest.approx(0.02)
    assert rec["finish_s"] == pytest.approx(0.042)


def test_capacity_is_a_sustainable_rate() -> None:
    df = synthetic_frame(400, seed=6)
    eng = SimEngine()
    cap = eng.capacity_rps(df)
    assert cap > 0
    # at 70% of capacity the queue stays short; at 150% it grows
    low = synthetic_frame(400, seed=6, rate_rps=0.7 * cap)
    high = synthetic_frame(400, seed=6, rate_rps=1.5 * cap)
    w_low = eng.run(low, FIFOPolicy()).records.eval("admitted_s - arrival_s").mean()
    w_high = eng.run(high, FIFOPolicy()).records.eval("admitted_s - arrival_s").mean()
    assert w_high > 5 * max(w_low, 0.1)


def test_profiles_fit_vidur_and_default_is_memory_constrained() -> None:
    for name in PROFILES:
        p = build_profile(name)
        assert p.fit_r2 > 0.9
        assert p.cost.c0 > 0 and p.cost.c_token > 0 and p.cost.c_kv > 0
    default = build_profile("l4-llama3-8b")
    assert 10_000 <= default.kv_capacity_tokens <= 60_000  # low tens of thousands
    # a decode step with 60 sequences over 30k KV tokens on an L4 takes ~50-150 ms
    t = default.cost.step_time(0, 60, 30_000)
    assert 0.05 < t < 0.15
    fit = fit_vidur_mlp(VIDUR_DIR / "a100__meta-llama_Meta-Llama-3-8B__mlp.csv.gz")
    assert 1e-4 < fit.a_s < 1e-3 and 1e-7 < fit.b_s < 1e-5  # per layer, seconds


def test_bad_configuration_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown simulator profile"):
        SimEngine(profile="tpu")
    with pytest.raises(ValueError, match="unknown sim mode"):
        SimEngine(mode="magic")
    with pytest.raises(ValueError, match="exceeds the KV"):
        SimEngine(num_gpu_blocks=10, max_num_batched_tokens=2048)
    with pytest.raises(ValueError, match="missing column"):
        SimEngine().run(pd.DataFrame({"request_id": ["a"]}), FIFOPolicy())
