"""DriftScheduler and DriftAsyncScheduler driven directly, the way vLLM's tests/v1/core do.

A real ``Scheduler`` subclass is built from a real ``VllmConfig`` (the tiny model's, through
``EngineArgs``) and a hand-made ``KVCacheConfig``; no model runs: each step's
``SchedulerOutput`` is answered with a synthetic ``ModelRunnerOutput`` (one sampled token for
every request whose prefill is complete). The async scheduler is stepped as vLLM's engine core
steps it with a batch queue: ``schedule()`` of step n+1 before ``update_from_output`` of step n
(the CPU platform turns async scheduling off, so no engine test runs it). Invariants as in the
engine tests: every request ends exactly once, keys drive admission order, voluntary
preemptions are applied, no state left behind. Also the issue-16 fixes: unique request
indices, a bad policy spec failing at creation, metadata counters, prompt text decoded.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.policies.base import Policy  # noqa: E402
from scheduler.request import SchedRequest  # noqa: E402

BLOCK = 32  # tokens per KV block (the CPU platform wants multiples of 32)
ME = "tests.scheduler.live.test_scheduler_level"


class SloKeyPolicy(Policy):
    """Static key = the request's own ``slo_ttft_s`` (sent as flat metadata): tighter first.
    Keeps per-index state to show that indices are unique and that nothing outlives a run."""

    name = "slo_key"

    def __init__(self) -> None:
        self.state: dict[int, str] = {}
        self.prompts: dict[str, str | None] = {}
        self.tiers: dict[str, str] = {}

    def on_arrival(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            assert r.index not in self.state, f"index {r.index} reused"
            self.state[r.index] = r.request_id
            self.prompts[r.request_id] = r.prompt
            self.tiers[r.request_id] = r.tier

    def key(self, request: SchedRequest, now: float) -> float:
        s = request.slo_ttft_s
        return s if math.isfinite(s) else 1e9

    def _drop(self, requests: Sequence[SchedRequest]) -> None:
        for r in requests:
            del self.state[r.index]

    def on_finish(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._drop(requests)

    def on_abort(self, requests: Sequence[SchedRequest], now: float) -> None:
        self._drop(requests)


class PreemptForTighterPolicy(SloKeyPolicy):
    """Dynamic: preempts a running request whose key is worse than the best waiting one's
    (at most once per request)."""

    name = "preempt_tighter"
    dynamic_keys = True

    def preempt(self, running, waiting, now):
        best = min(self.key(w, now) for w in waiting)
        return [r for r in running if self.key(r, now) > best and r.num_preemptions == 0]


# ----------------------------------------------------------------------------- building
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model

    return ensure_tiny_model(TinyModelSpec(), str(tmp_path_factory.mktemp("cache")))


def make_scheduler(
    cls: type,
    model_dir: Path,
    sink: Path | None,
    policy: str | dict | None = None,
    *,
    max_num_seqs: int = 4,
    num_blocks: int = 64,
    max_num_batched_tokens: int = 256,
    enable_prefix_caching: bool = False,
) -> object:
    import torch
    from vllm import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    spec = {"_target_": f"{ME}.{policy}"} if isinstance(policy, str) else policy
    cfg = {"policy": spec, "sink": str(sink) if sink else None}
    vcfg = EngineArgs(
        model=str(model_dir),
        tokenizer=str(model_dir),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=512,
        enable_chunked_prefill=True,
        enable_prefix_caching=enable_prefix_caching,
        scheduling_policy="priority",
        block_size=BLOCK,
        enforce_eager=True,
        additional_config={"driftsched": cfg},
    ).create_engine_config()
    kv = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"],
                FullAttentionSpec(
                    block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32
                ),
            )
        ],
    )
    vcfg.cache_config.num_gpu_blocks = num_blocks
    return cls(
        vllm_config=vcfg,
        kv_cache_config=kv,
        structured_output_manager=StructuredOutputManager(vcfg),
        block_size=BLOCK,
        log_stats=False,
    )


def request(rid: str, n_prompt: int, max_tokens: int, priority: int = 0, **flat) -> object:
    from vllm import SamplingParams
    from vllm.v1.request import Request

    sp = SamplingParams(
        max_tokens=max_tokens,
        ignore_eos=True,
        extra_args={f"driftsched_{k}": v for k, v in flat.items()} or None,
    )
    ids = [3 + (i * 7 + len(rid)) % 200 for i in range(n_prompt)]
    return Request(rid, ids, sp, None, arrival_time=0.0, priority=priority)


def model_output(sched: object, out: object) -> object:
    """One sampled token per scheduled request whose prompt is fully computed."""
    from vllm.v1.outputs import ModelRunnerOutput

    ids = list(out.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        req = sched.requests.get(rid)
        done = req is not None and req.num_computed_tokens >= req.num_prompt_tokens
        sampled.append([11] if done else [])
    return ModelRunnerOutput(
        req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled
    )


def drive(
    sched: object,
    arrivals: dict[int, list],
    *,
    async_: bool,
    aborts: dict[int, list[str]] | None = None,
    max_steps: int = 2000,
) -> dict:
    """Step until idle; ``arrivals``/``aborts``: step -> requests / ids. Returns per request:
    the first step it was scheduled, its finish events and the steps it was preempted."""
    from vllm.v1.request import RequestStatus

    first: dict[str, int] = {}
    ends: Counter = Counter()
    preempted: Counter = Counter()
    pending: list = []  # (SchedulerOutput, ModelRunnerOutput) not yet applied (async: one)
    last = max([*arrivals, *(aborts or {})], default=0)

    def apply(item) -> None:
        out, mro = item
        for eco in sched.update_from_output(out, mro).values():
            for o in eco.outputs:
                if o.finished:
                    ends[o.request_id] += 1

    for step in range(max_steps):
        for r in arrivals.get(step, []):
            sched.add_request(r)
        ids = (aborts or {}).get(step)
        if ids:
            sched.finish_requests(ids, RequestStatus.FINISHED_ABORTED)
            ends.update(ids)
        out = sched.schedule()
        for rid in out.num_scheduled_tokens:
            first.setdefault(rid, step)
        preempted.update(out.preempted_req_ids)
        pending.append((out, model_output(sched, out)))
        if not async_ or len(pending) > 1:  # async: update step n after scheduling n+1
            apply(pending.pop(0))
        if step >= last and not sched.has_unfinished_requests():
            while pending:
                apply(pending.pop(0))
            break
    else:
        raise AssertionError(f"not idle after {max_steps} steps")
    return {"first": first, "ends": ends, "preempted": preempted}


def assert_no_state(sched: object, policy: SloKeyPolicy) -> None:
    d = sched.drift
    assert d.mirrors == {} and d.waiting == {} and d.arrived == [] and d.ended == []
    assert sched._drift_req_of == {} and sched.requests == {}
    assert sum(sched.get_request_counts()) == 0
    assert policy.state == {}


def sink_lines(sink: Path) -> list[dict]:
    d = sink / "sched_requests.jsonl"
    return [json.loads(x) for x in d.read_text().splitlines() if x.strip()]


CLASSES = ["DriftScheduler", "DriftAsyncScheduler"]


def _cls(name: str) -> type:
    import scheduler.live.adapter as adapter

    return getattr(adapter, name)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", CLASSES)
def test_keys_drive_admission_and_every_request_ends_once(name, model_dir, tmp_path):
    sched = make_scheduler(_cls(name), model_dir, tmp_path, "SloKeyPolicy", max_num_seqs=1)
    slo = {"a": 9.0, "b": 2.0, "c": 5.0, "d": 1.0, "e": 7.0}
    reqs = [request(r, 40, 6, slo_ttft_s=s, request_id=r, tier="batch") for r, s in slo.items()]
    res = drive(sched, {0: reqs}, async_=name == "DriftAsyncScheduler")
    order = sorted(res["first"], key=res["first"].get)
    assert order == sorted(slo, key=slo.get)  # tightest SLO (lowest key) first
    assert dict(res["ends"]) == dict.fromkeys(slo, 1)
    policy = sched.drift.run.policy
    assert set(policy.tiers.values()) == {"batch"}
    lines = sink_lines(tmp_path)
    sched.drift.flush()
    lines = sink_lines(tmp_path)
    assert sorted(x["request_id"] for x in lines) == sorted(slo)
    assert all(x["status"] == "finished" and x["num_output_tokens"] == 6 for x in lines)
    assert all(x["prefix_caching"] is False for x in lines)
    assert_no_state(sched, policy)


@pytest.mark.parametrize("name", CLASSES)
def test_voluntary_preemption_is_applied(name, model_dir, tmp_path):
    sched = make_scheduler(
        _cls(name), model_dir, tmp_path, "PreemptForTighterPolicy", max_num_seqs=1
    )
    long_ = request("long", 40, 60, slo_ttft_s=50.0)
    tight = request("tight", 40, 5, slo_ttft_s=1.0)
    res = drive(sched, {0: [long_], 10: [tight]}, async_=name == "DriftAsyncScheduler")
    assert res["preempted"]["long"] == 1 and res["preempted"]["tight"] == 0
    assert dict(res["ends"]) == {"long": 1, "tight": 1}
    sched.drift.flush()
    by = {x["request_id"]: x for x in sink_lines(tmp_path)}
    assert by["long"]["n_policy_preemptions"] == 1 and by["long"]["num_output_tokens"] == 60
    assert by["tight"]["status"] == "finished"
    assert_no_state(sched, sched.drift.run.policy)


@pytest.mark.parametrize("name", CLASSES)
def test_aborts_and_kv_pressure_leave_no_state(name, model_dir, tmp_path):
    # 8 requests of 40 + 80 tokens (4 blocks each at the end) in a 12-block cache: vLLM
    # preempts under KV pressure; two are aborted mid-run (one waiting, one running).
    sched = make_scheduler(
        _cls(name), model_dir, tmp_path, "SloKeyPolicy", max_num_seqs=4, num_blocks=12
    )
    reqs = [request(f"r{i}", 40, 80, slo_ttft_s=float(i + 1)) for i in range(8)]
    res = drive(
        sched,
        {0: reqs[:4], 3: reqs[4:]},
        async_=name == "DriftAsyncScheduler",
        aborts={20: ["r7", "r1"]},
    )
    assert dict(res["ends"]) == {f"r{i}": 1 for i in range(8)}
    assert sum(res["preempted"].values()) >= 1  # the cache cannot hold all four running
    sched.drift.flush()
    by = {x["request_id"]: x for x in sink_lines(tmp_path)}
    assert {r for r, x in by.items() if x["status"] == "aborted"} == {"r1", "r7"}
    summary = json.loads((tmp_path / "sched_summary.json").read_text())
    assert summary["faults"] == 0 and summary["live_requests"] == 0
    assert summary["n_finished"] == 6 and summary["n_aborted"] == 2
    assert_no_state(sched, sched.drift.run.policy)


def test_indices_are_unique_without_metadata_and_counted(model_dir, tmp_path, caplog):
    """Requests without metadata, arriving while others are live, get distinct, increasing
    indices (the old ``len(mirrors)`` repeated); one warning, a counter; prompt text is
    decoded from the token ids; ``priority`` gives the tier."""
    from scheduler.live.adapter import DriftScheduler

    sched = make_scheduler(DriftScheduler, model_dir, tmp_path, "SloKeyPolicy", max_num_seqs=2)
    tok = sched.drift.decode
    assert tok is not None
    from vllm.tokenizers.registry import cached_tokenizer_from_config

    hf = cached_tokenizer_from_config(sched.vllm_config.model_config)
    text = "please summarise the following article about tea"
    ids = hf.encode(text, add_special_tokens=False)
    from vllm import SamplingParams
    from vllm.v1.request import Request

    def plain(rid: str, priority: int = 0) -> Request:
        return Request(
            rid, ids, SamplingParams(max_tokens=8, ignore_eos=True), None, priority=priority
        )

    with caplog.at_level(logging.WARNING, logger="driftsched.live"):
        drive(
            sched,
            {0: [plain("x0"), plain("x1")], 3: [plain("x2", -1)], 6: [plain("x3", 1), plain("x4")]},
            async_=False,
        )
    sched.drift.flush()
    lines = sink_lines(tmp_path)
    idx = [x["index"] for x in sorted(lines, key=lambda x: x["request_id"])]
    assert len(set(idx)) == 5 and idx == sorted(idx)
    tiers = {x["request_id"]: x["tier"] for x in lines}
    assert tiers == {
        "x0": "standard",
        "x1": "standard",
        "x2": "premium",
        "x3": "batch",
        "x4": "standard",
    }
    policy = sched.drift.run.policy
    assert set(policy.prompts.values()) == {text}  # the predictor sees the text
    summary = json.loads((tmp_path / "sched_summary.json").read_text())
    assert summary["n_without_metadata"] == 3  # x2/x3 carried a non-default priority
    assert summary["n_prompts_decoded"] == 5 and summary["decode_us_per_prompt"] > 0
    warns = [r for r in caplog.records if "carries no DriftSched metadata" in r.getMessage()]
    assert len(warns) == 1
    assert_no_state(sched, policy)


def test_bad_metadata_is_counted_not_fatal(model_dir, tmp_path, caplog):
    from scheduler.live.adapter import DriftScheduler

    sched = make_scheduler(DriftScheduler, model_dir, tmp_path, "SloKeyPolicy")
    with caplog.at_level(logging.ERROR, logger="driftsched.live"):
        res = drive(
            sched,
            {0: [request("a", 8, 3, tier="gold"), request("b", 8, 3, colour="red")]},
            async_=False,
        )
    assert dict(res["ends"]) == {"a": 1, "b": 1}
    assert sched.drift.n_bad_meta == 2 and sched.drift.n_without_meta == 0
    assert any("unknown tier" in r.getMessage() for r in caplog.records)


def test_bad_policy_spec_fails_when_the_scheduler_is_created(model_dir, tmp_path):
    from scheduler.live.adapter import DriftScheduler

    spec = {"_target_": "scheduler.policies.drift.DriftPolicy", "predictor_dir": "no/such/dir"}
    with pytest.raises(ValueError, match=r"cannot build the policy .*no/such/dir"):
        make_scheduler(DriftScheduler, model_dir, tmp_path, spec)
    with pytest.raises(ValueError, match="cannot build the policy"):
        make_scheduler(DriftScheduler, model_dir, tmp_path, {"_target_": "nope.Nothing"})


def test_prefix_caching_is_stated_in_every_record(model_dir, tmp_path):
    from scheduler.live.adapter import DriftScheduler

    sched = make_scheduler(
        DriftScheduler, model_dir, tmp_path, "SloKeyPolicy", enable_prefix_caching=True
    )
    drive(sched, {0: [request(f"p{i}", 8, 2) for i in range(3)]}, async_=False)
    sched.drift.flush()
    lines = sink_lines(tmp_path)
    assert len(lines) == 3 and all(x["prefix_caching"] is True for x in lines)
    assert json.loads((tmp_path / "sched_summary.json").read_text())["prefix_caching"] is True
