import numpy as np
import pandas as pd
import pytest

from data.loaders import SOURCES, load_source, load_source_with_reports, load_sources
from data.loaders.servegen import (
    LENGTH_COLUMNS,
    WINDOW_COLUMNS,
    load_servegen_lengths,
    load_servegen_windows,
    rate_profile,
    top_clients,
)
from data.schema import REQUIRED, TIERS, validate_trace

# rows after the loaders' explicit filters (see data/README.md for the raw counts)
EXPECTED_ROWS = {
    "castillo": 67_565,
    "alpaca_eval": 181_087,  # 182,723 - 1,610 (gpt4_gamed, NullModel) - 26 empty outputs
    "sharegpt": 11_128,  # 11,135 - 7 empty prompts
    "sharegpt_pairs": 61_089,  # 61,223 - 128 empty prompts - 6 empty outputs
    "azure_code": 8_819,
    "azure_conv": 19_366,
    "mooncake_conversation": 12_031,
    "mooncake_synthetic": 3_993,
    "vidur_arxiv": 28_257,
    "burstgpt": 51,  # 54 - 2 empty requests - 1 empty response
}
WITH_TEXT = {"castillo", "alpaca_eval", "sharegpt"}


def test_every_source_is_listed():
    assert set(SOURCES) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_source_loads_with_schema(name):
    df, reports = load_source_with_reports(name)
    assert len(df) == EXPECTED_ROWS[name]
    for col in REQUIRED:
        assert col in df.columns
    assert (df["source"] == name).all()
    assert df["tier"].isin(TIERS).all()
    assert df["request_id"].is_unique
    assert df["prompt_tokens"].dtype == np.int64 and (df["prompt_tokens"] > 0).all()
    assert df["output_tokens"].dtype == np.int64 and (df["output_tokens"] > 0).all()
    # a validated table validates again unchanged
    pd.testing.assert_frame_equal(validate_trace(df, name), df)
    if SOURCES[name].arrivals:
        validate_trace(df, name, require_arrivals=True)
        assert df["arrival_s"].iloc[0] == 0.0
    if name in WITH_TEXT:
        assert df["prompt"].notna().all()
        assert "prompt_id" in df.columns
    # every removed row is accounted for by a report
    for r in reports:
        assert r.removed > 0 and name in r.reason


def test_castillo_samples_and_identity():
    df = load_source("castillo")
    first = np.array([s[0] for s in df["output_samples"]])
    np.testing.assert_array_equal(first, df["output_tokens"].to_numpy())
    assert all(len(s) == 10 for s in df["output_samples"].head(100))
    assert df["model"].nunique() == 13
    assert {"code", "chat", "instruction", "summarization", "open_qa"} <= set(df["category"])
    # rows of one prompt share a prompt_id (grouped splits rely on it)
    assert df.groupby("prompt_id")["model"].nunique().max() == 13


def test_alpaca_eval_excludes_non_models():
    df, reports = load_source_with_reports("alpaca_eval")
    assert not df["model"].isin(["gpt4_gamed", "NullModel"]).any()
    assert reports[0].removed == 1_610 and "gpt4_gamed" in reports[0].reason
    assert df["prompt_id"].nunique() == 805


def test_mooncake_timestamps_are_seconds():
    conv = load_source("mooncake_conversation")
    # 3 s buckets: timestamps are multiples of 3 s up to a few ms of jitter
    frac = np.abs(conv["arrival_s"] / 3.0 - np.round(conv["arrival_s"] / 3.0))
    assert frac.max() < 0.01
    assert 3000 < conv["arrival_s"].iloc[-1] < 4000


def test_load_source_returns_a_copy():
    a = load_source("burstgpt")
    a.loc[0, "output_tokens"] = 999_999
    assert load_source("burstgpt").loc[0, "output_tokens"] != 999_999


def test_unknown_source_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown source 'nope'.*castillo"):
        load_source("nope")


def test_load_sources_concatenates_with_unique_ids():
    df = load_sources(["sharegpt", "azure_code"])
    assert len(df) == EXPECTED_ROWS["sharegpt"] + EXPECTED_ROWS["azure_code"]
    assert df["prompt_id"].notna().all()


def test_servegen_typed_tables():
    w = load_servegen_windows("m-large")
    assert list(w.columns) == list(WINDOW_COLUMNS)
    assert (w["rate_rps"] > 0).all() and (w["model"] == "m-large").all()
    assert len(load_servegen_windows()) == 251_524
    ln = load_servegen_lengths("deepseek-r1")
    assert list(ln.columns) == list(LENGTH_COLUMNS) and len(ln) == 292
    clients = top_clients("m-mid", 3)
    starts, rates = rate_profile("m-mid", clients[0])
    assert len(starts) == len(rates) and (rates >= 0).all() and rates.max() > 0
    assert np.all(np.diff(starts) == 600)
    with pytest.raises(ValueError, match="unknown ServeGen model"):
        load_servegen_windows("gpt-5")
