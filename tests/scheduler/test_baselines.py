"""The strongest baselines: ``uniboost``, ``tie``, ``trail`` and ``srpt_oracle``.

Hand-checkable keys and orderings, their preemption rules called directly, and simulator runs
with invariants (every request ends once, no policy state left, decode fast-forward exact).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scheduler.engine import requests_from_frame
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.oracle import OraclePolicy
from scheduler.policies.preemptive import PreemptivePolicy
from scheduler.policies.sjf import SJFPolicy
from scheduler.policies.srpt_oracle import SRPTOraclePolicy
from scheduler.policies.tie import LogTScore, TIEPolicy
from scheduler.policies.trail import TrailPolicy
from scheduler.policies.uniboost import BoostTable, UniBoostPolicy
from scheduler.request import SchedRequest, Status
from scheduler.sim.engine import SimEngine
from scheduler.sim.synthetic import synthetic_frame
from tests.scheduler.sim.test_sim_fast_forward import assert_identical, both, random_case
from tests.scheduler.test_policies import frame, single_server_mean_e2e
from tests.tiny_predictor import with_prompts


def reqs(rows: list[tuple[str, float, int, int]]) -> list[SchedRequest]:
    """(tier, arrival_s, prompt_tokens, output_tokens) rows -> fresh SchedRequests."""
    return requests_from_frame(frame(rows))


def run_as(policy, running: list[SchedRequest], now: float) -> None:
    """Mark requests admitted and running, as an engine does (prompt computed)."""
    for r in running:
        r.status = Status.RUNNING
        r.admitted_s = now
        r.num_computed_tokens = r.prompt_tokens + r.num_output_tokens
    policy.on_admit(running, now)


# ----------------------------------------------------------------------------- BoostTable
def test_boost_table_is_gamma_boost_on_attained_service() -> None:
    g = 0.05
    t = BoostTable().fit(np.array([30.0, 10.0, 20.0]), g)
    m0 = np.mean(np.exp(g * np.array([10.0, 20.0, 30.0])))
    assert t.log_m(0) == pytest.approx(math.log(m0))
    assert t.boost(0) == pytest.approx(math.log(m0 / (m0 - 1)) / g)
    # attained 15: only the sizes 20 and 30 survive, remaining 5 and 15
    m15 = np.mean(np.exp(g * np.array([5.0, 15.0])))
    assert t.boost(15) == pytest.approx(math.log(m15 / (m15 - 1)) / g)
    # known extra work multiplies M by exp(g * extra)
    assert t.boost(15, extra=7) == pytest.approx(
        math.log(m15 * math.exp(7 * g) / (m15 * math.exp(7 * g) - 1)) / g
    )
    # past the largest size: Lindy (remaining ~ attained)
    assert t.log_m(40) == pytest.approx(g * 40)


def test_one_size_gives_the_full_information_boost() -> None:
    # Yu & Scully's full-information boost b(s) = (1/g) log(1 / (1 - exp(-g s)))
    g, s = 0.01, 120.0
    t = BoostTable().fit(np.array([s]), g)
    for a in (0.0, 50.0, 119.0):
        rem = s - a
        assert t.boost(a) == pytest.approx(math.log(1 / (1 - math.exp(-g * rem))) / g)


def test_boosts_shrink_with_attained_service_and_vanish_as_gamma_grows() -> None:
    sizes = np.random.default_rng(0).lognormal(np.log(200), 1.2, 2000).round() + 1
    mean = float(sizes.mean())
    t = BoostTable().fit(sizes, 0.003 / mean)
    # heavy tail: a request that ran past most others expects more work, so less boost
    assert t.boost(0) > t.boost(float(np.quantile(sizes, 0.9))) > 0
    assert BoostTable().fit(sizes, 1e6 / mean).boost(0) == 0.0  # gamma -> inf: FCFS
    assert BoostTable().boost(10) == 0.0  # unfitted: no boost


# ----------------------------------------------------------------------------- uniboost
def test_uniboost_keys_are_boosted_arrival_times() -> None:
    pol = UniBoostPolicy(gamma=0.5, seconds_per_token=0.01, min_count=3, refresh_every=1000)
    done = reqs([("standard", 0.0, 1, n) for n in (10, 20, 400)])
    for r, n in zip(done, (10, 20, 400)):
        r.num_output_tokens = n
    pol.on_finish(done, 1.0)  # min_count reached: table fitted
    assert pol.table.fitted and pol.tau == 0.01
    assert pol.table.g == pytest.approx(0.5 / np.mean([10, 20, 400]))
    fresh, old = reqs([("standard", 5.0, 10, 50), ("standard", 4.5, 10, 500)])
    old.num_output_tokens = 30  # past 10 and 20: expects the 400-token survivor's remaining
    pol.on_arrival([fresh, old], 5.0)
    assert fresh.sched_key == pytest.approx(5.0 - 0.01 * pol.table.boost(0, 0.0))
    assert old.sched_key == pytest.approx(4.5 - 0.01 * pol.table.boost(30, 0.0))
    assert pol.table.boost(0) > pol.table.boost(30)
    assert fresh.sched_key < old.sched_key  # overtakes an older but longer-running request


def test_uniboost_with_huge_gamma_serves_exactly_like_fifo() -> None:
    df = synthetic_frame(200, seed=4, rate_rps=12.0, output_median=120)
    eng = SimEngine(num_gpu_blocks=300, max_num_batched_tokens=512)
    fifo = eng.run(df, FIFOPolicy()).records
    ub = eng.run(df, UniBoostPolicy(gamma=1e9, min_count=4)).records
    assert fifo["num_preemptions"].sum() > 0  # memory pressure: victims must match too
    for col in ("admitted_s", "finish_s", "num_preemptions"):
        np.testing.assert_array_equal(fifo[col].to_numpy(), ub[col].to_numpy())


def _calibrated_uniboost(**kw) -> UniBoostPolicy:
    pol = UniBoostPolicy(seconds_per_token=0.01, min_count=4, refresh_every=1000, **kw)
    done = reqs([("standard", 0.0, 1, 1)] * 4)
    for r, n in zip(done, (10, 20, 30, 2000)):
        r.num_output_tokens = n
    pol.on_finish(done, 0.5)
    return pol


@pytest.mark.parametrize(
    ("cost", "cap", "expect"),
    [(0.0, 1, True), (1.0, 1, True), (1000.0, 1, False), (0.0, 0, False)],
)
def test_uniboost_preempts_a_long_runner_only_when_the_gain_pays(
    cost: float, cap: int, expect: bool
) -> None:
    pol = _calibrated_uniboost(gamma=0.05, recompute_cost_per_token=cost, max_preemptions=cap)
    v, c = reqs([("standard", 1.0, 10, 3000), ("standard", 1.5, 10, 5)])
    pol.on_arrival([v], 1.0)
    run_as(pol, [v], 1.0)
    v.num_output_tokens = 100  # past most observed sizes: little boost left
    pol.on_arrival([c], 1.5)
    pol.on_step([v], [c], 1.5)
    pol.on_step([v], [c], 1.6)  # c has now missed an admission round
    assert c.sched_key < v.sched_key
    out = pol.preempt([v], [c], 1.6)
    assert out == ([v] if expect else [])
    if expect:  # back in the queue with the prompt to recompute, reported as changed
        assert v in pol.take_changed()


# ----------------------------------------------------------------------------- tie
def test_logt_score_hand_values() -> None:
    s = LogTScore(nu=3.5, alpha=0.9, n=512)
    p50 = np.array([100.0, 100.0, 100.0])
    mu, sigma = s.fit(p50, np.array([100.0, 100.0, 400.0]))
    assert mu == pytest.approx(np.log(p50))
    assert sigma[0] == pytest.approx(1e-3)  # degenerate: p90 == p50
    assert sigma[2] == pytest.approx(np.log(4.0) / s.t90)
    mean, cvar = s.mean_cvar(mu, sigma, np.array([2048.0, 50.0, 2048.0]))
    assert mean[0] == pytest.approx(100.0, rel=0.01) and cvar[0] == pytest.approx(100.0, rel=0.02)
    assert mean[1] == pytest.approx(50.0) and cvar[1] == pytest.approx(50.0)  # the cap
    assert cvar[2] > mean[2] > 100.0  # right-skewed: mean above the median, tail above both
    assert cvar[2] <= 2048.0


def test_tie_beta_is_the_papers_clamped_queue_ratio(tiny_artifacts: Path) -> None:
    pol = TIEPolicy(str(tiny_artifacts), batch_size=32)
    assert pol.beta(0) == 0.1 and pol.beta(32) == 0.1
    assert pol.beta(96) == pytest.approx(0.3)
    assert pol.beta(10_000) == 0.5


def test_tie_keys_order_by_log_score_with_starvation_decay(
    tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pol = TIEPolicy(str(tiny_artifacts), decay=0.9, decay_interval_s=30.0)
    rows = [("standard", 0.0, 5, 1), ("standard", 10.0, 5, 1), ("standard", 20.0, 5, 1)]
    a, b, c = reqs(rows)
    pred = {a.index: (100.0, 200.0), b.index: (100.0, 200.0), c.index: (50.0, 100.0)}
    monkeypatch.setattr(pol.lengths, "admission", lambda rs: np.array([pred[r.index] for r in rs]))
    pol.on_arrival([a], 0.0)
    pol.on_arrival([b], 10.0)
    rate = math.log(1 / 0.9) / 30.0
    # same predicted distribution (beta 0.1 for both: short queue): the decay is arrival order
    assert b.sched_key - a.sched_key == pytest.approx(10.0 * rate)
    pol.on_arrival([c], 20.0)
    mean, cvar = pol.score.mean_cvar(
        *pol.score.fit(np.array([50.0]), np.array([100.0])), np.array([10_000.0])
    )
    assert c.sched_key == pytest.approx(math.log(mean[0] + 0.1 * cvar[0]) + 20.0 * rate)
    assert c.sched_key < a.sched_key  # half the predicted length beats 20 s of waiting
    assert pol._queued == {a.index, b.index, c.index}
    run_as(pol, [a], 21.0)
    assert pol._queued == {b.index, c.index}  # L_q for beta


# ----------------------------------------------------------------------------- trail
def _trail(tiny_artifacts: Path, **kw) -> TrailPolicy:
    return TrailPolicy(str(tiny_artifacts), recompute_cost_per_token=0.0, **kw)


def _predict(pol: TrailPolicy, monkeypatch, total: dict[int, float]) -> None:
    """Admission p50 = ``total[index]``; re-predictions: the same total minus generated."""
    monkeypatch.setattr(
        pol.lengths,
        "admission",
        lambda rs: np.array([(total[r.index], 2 * total[r.index]) for r in rs]),
    )
    monkeypatch.setattr(
        pol.lengths,
        "remaining",
        lambda rs, adm: np.array(
            [(max(1.0, total[r.index] - r.num_output_tokens),) * 2 for r in rs]
        ),
    )


def test_trail_never_preempts_past_80_percent_and_at_most_half_the_batch(
    tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pol = _trail(tiny_artifacts, rekey_every=1)
    run = reqs([("standard", 0.0, 4, 1000)] * 5)
    wait = reqs([("standard", 1.0, 4, 5)] * 5)
    for i, r in enumerate(wait):
        r.index = 100 + i
    total = {r.index: 1000.0 + 100 * i for i, r in enumerate(run)}
    total.update({r.index: 10.0 for r in wait})
    _predict(pol, monkeypatch, total)
    pol.on_arrival(run, 0.0)
    run_as(pol, run, 0.0)
    run[4].num_output_tokens = 1200  # 1200 of 1400 predicted: past 80%, never a victim
    for r in run[:4]:
        r.num_output_tokens = 100
    pol.on_arrival(wait, 1.0)
    pol.on_step(run, wait, 1.0)
    pol.on_step(run, wait, 1.1)
    assert not pol._eligible(run[4]) and pol._eligible(run[3])
    assert run[3].sched_key == 1300 - 100  # SRPT on the predicted remaining work
    out = pol.preempt(run, wait, 1.1)
    # int(0.5 * 5) = 2 victims: the largest predicted remaining among the eligible ones
    assert out == [run[3], run[2]]


def test_trail_remaining_estimate_counts_down_between_predictions(
    tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pol = _trail(tiny_artifacts, min_delta_tokens=1000, rekey_every=1)
    (r,) = reqs([("standard", 0.0, 4, 900)])
    _predict(pol, monkeypatch, {r.index: 500.0})
    pol.on_arrival([r], 0.0)
    run_as(pol, [r], 0.0)
    r.num_output_tokens = 120  # < min_delta_tokens: no re-prediction, the estimate counts down
    pol.on_step([r], [], 1.0)
    assert r.sched_key == 380 and r.est_updated_at_tokens == 0
    r.num_output_tokens = 1000
    pol.on_step([r], [], 2.0)  # re-predicted: total 500 < generated -> floor 1
    assert r.est_updated_at_tokens == 1000 and r.sched_key == 1.0


# ----------------------------------------------------------------------------- srpt_oracle
@pytest.mark.parametrize(("cost", "expect"), [(0.0, True), (8.9, True), (9.1, False)])
def test_srpt_oracle_preempts_when_the_gain_beats_the_recompute(cost: float, expect: bool) -> None:
    # gain = 100 - 10 = 90 remaining tokens; cost = w * (10 prompt + 0 generated) * 1 running
    v, c = reqs([("standard", 0.0, 10, 100), ("standard", 1.0, 10, 10)])
    pol = SRPTOraclePolicy(recompute_cost_per_token=cost, rekey_every=1)
    pol.on_arrival([v], 0.0)
    run_as(pol, [v], 0.0)
    pol.on_arrival([c], 1.0)
    pol.on_step([v], [c], 1.0)
    assert pol.preempt([v], [c], 1.0) == []  # c may still be admitted in this round
    pol.on_step([v], [c], 1.1)
    assert pol.key(v, 1.1) == 100 and c.sched_key == 10
    assert pol.preempt([v], [c], 1.1) == ([v] if expect else [])


def test_srpt_oracle_gain_is_capped_by_the_next_finish() -> None:
    long, short, c = reqs(
        [("standard", 0.0, 10, 100), ("standard", 0.0, 10, 4), ("standard", 1.0, 10, 10)]
    )
    for cost, expect in ((0.3, []), (0.01, [long])):
        # gain = min(100 - 10, 4 tokens until `short` frees a slot) = 4; cost = w * 10 * 2
        pol = SRPTOraclePolicy(recompute_cost_per_token=cost, rekey_every=1)
        for r in (long, short, c):
            r.status, r.num_preemptions = Status.WAITING, 0
        pol.on_arrival([long, short], 0.0)
        run_as(pol, [long, short], 0.0)
        pol.on_arrival([c], 1.0)
        pol.on_step([long, short], [c], 1.0)
        pol.on_step([long, short], [c], 1.1)
        assert pol._next_finish == 4
        assert pol.preempt([long, short], [c], 1.1) == expect


@pytest.mark.parametrize("seed", range(3))
def test_srpt_oracle_is_optimal_on_a_single_sequence_server(
    seed: int, tiny_artifacts: Path
) -> None:
    mean_e2e = single_server_mean_e2e(seed)
    best = mean_e2e(SRPTOraclePolicy(recompute_cost_per_token=0.0, rekey_every=1))
    assert best == pytest.approx(mean_e2e(OraclePolicy(preemptive=True)))  # textbook SRPT
    for other in (
        FIFOPolicy(),
        OraclePolicy(),
        SJFPolicy(str(tiny_artifacts)),
        UniBoostPolicy(min_count=4),
        TIEPolicy(str(tiny_artifacts)),
        _trail(tiny_artifacts),
    ):
        assert best <= mean_e2e(other) + 1e-9, other.name


# ----------------------------------------------------------------------------- simulator runs
def _makers(tiny_artifacts: Path) -> dict:
    art = str(tiny_artifacts)
    return {
        "uniboost": lambda: UniBoostPolicy(min_count=8, refresh_every=16, rekey_every=4),
        "uniboost_eager": lambda: UniBoostPolicy(
            gamma=0.0003,
            min_count=8,
            refresh_every=16,
            max_preemptions=None,
            recompute_cost_per_token=0.0,
        ),
        "tie": lambda: TIEPolicy(art),
        "trail": lambda: TrailPolicy(art, rekey_every=4),
        "trail_cost0": lambda: TrailPolicy(art, recompute_cost_per_token=0.0, rekey_every=3),
        "srpt_oracle": lambda: SRPTOraclePolicy(rekey_every=4),
        "srpt_oracle_cost0": lambda: SRPTOraclePolicy(recompute_cost_per_token=0.0),
    }


def _no_state_left(pol) -> None:
    names = ("_reqs", "_running", "_ver", "_enq_t", "_wait", "_victims", "_changed", "_ref")
    for attr in (*names, "_adm", "_next_update", "_queued"):
        assert not getattr(pol, attr, None), f"{pol.name}: {attr} not empty"
    lengths = getattr(pol, "lengths", None)
    if lengths is not None:
        assert not lengths._x and not lengths._raw and not lengths._text


@pytest.mark.parametrize(
    "name",
    [
        "uniboost",
        "uniboost_eager",
        "tie",
        "trail",
        "trail_cost0",
        "srpt_oracle",
        "srpt_oracle_cost0",
    ],
)
def test_every_request_ends_once_and_no_state_is_left(name: str, tiny_artifacts: Path) -> None:
    df = with_prompts(synthetic_frame(400, seed=5, rate_rps=25.0, output_median=150))
    pol = _makers(tiny_artifacts)[name]()
    res = SimEngine(num_gpu_blocks=500, max_num_batched_tokens=512).run(df, pol)
    rec = res.records
    assert len(rec) == len(df) and rec["request_id"].is_unique
    assert set(rec["request_id"]) == set(df["request_id"])
    assert (rec["status"] == "finished").all()
    assert (rec["finish_s"] >= rec["arrival_s"]).all() and rec["finish_s"].notna().all()
    assert (rec["output_tokens"] == np.minimum(df["output_tokens"], df["max_tokens"])).all()
    assert res.meta["preemptions"] > 0  # memory pressure exercised the reconcile path
    cap = getattr(pol, "max_preemptions", None)
    if cap is not None:
        assert (rec["n_policy_preemptions"] <= cap).all()
    if name in ("uniboost_eager", "trail_cost0", "srpt_oracle_cost0"):
        assert res.meta["policy_preemptions"] > 0, "the preemption path was not exercised"
    _no_state_left(pol)


@pytest.mark.parametrize("seed", range(3))
def test_fast_forward_is_exact_for_the_baselines(seed: int, tiny_artifacts: Path) -> None:
    df, kw = random_case(seed)
    df = with_prompts(df, seed)
    for name, make in _makers(tiny_artifacts).items():
        on, off = both(df, make, **kw)
        assert_identical(on, off)
        assert len(on.records) == len(df), name


def test_horizons_let_the_simulator_skip_steps(tiny_artifacts: Path) -> None:
    df = with_prompts(synthetic_frame(150, seed=3, rate_rps=2.0, output_median=300))
    for name, make in _makers(tiny_artifacts).items():
        res = SimEngine(num_gpu_blocks=4000).run(df, make())
        assert res.meta["fast_forward_steps"] > 0.3 * res.meta["steps"], name


def test_baseline_configs_build_the_policies(tiny_artifacts: Path) -> None:
    from omegaconf import OmegaConf

    from report.jobs import build_policy, compose

    root = Path(__file__).resolve().parents[2] / "conf" / "policy"
    expect = {
        "uniboost": UniBoostPolicy,
        "tie": TIEPolicy,
        "trail": TrailPolicy,
        "srpt_oracle": SRPTOraclePolicy,
    }
    for name, cls in expect.items():
        cfg = compose(
            [f"+policy={name}", f"predictor_dir={tiny_artifacts}", "engine.max_num_seqs=8"]
        )
        pol = build_policy(cfg.policy)
        assert isinstance(pol, cls) and pol.name == name
        assert pol.describe()["policy"] == name
    evaluate = OmegaConf.load(root.parent / "evaluate.yaml")
    compare = list(evaluate.compare)
    assert compare.index("oracle") > max(compare.index(n) for n in expect)


def test_bad_parameters_are_rejected_with_the_field(tiny_artifacts: Path) -> None:
    with pytest.raises(ValueError, match="gamma"):
        UniBoostPolicy(gamma=0.0)
    with pytest.raises(ValueError, match="preempt_limit"):
        TrailPolicy(str(tiny_artifacts), preempt_limit=1.5)
    with pytest.raises(ValueError, match="decay"):
        TIEPolicy(str(tiny_artifacts), decay=0.0)
    with pytest.raises(ValueError, match="max_preempt_fraction"):
        PreemptivePolicy(max_preempt_fraction=2.0)
    with pytest.raises(FileNotFoundError, match=r"python train\.py"):
        TIEPolicy(str(tiny_artifacts / "nothing"))
