"""The engine-side policy driver: SchedRequest mirrors, batched policy hooks, keys, faults.

This module does not import vLLM: the vLLM scheduler subclass in :mod:`scheduler.live.adapter`
translates vLLM's request objects into calls on a :class:`PolicyDriver`, which

* keeps one :class:`SchedRequest` mirror per live vLLM request (keyed by vLLM's internal id),
  built from the workload row the replay client attaches to the request
  (``SamplingParams.extra_args["driftsched"]``, see :func:`request_meta`);
* calls the policy's hooks batched, once per engine step (arrivals, admissions, ends,
  ``on_step``, ``preempt``) and computes every key in one place (:meth:`PolicyDriver.keys`);
* falls back when the policy raises or returns a non-finite key: the error is logged once
  (with its traceback), the step uses the fallback policy's keys (FIFO unless configured) and
  serving continues; the number of faults is reported in the run summary;
* times everything it does per step (``policy_us``: mirror sync + hooks + keys + re-heapify);
* writes per-request scheduler-side records and per-step records as JSON lines into the run's
  sink directory, so the client can read them back in either process mode;
* injects engine faults when the run asks for them (``faults`` in the request metadata, a
  :class:`scheduler.faults.EngineFaults`): the step ``die_at_step`` raises
  :class:`~scheduler.faults.InjectedEngineFault` out of ``schedule()``, which kills the engine
  core exactly as a real scheduler bug would (docs/RELIABILITY.md, part 5).

Clock: ``now`` is seconds since the run's start ``t0`` on ``time.monotonic`` (system-wide on
Linux, so client and engine-core processes agree); ``t0`` travels with each request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.faults import EngineFaults, predictor_health
from scheduler.live.metadata import META_KEY, request_meta
from scheduler.live.policy_spec import instantiate_policy
from scheduler.policies.base import Policy
from scheduler.policies.fifo import FIFOPolicy  # the built-in fallback when a policy faults
from scheduler.request import SchedRequest, Status

logger = logging.getLogger("driftsched.live")

__all__ = ["META_KEY", "PolicyDriver", "StepRecord"]

SINK_REQUESTS = "sched_requests.jsonl"
SINK_STEPS = "sched_steps.jsonl"


@dataclass
class StepRecord:
    """What one engine step computed (the simulator's cost-model inputs) and how long it took."""

    step: int
    t_start: float  # s since t0, when schedule() began
    exec_s: float = math.nan  # schedule() return -> update_from_output() entry (model time)
    sched_s: float = math.nan  # time inside schedule() (vLLM's own + the policy's)
    policy_us: float = 0.0  # time spent in the driver this step (mirrors, hooks, keys, heapify)
    policy_cpu_us: float = 0.0  # the same, as CPU time of the engine thread (time.thread_time)
    cpu_s: float = math.nan  # CPU time of the engine thread, schedule() -> update_from_output()
    prefill_tokens: int = 0  # prompt / recompute tokens scheduled
    prefill_seqs: int = 0
    decode_seqs: int = 0  # requests generating one token
    kv_tokens: int = 0  # context attended: sum over scheduled of (computed before + scheduled)
    prefill_pairs: float = 0.0  # sum over prefill chunks of chunk * (context_before + chunk / 2)
    num_running: int = 0
    num_waiting: int = 0
    num_preempted: int = 0  # by vLLM under KV pressure, this step
    num_policy_preempted: int = 0  # voluntary, asked for by the policy
    num_admitted: int = 0  # requests scheduled from the waiting queue this step
    kv_tokens_held: int = 0  # KV slots in use after scheduling (blocks * block_size)
    waiting_by_tier: dict[str, int] = field(default_factory=dict)  # at step start
    running_by_tier: dict[str, int] = field(default_factory=dict)  # in the step
    kv_usage: float = math.nan  # fraction of KV blocks in use after scheduling
    update_s: float = math.nan  # time inside update_from_output (vLLM's + the policy's)
    t_end: float = math.nan  # s since t0, when update_from_output returned
    unfinished_after: int = -1  # requests left in the scheduler after the step (0: idle next)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunState:
    """Per-run state: policy, clock origin, sink."""

    run_id: str
    policy: Policy
    t0: float  # time.monotonic() at the run's start
    sink: Path | None
    fallback: Policy = field(default_factory=FIFOPolicy)
    faults: int = 0
    fault_messages: list[str] = field(default_factory=list)
    engine_faults: EngineFaults | None = None  # injected engine death (tests, +faults=...)
    first_step: int = 0  # the engine's step counter when the run started (runs share it)
    n_finished: int = 0  # requests vLLM freed as finished / aborted (each exactly once)
    n_aborted: int = 0


class PolicyDriver:
    """Runs one Policy over the mirrors of the requests a vLLM scheduler holds."""

    def __init__(
        self,
        default_policy_spec: Mapping[str, Any] | str | None = None,
        fallback_spec: Mapping[str, Any] | str | None = None,
        default_sink: str | None = None,
        prefix_caching: bool = False,
    ) -> None:
        self.default_policy_spec = default_policy_spec
        self.fallback_spec = fallback_spec
        self.default_sink = default_sink
        self.prefix_caching = prefix_caching  # stated in every sink line (the simulator has none)
        self._default_policy: Policy | None = None  # built by build_default(), used once
        self._next_index = 0  # request indices: unique, increasing, whatever the client sends
        self._reserved = range(0)  # indices a trusted in-process client may claim (its rows)
        self._claimed: set[int] = set()
        self.n_without_meta = 0  # requests with no metadata at all (tenant/tier defaults)
        self.n_bad_meta = 0  # requests whose flat metadata failed validation (defaults used)
        # prompt text for requests that carry none: token ids -> text (the adapter sets it)
        self.decode: Any = None
        self.n_decoded = 0
        self.decode_us = 0.0  # total time decoding prompts (the per-request cost: / n_decoded)
        self.mirrors: dict[str, SchedRequest] = {}  # vLLM internal id -> mirror
        self.waiting: dict[str, SchedRequest] = {}  # the waiting subset (insertion ordered)
        self.waiting_by_tier: dict[str, int] = {}  # counts kept at transitions (O(1) a step)
        self.arrived: list[SchedRequest] = []  # not yet passed to on_arrival
        self.ended: list[tuple[SchedRequest, bool]] = []  # (mirror, aborted) not yet reported
        self.injected: dict[str, Policy] = {}  # run id -> policy object (in-process mode)
        self.run: RunState | None = None
        self.step_no = 0
        self.overhead_us = 0.0  # driver time spent outside schedule() (add_request), this step
        self._steps: list[dict[str, Any]] = []  # step lines not yet written to the sink
        self._req_lines: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- runs and clock
    def build_default(self) -> None:
        """Build the configured policy and fallback now (scheduler creation), so a bad spec
        (a ``predictor_dir`` that does not resolve in the server, a wrong ``_target_``) fails
        at start-up naming the spec instead of at the first request."""
        for what, spec in (("policy", self.default_policy_spec), ("fallback", self.fallback_spec)):
            if spec is None:
                continue
            try:
                pol = instantiate_policy(spec)
            except Exception as e:
                raise ValueError(
                    f"driftsched: cannot build the {what} from additional_config"
                    f"['{META_KEY}']['{what}'] = {spec!r}: {type(e).__name__}: {e} "
                    "(relative paths resolve against the server's working directory)"
                ) from e
            if what == "policy":
                self._default_policy = pol
        if self.default_sink is not None:
            Path(self.default_sink).mkdir(parents=True, exist_ok=True)

    def reserve_indices(self, n: int) -> int:
        """Reserve ``n`` consecutive indices for a trusted in-process client's rows (it sends
        ``base + row`` so that ``Policy.prepare`` and the engine agree); returns ``base``."""
        base = self._next_index
        self._next_index += n
        self._reserved = range(base, base + n)
        self._claimed = set()
        return base

    def _index(self, row: Mapping[str, Any], trusted: bool) -> int:
        i = row.get("index") if trusted else None
        if isinstance(i, int) and i in self._reserved and i not in self._claimed:
            self._claimed.add(i)
            return i
        i = self._next_index
        self._next_index += 1
        return i

    def meta_of(self, extra_args: Mapping[str, Any] | None, priority: Any, rid: str) -> Any:
        """Parse a request's metadata (``scheduler.live.metadata``), counting requests without
        any and with invalid flat keys (each warned about once; serving goes on)."""
        try:
            meta, source = request_meta(extra_args, priority)
        except ValueError as e:
            self.n_bad_meta += 1
            if self.n_bad_meta == 1:
                logger.error(
                    "driftsched: request %s: %s; scheduling it with the defaults (tenant "
                    "'unknown', tier 'standard'). Further ones are counted, not logged "
                    "(serve through scheduler.live.serve to reject them with HTTP 400).",
                    rid,
                    e,
                )
            return None, "bad"  # counted as bad, not as without metadata
        if source == "none":
            self.n_without_meta += 1
            if self.n_without_meta == 1:
                logger.warning(
                    "driftsched: request %s carries no DriftSched metadata (no driftsched_* "
                    "vllm_xargs, default priority): tenant 'unknown', tier 'standard'. "
                    "Such requests are counted (n_without_metadata in sched_summary.json); "
                    "see docs/LIVE.md, 'Serving'.",
                    rid,
                )
        return meta, source

    def inject_policy(self, run_id: str, policy: Policy) -> None:
        """In-process mode: use this policy object for requests tagged with ``run_id``."""
        self.injected[run_id] = policy

    def ensure_run(self, meta: Mapping[str, Any] | None) -> RunState:
        run_id = str(meta.get("run", "")) if meta else ""
        if self.run is not None and (not meta or self.run.run_id == run_id):
            return self.run
        if self.run is not None:
            self.flush()
            if self.mirrors:
                logger.warning(
                    "driftsched: run %r starts while %d request(s) of run %r are "
                    "live; the new run's policy takes them over",
                    run_id,
                    len(self.mirrors),
                    self.run.run_id,
                )
        if run_id in self.injected:
            policy = self.injected.pop(run_id)
        elif self._default_policy is not None and not (meta and meta.get("policy")):
            policy, self._default_policy = self._default_policy, None  # built at start-up
        else:
            spec = meta.get("policy") if meta and meta.get("policy") else self.default_policy_spec
            policy = instantiate_policy(spec)
        fallback = instantiate_policy(self.fallback_spec) if self.fallback_spec else FIFOPolicy()
        sink = meta.get("sink") if meta else None
        sink = sink or self.default_sink
        t0 = float(meta["t0"]) if meta and "t0" in meta else time.monotonic()
        ef = meta.get("faults") if meta else None
        self.run = RunState(
            run_id=run_id,
            policy=policy,
            t0=t0,
            sink=Path(sink) if sink else None,
            fallback=fallback,
            engine_faults=EngineFaults(**ef) if ef else None,
            first_step=self.step_no,
        )
        if self.run.sink is not None:
            self.run.sink.mkdir(parents=True, exist_ok=True)
        old = list(self.mirrors.values())
        if old:
            self._safe("on_arrival", lambda p: p.on_arrival(old, self.now()))
        return self.run

    def now(self) -> float:
        t0 = self.run.t0 if self.run is not None else 0.0
        return time.monotonic() - t0

    # ---------------------------------------------------------------- faults
    def _fault(self, where: str, exc: BaseException | None, detail: str = "") -> None:
        run = self.run
        assert run is not None
        run.faults += 1
        if run.faults == 1:  # log once per run, with the traceback
            tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
            logger.error(
                "driftsched: policy %r faulted in %s (%s); falling back to %s keys "
                "for the affected steps and continuing to serve. Further faults "
                "are counted, not logged.\n%s",
                run.policy.name,
                where,
                detail or repr(exc),
                run.fallback.name,
                tb,
            )
        if len(run.fault_messages) < 5:
            run.fault_messages.append(f"{where}: {detail or repr(exc)}")

    def _safe(self, where: str, call, feed_fallback: bool = True) -> Any:
        """Call a policy hook; on error record a fault. The fallback sees the same hooks."""
        run = self.run
        assert run is not None
        try:
            out = call(run.policy)
        except Exception as exc:
            self._fault(where, exc)
            out = None
        if feed_fallback and not isinstance(run.fallback, FIFOPolicy):
            with contextlib.suppress(Exception):  # the fallback is best effort
                call(run.fallback)
        return out

    # ---------------------------------------------------------------- request lifecycle
    def add(
        self,
        internal_id: str,
        meta: Mapping[str, Any] | None,
        num_prompt_tokens: int,
        max_tokens: int,
        prompt_ids: Sequence[int] | None = None,
        trusted: bool = False,
    ) -> SchedRequest:
        """A request entered vLLM's scheduler (``Scheduler.add_request``).

        ``trusted``: the metadata came through the toolkit's nested channel (its row index may
        claim a reserved index, and it decides about prompt text itself); otherwise a prompt
        without text is decoded from ``prompt_ids`` when a decoder is set."""
        self.ensure_run(meta)
        row = dict(meta.get("row", {})) if meta else {}
        now = self.now()
        prompt = row.get("prompt")
        if prompt is None and not trusted and self.decode is not None and prompt_ids:
            t = time.perf_counter()
            prompt = self.decode(prompt_ids)
            self.decode_us += (time.perf_counter() - t) * 1e6
            self.n_decoded += 1
        m = SchedRequest(
            request_id=str(row.get("request_id", internal_id)),
            index=self._index(row, trusted),
            tenant=str(row.get("tenant", "unknown")),
            tier=str(row.get("tier", "standard")),
            category=str(row.get("category", "unknown")),
            source=str(row.get("source", "unknown")),
            model=str(row.get("model", "unknown")),
            prompt=prompt,
            prompt_tokens=int(num_prompt_tokens),
            max_tokens=int(max_tokens),
            arrival_s=float(row.get("arrival_s", now)),
            true_output_tokens=int(row.get("true_output_tokens", max_tokens)),
            slo_ttft_s=float(row.get("slo_ttft_s", math.nan)),
            slo_tpot_s=float(row.get("slo_tpot_s", math.nan)),
        )
        self.mirrors[internal_id] = m
        self._to_waiting(internal_id, m)
        self.arrived.append(m)
        return m

    def ended_request(self, internal_id: str, aborted: bool) -> None:
        """vLLM freed a request (finished, aborted or errored)."""
        m = self.mirrors.pop(internal_id, None)
        if m is None:
            return
        self._from_waiting(internal_id)
        m.status = Status.ABORTED if aborted else Status.FINISHED
        m.finish_s = self.now()
        self.ended.append((m, aborted))
        if self.run is not None:
            if aborted:
                self.run.n_aborted += 1
            else:
                self.run.n_finished += 1

    def report_ended(self, flush: bool = True) -> None:
        """Batched on_finish / on_abort, then the requests' sink lines."""
        if not self.ended:
            return
        ended, self.ended = self.ended, []
        now = self.now()
        self._deliver_arrivals(now)  # every ended request has seen on_arrival first
        fin = [m for m, a in ended if not a]
        ab = [m for m, a in ended if a]
        if fin:
            self._safe("on_finish", lambda p: p.on_finish(fin, now))
        if ab:
            self._safe("on_abort", lambda p: p.on_abort(ab, now))
        for m, _ in ended:
            self._req_lines.append(sched_record(m, self.prefix_caching))
        if flush:
            self.flush()

    def _deliver_arrivals(self, now: float) -> None:
        if self.arrived:
            arrived, self.arrived = self.arrived, []
            self._safe("on_arrival", lambda p: p.on_arrival(arrived, now))

    # ---------------------------------------------------------------- per step
    def begin_step(self, running: Sequence[SchedRequest]) -> list[SchedRequest]:
        """Arrivals and on_step; returns the policy's voluntary preemption victims."""
        if self.run is None:
            return []
        if self.run.engine_faults is not None:
            # raises out of schedule(): the engine core dies mid-run
            self.run.engine_faults.check(self.step_no - self.run.first_step)
        self.report_ended(flush=False)
        now = self.now()
        self._deliver_arrivals(now)
        waiting = list(self.waiting.values())
        policy = self.run.policy
        if policy.uses_step_hook:
            self._safe("on_step", lambda p: p.on_step(running, waiting, now))
        if not waiting or not running:
            return []
        victims = (
            self._safe("preempt", lambda p: p.preempt(running, waiting, now), feed_fallback=False)
            or []
        )
        if not isinstance(victims, list | tuple):
            self._fault("preempt", None, f"returned {type(victims).__name__}, expected a list")
            return []
        live = {id(m) for m in running}
        # Bound: only running requests, each once, at most one per waiting request.
        out, seen = [], set()
        for v in victims:
            if id(v) in live and id(v) not in seen and len(out) < len(waiting):
                out.append(v)
                seen.add(id(v))
        return out

    def keys(self, mirrors: Sequence[SchedRequest], now: float) -> list[float]:
        """Policy keys for ``mirrors``; the fallback's keys if the policy raises or gives NaN."""
        run = self.run
        assert run is not None
        try:
            ks = [float(run.policy.key(m, now)) for m in mirrors]
            if all(math.isfinite(k) for k in ks):
                for m, k in zip(mirrors, ks):
                    m.sched_key = k
                return ks
            bad = next(m for m, k in zip(mirrors, ks) if not math.isfinite(k))
            self._fault("key", None, f"non-finite key for request {bad.request_id!r}")
        except Exception as exc:
            self._fault("key", exc)
        ks = [float(run.fallback.key(m, now)) for m in mirrors]
        for m, k in zip(mirrors, ks):
            m.sched_key = k
        return ks

    def custom_victim(self) -> bool:
        """Whether the run's policy picks memory victims by a rule of its own (not its keys)."""
        run = self.run
        if run is None:
            return False
        p = run.policy
        return p.victim is not None or type(p).victim_key is not Policy.victim_key

    def victim_keys(self, mirrors: Sequence[SchedRequest], now: float) -> list[float]:
        """Victim keys of running ``mirrors`` (larger: evicted first); the order keys (vLLM's
        rule) if the policy's victim rule raises or gives NaN."""
        run = self.run
        assert run is not None
        try:
            ks = [float(run.policy.victim_key(m, now)) for m in mirrors]
            if all(math.isfinite(k) for k in ks):
                return ks
            bad = next(m for m, k in zip(mirrors, ks) if not math.isfinite(k))
            self._fault("victim_key", None, f"non-finite victim key for {bad.request_id!r}")
        except Exception as exc:
            self._fault("victim_key", exc)
        return self.keys(mirrors, now)

    def take_changed(self) -> list[SchedRequest]:
        """Waiting mirrors whose key the policy changed (``incremental_keys`` policies)."""
        try:
            return list(self.run.policy.take_changed()) if self.run is not None else []
        except Exception as exc:
            self._fault("take_changed", exc)
            return list(self.waiting.values())  # re-key them all this step

    def admitted(self, internal_ids: Iterable[str]) -> None:
        now = self.now()
        adm = []
        for rid in internal_ids:
            m = self._from_waiting(rid)
            if m is None:
                continue
            m.status = Status.RUNNING
            m.admit_output_tokens = m.num_output_tokens
            if math.isnan(m.admitted_s):
                m.admitted_s = now
            adm.append(m)
        if adm:
            self._safe("on_admit", lambda p: p.on_admit(adm, now))

    def preempted(self, internal_id: str, by_policy: bool) -> SchedRequest | None:
        """Mark a preemption in the mirror (its KV, as synced at the step's start, is thrown
        away); the caller reports the step's preemptions with :meth:`report_preempted`."""
        m = self.mirrors.get(internal_id)
        if m is None:
            return None
        m.status = Status.WAITING
        m.recomputed_tokens += m.num_computed_tokens
        m.num_computed_tokens = 0
        if by_policy:
            m.n_policy_preemptions += 1
        self._to_waiting(internal_id, m)
        return m

    def report_preempted(self, mirrors: Sequence[SchedRequest]) -> None:
        """``on_preempt`` for this step's preemptions (memory and voluntary), batched."""
        if mirrors and self.run is not None:
            now = self.now()
            self._safe("on_preempt", lambda p: p.on_preempt(mirrors, now))

    def _to_waiting(self, internal_id: str, m: SchedRequest) -> None:
        if internal_id not in self.waiting:
            self.waiting[internal_id] = m
            self.waiting_by_tier[m.tier] = self.waiting_by_tier.get(m.tier, 0) + 1

    def _from_waiting(self, internal_id: str) -> SchedRequest | None:
        m = self.waiting.pop(internal_id, None)
        if m is not None:
            self.waiting_by_tier[m.tier] -= 1
        return m

    def record_step(self, rec: StepRecord) -> None:
        self._steps.append(rec.to_json())
        if len(self._steps) >= 512:
            self.flush()

    def has_unflushed_requests(self) -> bool:
        return bool(self._req_lines)

    def flush(self) -> None:
        run = self.run
        if run is None or run.sink is None or not run.sink.is_dir():
            # no sink, or the client already collected the run and removed it
            self._steps.clear()
            self._req_lines.clear()
            return
        if self._req_lines:
            with (run.sink / SINK_REQUESTS).open("a", encoding="utf-8") as f:
                for line in self._req_lines:
                    f.write(json.dumps(line) + "\n")
            self._req_lines.clear()
        if self._steps:
            with (run.sink / SINK_STEPS).open("a", encoding="utf-8") as f:
                for line in self._steps:
                    f.write(json.dumps(line) + "\n")
            self._steps.clear()
        summary = {
            "run": run.run_id,
            "policy": run.policy.name,
            "faults": run.faults,
            "fault_messages": run.fault_messages,
            "live_requests": len(self.mirrors),
            "n_finished": run.n_finished,
            "n_aborted": run.n_aborted,
            "predictor": predictor_health(run.policy),
            "policy_class": f"{type(run.policy).__module__}.{type(run.policy).__qualname__}",
            "prefix_caching": self.prefix_caching,
            "t0_monotonic": run.t0,  # the run's clock origin (time.monotonic, system-wide)
            "n_without_metadata": self.n_without_meta,
            "n_bad_metadata": self.n_bad_meta,
            "n_prompts_decoded": self.n_decoded,
            "decode_us_per_prompt": self.decode_us / self.n_decoded if self.n_decoded else None,
        }
        (run.sink / "sched_summary.json").write_text(json.dumps(summary))


def sched_record(m: SchedRequest, prefix_caching: bool = False) -> dict[str, Any]:
    """The scheduler-side fields of a request's record (the client adds token timings)."""
    return {
        "request_id": m.request_id,
        "index": m.index,
        "tenant": m.tenant,
        "tier": m.tier,
        "prefix_caching": prefix_caching,
        "status": m.status.value,
        "admitted_s": m.admitted_s,
        "num_preemptions": m.num_preemptions,
        "n_policy_preemptions": m.n_policy_preemptions,
        "recomputed_tokens": m.recomputed_tokens,
        "num_output_tokens": m.num_output_tokens,
        "est_output_tokens": m.est_output_tokens,
        "est_output_p90": m.est_output_p90,
        "est_remaining": m.est_remaining,
        "est_class": m.est_class,
        "n_reclassified": m.n_reclassified,
        "sched_key": m.sched_key,
        "est_history": [list(h) for h in m.est_history],
        "finish_s": m.finish_s,
    }
