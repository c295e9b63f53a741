"""One run on an open :class:`~scheduler.live.engine.VllmEngine` (what ``VllmEngine.run`` does).

1. the workload's requests as this engine serves them (tokenised, lengths clamped:
   ``replay.prepare_requests``);
2. the policy handed to the scheduler: in process as an object (after ``Policy.prepare`` on
   all requests, indexed as the scheduler will index them), otherwise as a Hydra spec sent with
   every request; vLLM's stock schedulers get none (``vllm_priority``: the tier's rank);
3. the open-loop replay (``replay.replay_inprocess`` / ``replay_async``) with the planned
   client faults, under a progress line; a replay that fails carries the records so far;
4. the result read back from the scheduler's sink (:mod:`scheduler.live.run_records`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from scheduler.engine import EngineResult, requests_from_frame
from scheduler.live.metadata import TIER_PRIORITY  # vllm_priority: lower is served sooner
from scheduler.live.replay import (
    Prepared,
    attach_partial,
    prepare_requests,
    replay_async,
    replay_inprocess,
    request_metadata,
)
from scheduler.live.run_records import partial_result, run_result
from scheduler.policies.base import Policy

if TYPE_CHECKING:
    from scheduler.live.engine import VllmEngine


class _WithPriority:
    """The engine client with vLLM's ``priority`` argument added per request (stock
    ``vllm_priority`` runs): ``LLMEngine.add_request`` and ``AsyncLLM.generate``."""

    def __init__(self, inner: Any, priority: Mapping[str, int]) -> None:
        self._inner = inner
        self._priority = priority

    def add_request(self, request_id: str, prompt: Any, params: Any, **kw: Any) -> Any:
        return self._inner.add_request(
            request_id, prompt, params, priority=self._priority[request_id], **kw
        )

    def generate(self, prompt: Any, params: Any, request_id: str, **kw: Any) -> Any:
        return self._inner.generate(
            prompt, params, request_id=request_id, priority=self._priority[request_id], **kw
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def serve_run(
    eng: VllmEngine,
    df: pd.DataFrame,
    policy: Policy | Mapping[str, Any],
    spec: str | None,
    abort_after_tokens: Mapping[str, int] | None,
    policy_name: str | None,
    seed: int | None,
    faults: Any = None,
    progress: str | None = None,
) -> EngineResult:
    """Steps 1-4 of the module docstring; ``spec``: the policy's JSON Hydra spec when it
    travels with the requests (multiprocess, or a policy given as a spec), else None."""
    from scheduler.faults import plan_client_faults

    c = eng.cfg
    prepared, clamp = prepare_requests(
        requests_from_frame(df),
        max_model_len=eng.max_model_len,
        vocab_size=eng.vocab_size,
        tokenizer=eng.tokenizer,
        length_mode=c.length_mode,
        prompt_source=c.prompt_source,
        natural_max_tokens=c.natural_max_tokens,
        seed=c.seed,
    )
    run_id = uuid.uuid4().hex[:12]
    sink = eng.sink_root() / run_id
    sink.mkdir(parents=True, exist_ok=True)
    base = _hand_policy(eng, policy, spec, prepared, run_id)
    name = policy_name or _policy_label(eng, policy, spec)
    t0 = time.monotonic() + 0.05  # first arrivals are not late by our own set-up
    metas = _request_metas(eng, prepared, base, run_id, t0, sink, spec, faults)
    actions = plan_client_faults(
        getattr(faults, "client", None),
        [p.req.request_id for p in prepared],
        [p.max_tokens for p in prepared],
    )
    wall = _replay(
        eng,
        prepared,
        metas,
        t0=t0,
        actions=actions,
        abort_after_tokens=abort_after_tokens,
        label=progress or name,
        on_failure=lambda exc: _partial(eng, prepared, sink, name, seed, exc),
    )
    if c.process_mode == "inprocess" and not eng.stock:
        eng.scheduler().drift.flush()  # the run's last lines (idle flush is off in-process)
    result = run_result(eng, prepared, sink, clamp, wall, run_id, name, seed)
    if not c.keep_sink and c.sink_dir is None:
        shutil.rmtree(sink, ignore_errors=True)
    return result


def _hand_policy(
    eng: VllmEngine,
    policy: Policy | Mapping[str, Any],
    spec: str | None,
    prepared: list[Prepared],
    run_id: str,
) -> int | None:
    """Give the scheduler this run's policy; returns the first of the request indices reserved
    for the run (in process; None elsewhere).

    In process, the scheduler's request indices for this run are reserved up front and sent
    with the rows (base + row), so ``Policy.prepare`` keys its features as the engine will;
    elsewhere the scheduler numbers requests itself, in arrival order."""
    if eng.stock:
        return None  # vLLM orders the queue itself: the policy is not used
    base = None
    if eng.cfg.process_mode == "inprocess":
        base = eng.scheduler().drift.reserve_indices(len(prepared))
    if spec is None:  # in-process with a policy object: hand it to the scheduler directly
        assert isinstance(policy, Policy) and base is not None
        if eng.cfg.prepare_policy:
            policy.prepare(
                [dataclasses.replace(p.req, index=base + i) for i, p in enumerate(prepared)]
            )
        eng.scheduler().drift.inject_policy(run_id, policy)
    return base


def _request_metas(
    eng: VllmEngine,
    prepared: list[Prepared],
    base: int | None,
    run_id: str,
    t0: float,
    sink: Path,
    spec: str | None,
    faults: Any,
) -> list[dict[str, Any]]:
    """What travels with each request to the scheduler (``replay.request_metadata``): the run,
    its clock and sink, the row (its reserved index in process), the spec and engine faults."""
    engine_faults = dataclasses.asdict(faults.engine) if faults and faults.engine else None
    return [
        request_metadata(
            p,
            index=None if base is None else base + i,
            run_id=run_id,
            t0=t0,
            sink=str(sink),
            policy_spec=spec,
            send_prompt=eng.cfg.send_prompt_text,
            engine_faults=engine_faults,
        )
        for i, p in enumerate(prepared)
    ]


def _policy_label(eng: VllmEngine, policy: Policy | Mapping[str, Any], spec: str | None) -> str:
    """The run's policy name in records and meta when the caller gave none."""
    if eng.stock:
        return eng.cfg.scheduler_impl
    if isinstance(policy, Policy):
        return policy.name
    assert spec is not None
    return str(json.loads(spec)["_target_"]).rsplit(".", 1)[-1]


def _replay(
    eng: VllmEngine,
    prepared: list[Prepared],
    metas: list[dict[str, Any]],
    *,
    t0: float,
    actions: Any,
    abort_after_tokens: Mapping[str, int] | None,
    label: str,
    on_failure: Callable[[BaseException], EngineResult],
) -> float:
    """Replay the prepared requests open-loop from ``t0``; returns the wall time (s). An
    exception (engine death, Ctrl-C) leaves with ``on_failure(exc)``'s partial result."""
    c = eng.cfg
    llm = eng.llm
    if c.scheduler_impl == "vllm_priority":
        llm = _WithPriority(llm, {p.req.request_id: TIER_PRIORITY[p.req.tier] for p in prepared})
    wall = time.monotonic()
    bar = eng.progress_bar(len(prepared), label)
    try:
        replay_kw = dict(
            t0=t0,
            seed=c.seed,
            greedy=c.length_mode == "trace",
            abort_after_tokens=abort_after_tokens,
            timeout_s=c.run_timeout_s,
            progress=bar,
            actions=actions,
        )
        if c.process_mode == "inprocess":
            replay_inprocess(llm, prepared, metas, **replay_kw)
        else:
            eng.call(replay_async(llm, prepared, metas, **replay_kw))
    except BaseException as e:  # engine death, Ctrl-C: keep what was served so far
        attach_partial(e, lambda exc=e: on_failure(exc))
        raise
    finally:
        if bar is not None:
            bar.close()
    return time.monotonic() - wall


def _partial(
    eng: VllmEngine,
    prepared: list[Prepared],
    sink: Path,
    name: str,
    seed: int | None,
    exc: BaseException,
) -> EngineResult:
    """The partial result of a failed replay (``run_records.partial_result``), after flushing
    the step lines still buffered in this process."""
    if eng.cfg.process_mode == "inprocess" and eng.is_open:
        with contextlib.suppress(Exception):
            eng.scheduler().drift.flush()
    return partial_result(prepared, sink, name, seed, exc)
