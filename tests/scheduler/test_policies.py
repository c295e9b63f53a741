"""Policy orderings, SRPT optimality on a single-sequence server, and the learned policies."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scheduler.policies.aging import AgingPolicy
from scheduler.policies.drift import URGENT_OFFSET, DriftPolicy
from scheduler.policies.driftsched import DriftSchedPolicy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.oracle import OraclePolicy
from scheduler.policies.priority import PriorityPolicy
from scheduler.policies.sjf import SJFPolicy
from scheduler.policies.weighted import WeightedPolicy
from scheduler.policies.weighted_fair import WeightedFairPolicy
from scheduler.sim.cost import LinearCostModel
from scheduler.sim.engine import SimEngine
from scheduler.sim.synthetic import synthetic_frame
from tests.tiny_predictor import DRIFT_MECHANISMS, drift_kwargs, with_prompts

# constant step time: a request of T output tokens needs exactly T steps (1-token prompts)
UNIT = LinearCostModel(c0=1.0, c_token=0.0, c_kv=0.0)


def frame(rows: list[tuple[str, float, int, int]], tenant: str | None = None) -> pd.DataFrame:
    """(tier, arrival_s, prompt_tokens, output_tokens) rows -> workload table."""
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(rows))],
            "tenant": [tenant or r[0] for r in rows],
            "tier": [r[0] for r in rows],
            "category": "unknown",
            "source": "test",
            "model": "unknown",
            "arrival_s": [r[1] for r in rows],
            "prompt_tokens": [r[2] for r in rows],
            "output_tokens": [r[3] for r in rows],
            "max_tokens": [10_000] * len(rows),
        }
    )


def single_server(**kw) -> SimEngine:
    return SimEngine(cost=UNIT, max_num_seqs=1, num_gpu_blocks=100_000, **kw)


def admission_order(res) -> list[str]:
    return res.records.sort_values(["admitted_s", "index"])["request_id"].tolist()


def test_fifo_serves_in_arrival_order() -> None:
    df = frame(
        [
            ("batch", 0.0, 1, 5),
            ("premium", 0.1, 1, 1),
            ("standard", 0.2, 1, 2),
            ("premium", 0.3, 1, 1),
        ]
    )
    assert admission_order(single_server().run(df, FIFOPolicy())) == ["r0", "r1", "r2", "r3"]


def test_priority_is_strict_by_tier_then_fifo() -> None:
    df = frame(
        [
            ("batch", 0.0, 1, 5),
            ("batch", 0.1, 1, 1),
            ("standard", 0.2, 1, 2),
            ("premium", 0.3, 1, 1),
            ("premium", 0.4, 1, 1),
        ]
    )
    order = admission_order(single_server().run(df, PriorityPolicy()))
    assert order == ["r0", "r3", "r4", "r2", "r1"]  # r0 runs first: the server was idle


def test_weighted_cycle_gives_50_30_20_under_saturation() -> None:
    rows = [(t, 0.0, 1, 3) for t in ("premium", "standard", "batch") for _ in range(200)]
    res = single_server().run(frame(rows), WeightedPolicy())
    first = res.records.sort_values(["admitted_s", "index"]).head(300)
    shares = first["tier"].value_counts(normalize=True)
    assert shares["premium"] == pytest.approx(0.5)
    assert shares["standard"] == pytest.approx(0.3)
    assert shares["batch"] == pytest.approx(0.2)
    # the cycle itself: P,P,P,P,P,S,S,S,B,B
    assert first["tier"].head(10).str[0].str.upper().tolist() == list("PPPPPSSSBB")


def test_weighted_is_work_conserving_and_an_idle_tier_cannot_bank_slots() -> None:
    # only batch requests wait: they are served back to back (empty tiers skipped)
    rows = [("batch", 0.0, 1, 2) for _ in range(6)]
    res = single_server().run(frame(rows), WeightedPolicy())
    assert np.diff(np.sort(res.records["admitted_s"].to_numpy())).max() == pytest.approx(2.0)
    # premium requests arriving late do not get a burst of banked slots
    rows = [("batch", 0.0, 1, 1) for _ in range(40)] + [("premium", 10.5, 1, 1)] * 10
    res = single_server().run(frame(rows), WeightedPolicy())
    late = res.records.sort_values(["admitted_s", "index"])
    after = late[late["admitted_s"] > 10.5]["tier"].head(10).str[0].tolist()
    # premium resumes at the current cycle: 5 premium slots, then batch gets its slot again
    # (10 banked premium slots would have given pppppppppp)
    assert after[:6] == list("pppppb")


def test_aging_batch_request_eventually_beats_fresh_premium() -> None:
    p = AgingPolicy()
    df = frame([("batch", 0.0, 1, 1), ("premium", 199.0, 1, 1), ("premium", 201.0, 1, 1)])
    from scheduler.engine import requests_from_frame

    batch, prem_early, prem_late = requests_from_frame(df)
    now = 250.0
    assert p.key(prem_early, now) < p.key(batch, now)  # waited 199 s < 200 s
    assert p.key(batch, now) < p.key(prem_late, now)  # waited 201 s > 200 s
    assert p.score(batch, 201.0) == pytest.approx(3 - 2.01)
    # on an engine: a long job blocks the server until t=300; then the old batch request
    # goes before the premium request that arrived at t=250 but not before one from t=150
    df = frame(
        [
            ("standard", 0.0, 1, 300),
            ("batch", 1.0, 1, 1),
            ("premium", 150.0, 1, 1),
            ("premium", 250.0, 1, 1),
        ]
    )
    order = admission_order(single_server().run(df, AgingPolicy()))
    assert order == ["r0", "r2", "r1", "r3"]


def test_sjf_serves_shortest_estimate_first(tiny_artifacts: Path) -> None:
    df = with_prompts(synthetic_frame(40, seed=3, rate_rps=1000.0))
    df["prompt_tokens"] = 1
    res = single_server().run(df, SJFPolicy(str(tiny_artifacts)))
    rec = res.records.sort_values(["admitted_s", "index"]).iloc[1:]  # the first ran at once
    est = rec["est_output_tokens"].to_numpy()
    assert (np.diff(est) >= -1e-9).all()
    assert rec["n_estimates"].eq(1).all()


def test_weighted_fair_equalises_token_service_between_tenants() -> None:
    # tenant a sends 10x more work than b; both saturate the server
    rows = [("standard", 0.0, 1, 20)] * 60 + [("standard", 0.0, 1, 2)] * 60
    df = frame(rows)
    df["tenant"] = ["a"] * 60 + ["b"] * 60
    rec = single_server().run(df, WeightedFairPolicy(input_weight=0.0)).records
    done_by = rec["finish_s"].quantile(0.3)
    served = rec[rec["finish_s"] <= done_by].groupby("tenant")["output_tokens"].sum()
    assert served["a"] == pytest.approx(served["b"], rel=0.35)


def single_server_mean_e2e(seed: int):
    """A light random workload of 1-token prompts on a single-sequence server (where SRPT is
    optimal): returns ``policy -> mean E2E`` over it."""
    rng = np.random.default_rng(seed)
    df = with_prompts(
        synthetic_frame(
            40,
            seed=seed,
            rate_rps=float(rng.uniform(0.02, 0.08)),
            output_median=20.0,
            max_output=120,
        )
    )
    df["prompt_tokens"] = 1
    eng = single_server()

    def mean_e2e(policy) -> float:
        r = eng.run(df, policy).records
        return float((r["finish_s"] - r["arrival_s"]).mean())

    return mean_e2e


@pytest.mark.parametrize("seed", range(6))
def test_oracle_is_optimal_on_a_single_sequence_server(seed: int, tiny_artifacts: Path) -> None:
    mean_e2e = single_server_mean_e2e(seed)
    best = mean_e2e(OraclePolicy(preemptive=True))  # textbook SRPT
    for other in (
        FIFOPolicy(),
        PriorityPolicy(),
        AgingPolicy(),
        WeightedPolicy(),
        WeightedFairPolicy(),
        DriftSchedPolicy(),
        SJFPolicy(str(tiny_artifacts)),
        DriftPolicy(str(tiny_artifacts), **DRIFT_MECHANISMS),
        OraclePolicy(preemptive=False),
    ):
        assert best <= mean_e2e(other) + 1e-9, other.name


def test_drift_missing_artifacts_names_the_train_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"python train\.py"):
        DriftPolicy(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"python train\.py"):
        SJFPolicy(str(tmp_path / "nothing"))


def test_drift_reclassifies_on_events_only(tiny_artifacts: Path) -> None:
    df = with_prompts(synthetic_frame(300, seed=8, rate_rps=30.0, output_median=120))
    eng = SimEngine(num_gpu_blocks=400, max_num_batched_tokens=512)
    pol = DriftPolicy(str(tiny_artifacts), **DRIFT_MECHANISMS)
    rec = eng.run(df, pol).records
    assert (rec["status"] == "finished").all()
    assert rec["n_estimates"].max() > 1  # requests were re-predicted
    assert (rec["num_preemptions"] >= rec["n_policy_preemptions"]).all()
    assert rec["n_policy_preemptions"].max() <= pol.preemption.max_per_request
    # every re-estimate happened at an event: a preemption, or progress past the previous
    # estimate's median (its threshold), never on a clock
    for r in eng_requests(eng, df, DriftPolicy(str(tiny_artifacts), **DRIFT_MECHANISMS)):
        for (_, g0, total0), (_, g1, _) in itertools.pairwise(r.est_history):
            past_median = g1 >= g0 + max(32, math.ceil(total0 - g0))
            assert past_median or r.num_preemptions > 0, (r.index, r.est_history)
    # without the group: the admission estimate only
    off = eng.run(df, DriftPolicy(str(tiny_artifacts), **drift_kwargs(reclassify=None))).records
    assert (off["n_estimates"] == 1).all()


def eng_requests(eng: SimEngine, df: pd.DataFrame, policy: DriftPolicy) -> list:
    """The engine's SchedRequests after a run (their estimate histories)."""
    from scheduler.sim.loop import SimState

    seen: dict[int, object] = {}

    def observer(state: SimState) -> None:
        for r in state.running:
            seen[r.index] = r

    eng.observer = observer
    try:
        eng.run(df, policy)
    finally:
        eng.observer = None
    return list(seen.values())


def test_drift_online_learner_learns_from_completions_and_overruns(tiny_artifacts: Path) -> None:
    # every output 3x longer than the tiny predictor learned: the online levels must move the
    # admission estimates of later requests up (from completions and censored overruns).
    # Little queueing: under a long SJF queue the first completions are the short requests, a
    # biased sample (measured: the estimates then move down; docs/ABLATIONS.md drift+online)
    df = with_prompts(synthetic_frame(200, seed=9, rate_rps=2.0, output_median=100))
    df["output_tokens"] *= 3
    df["max_tokens"] = np.maximum(df["max_tokens"], df["output_tokens"])
    eng = SimEngine(num_gpu_blocks=4000, max_num_batched_tokens=1024)
    calls: list[int] = []
    pol = DriftPolicy(str(tiny_artifacts), online=True, reclassify={})
    inner = pol.lengths.observe_running
    pol.lengths.observe_running = lambda reqs, *a: (calls.append(len(reqs)), inner(reqs, *a))
    on = eng.run(df, pol).records
    off = eng.run(df, DriftPolicy(str(tiny_artifacts))).records
    late = on["index"] >= 100
    ratio = on.loc[late, "est_output_tokens"].mean() / off.loc[late, "est_output_tokens"].mean()
    assert ratio > 1.5  # learned a longer level
    assert sum(calls) > 0  # censored observations at overruns
    assert pol.describe()["online"] is True


def test_drift_starvation_guard_bounds_the_wait_of_a_long_request(tiny_artifacts: Path) -> None:
    # a long request waits behind a 30 s burst of short ones (1.5 req/s on a 1 req/s server):
    # shortest-first alone serves it only after the burst drains (~45 s)
    rows = [("batch", 0.0, 1, 60)] + [("premium", 0.5 + i / 1.5, 1, 1) for i in range(45)]
    df = with_prompts(frame(rows))
    df.loc[0, "prompt"] = "report detail report detail"
    df.loc[1:, "prompt"] = "brief what"
    df.loc[0, "arrival_s"] = 0.6  # arrives while the first short one runs
    df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    df["request_id"] = [f"r{i}" for i in range(len(df))]
    eng = single_server()

    def long_wait(**kw) -> float:
        kwargs = (
            drift_kwargs(preemption=None, urgency=kw)
            if kw
            else drift_kwargs(preemption=None, urgency=None)
        )
        r = eng.run(df, DriftPolicy(str(tiny_artifacts), **kwargs)).records
        row = r[r["output_tokens"] == 60].iloc[0]
        return float(row["admitted_s"] - row["arrival_s"])

    assert long_wait() > 25.0
    assert long_wait(slo_tiers=[], max_wait_s=20.0, guard_fraction=0.5) < 12.0


def test_drift_urgency_orders_by_deadline(tiny_artifacts: Path) -> None:
    pol = DriftPolicy(
        str(tiny_artifacts), **drift_kwargs(urgency={"max_wait_s": 10.0, "guard_fraction": 0.5})
    )
    df = with_prompts(synthetic_frame(3, seed=1, rate_rps=1.0))
    from scheduler.engine import requests_from_frame

    reqs = requests_from_frame(df)
    pol.prepare(reqs)
    pol.on_arrival(reqs, now=reqs[-1].arrival_s)
    pol.on_step([], reqs, now=reqs[-1].arrival_s + 100.0)
    changed = pol.take_changed()
    assert len(changed) == 3
    keys = [pol.key(r, 0.0) for r in reqs]
    assert all(k < URGENT_OFFSET / 2 for k in keys) and keys == sorted(keys)
    assert all(math.isfinite(k) for k in keys)


def test_drift_slo_urgency_without_a_guard_gives_finite_earliest_deadline_keys(
    tiny_artifacts: Path,
) -> None:
    # the drift_slo bug: with no starvation guard (max_wait_s null) an urgent premium request
    # got URGENT_OFFSET + arrival + inf = +inf, the back of the queue
    pol = DriftPolicy(str(tiny_artifacts), urgency={"slo_tiers": ["premium"], "slo_fraction": 0.25})
    df = with_prompts(synthetic_frame(4, seed=1, rate_rps=1.0))
    df["tier"] = "premium"
    from scheduler.engine import requests_from_frame

    reqs = requests_from_frame(df)
    pol.prepare(reqs)
    pol.on_arrival(reqs, now=reqs[-1].arrival_s)
    pol.on_step([], reqs, now=reqs[-1].arrival_s + 1000.0)
    keys = [pol.key(r, 0.0) for r in reqs]
    assert all(math.isfinite(k) and k < URGENT_OFFSET / 2 for k in keys)
    assert keys == sorted(keys)  # earliest urgency time (= arrival + 25% of the SLO) first


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"preemption": {"urgent": True}}, "urgent needs urgency"),
        ({"urgency": {}}, "make nobody urgent"),
        ({"urgency": {"slo_tiers": ["gold"]}}, "expected tiers"),
        ({"reclassify": {"preempted": False, "overrun": False}}, "use null"),
        ({"reclassify": {"every": 3}}, "unknown key"),
        ({"preemption": {"max_per_request": 0}}, "must be >= 1"),
        ({"tier_weight": {"gold": 2.0}}, "not in"),
    ],
)
def test_drift_refuses_combinations_that_cannot_work(
    tiny_artifacts: Path, kw: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        DriftPolicy(str(tiny_artifacts), **kw)


class _Broken:
    """A predictor that returns NaN: the policy must log once and fall back."""

    has_drift = True

    def featurize(self, rows: pd.DataFrame) -> np.ndarray:
        return np.zeros((len(rows), 2))

    def predict_admission(self, X: np.ndarray) -> np.ndarray:
        return np.full((len(X), 2), np.nan)

    def predict_remaining(self, X, adm, gen) -> np.ndarray:
        raise RuntimeError("boom")


def test_drift_falls_back_to_the_heuristic_when_the_predictor_fails(
    tiny_artifacts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pol = DriftPolicy(str(tiny_artifacts), reclassify={})
    pol.lengths.predictor = _Broken()
    df = synthetic_frame(150, seed=2, rate_rps=20.0)
    with caplog.at_level(logging.WARNING):
        res = SimEngine(num_gpu_blocks=300, max_num_batched_tokens=512).run(df, pol)
    assert (res.records["status"] == "finished").all()
    assert res.records["est_output_tokens"].notna().all()
    assert pol.lengths.failed is not None
    assert sum("falling back" in m for m in caplog.messages) == 1


def test_driftsched_updates_its_ema_bias_on_completion() -> None:
    pol = DriftSchedPolicy()
    df = synthetic_frame(60, seed=4, rate_rps=0.1, output_median=1200, sigma=0.05, max_output=2000)
    df["prompt"] = "Write a detailed report on DNS"
    df["tier"] = "standard"  # one tier factor, so estimates differ only by the EMA bias
    res = SimEngine(num_gpu_blocks=2000).run(df, pol)
    assert pol.ema.n_updates == 60
    assert pol.ema.biases["report"] > 1.0  # outputs run longer than the 512-token base
    est = res.records["est_output_tokens"].to_numpy()
    assert est[-1] > est[0]


class _EagerWeightedFair(WeightedFairPolicy):
    """The pre-optimisation algorithm: charge every running request in every engine step."""

    uses_step_hook = True

    def on_step(self, running, waiting, now) -> None:
        self._synced_at = None  # force the full charge, as every step used to
        self._sync(now)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_fair_lazy_charging_matches_charging_every_step(seed: int) -> None:
    # KV pressure (preemptions), several tenants with weights, bursts: the lazily charged
    # policy must produce exactly the schedule of charging every step
    df = synthetic_frame(400, seed=seed, rate_rps=40.0, output_median=80)
    df["tenant"] = np.array(["a", "b", "c", "d"])[np.arange(len(df)) % 4]
    eng = SimEngine(num_gpu_blocks=300, max_num_batched_tokens=512, max_num_seqs=32)
    weights = {"a": 2.0, "b": 1.0, "c": 0.5}
    lazy = eng.run(df, WeightedFairPolicy(tenant_weights=weights)).records
    eager = eng.run(df, _EagerWeightedFair(tenant_weights=weights)).records
    assert lazy["num_preemptions"].sum() > 0  # the preemption path was exercised
    for col in ("admitted_s", "first_token_s", "finish_s", "num_preemptions"):
        pd.testing.assert_series_equal(lazy[col], eager[col], check_names=False)


class _ScanningDrift(DriftPolicy):
    """The unoptimised algorithm: scan the running batch in every step, both for requests past
    their re-prediction threshold (``on_step``) and for the voluntary victim (``preempt``)."""

    def on_step(self, running, waiting, now) -> None:
        self._prev_step, self._now = self._now, now
        if self._promo:
            self._promote(now)
        if self.reclassify is not None and self.reclassify.overrun and running:
            nu = self._next_update
            self._repredict([r for r in running if r.num_output_tokens >= nu[r.index]], now)

    def fast_forward_horizon(self, running, waiting, now) -> float:
        return 1

    def preempt(self, running, waiting, now):
        pre = self.preemption
        if pre is None or not waiting:
            return []
        cand = self._best_waiting()
        if cand is None or cand.arrival_s > self._prev_step:
            return []
        eligible = [r for r in running if r.index in self._running and self._eligible(r)]
        victims = sorted(eligible, key=lambda r: (-self._work[r.index], self._seq[r.index]))
        out = []
        cand_work = 0.0 if cand.index in self._urgent else max(self._work[cand.index], 0.0)
        for v in victims[: pre.per_step]:
            cost = (
                pre.recompute_cost_per_token
                * (v.prompt_tokens + v.num_output_tokens)
                * len(running)
            )
            if (pre.urgent and cand.index in self._urgent) or (
                self._work[v.index] - cand_work > pre.min_gain_tokens + cost
            ):
                out.append(v)
        for v in out:
            self._running.pop(v.index, None)
            self._push_waiting(v)
        return out


@pytest.mark.parametrize(
    "seed,groups",
    [
        (0, {"preemption": {"min_gain_tokens": 8.0}}),
        (1, {"preemption": {"max_per_request": 2, "per_step": 2, "min_gain_tokens": 8.0}}),
        (2, {"preemption": {"urgent": True}, "urgency": {"slo_fraction": 0.05}}),
        (
            3,
            {
                "reclassify": {"preempted": False, "min_delta_tokens": 4},
                "preemption": {"min_gain_tokens": 8.0},
            },
        ),
    ],
)
def test_drift_lazy_victims_and_overruns_match_scanning_every_step(
    seed: int, groups: dict, tiny_artifacts: Path
) -> None:
    # KV pressure (memory preemptions) and voluntary preemptions: the lazy victim heap and the
    # lazily tracked overrun thresholds must give exactly the schedule of scanning every step
    df = with_prompts(synthetic_frame(300, seed=seed, rate_rps=30.0, output_median=120))
    eng = SimEngine(num_gpu_blocks=300, max_num_batched_tokens=512, max_num_seqs=32)
    groups.setdefault("preemption", {})
    groups["preemption"] = {"recompute_cost_per_token": 0.0, **groups["preemption"]}
    kw = drift_kwargs(**groups)
    fast = eng.run(df, DriftPolicy(str(tiny_artifacts), **kw)).records
    slow = eng.run(df, _ScanningDrift(str(tiny_artifacts), **kw)).records
    assert fast["n_policy_preemptions"].sum() > 0  # the voluntary path was exercised
    assert fast["num_preemptions"].sum() > fast["n_policy_preemptions"].sum()  # and memory
    assert fast["n_estimates"].max() > 1  # and re-prediction
    for col in ("admitted_s", "first_token_s", "finish_s", "num_preemptions", "n_estimates"):
        pd.testing.assert_series_equal(fast[col], slow[col], check_names=False)
