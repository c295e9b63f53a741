"""Metrics on hand-built record tables, values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scheduler.metrics import (
    comparison_table,
    dist,
    estimation_metrics,
    jain_index,
    recompute_tax,
    request_latencies,
    summarize,
)
from scheduler.records import RECORD_COLUMNS


def records() -> pd.DataFrame:
    # id, tenant, tier, arrival, admitted, first, finish, prompt, out, est, est_final, preempt
    rows = [
        ("a", "chat", "premium", 0.0, 0.5, 1.0, 5.0, 100, 9, 10.0, 9.0, 0),
        ("b", "chat", "premium", 1.0, 1.0, 3.0, 4.0, 20, 2, 50.0, 2.0, 1),
        ("c", "bulk", "batch", 2.0, 12.0, 14.0, 22.0, 1000, 5, 5.0, 5.0, 2),
    ]
    df = pd.DataFrame(
        rows,
        columns=[
            "request_id",
            "tenant",
            "tier",
            "arrival_s",
            "admitted_s",
            "first_token_s",
            "finish_s",
            "prompt_tokens",
            "output_tokens",
            "est_output_tokens",
            "est_final_total",
            "num_preemptions",
        ],
    )
    df["index"] = range(len(df))
    df["category"] = "x"
    df["source"] = "test"
    df["status"] = "finished"
    df["true_output_tokens"] = df["output_tokens"]
    df["max_tokens"] = 100
    df["n_policy_preemptions"] = [0, 1, 0]
    df["est_output_p90"] = df["est_output_tokens"] * 2
    df["n_estimates"] = [1, 3, 1]
    df["n_reclassified"] = [0, 1, 0]
    df = df[list(RECORD_COLUMNS)]
    df.insert(0, "engine", "sim")
    df.insert(1, "policy", "test")
    return df


SLOS = {"premium": (1.5, 4.5), "batch": (60.0, 900.0)}


def test_request_latencies_by_hand() -> None:
    lat = request_latencies(records())
    assert lat["ttft_s"].tolist() == [1.0, 2.0, 12.0]
    assert lat["e2e_s"].tolist() == [5.0, 3.0, 20.0]
    assert lat["queue_wait_s"].tolist() == [0.5, 0.0, 10.0]
    assert lat["tpot_s"].tolist() == pytest.approx([4.0 / 8, 1.0 / 1, 8.0 / 4])


def test_dist_and_jain() -> None:
    d = dist(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))
    assert d["mean"] == 2.5 and d["p50"] == 2.5 and d["max"] == 4.0
    assert d["p99"] == pytest.approx(3.97)
    assert math.isnan(dist(np.array([]))["mean"])
    assert jain_index([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([1, 3]) == pytest.approx(16 / 20)


def test_summary_slo_goodput_throughput_fairness() -> None:
    s = summarize(records(), SLOS, {"policy": "test"})
    assert s["policy"] == "test" and s["n_requests"] == 3 and s["n_finished"] == 3
    assert s["makespan_s"] == 22.0
    # a: ttft 1.0 <= 1.5, e2e 5.0 > 4.5 -> misses; b: ttft 2.0 > 1.5 -> misses; c meets both
    assert s["per_tier"]["premium"]["slo"] == {"ttft": 0.5, "e2e": 0.5, "both": 0.0}
    assert s["per_tier"]["batch"]["slo"]["both"] == 1.0
    assert s["slo"]["attainment"] == pytest.approx(1 / 3)
    assert s["slo"]["goodput_rps"] == pytest.approx(1 / 22)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(16 / 22)
    assert s["throughput"]["total_tokens_per_s"] == pytest.approx((16 + 1120) / 22)
    assert s["throughput"]["requests_per_s"] == pytest.approx(3 / 22)
    # normalised service: chat mean(9/5, 2/3), bulk 5/20
    chat, bulk = (9 / 5 + 2 / 3) / 2, 5 / 20
    assert s["per_tenant"]["chat"]["normalised_service"] == pytest.approx(chat)
    assert s["fairness"]["jain_tenants"] == pytest.approx(
        (chat + bulk) ** 2 / (2 * (chat**2 + bulk**2))
    )
    assert s["starvation"] == {
        "max_wait_s": 10.0,
        "max_wait_tier": "batch",
        "p99_wait_s": pytest.approx(dist([0.5, 0.0, 10.0])["p99"]),
    }
    assert s["per_tier"]["batch"]["max_wait_s"] == 10.0
    pre = dict(s["preemptions"])
    assert all(math.isnan(pre.pop(k)) for k in ("recomputed_tokens", "computed_tokens"))
    assert math.isnan(pre.pop("recompute_tax"))  # no engine counts given
    assert pre == {
        "total": 3,
        "policy": 1,
        "requests_preempted_frac": 2 / 3,
        "max_per_request": 2,
    }
    assert s["latency"]["e2e_s"]["mean"] == pytest.approx(28 / 3)
    counted = summarize(records(), SLOS, tokens={"recomputed_tokens": 30, "computed_tokens": 120})
    assert counted["preemptions"]["recompute_tax"] == pytest.approx(0.25)
    assert recompute_tax(0, 0) != recompute_tax(0, 0)  # NaN: nothing computed


def test_estimation_metrics_by_hand() -> None:
    e = estimation_metrics(records())
    # admission errors: |10-9|, |50-2|, |5-5| ; final: 0, 0, 0
    assert e["mae"] == pytest.approx(49 / 3)
    assert e["rmse"] == pytest.approx(math.sqrt((1 + 48**2) / 3))
    assert e["mae_final"] == 0.0
    # classes on prompt+output: a 109 short vs est 110 short; b 22 short vs 70 short;
    # c 1005 long vs 1005 long -> no misclassification
    assert e["misclass_rate"] == 0.0
    assert e["reclassified_frac"] == pytest.approx(1 / 3)
    df = records()
    df.loc[0, "est_output_tokens"] = 500.0  # 600 total: long, truth short
    assert estimation_metrics(df)["misclass_rate"] == pytest.approx(1 / 3)


def test_unknown_slo_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no SLO for tenant 'bulk'"):
        summarize(records(), {"premium": (1.0, 2.0)})


def test_comparison_table_ratios_and_headroom() -> None:
    base = summarize(records(), SLOS)

    def with_e2e(v: float) -> dict:
        s = {
            **base,
            "latency": {**base["latency"], "e2e_s": {**base["latency"]["e2e_s"], "mean": v}},
        }
        return s

    t = comparison_table({"fifo": with_e2e(10.0), "drift": with_e2e(7.0), "oracle": with_e2e(6.0)})
    assert t.loc["drift", "vs_fifo"] == pytest.approx(0.7)
    assert t.loc["drift", "vs_oracle"] == pytest.approx(7 / 6)
    assert t.loc["drift", "headroom_capture"] == pytest.approx(0.75)
    assert t.loc["oracle", "headroom_capture"] == pytest.approx(1.0)
