"""The adapter's incremental key paths and the stock-scheduler baselines (real vLLM on CPU).

* ``_requeue`` keeps vLLM's waiting heap a heap after single priority changes (no heapify);
* static keys arriving a few per step are sifted into place (not re-heapified) and the queue is
  still served in key order;
* a dynamic, non-incremental policy (``weighted_fair``) takes its admissions from
  ``Policy.ranked``: the live admission order equals the simulator's on the same trace;
* ``scheduler_impl=vllm_fcfs | vllm_priority`` serves with vLLM's stock scheduler (no adapter).
"""

from __future__ import annotations

import heapq
import os

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.policies.base import Policy  # noqa: E402


class _Item:
    """Orders like vLLM's Request: by a tuple ``priority`` (the heap calls ``__lt__``)."""

    def __init__(self, priority: tuple) -> None:
        self.priority = priority

    def __lt__(self, other: _Item) -> bool:
        return self.priority < other.priority


def _is_heap(h: list) -> bool:
    return all(not h[i] < h[(i - 1) // 2] for i in range(1, len(h)))


@pytest.mark.parametrize("seed", range(5))
def test_requeue_restores_the_heap_after_priority_changes(seed: int) -> None:
    from scheduler.live.adapter import _requeue

    rng = np.random.default_rng(seed)
    items = [_Item((float(rng.integers(0, 50)), 0.0, i)) for i in range(200)]
    heap = list(items)
    heapq.heapify(heap)
    other: list = []  # the second queue (kv_holding_waiting) is searched too
    for _ in range(300):
        it = items[int(rng.integers(0, len(items)))]
        old = it.priority
        it.priority = (float(rng.integers(-20, 70)), 0.0, old[2])
        _requeue((other, heap), it, lower=it.priority < old)
        assert _is_heap(heap)
    out = [heapq.heappop(heap).priority for _ in range(len(heap))]
    assert out == sorted(it.priority for it in items)


# ----------------------------------------------------------------------------- live engines
def frame(n: int, arrivals, outputs, tenants=None, tiers=None, prompt: int = 16) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": list(tenants) if tenants is not None else ["t0"] * n,
            "tier": list(tiers) if tiers is not None else ["standard"] * n,
            "category": "chat",
            "source": "test",
            "model": "m",
            "arrival_s": list(arrivals),
            "prompt_tokens": [prompt] * n,
            "output_tokens": list(outputs),
        }
    )


class KeyTable(Policy):
    """Static keys from a table (request_id -> key)."""

    name = "key_table"

    def __init__(self, keys: dict[str, float]) -> None:
        self.keys = keys

    def key(self, request, now: float) -> float:
        return self.keys[request.request_id]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("driftsched-cache"))


@pytest.fixture(scope="module")
def seq1(tiny_cache):
    from scheduler.live.engine import VllmEngine

    with VllmEngine(
        cache_dir=tiny_cache, max_num_seqs=1, kv_cache_gib=0.25, max_model_len=1024, progress=False
    ) as eng:
        yield eng


def test_static_keys_arriving_over_time_are_sifted_into_key_order(seq1) -> None:
    # one long request holds the only slot while 24 others arrive a few per step: each
    # arrival is keyed and sifted into vLLM's heap, which must then pop them in key order
    n = 25
    arrivals = [0.0] + [0.05 + 0.004 * i for i in range(n - 1)]
    outputs = [120] + [2] * (n - 1)
    rng = np.random.default_rng(3)
    keys = {f"r{i}": float(k) for i, k in enumerate(rng.permutation(n))}
    keys["r0"] = -1.0
    sched = seq1.scheduler()
    calls = {"heapify": 0}
    real = heapq.heapify

    def counting(h):
        calls["heapify"] += 1
        return real(h)

    import scheduler.live.adapter as adapter

    adapter.heapq.heapify = counting
    try:
        res = seq1.run(frame(n, arrivals, outputs), KeyTable(keys))
    finally:
        adapter.heapq.heapify = real
    rec = res.records
    assert (rec["status"] == "finished").all()
    late = rec[rec["request_id"] != "r0"].sort_values("admitted_s")
    assert late["request_id"].tolist() == sorted(late["request_id"], key=keys.__getitem__)
    assert calls["heapify"] == 0  # arrivals were sifted, never a full re-heapify
    assert res.meta["policy_faults"] == 0 and sched.drift.mirrors == {}


def test_weighted_fair_live_admission_order_matches_the_simulator(seq1) -> None:
    # VTC with one slot and every request at t=0: the admission order depends only on token
    # counts, so the live adapter (Policy.ranked head) and the simulator must agree exactly
    from scheduler.policies.weighted_fair import WeightedFairPolicy
    from scheduler.sim.engine import SimEngine

    n = 18
    rng = np.random.default_rng(0)
    tenants = ["a"] * 9 + ["b"] * 6 + ["c"] * 3
    df = frame(n, [0.0] * n, rng.integers(2, 12, n), tenants=tenants, prompt=24)
    weights = {"a": 1.0, "b": 2.0, "c": 1.0}
    live = seq1.run(df, WeightedFairPolicy(tenant_weights=weights)).records
    served = seq1.served_frame(df)
    sim = SimEngine(**seq1.sim_limits()).run(served, WeightedFairPolicy(tenant_weights=weights))
    live_order = live.sort_values("admitted_s")["request_id"].tolist()
    sim_order = sim.records.sort_values("admitted_s", kind="stable")["request_id"].tolist()
    assert (live["status"] == "finished").all()
    assert live_order == sim_order


@pytest.mark.parametrize("impl", ["vllm_fcfs", "vllm_priority"])
def test_stock_scheduler_serves_without_the_adapter(tiny_cache, impl: str) -> None:
    from scheduler.live.adapter import DriftScheduler
    from scheduler.live.engine import VllmEngine
    from scheduler.policies.fifo import FIFOPolicy

    n = 9
    tiers = ["batch", "standard", "premium"] * 3
    df = frame(n, [0.0] * n, [3] * n, tiers=tiers)
    eng = VllmEngine(
        cache_dir=tiny_cache,
        scheduler_impl=impl,
        max_num_seqs=1,
        kv_cache_gib=0.25,
        max_model_len=1024,
        progress=False,
    )
    with eng:
        assert not isinstance(eng.scheduler(), DriftScheduler)
        res = eng.run(df, FIFOPolicy())
    rec = res.records
    assert len(rec) == n and (rec["status"] == "finished").all()
    assert (rec["output_tokens"] == 3).all()
    assert rec["admitted_s"].isna().all()  # not observed without the adapter
    assert res.meta["scheduler_impl"] == impl and res.meta["policy"] == impl
    assert res.steps.empty
    order = rec.sort_values("finish_s")["request_id"].tolist()
    if impl == "vllm_fcfs":
        assert order == [f"r{i}" for i in range(n)]
    else:  # tier rank; the first request may start before the others are queued
        rank = {"premium": 0, "standard": 1, "batch": 2}
        rest = [rec.set_index("request_id").loc[r, "tier"] for r in order[1:]]
        assert [rank[t] for t in rest] == sorted(rank[t] for t in rest)


def test_unknown_scheduler_impl_is_rejected_before_start() -> None:
    from scheduler.live.engine import VllmEngine

    with pytest.raises(ValueError, match="scheduler_impl"):
        VllmEngine(scheduler_impl="vllm_sjf")
