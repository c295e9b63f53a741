"""``VllmEngine``: the live engine behind ``engine=vllm`` (``conf/engine/vllm.yaml``).

``run(workload, policy)`` replays the workload open-loop against a real vLLM engine whose
scheduler is our adapter (:mod:`scheduler.live.adapter`), and returns the same
``EngineResult(records, steps, meta)`` as the simulator. ``capacity_rps(workload)`` measures
the sustainable request rate with a short saturating probe.

Lifecycle: ``run`` and ``capacity_rps`` start an engine when none is open and shut it down in
``finally``; inside ``with VllmEngine(...) as eng:`` (or after ``eng.open()``) one engine serves
many runs and is shut down on exit. Runs on one engine are sequential; each run carries its own
policy (injected as an object in process mode ``inprocess``, sent as a Hydra spec with every
request in ``multiprocess`` mode, where the engine core lives in its own process).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scheduler.engine import STEP_COLUMNS, EngineResult, requests_from_frame, workload_frame
from scheduler.live.driver import META_KEY
from scheduler.live.metadata import TIER_PRIORITY  # vllm_priority: lower is served sooner
from scheduler.live.replay import (
    LENGTH_MODES,
    PROMPT_SOURCES,
    attach_partial,
    client_fault_counts,
    merge_requests,
    partial_requests,
    prepare_requests,
    read_sink,
    read_sink_partial,
    read_steps,
    replay_async,
    replay_inprocess,
    request_metadata,
)
from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model
from scheduler.policies.base import Policy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.records import build_records
from scheduler.request import SchedRequest

logger = logging.getLogger("driftsched.live")

PROCESS_MODES = ("inprocess", "multiprocess")
SCHEDULER_IMPLS = ("driftsched", "vllm_fcfs", "vllm_priority")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NULL_BLOCKS = 1  # KV blocks vLLM's BlockPool reserves (its null block, block id 0)


@dataclass
class VllmEngineConfig:
    """Engine parameters (``conf/engine/vllm.yaml``); validated before any engine starts."""

    model: str = "tiny"  # 'tiny' (built locally) or a local Hugging Face model directory
    tiny: dict[str, Any] = field(default_factory=dict)  # TinyModelSpec fields for 'tiny'
    cache_dir: str | None = None  # where 'tiny' is built (default ~/.cache/driftsched)
    process_mode: str = "inprocess"  # inprocess (LLMEngine) | multiprocess (AsyncLLM)
    # driftsched: our policy adapter (scheduler_cls); vllm_fcfs / vllm_priority: vLLM's STOCK
    # scheduler with its own fcfs or priority (= tier rank) order, no adapter (baselines:
    # the policy passed to run() is not used and the scheduler-side record fields are unknown)
    scheduler_impl: str = "driftsched"
    max_num_seqs: int = 16  # running requests per step
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = False  # off: the simulator has no prefix cache
    max_model_len: int | None = None  # context cap (None: the model's)
    dtype: str = "auto"
    kv_cache_gib: float | None = 1.0  # CPU KV cache size (GiB); GPU: None -> memory share
    num_gpu_blocks: int | None = None  # force the number of KV blocks (tests: KV pressure)
    block_size: int | None = None  # KV block size in tokens (CPU: a multiple of 32)
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enforce_eager: bool = True  # no compilation (CPU start-up in seconds)
    seed: int = 0
    length_mode: str = "trace"  # trace (max_tokens = true length, ignore_eos) | natural
    natural_max_tokens: int = 512  # natural mode: cap when the row has no smaller max_tokens
    prompt_source: str = "auto"  # auto (text when present) | text | synthetic
    send_prompt_text: bool = True  # pass prompt text to the policy (predictors read it)
    fallback_policy: dict[str, Any] | None = None  # Hydra spec used when the policy faults
    sink_dir: str | None = None  # where the scheduler writes its per-run JSON lines
    keep_sink: bool = False  # keep the per-run sink directories (debugging)
    run_timeout_s: float | None = None  # abort what is left after this many seconds
    prepare_policy: bool = True  # in-process: Policy.prepare(all requests) before serving,
    # as the simulator does (batched featurising); multiprocess policies featurise on arrival
    probe_requests: int = 32  # capacity probe size
    max_requests: int | None = 200  # evaluate.py serves the first N requests of the workload
    # (a CPU engine serves a few req/s: 3000 requests would take ~10 min per policy); null: all
    progress: bool = True  # scheduler.progress lines/bar while replaying (finished requests)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm EngineArgs

    def validate(self) -> None:
        for name, choices in (
            ("process_mode", PROCESS_MODES),
            ("scheduler_impl", SCHEDULER_IMPLS),
            ("length_mode", LENGTH_MODES),
            ("prompt_source", PROMPT_SOURCES),
            ("dtype", DTYPES),
        ):
            if getattr(self, name) not in choices:
                raise self._bad(name, f"one of {choices}")
        self._validate_sizes()
        self._validate_model()

    def _bad(self, name: str, expected: str) -> ValueError:
        return ValueError(
            f"engine config: {name}={getattr(self, name)!r}: expected "
            f"{expected} (conf/engine/vllm.yaml)"
        )

    def _validate_sizes(self) -> None:
        """Counts, memory sizes and timeouts in range; a step fits any prompt."""
        bad = self._bad
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "natural_max_tokens",
            "probe_requests",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "an integer >= 1")
        for name in ("max_model_len", "num_gpu_blocks", "block_size", "max_requests"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise bad(name, "null or an integer >= 1")
        if self.kv_cache_gib is not None and not (self.kv_cache_gib > 0):
            raise bad("kv_cache_gib", "null or a size in GiB > 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise bad("gpu_memory_utilization", "a fraction in (0, 1]")
        if self.run_timeout_s is not None and not self.run_timeout_s > 0:
            raise bad("run_timeout_s", "null or seconds > 0")
        if (
            not self.enable_chunked_prefill
            and self.max_model_len is not None
            and (self.max_num_batched_tokens < self.max_model_len)
        ):
            raise bad(
                "max_num_batched_tokens",
                f">= max_model_len ({self.max_model_len}) "
                "when chunked prefill is off (a long prompt could never be scheduled)",
            )

    def _validate_model(self) -> None:
        """A local model directory or a valid tiny-model spec; the fallback policy a spec."""
        bad = self._bad
        if self.model != "tiny":
            if not (Path(self.model) / "config.json").is_file():
                raise bad(
                    "model",
                    "'tiny' or a local Hugging Face model directory with a "
                    "config.json (no hub downloads)",
                )
        else:
            try:
                TinyModelSpec(**self.tiny)
            except TypeError as e:
                raise bad("tiny", f"fields of TinyModelSpec ({e})") from None
        if self.fallback_policy is not None and "_target_" not in self.fallback_policy:
            raise bad("fallback_policy", "null or a Hydra spec with '_target_'")


STOCK_SCHED_FIELDS: dict[str, Any] = {
    # what a stock-scheduler run records for the scheduler-side fields: not observed
    "admitted_s": math.nan,
    "num_preemptions": 0,
    "n_policy_preemptions": 0,
    "est_output_tokens": math.nan,
    "est_output_p90": math.nan,
    "est_remaining": math.nan,
    "est_class": "",
    "n_reclassified": 0,
    "sched_key": math.nan,
    "est_history": [],
}


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


@contextlib.contextmanager
def _hide_llvmlite() -> Any:
    """Hide llvmlite's modules from ``sys.modules`` while vLLM starts an engine.

    vLLM 0.32's CPU kernel-override scan (``vllm.triton_utils.dispatcher._rebind_kernels``)
    calls ``vars(x).get`` on every attribute of every loaded module; llvmlite's ``ffi.lib``
    (loaded with numba, e.g. by ``predictor.fast_trees`` once a LightGBM predictor has served)
    answers ``vars()`` with a function wrapper, and the engine start dies with
    ``AttributeError: '_lib_fn_wrapper' object has no attribute 'get'``: every in-process
    engine started after a learned policy ran (the next job of a sweep) failed. Nothing is
    unloaded: the same module objects are put back.
    """
    import sys

    hidden = {n: m for n, m in sys.modules.items() if n == "llvmlite" or n.startswith("llvmlite.")}
    for n in hidden:
        del sys.modules[n]
    try:
        yield
    finally:
        sys.modules.update(hidden)


def policy_spec(policy: Policy | Mapping[str, Any]) -> dict[str, Any]:
    """A Hydra spec that rebuilds ``policy`` in another process.

    Accepts a spec directly; a policy that exposes ``spec()`` or ``_spec``; a dataclass
    policy (its init fields). Anything else cannot cross a process boundary without pickling.
    """
    if isinstance(policy, Mapping):
        if "_target_" not in policy:
            raise ValueError(f"policy spec {dict(policy)!r}: expected a '_target_' key")
        return dict(policy)
    spec = _object_spec(policy)
    if "victim" in vars(policy) and "victim" not in spec:  # a rule set on this object
        v = policy.victim
        spec["victim"] = (
            {"_target_": "scheduler.policies.victims.order_key"} if v is None else v.spec()
        )
    return spec


def _object_spec(policy: Policy) -> dict[str, Any]:
    cls = type(policy)
    target = f"{cls.__module__}.{cls.__qualname__}"
    for attr in ("spec", "_spec"):
        s = getattr(policy, attr, None)
        s = s() if callable(s) else s
        if isinstance(s, Mapping) and "_target_" in s:
            return dict(s)
    if dataclasses.is_dataclass(policy):
        fields = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy) if f.init}
        return {"_target_": target, **fields}
    if cls.__init__ is object.__init__ or not _init_params(cls):
        return {"_target_": target}  # no constructor parameters: nothing can be lost
    raise ValueError(
        f"policy {target}: cannot rebuild it inside a separate engine process; "
        "pass its Hydra spec (a dict with '_target_'), make it a dataclass, or "
        "use engine.process_mode=inprocess"
    )


def _init_params(cls: type) -> list[str]:
    """Constructor parameters (with or without defaults), except self, *args, **kwargs."""
    import inspect

    sig = inspect.signature(cls.__init__)
    return [
        n
        for n, p in sig.parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"p50": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan}
    return {
        "p50": float(np.percentile(x, 50)),
        "p99": float(np.percentile(x, 99)),
        "mean": float(x.mean()),
        "max": float(x.max()),
    }


class VllmEngine:
    """The live engine (see the module docstring)."""

    name = "vllm"

    Config = VllmEngineConfig  # its parameters (report.config_schema reads them)

    def __init__(self, **cfg: Any) -> None:
        cfg.pop("_target_", None)
        known = {f.name for f in dataclasses.fields(VllmEngineConfig)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"engine config: unknown key(s) {unknown}; expected some of "
                f"{sorted(known)} (conf/engine/vllm.yaml)"
            )
        self.cfg = VllmEngineConfig(**cfg)
        self.cfg.validate()
        self._llm: Any = None  # LLMEngine (inprocess) or AsyncLLM (multiprocess)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._owned_sink: Path | None = None
        self.model_dir: Path | None = None
        self.max_model_len: int = 0
        self.vocab_size: int = 0
        self.tokenizer: Any = None
        self.startup_s: float = math.nan
        self.block_size: int = 0  # resolved by vLLM at start (CPU default 128 tokens)
        self.num_gpu_blocks: int = 0  # KV blocks vLLM allocated (its cache_config)

    @property
    def stock(self) -> bool:
        """Whether vLLM's stock scheduler serves (``scheduler_impl`` vllm_fcfs/vllm_priority)."""
        return self.cfg.scheduler_impl != "driftsched"

    supports_live_faults = True  # client aborts/disconnects and engine death (scheduler.faults)

    @property
    def max_requests(self) -> int | None:
        """How many requests ``evaluate.py`` serves (the head of the workload)."""
        return self.cfg.max_requests

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> VllmEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._llm is not None

    def _model_dir(self) -> Path:
        if self.cfg.model == "tiny":
            return ensure_tiny_model(TinyModelSpec(**self.cfg.tiny), self.cfg.cache_dir)
        return Path(self.cfg.model)

    def _engine_args(self) -> Any:
        from vllm import EngineArgs

        c = self.cfg
        kw: dict[str, Any] = dict(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            seed=c.seed,
            dtype=c.dtype,
            max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens,
            enable_chunked_prefill=c.enable_chunked_prefill,
            enable_prefix_caching=c.enable_prefix_caching,
            enforce_eager=c.enforce_eager,
            tensor_parallel_size=c.tensor_parallel_size,
            pipeline_parallel_size=c.pipeline_parallel_size,
            gpu_memory_utilization=c.gpu_memory_utilization,
            scheduling_policy="fcfs" if c.scheduler_impl == "vllm_fcfs" else "priority",
            additional_config={META_KEY: {"fallback": c.fallback_policy}},
            disable_log_stats=True,
        )
        if c.max_model_len is not None:
            kw["max_model_len"] = c.max_model_len
        if c.kv_cache_gib is not None:
            kw["kv_cache_memory_bytes"] = int(c.kv_cache_gib * 2**30)
        if c.num_gpu_blocks is not None:
            kw["num_gpu_blocks_override"] = c.num_gpu_blocks
        if c.block_size is not None:
            kw["block_size"] = c.block_size
        clash = sorted(set(c.engine_kwargs) & set(kw))
        if clash:
            raise ValueError(
                f"engine config: engine_kwargs {clash} duplicate first-class keys; "
                "set them directly in conf/engine/vllm.yaml"
            )
        kw.update(c.engine_kwargs)
        return EngineArgs(**kw)

    def open(self) -> VllmEngine:
        """Start the engine (idempotent)."""
        if self._llm is not None:
            return self
        t = time.monotonic()
        self.model_dir = self._model_dir()
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.vocab_size = int(AutoConfig.from_pretrained(self.model_dir).vocab_size)
        multiproc = self.cfg.process_mode == "multiprocess"
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiproc else "0"
        import vllm.envs as envs

        envs.disable_envs_cache()  # an earlier in-process engine froze vLLM's env reads
        from scheduler.live.adapter import scheduler_cls_for

        vcfg = self._engine_args().create_engine_config()
        if not self.stock:  # stock: vLLM's own scheduler class, as vLLM resolved it
            vcfg.scheduler_config.scheduler_cls = scheduler_cls_for(
                vcfg.scheduler_config.async_scheduling
            )
        self.max_model_len = int(vcfg.model_config.max_model_len)
        try:
            with _hide_llvmlite():
                if multiproc:
                    self._start_loop()
                    self._llm = self._call(self._make_async(vcfg))
                else:
                    from vllm.v1.engine.llm_engine import LLMEngine

                    self._llm = LLMEngine.from_vllm_config(vcfg)
                    if not self.stock:  # the sink is flushed after each replay (_run)
                        self.scheduler().drift_flush_when_idle = False
        except BaseException:
            self.close()
            raise
        # KV geometry as vLLM resolved it (num_gpu_blocks is set while the engine starts; the
        # multiprocess client's copy may not see it: then fall back to the override or 0).
        self.block_size = int(vcfg.cache_config.block_size or 0)
        self.num_gpu_blocks = int(vcfg.cache_config.num_gpu_blocks or self.cfg.num_gpu_blocks or 0)
        self.startup_s = time.monotonic() - t
        logger.info(
            "driftsched: vLLM engine (%s, %s) started in %.1f s",
            self.cfg.model,
            self.cfg.process_mode,
            self.startup_s,
        )
        return self

    @staticmethod
    async def _make_async(vcfg: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_vllm_config(vcfg)

    def _start_loop(self) -> None:
        # AsyncLLM binds its output handler to the loop it first runs on: one loop thread for
        # the engine's life lets many runs (and tests) share one engine.
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="driftsched-vllm", daemon=True
        )
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Shut the engine down (idempotent; safe after a failed start)."""
        llm, self._llm = self._llm, None
        try:
            if llm is not None:
                if self.cfg.process_mode == "multiprocess":
                    llm.shutdown()
                else:
                    llm.engine_core.shutdown()
        finally:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(timeout=10)
                self._loop.close()
                self._loop, self._thread = None, None
            if self._owned_sink is not None and not self.cfg.keep_sink:
                shutil.rmtree(self._owned_sink, ignore_errors=True)
                self._owned_sink = None

    def scheduler(self) -> Any:
        """The adapter scheduler object (in-process mode only; tests and debugging)."""
        if self._llm is None or self.cfg.process_mode != "inprocess":
            raise RuntimeError(
                "the scheduler object is reachable only in an open in-process engine"
            )
        return self._llm.engine_core.engine_core.scheduler

    # ------------------------------------------------------------------ runs
    def _sink_root(self) -> Path:
        if self.cfg.sink_dir is not None:
            return Path(self.cfg.sink_dir)
        if self._owned_sink is None:
            self._owned_sink = Path(tempfile.mkdtemp(prefix="driftsched-sink-"))
        return self._owned_sink

    def run(
        self,
        workload: Any,
        policy: Policy | Mapping[str, Any],
        *,
        abort_after_tokens: Mapping[str, int] | None = None,
        policy_name: str | None = None,
        faults: Any = None,
        progress: str | None = None,
    ) -> EngineResult:
        """Replay ``workload`` under ``policy``; see the module docstring.

        ``faults``: a :class:`scheduler.faults.FaultPlan` (client aborts/disconnects, engine
        death). If the replay fails (engine death, Ctrl-C) the exception carries the records so
        far as ``partial_result`` (an ``EngineResult``; see ``replay.partial_requests``).
        ``progress``: the label of the finished-request progress line (default: the policy
        name)."""
        df = workload_frame(workload)
        spec = None
        if not self.stock and (
            self.cfg.process_mode == "multiprocess" or isinstance(policy, Mapping)
        ):
            spec = json.dumps(policy_spec(policy))  # fails here, before any engine starts
        owned = not self.is_open
        try:
            self.open()
            return self._run(
                df,
                policy,
                spec,
                abort_after_tokens,
                policy_name,
                getattr(workload, "seed", None),
                faults,
                progress,
            )
        finally:
            if owned:
                self.close()

    def _run(
        self,
        df: pd.DataFrame,
        policy: Policy | Mapping[str, Any],
        spec: str | None,
        abort_after_tokens: Mapping[str, int] | None,
        policy_name: str | None,
        seed: int | None,
        faults: Any = None,
        progress: str | None = None,
    ) -> EngineResult:
        from scheduler.faults import plan_client_faults

        c = self.cfg
        reqs = requests_from_frame(df)
        prepared, clamp = prepare_requests(
            reqs,
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer,
            length_mode=c.length_mode,
            prompt_source=c.prompt_source,
            natural_max_tokens=c.natural_max_tokens,
            seed=c.seed,
        )
        run_id = uuid.uuid4().hex[:12]
        sink = self._sink_root() / run_id
        sink.mkdir(parents=True, exist_ok=True)
        # In process, the scheduler's request indices for this run are reserved up front and
        # sent with the rows (base + row), so Policy.prepare keys its features as the engine
        # will; elsewhere the scheduler numbers requests itself, in arrival order.
        base = None
        if c.process_mode == "inprocess" and not self.stock:
            base = self.scheduler().drift.reserve_indices(len(prepared))
        if self.stock:
            pass  # vLLM orders the queue itself: the policy is not used
        elif spec is None:  # in-process with a policy object: hand it to the scheduler directly
            assert isinstance(policy, Policy)
            if c.prepare_policy:
                policy.prepare(
                    [dataclasses.replace(p.req, index=base + i) for i, p in enumerate(prepared)]
                )
            self.scheduler().drift.inject_policy(run_id, policy)
        name = policy_name or (
            c.scheduler_impl
            if self.stock
            else policy.name
            if isinstance(policy, Policy)
            else str(json.loads(spec)["_target_"]).rsplit(".", 1)[-1]
        )
        t0 = time.monotonic() + 0.05  # first arrivals are not late by our own set-up
        metas = [
            request_metadata(
                p,
                index=None if base is None else base + i,
                run_id=run_id,
                t0=t0,
                sink=str(sink),
                policy_spec=spec,
                send_prompt=c.send_prompt_text,
                engine_faults=dataclasses.asdict(faults.engine)
                if faults and faults.engine
                else None,
            )
            for i, p in enumerate(prepared)
        ]
        actions = plan_client_faults(
            getattr(faults, "client", None),
            [p.req.request_id for p in prepared],
            [p.max_tokens for p in prepared],
        )
        llm = self._llm
        if c.scheduler_impl == "vllm_priority":
            llm = _WithPriority(
                llm, {p.req.request_id: TIER_PRIORITY[p.req.tier] for p in prepared}
            )
        wall = time.monotonic()
        bar = self._progress(len(prepared), progress or name)
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
                self._call(replay_async(llm, prepared, metas, **replay_kw))
        except BaseException as e:  # engine death, Ctrl-C: keep what was served so far
            attach_partial(e, lambda exc=e: self._partial(prepared, sink, name, seed, exc))
            raise
        finally:
            if bar is not None:
                bar.close()
        wall = time.monotonic() - wall
        if c.process_mode == "inprocess" and not self.stock:
            self.scheduler().drift.flush()  # the run's last lines (idle flush is off in-process)
        submitted = [p.req.request_id for p in prepared if not math.isnan(p.submit_s)]
        if self.stock:  # no adapter, no sink: the client's view only
            sched = {rid: dict(STOCK_SCHED_FIELDS) for rid in submitted}
        else:
            sched = read_sink(sink, submitted)
        final = merge_requests(prepared, sched)
        records = build_records(final, engine="vllm", policy=name, seed=seed)
        raw_steps = read_steps(sink)
        summary = {}
        if (sink / "sched_summary.json").is_file():
            summary = json.loads((sink / "sched_summary.json").read_text())
        meta = self._meta(prepared, raw_steps, summary, clamp.as_dict(), wall, run_id, name)
        meta.update(recompute_counts(final, raw_steps))
        if not c.keep_sink and c.sink_dir is None:
            shutil.rmtree(sink, ignore_errors=True)
        return EngineResult(records=records, steps=steps_table(raw_steps), meta=meta)

    def _partial(
        self, prepared: list, sink: Path, name: str, seed: int | None, exc: BaseException
    ) -> EngineResult:
        """The records of a run that failed mid-replay, in the simulator's partial-result form
        (``scheduler.sim.engine.partial_result``): one row per request that had ended; requests
        cut off in flight are left out and counted (with the tokens they received) in meta."""
        if self.cfg.process_mode == "inprocess" and self.is_open:
            with contextlib.suppress(Exception):
                self.scheduler().drift.flush()  # step lines still buffered in this process
        sched, torn = read_sink_partial(sink)
        reqs, counts = partial_requests(prepared, sched)
        cut = set(counts.pop("cut_off_ids"))
        by_id = {p.req.request_id: p for p in prepared}
        ended = [r for r in reqs if r.request_id not in cut]
        records = build_records(ended, engine="vllm", policy=name, seed=seed)
        records.attrs["incomplete"] = True
        meta = {
            "engine": "vllm",
            "policy": name,
            "incomplete": True,
            "error": f"{type(exc).__name__}: {exc}",
            "unfinished_requests": len(prepared) - len(ended),
            "partial": counts,
            "cut_off_tokens": {rid: len(by_id[rid].token_times) for rid in sorted(cut)},
            "torn_sink_lines": torn,
            "client_faults": client_fault_counts(prepared),
        }
        try:
            steps = steps_table(read_steps(sink))
        except Exception:  # a torn last step line (Ctrl-C mid-write): keep the records
            steps = steps_table(pd.DataFrame())
        return EngineResult(records=records, steps=steps, meta=meta)

    def _progress(self, total: int, name: str) -> Any:
        """Finished-request progress (quiet in CI logs: scheduler.progress); None when off."""
        if not self.cfg.progress:
            return None
        from scheduler.progress import Progress

        return Progress(total, desc=f"{name} (vllm)", unit="req")

    def served_frame(self, workload: Any) -> pd.DataFrame:
        """The workload as this engine serves it: prompts tokenized by the model's tokenizer,
        prompt and output lengths clamped to ``max_model_len`` (``prepare_requests``).

        Feeding this frame to the simulator gives it exactly the lengths the live engine
        computes (fidelity runs); serving it live again changes nothing (clamping is
        idempotent). Needs the tokenizer: opens the engine if it is not open.
        """
        df = workload_frame(workload)
        self.open()
        prepared, _ = prepare_requests(
            requests_from_frame(df),
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer,
            length_mode="trace",
            prompt_source=self.cfg.prompt_source,
            natural_max_tokens=self.cfg.natural_max_tokens,
            seed=self.cfg.seed,
        )
        out = df.copy()
        out["prompt_tokens"] = np.array([p.req.prompt_tokens for p in prepared], dtype=np.int64)
        out["output_tokens"] = np.array(
            [p.req.true_output_tokens for p in prepared], dtype=np.int64
        )
        out["max_tokens"] = np.array([p.max_tokens for p in prepared], dtype=np.int64)
        return out

    def sim_limits(self) -> dict[str, int]:
        """The simulator parameters that mirror this (open) engine's limits.

        ``num_gpu_blocks`` is the number of blocks requests can hold: vLLM's ``BlockPool`` keeps
        block 0 as its null block (a placeholder never handed to a request), so one block less
        than ``cache_config.num_gpu_blocks`` (``self.num_gpu_blocks``). Under KV pressure that
        block decides when the first preemption happens (measured: docs/LIVE.md, fidelity)."""
        if not self.is_open:
            raise RuntimeError(
                "sim_limits: open the engine first (its KV geometry is resolved at start)"
            )
        return {
            "max_num_seqs": self.cfg.max_num_seqs,
            "max_num_batched_tokens": self.cfg.max_num_batched_tokens,
            "block_size": self.block_size,
            "num_gpu_blocks": max(1, self.num_gpu_blocks - NULL_BLOCKS),
            "max_model_len": self.max_model_len,
        }

    def _meta(
        self,
        prepared: list,
        raw_steps: pd.DataFrame,
        summary: dict,
        clamp: dict,
        wall: float,
        run_id: str,
        name: str,
    ) -> dict[str, Any]:
        pol = raw_steps["policy_us"].to_numpy(dtype=float) if len(raw_steps) else np.array([])
        lag = np.array(
            [p.submit_s - p.req.arrival_s for p in prepared if not math.isnan(p.submit_s)]
        )
        served = [p for p in prepared if p.finished and not p.aborted]
        out_tokens = sum(len(p.token_times) for p in prepared)
        return {
            "engine": "vllm",
            "policy": name,
            "scheduler_impl": self.cfg.scheduler_impl,
            "run_id": run_id,
            "model": self.cfg.model,
            "model_dir": str(self.model_dir),
            "process_mode": self.cfg.process_mode,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "num_gpu_blocks": self.num_gpu_blocks,
            "max_num_seqs": self.cfg.max_num_seqs,
            "max_num_batched_tokens": self.cfg.max_num_batched_tokens,
            "prefix_caching": self.cfg.enable_prefix_caching,
            "length_mode": self.cfg.length_mode,
            "n_requests": len(prepared),
            "n_finished": len(served),
            "n_aborted": len(prepared) - len(served),
            "wall_s": wall,
            "output_tokens": out_tokens,
            "throughput_tok_s": out_tokens / wall if wall > 0 else math.nan,
            "n_steps": len(raw_steps),
            "policy_us_per_step": _percentiles(pol),
            "policy_faults": int(summary.get("faults", 0)),
            "predictor": summary.get("predictor"),  # guard / injected-fault counts
            "client_faults": client_fault_counts(prepared),
            "policy_fault_messages": summary.get("fault_messages", []),
            "live_policy_state_after_run": summary.get("live_requests"),
            "submit_lag_s": _percentiles(lag),
            "clamp": clamp,
            "startup_s": self.startup_s,
            "engine_config": dataclasses.asdict(self.cfg),
        }

    # ------------------------------------------------------------------ capacity
    def capacity_rps(self, workload: Any) -> float:
        """Sustainable requests/s for the workload's length mix (short saturating probe).

        ``probe_requests`` rows drawn from the workload (seeded) all arrive at t=0 under FIFO;
        the rate is the number of requests completed while the batch was still full (until
        ``n - max_num_seqs`` had finished) divided by that time, so the draining tail where
        the batch empties does not lower the estimate.
        """
        df = workload_frame(workload)
        n = min(self.cfg.probe_requests, len(df))
        if n < 1:
            raise ValueError("capacity_rps: the workload has no requests")
        rng = np.random.default_rng(self.cfg.seed)
        rows = np.sort(rng.choice(len(df), size=n, replace=False))
        probe = df.iloc[rows].copy().reset_index(drop=True)
        probe["arrival_s"] = 0.0
        res = self.run(probe, FIFOPolicy(), policy_name="capacity_probe")
        fin = np.sort(res.records["finish_s"].to_numpy(dtype=float))
        fin = fin[np.isfinite(fin)]
        if fin.size == 0:
            raise RuntimeError("capacity probe: no request finished")
        k = max(1, fin.size - self.cfg.max_num_seqs)
        t = fin[k - 1]
        return float(k / t) if t > 0 else float(fin.size / fin[-1])

    def describe(self) -> dict[str, object]:
        d = {
            f"engine.{k}": v
            for k, v in dataclasses.asdict(self.cfg).items()
            if not isinstance(v, dict)
        }
        d["engine"] = "vllm"
        return d

    def provenance(self) -> dict[str, Any]:
        """Where and with what this engine measures: device, CPU, threads, load, versions and
        model (kept with measurements such as fitted step-time profiles)."""
        import datetime as dt
        import platform

        import torch

        try:
            import vllm

            vllm_version = vllm.__version__
        except Exception:  # pragma: no cover - vllm is installed wherever this runs
            vllm_version = "unknown"
        return {
            "measured_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vllm": vllm_version,
            "model": self.cfg.model,
            "model_dir": str(self.model_dir),
            "tiny_spec": dict(self.cfg.tiny),
            "process_mode": self.cfg.process_mode,
        }


def steps_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The scheduler's step lines in the shared STEP_COLUMNS layout (plus live-only columns).

    ``duration_s`` is the step's full wall time as the simulator models it: from this step's
    ``schedule()`` to the next one's when the engine went straight on (``busy``: requests were
    left after the step), which includes output processing and the client loop; otherwise (the
    engine went idle) from ``schedule()`` to the end of ``update_from_output()``.

    Live-only columns: ``exec_s`` (model time), ``sched_s``, ``update_s``, ``gap_s`` (to the
    next step's start), ``busy``, ``policy_us``, ``kv_read_tokens`` (context attended, the
    cost model's ``kv_tokens``), ``prefill_pairs``, ``prefill_seqs``, ``policy_cpu_us`` and
    ``cpu_s`` (the policy's and the whole step's CPU time on the engine thread).
    """
    from data.schema import TIERS

    if raw.empty:
        return pd.DataFrame({k: pd.Series(dtype=v[0]) for k, v in STEP_COLUMNS.items()})
    raw = raw.sort_values("t_start", kind="stable").reset_index(drop=True)
    t = raw["t_start"].astype("float64")
    gap = t.shift(-1) - t  # NaN for the last step
    own = raw["sched_s"] + raw["exec_s"]
    if "t_end" in raw.columns:
        own = (raw["t_end"] - t).where(raw["t_end"].notna(), own)
        busy = (raw["unfinished_after"] > 0) & gap.notna()
    else:
        busy = pd.Series(False, index=raw.index)
    out = pd.DataFrame(
        {
            "time_s": t,
            "duration_s": gap.where(busy, own).astype("float64"),
            "prefill_tokens": raw["prefill_tokens"].astype("int64"),
            "decode_seqs": raw["decode_seqs"].astype("int64"),
            "kv_tokens": raw["kv_tokens_held"].astype("int64"),
            "preemptions": (raw["num_preempted"] + raw["num_policy_preempted"]).astype("int64"),
            "admitted": raw["num_admitted"].astype("int64"),
        }
    )
    for t in TIERS:
        out[f"waiting_{t}"] = raw["waiting_by_tier"].map(lambda d, t=t: int(d.get(t, 0)))
        out[f"running_{t}"] = raw["running_by_tier"].map(lambda d, t=t: int(d.get(t, 0)))
    out["exec_s"] = raw["exec_s"].astype("float64")
    out["sched_s"] = raw["sched_s"].astype("float64")
    out["update_s"] = raw["update_s"].astype("float64") if "update_s" in raw else np.nan
    out["gap_s"] = gap.astype("float64")
    out["busy"] = busy.astype(bool)
    out["policy_us"] = raw["policy_us"].astype("float64")
    for col in ("policy_cpu_us", "cpu_s"):  # thread CPU time (absent in older sink lines)
        out[col] = raw[col].astype("float64") if col in raw else np.nan
    out["kv_read_tokens"] = raw["kv_tokens"].astype("int64")
    out["prefill_pairs"] = raw["prefill_pairs"].astype("float64")
    out["prefill_seqs"] = raw["prefill_seqs"].astype("int64")
    out["policy_preemptions"] = raw["num_policy_preempted"].astype("int64")
    return out


def recompute_counts(final: list[SchedRequest], raw_steps: pd.DataFrame) -> dict[str, int]:
    """The recompute tax's terms, as the simulator's meta has them: KV tokens thrown away by
    preemptions (the mirrors' ``recomputed_tokens``, as synced at each preempting step's start)
    and tokens computed in all (prefill chunks plus one per decode)."""
    computed = 0
    if len(raw_steps):
        computed = int(raw_steps["prefill_tokens"].sum() + raw_steps["decode_seqs"].sum())
    return {
        "recomputed_tokens": int(sum(r.recomputed_tokens for r in final)),
        "computed_tokens": computed,
    }
