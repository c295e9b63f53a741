"""The simulator's per-step invariants, in one checker used by every test that observes steps.

``StepInvariants(engine)`` is an engine ``observer``: after each step it checks the live
:class:`SimState` and counts what it checked. One checker, so the randomised engine tests
(``test_sim_engine.py``) and the reliability stress campaign (``test_sim_stress.py``) enforce
the same promises:

* time never runs backwards;
* KV blocks: ``0 <= free <= total``, held blocks sum to the used ones, only running requests
  hold blocks, and a running request holds exactly ``ceil(computed tokens / block size)``
  (no leak, no over-allocation: admission reserves whole sequences, decode grows one block at
  a time);
* batch limits: at most ``max_num_seqs`` running, at most ``max_num_batched_tokens`` scheduled;
* request state: no request is both running and waiting; running ones are ``RUNNING``, have
  computed at most prompt + output tokens and are still short of their target (a finished
  request leaves the running set in the step it finishes); waiting ones are ``WAITING`` with
  nothing computed and nothing held (a preempted request gives back all its blocks).
"""

from __future__ import annotations

import math
from collections import Counter

from scheduler.request import Status
from scheduler.sim.engine import SimEngine, SimState


class StepInvariants:
    """Engine observer that asserts every per-step invariant (module docstring)."""

    def __init__(self, engine: SimEngine, counts: Counter[str] | None = None) -> None:
        self.engine = engine
        self.counts = counts if counts is not None else Counter()
        self.steps = 0
        self.last_now = -math.inf

    def __call__(self, s: SimState) -> None:
        at = f"step {s.step}"
        assert s.now >= self.last_now, f"{at}: time ran backwards ({self.last_now} -> {s.now})"
        self.last_now = s.now
        self._blocks(s, at)
        self._limits(s, at)
        self._requests(s, at)
        self.steps += 1
        self.counts["steps_observed"] += 1
        self.counts["invariant_checks"] += 6 + 4 * len(s.running) + 3 * len(s.waiting)
        self.counts["invariant_checks"] += len(s.held)

    def _blocks(self, s: SimState, at: str) -> None:
        used = s.num_blocks - s.free_blocks
        assert 0 <= s.free_blocks <= s.num_blocks, f"{at}: free blocks {s.free_blocks}"
        assert sum(s.held) == used, f"{at}: held {sum(s.held)} != used {used}"
        running = {r.index for r in s.running}
        for i, h in enumerate(s.held):
            assert h >= 0 and (h == 0 or i in running), f"{at}: request {i} holds {h} blocks"

    def _limits(self, s: SimState, at: str) -> None:
        assert len(s.running) <= self.engine.max_num_seqs, f"{at}: {len(s.running)} running"
        tokens = sum(c for _, c in s.scheduled)
        assert tokens <= self.engine.max_num_batched_tokens, f"{at}: {tokens} tokens scheduled"

    def _requests(self, s: SimState, at: str) -> None:
        running = [r.index for r in s.running]
        assert len(set(running)) == len(running), f"{at}: a request runs twice"
        assert not set(running) & set(s.waiting), f"{at}: running and waiting"
        for r in s.running:
            assert r.status is Status.RUNNING, f"{at}: {r}"
            need = -(-r.num_computed_tokens // s.block_size)
            assert s.held[r.index] == need, f"{at}: holds {s.held[r.index]} != {need}: {r}"
            assert r.num_computed_tokens <= r.prompt_tokens + r.num_output_tokens, f"{at}: {r}"
            assert r.num_output_tokens < s.targets[r.index], f"{at}: past its target: {r}"
        for idx, r in s.waiting.items():
            assert r.status is Status.WAITING and s.held[idx] == 0, f"{at}: {r}"
            assert r.num_computed_tokens == 0, f"{at}: waiting with computed tokens: {r}"
