import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.loaders import load_source
from data.splits import (
    assign_groups,
    grouped_split,
    iter_leave_one_out,
    leave_one_model_out,
    leave_one_source_out,
    time_split,
)


def _prompts(split):
    return [set(p["prompt_id"]) for p in (split.train, split.val, split.test)]


def test_grouped_split_disjoint_by_prompt_on_alpaca_eval():
    df = load_source("alpaca_eval")  # ~225 models answer each of 805 prompts
    s = grouped_split(df, seed=0)
    tr, va, te = _prompts(s)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert sum(s.sizes().values()) == len(df)
    # fractions hold over prompts (805 groups: within 4 percentage points)
    n = len(tr | va | te)
    assert abs(len(tr) / n - 0.8) < 0.04 and abs(len(te) / n - 0.1) < 0.04


def test_grouped_split_is_deterministic_and_order_invariant():
    df = load_source("castillo")
    a = assign_groups(df, seed=3)
    perm = np.random.default_rng(0).permutation(len(df))
    b = assign_groups(df.iloc[perm].reset_index(drop=True), seed=3)
    np.testing.assert_array_equal(a[perm], b)
    assert not np.array_equal(a, assign_groups(df, seed=4))
    # a prompt keeps its split when another source joins the table
    both = pd.concat([df, load_source("sharegpt")], ignore_index=True)
    np.testing.assert_array_equal(assign_groups(both, seed=3)[: len(df)], a)


@settings(max_examples=40, deadline=None)
@given(groups=st.lists(st.integers(0, 30), min_size=1, max_size=200), seed=st.integers(0, 99))
def test_grouped_split_never_shares_a_group(groups, seed):
    df = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(groups))],
            "prompt_id": [f"p{g}" for g in groups],
        }
    )
    s = grouped_split(df, (0.6, 0.2, 0.2), seed=seed)
    tr, va, te = _prompts(s)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert sum(s.sizes().values()) == len(df)


def test_rows_without_prompt_id_group_by_request():
    df = pd.DataFrame({"request_id": ["a", "b", "c"], "prompt_id": ["p", "p", None]})
    part = assign_groups(df, seed=0)
    assert part[0] == part[1]


def test_bad_fractions():
    df = pd.DataFrame({"request_id": ["a"]})
    with pytest.raises(ValueError, match="summing to 1"):
        grouped_split(df, (0.5, 0.2, 0.2))


def test_leave_one_out():
    df = pd.concat([load_source("castillo"), load_source("sharegpt")], ignore_index=True)
    train, test = leave_one_source_out(df, "sharegpt")
    assert set(test["source"]) == {"sharegpt"} and "sharegpt" not in set(train["source"])
    assert len(train) + len(test) == len(df)
    m = "google--gemma-3-4b-it"
    train, test = leave_one_model_out(df, m)
    assert set(test["model"]) == {m} and m not in set(train["model"])
    train2, _ = leave_one_model_out(df, m, disjoint_prompts=True)
    assert not set(train2["prompt_id"]) & set(test["prompt_id"])
    assert len(train2) < len(train)
    with pytest.raises(ValueError, match="'nope' not in table"):
        leave_one_source_out(df, "nope")
    held = [v for v, _, _ in iter_leave_one_out(df, "source")]
    assert held == ["castillo", "sharegpt"]


def test_time_split_is_chronological():
    df = load_source("azure_conv").sample(frac=1.0, random_state=0)  # shuffled rows
    s = time_split(df, (0.7, 0.15, 0.15))
    assert s.train["arrival_s"].max() <= s.val["arrival_s"].min()
    assert s.val["arrival_s"].max() <= s.test["arrival_s"].min()
    assert sum(s.sizes().values()) == len(df)
    assert abs(len(s.train) / len(df) - 0.7) < 1e-3
    with pytest.raises(ValueError, match="needs arrival times"):
        time_split(load_source("castillo"))


def _table() -> pd.DataFrame:
    """3 models x 40 prompts of source a, plus 30 prompts of source b answered by model m0."""
    rows = []
    for p in range(40):
        for m in ("m0", "m1", "m2"):
            rows.append({"request_id": f"a{p}{m}", "prompt_id": f"a{p}", "source": "a", "model": m})
    for p in range(30):
        rows.append({"request_id": f"b{p}", "prompt_id": f"b{p}", "source": "b", "model": "m0"})
    return pd.DataFrame(rows)


def test_split_by_config_leave_one_source_out_keeps_the_grouped_partitions():
    from data.splits import split_by_config

    df = _table()
    cfg = {"kind": "leave_one_source_out", "held_out": "b", "fractions": [0.6, 0.2, 0.2]}
    sp = split_by_config(df, cfg)
    part = assign_groups(df, (0.6, 0.2, 0.2), 0)
    rest = df["source"] != "b"
    assert set(sp.train["request_id"]) == set(df.loc[rest & (part == 0), "request_id"])
    assert set(sp.val["request_id"]) == set(df.loc[rest & (part == 1), "request_id"])
    assert set(sp.test["source"]) == {"b"} and len(sp.test) == 30  # all of the held-out source
    # the other source's test-partition prompts are used by nobody (stay unseen)
    used = set(sp.train["request_id"]) | set(sp.val["request_id"]) | set(sp.test["request_id"])
    assert not used & set(df.loc[rest & (part == 2), "request_id"])


def test_split_by_config_leave_models_out_tests_only_on_unseen_prompts():
    from data.splits import split_by_config

    df = _table()
    sp = split_by_config(df, {"kind": "leave_one_model_out", "held_out": ["m1", "m2"]})
    assert set(sp.train["model"]) == {"m0"} and set(sp.test["model"]) == {"m1", "m2"}
    seen = set(sp.train["prompt_id"]) | set(sp.val["prompt_id"])
    assert len(sp.test) > 0 and not seen & set(sp.test["prompt_id"])
    with pytest.raises(ValueError, match=r"model\(s\) \['m9'\] not in the table"):
        split_by_config(df, {"kind": "leave_one_model_out", "held_out": ["m1", "m9"]})
    with pytest.raises(ValueError, match=r"needs data\.split\.held_out"):
        split_by_config(df, {"kind": "leave_one_source_out"})
    with pytest.raises(ValueError, match=r"unknown data\.split\.kind"):
        split_by_config(df, {"kind": "random"})


def test_split_by_config_leave_out_holds_out_several_columns_at_once():
    from data.splits import split_by_config

    df = _table()
    df["dataset"] = np.where(df["prompt_id"].str.endswith("7"), "D7", None)
    cfg = {"kind": "leave_out", "held_out": {"source": ["b"], "model": "m2", "dataset": ["D7"]}}
    sp = split_by_config(df, cfg)
    trained = pd.concat([sp.train, sp.val])
    assert "b" not in set(trained["source"]) and "m2" not in set(trained["model"])
    assert not trained["dataset"].eq("D7").any()
    assert {"b", "a"} == set(sp.test["source"]) and "m2" in set(sp.test["model"])
    assert not set(trained["prompt_id"]) & set(sp.test["prompt_id"])  # tests on unseen prompts
    with pytest.raises(ValueError, match=r"held_out as a mapping"):
        split_by_config(df, {"kind": "leave_out", "held_out": ["b"]})
    with pytest.raises(ValueError, match=r"column 'colour' not in the table"):
        split_by_config(df, {"kind": "leave_out", "held_out": {"colour": ["red"]}})
    with pytest.raises(ValueError, match=r"source\(s\) \['z'\] not in the table"):
        split_by_config(df, {"kind": "leave_out", "held_out": {"source": ["z"]}})
