"""Replay a workload against a running OpenAI-compatible vLLM server, over HTTP with streaming.

The same open-loop replay as the engine paths (:func:`scheduler.live.replay.replay_async`:
one task per request at its arrival time, client aborts and disconnects) with
:class:`HttpLLM` in place of ``AsyncLLM``: each request is a streaming ``/v1/completions``
call with the prompt as token ids, ``max_tokens``/``ignore_eos`` as the trace says, the
request described by flat ``driftsched_*`` ``vllm_xargs`` (:mod:`scheduler.live.metadata`)
and, for vLLM's stock priority scheduler, ``priority`` = the tier's rank. Token arrival
times come from the stream (``continuous_usage_stats``: exact token counts per chunk); an
abort or a disconnect closes the connection, which vLLM turns into an abort.

The scheduler-side fields come from the server's sink (``scheduler.live.serve --sink``),
matched by ``driftsched_request_id``; their clock (the server run's ``t0``, in
``sched_summary.json``) is moved to the client's (both ``time.monotonic``, one machine:
loopback only). The result is the shared record table (:func:`scheduler.records.build_records`).

:class:`ServerProcess` starts ``python -m scheduler.live.serve`` on 127.0.0.1 and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scheduler.engine import requests_from_frame, workload_frame
from scheduler.live.metadata import TIER_PRIORITY, flat_xargs
from scheduler.live.replay import (
    Prepared,
    client_fault_counts,
    merge_requests,
    prepare_requests,
    read_sink,
    replay_async,
)
from scheduler.live.run_records import STOCK_SCHED_FIELDS
from scheduler.records import build_records

_CLIENT_REASONS = ("client_abort", "client_disconnect")


# ------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """``python -m scheduler.live.serve`` on 127.0.0.1 (a context manager).

    ``policy``: as ``--policy`` (``vllm_fcfs`` / ``vllm_priority``: stock vLLM); ``args``: the
    vLLM server arguments (``--model`` ...). In-process engine core is not possible for the
    server (AsyncLLM); ``--enforce-eager`` keeps a CPU start at ~40 s instead of ~2 min."""

    policy: str
    args: Sequence[str]
    sink: Path | None = None
    predictor_dir: str = "artifacts"
    log: Path | None = None
    start_timeout_s: float = 240.0
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "scheduler.live.serve", "--policy", self.policy]
        cmd += ["--predictor-dir", self.predictor_dir]
        if self.sink is not None:
            cmd += ["--sink", str(self.sink)]
        return [*cmd, *self.args, "--host", "127.0.0.1", "--port", str(self.port)]

    def __enter__(self) -> ServerProcess:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        out = open(self.log, "w") if self.log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        if out is not subprocess.DEVNULL:
            out.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log and self.log.is_file() else ""
                raise RuntimeError(
                    f"vLLM server exited with code {self.proc.returncode} while starting:\n{tail}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/health", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"vLLM server not healthy after {self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the server's process group (it and its engine core), then SIGKILL."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ the client
@dataclass
class _Completion:
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class _Output:
    """What ``replay._record_output`` reads from a RequestOutput."""

    outputs: list[_Completion]
    finished: bool


class HttpLLM:
    """The ``AsyncLLM`` surface ``replay_async`` uses (``generate``, ``abort``), over HTTP."""

    def __init__(
        self,
        url: str,
        model: str,
        session: Any,
        priority: Mapping[str, int] | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.model = model
        self.session = session
        self.priority = priority  # request id -> vLLM priority (stock priority runs)
        self.errors: dict[str, str] = {}  # request id -> HTTP error (status and message)
        self._open: dict[str, Any] = {}  # request id -> its streaming response

    def body(self, prompt: Mapping[str, Any], params: Any, request_id: str) -> dict[str, Any]:
        b: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt["prompt_token_ids"]),
            "max_tokens": params.max_tokens,
            "ignore_eos": params.ignore_eos,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if params.seed is not None:
            b["seed"] = params.seed
        if params.extra_args:
            b["vllm_xargs"] = dict(params.extra_args)
        if self.priority is not None:
            b["priority"] = self.priority[request_id]
        return b

    async def generate(
        self, prompt: Mapping[str, Any], params: Any, request_id: str
    ) -> AsyncIterator[_Output]:
        resp = await self.session.post(self.url, json=self.body(prompt, params, request_id))
        self._open[request_id] = resp
        try:
            if resp.status != 200:
                self.errors[request_id] = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                yield _Output([_Completion([], "error")], finished=True)
                return
            seen = 0
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage") or {}
                n = int(usage.get("completion_tokens", seen)) - seen
                choices = chunk.get("choices") or []
                reason = choices[0].get("finish_reason") if choices else None
                if n <= 0 and reason is None:
                    continue
                seen += max(n, 0)
                yield _Output([_Completion([0] * max(n, 0), reason)], finished=reason is not None)
        finally:
            self._open.pop(request_id, None)
            resp.close()  # mid-stream: the connection drops and vLLM aborts the request

    async def abort(self, request_id: str) -> None:
        """Over HTTP an abort is a disconnect: close the request's connection."""
        resp = self._open.pop(request_id, None)
        if resp is not None:
            resp.close()


def flat_meta(p: Prepared) -> dict[str, Any]:
    """The flat ``driftsched_*`` keys describing a workload row."""
    r = p.req
    return flat_xargs(
        {
            "request_id": r.request_id,
            "tenant": r.tenant,
            "tier": r.tier,
            "category": r.category,
            "source": r.source,
        }
    )


@dataclass
class HttpRun:
    records: pd.DataFrame
    meta: dict[str, Any]


def _shift(line: dict[str, Any], dt: float) -> dict[str, Any]:
    """A sink line with its times moved by ``dt`` seconds (server run clock -> client's)."""
    out = dict(line)
    for k in ("admitted_s", "finish_s"):
        if out.get(k) is not None:
            out[k] = float(out[k]) + dt
    out["est_history"] = [[float(a) + dt, b, c] for a, b, c in line.get("est_history", [])]
    return out


def run_http(
    url: str,
    workload: Any,
    *,
    model: str,
    tokenizer: Any,
    max_model_len: int,
    vocab_size: int,
    sink: Path | None,
    name: str,
    stock: str | None = None,
    seed: int = 0,
    actions: Mapping[str, Any] | None = None,
    timeout_s: float = 600.0,
    max_connections: int = 256,
) -> HttpRun:
    """Replay ``workload`` against the server at ``url`` (trace-driven lengths) and return the
    record table. ``stock``: ``vllm_fcfs`` / ``vllm_priority`` (no sink; ``priority`` sent)."""
    df = workload_frame(workload)
    prepared, clamp = prepare_requests(
        requests_from_frame(df),
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        length_mode="trace",
        prompt_source="auto",
        natural_max_tokens=512,
        seed=seed,
    )
    metas = [flat_meta(p) for p in prepared]
    prio = (
        {p.req.request_id: TIER_PRIORITY[p.req.tier] for p in prepared}
        if stock == "vllm_priority"
        else None
    )
    t0, wall = _replay_http(
        url,
        model,
        prepared,
        metas,
        priority=prio,
        seed=seed,
        actions=actions,
        timeout_s=timeout_s,
        max_connections=max_connections,
    )
    sched, summary, never = _server_fields(prepared, sink, stock, t0)
    final = merge_requests(prepared, sched)
    records = build_records(final, engine="vllm_http", policy=name, seed=seed)
    prefix = summary.get("prefix_caching")
    records.attrs["prefix_caching"] = prefix
    meta = {
        "engine": "vllm_http",
        "policy": name,
        "url": url,
        "run_id": uuid.uuid4().hex[:12],
        "n_requests": len(prepared),
        "wall_s": wall,
        "clamp": clamp.as_dict(),
        "client_faults": client_fault_counts(prepared),
        "n_cancelled_before_engine": len(never),
        "prefix_caching": prefix,
        "server_summary": summary,
    }
    return HttpRun(records=records, meta=meta)


def _replay_http(
    url: str,
    model: str,
    prepared: list[Prepared],
    metas: list[dict[str, Any]],
    *,
    priority: Mapping[str, int] | None,
    seed: int,
    actions: Mapping[str, Any] | None,
    timeout_s: float,
    max_connections: int,
) -> tuple[float, float]:
    """The open-loop replay over HTTP, one streaming request per row; returns (``t0``, the
    client clock's time of arrival 0; the replay's wall time in s). A request the server
    answered with an HTTP error fails the run."""
    import aiohttp  # before t0: a first import would make the first arrivals late

    t0 = time.monotonic() + 0.05
    errors: dict[str, str] = {}

    async def go() -> None:
        conn = aiohttp.TCPConnector(limit=max_connections)
        tmo = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=tmo) as session:
            llm = HttpLLM(url, model, session, priority)
            await replay_async(
                llm,
                prepared,
                metas,
                t0=t0,
                seed=seed,
                greedy=True,
                timeout_s=timeout_s,
                actions=actions,
            )
            errors.update(llm.errors)

    wall = time.monotonic()
    asyncio.run(go())
    wall = time.monotonic() - wall
    if errors:
        rid, msg = next(iter(errors.items()))
        raise RuntimeError(f"{len(errors)} request(s) failed over HTTP, e.g. {rid}: {msg}")
    return t0, wall


def _server_fields(
    prepared: list[Prepared], sink: Path | None, stock: str | None, t0: float
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
    """The scheduler-side fields of every submitted request, on the client's clock: (request
    id -> sink line, the server's run summary, requests the engine never saw). Stock vLLM or
    no sink: nothing observed (``STOCK_SCHED_FIELDS``)."""
    submitted = [p.req.request_id for p in prepared if not math.isnan(p.submit_s)]
    if stock is not None or sink is None:
        return {rid: dict(STOCK_SCHED_FIELDS) for rid in submitted}, {}, []
    # A request the client cancelled before any token may never have reached the engine
    # (cancelled while connecting): the sink owes a line for every other one.
    by_id = {p.req.request_id: p for p in prepared}
    early = {
        rid
        for rid in submitted
        if not by_id[rid].token_times and by_id[rid].finish_reason in _CLIENT_REASONS
    }
    raw = read_sink(sink, [r for r in submitted if r not in early])
    raw.update(read_sink(sink, sorted(early), wait_s=1.0))
    summary = _summary(sink)
    dt = float(summary.get("t0_monotonic", t0)) - t0
    sched = {rid: _shift(line, dt) for rid, line in raw.items()}
    never = sorted(early - raw.keys())
    for rid in never:  # aborted by the client before the engine saw it: never admitted
        sched[rid] = dict(STOCK_SCHED_FIELDS)
    return sched, summary, never


def _summary(sink: Path, wait_s: float = 5.0) -> dict[str, Any]:
    path = sink / "sched_summary.json"
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(20):  # the server rewrites it while we read: retry a torn read
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"{path}: no readable scheduler summary")
