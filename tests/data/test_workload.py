from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from data.arrivals import (
    ArrivalSpec,
    arrival_cv,
    gamma_arrivals,
    poisson_arrivals,
    replay_arrivals,
    trace_times,
)
from data.presets import workload_from_config
from data.workload import build_workload, default_spec, spawn_streams
from data.workload_spec import MixItem, TenantSpec, WorkloadSpec, spec_to_dict
from report.presets import compose_workload_config, load_workload

SMALL = replace(default_spec(), n_requests=600)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_same_seed_identical_workload():
    a = build_workload(SMALL, seed=7)
    b = build_workload(SMALL, seed=7)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    c = build_workload(SMALL, seed=8)
    assert not a.requests["output_tokens"].equals(c.requests["output_tokens"])


def test_default_workload_shape():
    w = build_workload(default_spec(3000), seed=0)
    r = w.requests
    assert len(w) == 3000 and r["request_id"].is_unique
    assert set(r["tenant"]) == {"chat", "code", "batch"}
    assert dict(zip(r["tenant"], r["tier"])) == {
        "chat": "premium",
        "code": "standard",
        "batch": "batch",
    }
    share = r["tenant"].value_counts(normalize=True)
    assert abs(share["chat"] - 0.5) < 0.04 and abs(share["batch"] - 0.2) < 0.04
    # every request fits the default engine's KV cache
    assert (r["prompt_tokens"] <= 4096).all() and (r["output_tokens"] <= r["max_tokens"]).all()
    assert (r["output_tokens"] <= r["output_tokens_uncapped"]).all()
    assert np.all(np.diff(r["arrival_s"]) >= 0) and r["arrival_s"].iloc[0] == 0
    assert {"slo_ttft_s", "slo_e2e_s", "prompt_id"} <= set(r.columns)
    code = r[r["tenant"] == "code"]
    assert set(code["category"]) == {"code"} and set(code["source"]) == {"castillo"}
    assert any("capped output_tokens" in s for s in w.reports)
    # CASTILLO true lengths are drawn among the 10 samples
    cast = r[r["source"] == "castillo"]
    assert all(u in s for u, s in zip(cast["output_tokens_uncapped"], cast["output_samples"]))


def test_replay_uses_azure_conv_gaps():
    w = build_workload(SMALL, seed=0)
    t = trace_times("azure_conv", np.random.default_rng(0))[:600]
    np.testing.assert_allclose(w.requests["arrival_s"].to_numpy(), t - t[0])


# Tolerances: with n = 20,000 gaps the sample mean rate has relative s.d. ~ cv/sqrt(n) (< 2.2 %
# for cv = 3) and we allow 5 %; the CV estimate is allowed 10 % (Gamma cv = 3 is heavy-tailed).
@pytest.mark.parametrize("kind,cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0)])
def test_rate_and_cv_within_tolerance(kind, cv):
    rng = spawn_streams(11)["arrivals"]
    n, rate = 20_000, 8.0
    t = poisson_arrivals(n, rate, rng) if kind == "poisson" else gamma_arrivals(n, rate, cv, rng)
    assert abs((n - 1) / (t[-1] - t[0]) / rate - 1) < 0.05
    assert abs(arrival_cv(t) / cv - 1) < 0.10


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_built_poisson_and_gamma_workloads_hit_rate_and_cv():
    for arrival, cv in (
        (ArrivalSpec("poisson", 5.0), 1.0),
        (ArrivalSpec("gamma", 5.0, cv=2.0), 2.0),
    ):
        w = build_workload(replace(SMALL, n_requests=3000, arrival=arrival), seed=1)
        assert abs(w.rate_rps / 5.0 - 1) < 0.10
        assert abs(w.cv / cv - 1) < 0.15


def test_at_rate_rescales_time_only():
    w = build_workload(replace(SMALL, arrival=ArrivalSpec("gamma", 2.0, cv=2.0)), seed=0)
    v = w.at_rate(20.0)
    assert v.rate_rps == pytest.approx(20.0)
    assert v.cv == pytest.approx(w.cv)
    pd.testing.assert_frame_equal(
        v.requests.drop(columns="arrival_s"), w.requests.drop(columns="arrival_s")
    )
    assert w.at_utilisation(0.5, 40.0).rate_rps == pytest.approx(20.0)
    with pytest.raises(ValueError, match="rate_rps"):
        w.at_rate(0.0)


def test_replay_tiles_and_offsets():
    t = np.array([10.0, 11.0, 13.0])
    np.testing.assert_allclose(replay_arrivals(7, t), [0, 1, 3, 4.5, 5.5, 7.5, 9.0])
    np.testing.assert_allclose(replay_arrivals(2, t, start_s=11.0), [0, 2])


def test_mooncake_buckets_spread_within_bucket():
    raw = trace_times("azure_conv", np.random.default_rng(0))  # not bucketed: unchanged
    assert raw[0] == 0.0
    a = trace_times("mooncake_conversation", np.random.default_rng(0))
    b = trace_times("mooncake_conversation", np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) >= 0)
    # bucket counts are preserved exactly
    from data.loaders import load_source

    pub = np.round(load_source("mooncake_conversation")["arrival_s"].to_numpy() / 3.0)
    np.testing.assert_array_equal(
        np.bincount(np.floor(a / 3.0).astype(int)), np.bincount(pub.astype(int))
    )


def test_servegen_tenants_follow_clients():
    spec = replace(
        SMALL,
        arrival=ArrivalSpec("servegen", servegen_model="m-mid", window_s=60.0, rate_scale=0.01),
    )
    w = build_workload(spec, seed=0)
    assert len(w) == 600 and np.all(np.diff(w.requests["arrival_s"]) >= 0)
    pd.testing.assert_frame_equal(w.requests, build_workload(spec, seed=0).requests)
    with pytest.raises(ValueError, match="one client per tenant"):
        build_workload(replace(spec, arrival=replace(spec.arrival, servegen_clients=(1,))), 0)


def test_spec_validation_errors():
    with pytest.raises(ValueError, match="unknown tier 'gold'"):
        TenantSpec("t", "gold", 1.0, 1.0, 2.0, mix=(MixItem("sharegpt"),))
    with pytest.raises(ValueError, match="need rate_rps"):
        ArrivalSpec("poisson")
    with pytest.raises(ValueError, match="unknown arrival kind"):
        ArrivalSpec("uniform", 1.0)
    bad = replace(
        SMALL,
        tenants=(
            TenantSpec("t", "batch", 1.0, 1.0, 2.0, mix=(MixItem("castillo", models=("gpt-9",)),)),
        ),
    )
    with pytest.raises(ValueError, match="none of models"):
        build_workload(bad, 0)
    with pytest.raises(ValueError, match="unknown field"):
        WorkloadSpec.from_config({**spec_to_dict(SMALL), "bogus": 1})


def test_spec_config_roundtrip():
    assert WorkloadSpec.from_config(spec_to_dict(default_spec())) == default_spec()


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize("name", ["default", "poisson", "gamma", "servegen", "mooncake"])
def test_every_workload_config_composes_and_builds(name):
    cfg = compose_workload_config(name, ["n_requests=300"])
    w = workload_from_config(cfg, seed=0)
    assert len(w) == 300 and w.name == name
    assert {t.tier for t in w.tenants} == {"premium", "standard", "batch"}


def test_default_config_matches_default_spec():
    spec = WorkloadSpec.from_config(compose_workload_config("default"))
    assert spec == default_spec()
    assert len(load_workload("poisson", 0, ["n_requests=50", "arrival.rate_rps=9"])) == 50


def test_default_workload_draws_only_prompts_the_predictor_never_saw():
    from data.holdout import seen_from_data_config

    w = build_workload(default_spec(3000), seed=0)
    assert seen_from_data_config("default").overlap(w.requests) == 0.0
    # enough unseen prompts that 3,000 requests do not keep repeating a few
    assert w.distinct_prompts() >= 2000
    assert any("never trained or validated on" in r for r in w.reports)
    unrestricted = build_workload(replace(default_spec(3000), unseen_by=None), seed=0)
    assert seen_from_data_config("default").overlap(unrestricted.requests) > 0.5


def test_pool_draws_spread_repeats_evenly():
    from data.tenant_mix import _draw_rows

    rng = np.random.default_rng(0)
    rows = _draw_rows(7, 30, rng)
    counts = np.bincount(rows, minlength=7)
    assert counts.min() >= 4 and counts.max() <= 5  # 30 / 7: every row 4 or 5 times
    assert len(set(_draw_rows(50, 20, rng).tolist())) == 20  # without replacement


def test_phases_shift_a_tenants_mix_and_weights_mid_run():
    spec = WorkloadSpec.from_config(
        {
            **spec_to_dict(replace(default_spec(), n_requests=400, unseen_by=None)),
            "phases": [
                {
                    "start": 0.5,
                    "weights": {"chat": 0.1},
                    "mix": {"chat": [{"source": "vidur_arxiv"}]},
                }
            ],
        }
    )
    r = build_workload(spec, seed=1).requests
    first, second = r.iloc[:200], r.iloc[200:]
    assert set(first.loc[first.tenant == "chat", "source"]) == {"sharegpt", "alpaca_eval"}
    assert set(second.loc[second.tenant == "chat", "source"]) == {"vidur_arxiv"}
    assert (second.tenant == "chat").mean() < (first.tenant == "chat").mean() / 2
    assert WorkloadSpec.from_config(spec_to_dict(spec)) == spec  # round trip
    with pytest.raises(ValueError, match="unknown tenant"):
        WorkloadSpec.from_config(
            {**spec_to_dict(spec), "phases": [{"start": 0.3, "weights": {"x": 1}}]}
        )
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        WorkloadSpec.from_config({**spec_to_dict(spec), "phases": [{"start": 1.5}]})


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize(
    "name", ["unseen_prompts", "shift", "bursty", "heavy_tail", "memory_bound"]
)
def test_generalisation_presets_build(name):
    w = load_workload(name, 0, ["n_requests=300", "unseen_by=data:default"])
    assert len(w) == 300 and w.name == name
    from data.holdout import seen_from_data_config

    assert seen_from_data_config("default").overlap(w.requests) == 0.0
    if name == "heavy_tail":
        assert (w.requests["max_tokens"] == 8192).all()
    if name == "bursty":
        assert w.cv > 3
