"""Open-loop trace replay against a vLLM engine, and the record table it produces.

Each workload row becomes one vLLM request submitted at ``t0 + arrival_s`` (open loop: the
client never waits for the engine before submitting). Two drivers share the bookkeeping:

* :func:`replay_inprocess`: ``LLMEngine`` with the engine core in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); the loop adds due requests, then steps the engine;
* :func:`replay_async`: ``AsyncLLM`` with the engine core in its own process; one task per
  request, started at its arrival time, consuming its token stream (``RequestOutputKind.DELTA``).

The client records arrival, submission, every token's arrival time and the finish; the engine
side (admission, preemptions, estimates) comes from the scheduler's sink files. Every submitted
request ends as ``finished`` or ``aborted``; a request the sink does not report within a
timeout is an error naming it (nothing is silently lost).

Client faults (``actions``, planned by :func:`scheduler.faults.plan_client_faults`): a request
may be aborted through the engine's abort API after a number of tokens or a time after its
submission (so also while it still waits), or its consumer may disconnect mid-stream (the
``AsyncLLM`` stream is closed or its task cancelled without an abort: vLLM aborts it itself;
in process the client aborts it, as a server does for a dropped connection). Either way the
request is recorded as ``aborted`` with the tokens it received.

When the replay itself fails (the engine dies, Ctrl-C), :func:`partial_requests` turns what the
client and the scheduler's sink saw so far into records: requests that ended keep their status,
requests cut off in flight are ``aborted`` with their partial token counts (``cut_off``), and
the caller attaches them to the exception (:func:`attach_partial`) for ``evaluate.py`` to write
marked incomplete.

Lengths (:func:`prepare_requests`): in ``trace`` mode ``max_tokens`` is the true output length
with ``ignore_eos=True`` (the scheduler only ever sees predictions); in ``natural`` mode the
model stops by itself (EOS) or at the row's ``max_tokens`` cap. Prompts are the row's text
tokenised with the model's tokenizer when the workload has text (``prompt_source`` auto/text),
else synthetic token ids of exactly ``prompt_tokens`` (seeded). Lengths that do not fit the
model's context are clamped explicitly and counted (:class:`ClampReport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scheduler.faults import ClientAction
from scheduler.live.driver import META_KEY, SINK_REQUESTS, SINK_STEPS
from scheduler.request import SchedRequest, Status

logger = logging.getLogger("driftsched.live")

LENGTH_MODES = ("trace", "natural")
PROMPT_SOURCES = ("auto", "text", "synthetic")


@dataclass
class ClampReport:
    """Requests whose lengths were changed to fit the model (counts, for the run summary)."""

    max_model_len: int
    prompts_clamped: int = 0  # prompt shortened to fit
    outputs_clamped: int = 0  # target output length shortened to fit
    prompt_tokens_removed: int = 0
    output_tokens_removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Prepared:
    """One request ready to submit."""

    req: SchedRequest  # the engine's record-keeping copy (prompt_tokens/max_tokens as served)
    prompt_ids: list[int]
    max_tokens: int
    ignore_eos: bool
    # --- client observations (seconds since t0) ---
    submit_s: float = math.nan
    token_times: list[float] = field(default_factory=list)
    finished: bool = False
    aborted: bool = False
    finish_reason: str | None = None


def clamp_lengths(prompt: int, output: int, max_model_len: int) -> tuple[int, int]:
    """Fit (prompt, output) into ``max_model_len`` tokens, preferring to keep both.

    The output keeps up to what the prompt leaves free, and never less than half the context
    when it needs that; the prompt then gets the rest. E.g. L=2048: (100, 3000) -> (100, 1948),
    (3000, 50) -> (1998, 50), (1500, 1500) -> (1024, 1024).
    """
    out = min(output, max(max_model_len - prompt, max_model_len // 2))
    out = max(out, 1)
    p = max(min(prompt, max_model_len - out), 1)
    return p, out


def _synthetic_ids(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    # Ids 0-2 are the tiny tokenizer's specials (<unk>, <s>, </s>): avoid them.
    return rng.integers(3, max(vocab, 4), size=n).tolist()


def prepare_requests(
    requests: list[SchedRequest],
    *,
    max_model_len: int,
    vocab_size: int,
    tokenizer: Any | None,
    length_mode: str,
    prompt_source: str,
    natural_max_tokens: int,
    seed: int,
) -> tuple[list[Prepared], ClampReport]:
    """Token ids, lengths and sampling limits for every request (see the module docstring)."""
    if length_mode not in LENGTH_MODES:
        raise ValueError(f"length_mode {length_mode!r}: expected one of {LENGTH_MODES}")
    if prompt_source not in PROMPT_SOURCES:
        raise ValueError(f"prompt_source {prompt_source!r}: expected one of {PROMPT_SOURCES}")
    rng = np.random.default_rng(seed)
    report = ClampReport(max_model_len=max_model_len)
    out = []
    for r in requests:
        use_text = prompt_source != "synthetic" and r.prompt is not None and tokenizer is not None
        if prompt_source == "text" and not use_text:
            raise ValueError(
                f"request {r.request_id!r}: prompt_source='text' but the workload "
                "row has no prompt text (or no tokenizer is loaded)"
            )
        ids = (
            list(tokenizer.encode(r.prompt, add_special_tokens=False))
            if use_text
            else _synthetic_ids(rng, r.prompt_tokens, vocab_size)
        )
        if not ids:
            ids = _synthetic_ids(rng, max(r.prompt_tokens, 1), vocab_size)
        if length_mode == "trace":
            target = r.true_output_tokens
        else:
            target = min(r.max_tokens, natural_max_tokens)
        p, o = clamp_lengths(len(ids), target, max_model_len)
        if p < len(ids):
            report.prompts_clamped += 1
            report.prompt_tokens_removed += len(ids) - p
            ids = ids[:p]
        if o < target:
            report.outputs_clamped += 1
            report.output_tokens_removed += target - o
        served = SchedRequest(
            request_id=r.request_id,
            index=r.index,
            tenant=r.tenant,
            tier=r.tier,
            category=r.category,
            source=r.source,
            model=r.model,
            prompt=r.prompt,
            prompt_tokens=len(ids),
            max_tokens=o,
            arrival_s=r.arrival_s,
            true_output_tokens=min(r.true_output_tokens, o) if length_mode == "trace" else o,
        )
        out.append(
            Prepared(req=served, prompt_ids=ids, max_tokens=o, ignore_eos=length_mode == "trace")
        )
    return out, report


def request_metadata(
    p: Prepared,
    *,
    index: int | None = None,
    run_id: str,
    t0: float,
    sink: str,
    policy_spec: str | None,
    send_prompt: bool,
    engine_faults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What travels with the request to the engine's scheduler (JSON-able): the trusted
    nested form (:mod:`scheduler.live.metadata`). ``index``: a scheduler index reserved for
    this row (``PolicyDriver.reserve_indices``, in process); else the scheduler numbers it."""
    r = p.req
    row = {
        "request_id": r.request_id,
        "index": r.index if index is None else index,
        "tenant": r.tenant,
        "tier": r.tier,
        "category": r.category,
        "source": r.source,
        "model": r.model,
        "arrival_s": r.arrival_s,
        "true_output_tokens": r.true_output_tokens,
    }
    if send_prompt and r.prompt is not None:
        row["prompt"] = r.prompt
    meta = {"run": run_id, "t0": t0, "sink": sink, "row": row}
    if policy_spec is not None:
        meta["policy"] = policy_spec
    if engine_faults:
        meta["faults"] = dict(engine_faults)  # scheduler.faults.EngineFaults fields
    return {META_KEY: meta}


def sampling_params(p: Prepared, meta: Mapping[str, Any], *, seed: int, greedy: bool) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=p.max_tokens,
        ignore_eos=p.ignore_eos,
        detokenize=False,
        temperature=0.0 if greedy else 1.0,
        seed=None if greedy else seed + p.req.index,
        output_kind=RequestOutputKind.DELTA,
        extra_args=dict(meta),
    )


# ------------------------------------------------------------------------------------ drivers
def _record_output(p: Prepared, out: Any, now: float) -> None:
    n_new = len(out.outputs[0].token_ids) if out.outputs else 0
    p.token_times.extend([now] * n_new)
    if out.finished:
        p.finished = True
        p.finish_reason = out.outputs[0].finish_reason if out.outputs else None


def replay_inprocess(
    engine: Any,
    prepared: list[Prepared],
    metas: list[dict[str, Any]],
    *,
    t0: float,
    seed: int,
    greedy: bool,
    abort_after_tokens: Mapping[str, int] | None = None,
    timeout_s: float | None = None,
    progress: Any | None = None,
    actions: Mapping[str, ClientAction] | None = None,
) -> None:
    """Drive an in-process ``LLMEngine``: add due requests, step, record token times.

    ``progress`` (a :class:`scheduler.progress.Progress`) counts finished requests; ``actions``
    are injected client faults (module docstring)."""
    by_id = {p.req.request_id: p for p in prepared}
    acts = _actions(abort_after_tokens, actions)
    timed: list[tuple[float, str]] = []  # (due time s since t0, request id), time-based actions
    i = 0
    n = len(prepared)
    while True:
        now = time.monotonic() - t0
        while i < n and prepared[i].req.arrival_s <= now:
            p = prepared[i]
            engine.add_request(
                p.req.request_id,
                {"prompt_token_ids": p.prompt_ids},
                sampling_params(p, metas[i], seed=seed, greedy=greedy),
            )
            p.submit_s = time.monotonic() - t0
            act = acts.get(p.req.request_id)
            if act is not None and act.after_s is not None:
                timed.append((p.submit_s + act.after_s, p.req.request_id))
            i += 1
        if timed:
            due = [rid for t, rid in timed if t <= now]
            if due:
                timed = [(t, rid) for t, rid in timed if t > now]
                _abort_inprocess(engine, [by_id[rid] for rid in due], acts)
        if not engine.has_unfinished_requests():
            if i >= n:
                break
            time.sleep(max(0.0, prepared[i].req.arrival_s - (time.monotonic() - t0)))
            continue
        if timeout_s is not None and now > timeout_s:
            _timeout_inprocess(engine, prepared, by_id, i)
            break
        outs = engine.step()
        t = time.monotonic() - t0
        to_abort = []
        for o in outs:
            p = by_id.get(o.request_id)
            if p is None or p.aborted:
                continue
            _record_output(p, o, t)
            if progress is not None and p.finished:
                progress.update(1)
            act = acts.get(p.req.request_id)
            if (
                act is not None
                and act.after_tokens is not None
                and not p.finished
                and len(p.token_times) >= act.after_tokens
            ):
                to_abort.append(p)
        if to_abort:
            _abort_inprocess(engine, to_abort, acts)


def _timeout_inprocess(
    engine: Any, prepared: list[Prepared], by_id: Mapping[str, Prepared], n_submitted: int
) -> None:
    """The run's timeout: abort every live submitted request; the rest are never submitted."""
    live = [p.req.request_id for p in prepared[:n_submitted] if not (p.finished or p.aborted)]
    engine.abort_request(live)
    for rid in live:
        by_id[rid].aborted, by_id[rid].finish_reason = True, "timeout"
    for p in prepared[n_submitted:]:  # never submitted: recorded as aborted, never admitted
        p.aborted, p.finish_reason = True, "timeout_unsubmitted"


def _actions(
    abort_after_tokens: Mapping[str, int] | None, actions: Mapping[str, ClientAction] | None
) -> dict[str, ClientAction]:
    out = {
        rid: ClientAction("abort", after_tokens=int(k))
        for rid, k in (abort_after_tokens or {}).items()
    }
    out.update(actions or {})
    return out


def _reason(act: ClientAction | None) -> str:
    return "client_disconnect" if act is not None and act.kind == "disconnect" else "client_abort"


def _abort_inprocess(engine: Any, ps: list[Prepared], acts: Mapping[str, ClientAction]) -> None:
    """Abort through ``LLMEngine.abort_request`` (a disconnect is noticed and aborted the same
    way by an in-process server); requests that already ended are left alone."""
    live = [p for p in ps if not (p.finished or p.aborted)]
    if not live:
        return
    engine.abort_request([p.req.request_id for p in live])
    for p in live:
        p.aborted, p.finish_reason = True, _reason(acts.get(p.req.request_id))


async def replay_async(
    llm: Any,
    prepared: list[Prepared],
    metas: list[dict[str, Any]],
    *,
    t0: float,
    seed: int,
    greedy: bool,
    abort_after_tokens: Mapping[str, int] | None = None,
    timeout_s: float | None = None,
    progress: Any | None = None,
    actions: Mapping[str, ClientAction] | None = None,
) -> None:
    """Drive an ``AsyncLLM``: one task per request, started at its arrival time.

    Client faults (``actions``): an abort calls ``AsyncLLM.abort``; a disconnect closes the
    stream (token-triggered) or cancels the consumer task (time-triggered) without aborting,
    so vLLM's own disconnect path aborts the request."""
    acts = _actions(abort_after_tokens, actions)

    async def consume(p: Prepared, meta: dict[str, Any]) -> None:
        rid = p.req.request_id
        act = acts.get(rid)
        lim = act.after_tokens if act is not None else None
        p.submit_s = time.monotonic() - t0
        gen = llm.generate(
            {"prompt_token_ids": p.prompt_ids},
            sampling_params(p, meta, seed=seed, greedy=greedy),
            request_id=rid,
        )
        try:
            async for o in gen:
                if p.aborted:  # a time-triggered abort already ended it for the client
                    break
                _record_output(p, o, time.monotonic() - t0)
                if lim is not None and not p.finished and len(p.token_times) >= lim:
                    p.aborted, p.finish_reason = True, _reason(act)
                    if act.kind == "abort":
                        await llm.abort(rid)
                    break  # a disconnect: aclose() below makes vLLM abort it
        except asyncio.CancelledError:
            if p.finish_reason not in ("client_abort", "client_disconnect"):
                raise  # the run's timeout, or the run itself is being cancelled
        finally:
            await gen.aclose()
            if progress is not None and p.finished and not p.aborted:
                progress.update(1)

    async def fire(p: Prepared, task: asyncio.Task, act: ClientAction) -> None:
        await asyncio.sleep(act.after_s or 0.0)
        if p.finished or p.aborted or task.done():
            return
        p.aborted, p.finish_reason = True, _reason(act)
        if act.kind == "abort":
            await llm.abort(p.req.request_id)
        task.cancel()  # the consumer goes away (a disconnect: vLLM aborts on the cancel)

    tasks = []
    timers = []
    for p, meta in zip(prepared, metas):
        if timeout_s is not None and p.req.arrival_s > timeout_s:
            p.aborted, p.finish_reason = True, "timeout_unsubmitted"
            continue
        if any(t.done() and not t.cancelled() and t.exception() for t in tasks):
            break  # the engine failed: stop submitting (the failure is raised below)
        delay = t0 + p.req.arrival_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(consume(p, meta))
        tasks.append(task)
        act = acts.get(p.req.request_id)
        if act is not None and act.after_s is not None:
            timers.append(asyncio.create_task(fire(p, task, act)))
    try:
        await _finish_async(tasks, prepared, t0, timeout_s)
    finally:
        for tm in timers:
            tm.cancel()
        if timers:
            await asyncio.wait(timers)


async def _finish_async(
    tasks: list[asyncio.Task], prepared: list[Prepared], t0: float, timeout_s: float | None
) -> None:
    """Wait for the consumers (up to the run timeout); re-raise the first real failure (e.g.
    vLLM's ``EngineDeadError``). A consumer the client cancelled on purpose (a disconnect
    before its first step) is not a failure."""
    if not tasks:
        return
    remaining = None if timeout_s is None else max(0.0, t0 + timeout_s - time.monotonic())
    done, pending = await asyncio.wait(tasks, timeout=remaining)
    for task in pending:
        task.cancel()  # generate() aborts the request in the engine when cancelled
    if pending:
        for p in prepared:
            if not (p.finished or p.aborted):
                p.aborted, p.finish_reason = True, "timeout"
        await asyncio.wait(pending)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()


# ------------------------------------------------------------------------------------ results
def read_sink(sink: Path, request_ids: list[str], wait_s: float = 15.0) -> dict[str, dict]:
    """The scheduler's per-request lines for ``request_ids``, waiting for stragglers."""
    want = set(request_ids)
    deadline = time.monotonic() + wait_s
    while True:
        got: dict[str, dict] = {}
        path = sink / SINK_REQUESTS
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        if row["request_id"] in want:
                            got[row["request_id"]] = row
        if want <= got.keys() or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def read_steps(sink: Path) -> pd.DataFrame:
    path = sink / SINK_STEPS
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_json(path, lines=True)


def merge_requests(prepared: list[Prepared], sched: dict[str, dict]) -> list[SchedRequest]:
    """Client timings + scheduler fields -> final SchedRequest states for build_records."""
    missing = [
        p.req.request_id
        for p in prepared
        if p.req.request_id not in sched and not math.isnan(p.submit_s)
    ]
    if missing:
        raise RuntimeError(
            f"live replay: the engine's scheduler never reported "
            f"{len(missing)} request(s) as finished or aborted, e.g. "
            f"{missing[:5]}; the record table would lose them"
        )
    out = []
    for p in prepared:
        r = p.req
        if math.isnan(p.submit_s):  # never submitted (run timeout): aborted, never admitted
            r.status, r.finish_s = Status.ABORTED, math.nan
            out.append(r)
            continue
        s = sched[r.request_id]
        r.num_output_tokens = len(p.token_times)
        if p.finished and not p.aborted:
            r.status = Status.FINISHED
        else:
            r.status = Status.ABORTED
        r.first_token_s = p.token_times[0] if p.token_times else math.nan
        if p.token_times and p.finished:
            r.finish_s = p.token_times[-1]
        else:
            r.finish_s = float(s.get("finish_s", math.nan))
        r.admitted_s = float(s["admitted_s"])
        r.num_preemptions = int(s["num_preemptions"])
        r.n_policy_preemptions = int(s["n_policy_preemptions"])
        r.recomputed_tokens = int(s.get("recomputed_tokens", 0))
        r.est_output_tokens = float(s["est_output_tokens"])
        r.est_output_p90 = float(s["est_output_p90"])
        r.est_remaining = float(s["est_remaining"])
        r.est_class = str(s["est_class"])
        r.n_reclassified = int(s["n_reclassified"])
        r.sched_key = float(s["sched_key"])
        r.est_history = [(float(a), int(b), float(c)) for a, b, c in s["est_history"]]
        out.append(r)
    return out


# ------------------------------------------------------------------------------------ failures
def read_sink_partial(sink: Path) -> tuple[dict[str, dict], int]:
    """Every readable per-request line of a broken run (no waiting); torn lines are counted,
    not fatal (Ctrl-C may interrupt the scheduler mid-write)."""
    got: dict[str, dict] = {}
    torn = 0
    path = sink / SINK_REQUESTS
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    got[str(row["request_id"])] = row
                except (ValueError, KeyError, TypeError):
                    torn += 1
    return got, torn


def partial_requests(
    prepared: list[Prepared], sched: Mapping[str, dict]
) -> tuple[list[SchedRequest], dict[str, Any]]:
    """Final states of the requests a broken run submitted, and counts (module docstring).

    A request the scheduler reported keeps its fields and its client-side status; one it did
    not report (in flight when the run broke) is ``aborted`` with the tokens the client
    received (``cut_off``). Requests never submitted are not records."""
    counts: dict[str, Any] = dict.fromkeys(
        ("submitted", "finished", "aborted", "cut_off", "not_submitted"), 0
    )
    cut: list[str] = []
    out = []
    for p in prepared:
        if math.isnan(p.submit_s):
            counts["not_submitted"] += 1
            continue
        counts["submitted"] += 1
        r = p.req
        if r.request_id in sched:
            (r,) = merge_requests([p], {r.request_id: sched[r.request_id]})
            counts["finished" if r.status is Status.FINISHED else "aborted"] += 1
        else:
            r.status = Status.ABORTED
            r.num_output_tokens = len(p.token_times)
            r.first_token_s = p.token_times[0] if p.token_times else math.nan
            r.finish_s = math.nan
            counts["cut_off"] += 1
            cut.append(r.request_id)
        out.append(r)
    counts["cut_off_ids"] = cut
    return out, counts


def attach_partial(exc: BaseException, build: Callable[[], Any]) -> None:
    """Set ``exc.partial_result = build()`` for ``evaluate.py`` to write; never masks ``exc``
    (a failure to build is noted as ``exc.partial_error``)."""
    try:
        exc.partial_result = build()  # type: ignore[attr-defined]
    except Exception as e:  # the original failure matters more than its partial records
        logger.warning("driftsched: could not keep the partial records of a failed run: %r", e)
        with contextlib.suppress(Exception):
            exc.partial_error = f"{type(e).__name__}: {e}"  # type: ignore[attr-defined]


def client_fault_counts(prepared: list[Prepared]) -> dict[str, int]:
    """How the client ended requests on purpose (aborts, disconnects, timeouts), by reason."""
    out: dict[str, int] = {}
    for p in prepared:
        if p.aborted and p.finish_reason:
            out[p.finish_reason] = out.get(p.finish_reason, 0) + 1
    return out
