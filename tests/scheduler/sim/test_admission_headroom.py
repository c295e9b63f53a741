"""The admission gate (``Policy.admission_headroom``): the simulator keeps a share of the running
requests' expected remaining tokens free at admission. Off by default (golden cases unchanged);
on, it must stay exact under decode fast-forward, keep every step invariant, cut memory
preemptions, and be refused by an engine that does not implement it."""

from __future__ import annotations

import pandas as pd
import pytest

from report.job_spec import JobSpec
from report.jobs import build_policy, compose, prepare
from scheduler.policies.base import check_admission_headroom
from scheduler.policies.driftsched import DriftSchedPolicy
from scheduler.sim.engine import SimEngine
from scheduler.sim.synthetic import synthetic_frame
from tests.scheduler.sim.invariants import StepInvariants

# KV pressure: long outputs into a small cache, so admitting freely forces memory preemptions
WORKLOAD = {"rate_rps": 30.0, "prompt_median": 120.0, "output_median": 300.0, "max_output": 900}
ENGINE = {"num_gpu_blocks": 200, "max_num_batched_tokens": 512, "max_num_seqs": 48}


def gated(headroom: float | None) -> DriftSchedPolicy:
    p = DriftSchedPolicy()  # the paper's keyword estimate: sets est_remaining, no artifacts
    p.admission_headroom = headroom
    return p


@pytest.mark.parametrize("seed", [0, 1])
def test_gate_is_exact_under_fast_forward_and_keeps_the_invariants(seed: int) -> None:
    df = synthetic_frame(250, seed=seed, **WORKLOAD)
    fast = SimEngine(fast_forward=True, **ENGINE).run(df, gated(0.2))
    eng = SimEngine(fast_forward=False, **ENGINE)
    eng.observer = StepInvariants(eng)
    ref = eng.run(df, gated(0.2))
    pd.testing.assert_frame_equal(fast.records, ref.records)
    pd.testing.assert_frame_equal(fast.steps, ref.steps)
    assert fast.meta["fast_forward_steps"] > 0  # the windows did run, bounded by the reserve
    assert (ref.records["status"] == "finished").all()


def test_gate_cuts_memory_preemptions_and_recompute() -> None:
    df = synthetic_frame(250, seed=3, **WORKLOAD)
    runs = [SimEngine(**ENGINE).run(df, gated(h)).meta for h in (None, 0.2, 1.0)]
    pre = [m["preemptions"] for m in runs]
    waste = [m["recomputed_tokens"] for m in runs]
    assert pre[0] > 100  # the workload does preempt without the gate
    assert pre[0] > pre[1] > pre[2] and waste[0] > waste[1] > waste[2]  # more headroom, less
    assert waste[2] < waste[0] / 2


def test_zero_headroom_is_vllms_rule() -> None:
    df = synthetic_frame(200, seed=4, **WORKLOAD)
    a = SimEngine(**ENGINE).run(df, gated(None))
    b = SimEngine(**ENGINE).run(df, gated(0.0))
    pd.testing.assert_frame_equal(a.records, b.records)


def test_config_appends_the_knob_and_checks_it() -> None:
    pol = build_policy(compose(["+policy=driftsched", "+policy.admission_headroom=0.1"]).policy)
    assert pol.admission_headroom == 0.1
    assert build_policy(compose(["+policy=driftsched"]).policy).admission_headroom is None
    for bad in (-0.1, "much", True, float("nan")):
        with pytest.raises(ValueError, match="admission_headroom"):
            check_admission_headroom(bad)


class NoGateEngine(SimEngine):
    """An engine without the admission gate (e.g. a third-party engine)."""

    supports_admission_headroom = False


def test_an_engine_without_the_gate_refuses_it_before_running() -> None:
    target = f"{NoGateEngine.__module__}.{NoGateEngine.__qualname__}"
    cfg = compose(["+policy=driftsched", "+policy.admission_headroom=0.1", "logger=none"])
    cfg.engine._target_ = target
    with pytest.raises(ValueError, match="does not implement the admission gate"):
        prepare(JobSpec.from_config(cfg, {"driftsched": cfg.policy}), workload=lambda: None)
