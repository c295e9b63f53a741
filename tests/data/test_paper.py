import numpy as np
import pandas as pd
import pytest

from data.paper import CASTILLO_MAPPING, PaperSpec, build_paper_workload, paper_workload
from data.paper_templates import BASE_BUDGET, CATEGORIES, PREFIX
from data.tokens import count_tokens
from report.presets import load_workload


@pytest.fixture(scope="module")
def paper():
    return paper_workload(seed=0)


def test_counts_phases_and_mixes(paper):
    r = paper.requests
    assert len(r) == 3000
    assert r["phase"].tolist() == ["learning"] * 1000 + ["stress"] * 2000
    mix = r.groupby("phase")["category"].value_counts().unstack()[list(CATEGORIES)]
    assert mix.loc["learning"].tolist() == [400, 250, 250, 100]
    assert mix.loc["stress"].tolist() == [200, 400, 800, 600]


def test_gaps_per_phase(paper):
    gaps = np.diff(paper.requests["arrival_s"].to_numpy())
    learn, stress = gaps[:999], gaps[999:]  # gap i precedes request i + 1
    assert learn.min() >= 0.05 and learn.max() <= 0.15 and abs(learn.mean() - 0.1) < 0.005
    assert stress.min() >= 0.005 and stress.max() <= 0.03
    assert abs(stress.mean() - 0.0175) < 0.001


def test_tenants_one_per_tier_uniform(paper):
    r = paper.requests
    assert r.groupby("tenant")["tier"].nunique().max() == 1
    assert set(r["tier"]) == {"premium", "standard", "batch"}
    share = r["tenant"].value_counts(normalize=True)
    assert (abs(share - 1 / 3) < 0.04).all()


def test_budgets_and_true_lengths(paper):
    r = paper.requests
    assert (r["max_tokens"] == r["category"].map(BASE_BUDGET)).all()
    assert (r["output_tokens"] <= r["max_tokens"]).all()
    assert (r["output_tokens"] == np.minimum(r["output_tokens_uncapped"], r["max_tokens"])).all()
    # lengths come from CASTILLO rows of the mapped task types
    from data.loaders import load_source

    cast = load_source("castillo").set_index("request_id")
    src = cast.loc[r["length_source_id"]]
    for cat, dolly in CASTILLO_MAPPING.items():
        assert set(src["category"][r["category"].to_numpy() == cat]) <= set(dolly)
    assert all(u in s for u, s in zip(r["output_tokens_uncapped"], src["output_samples"]))
    assert set(r["model"]) <= {
        "Qwen--Qwen2.5-7B-Instruct-1M",
        "Qwen--Qwen2.5-14B-Instruct",
        "Qwen--Qwen2.5-32B-Instruct",
    }


def test_prefix_switch_and_token_counts(paper):
    r = paper.requests
    first = r.iloc[0]
    assert first["prompt"].startswith(
        PREFIX.format(i=0, tenant=first["tenant"], category=first["category"])
    )
    np.testing.assert_array_equal(r["prompt_tokens"], count_tokens(r["prompt"].tolist()))
    plain = paper_workload(seed=0, prefix=False).requests
    assert not plain["prompt"].str.startswith("Request ID").any()
    assert (plain["prompt_tokens"] < r["prompt_tokens"]).all()
    # the switch changes only the text: lengths, arrivals and tenants are the same
    for col in ("output_tokens", "arrival_s", "tenant", "category"):
        assert plain[col].equals(r[col])


def test_deterministic(paper):
    pd.testing.assert_frame_equal(paper_workload(seed=0).requests, paper.requests)
    assert not paper_workload(seed=1).requests["category"].equals(paper.requests["category"])


def test_config_matches_defaults(paper):
    w = load_workload("paper", seed=0)
    pd.testing.assert_frame_equal(w.requests, paper.requests)
    small = build_paper_workload(
        PaperSpec.from_config(
            {"phases": {"a": {"n_requests": 10, "gap_s": [0.1, 0.1], "mix": [1, 0, 0, 0]}}}
        ),
        0,
    )
    assert len(small) == 10 and set(small.requests["category"]) == {"short_qa"}
    assert small.duration_s == pytest.approx(0.9)
