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

This module owns the engine's life (start with our scheduler class, event-loop thread, shut
down) and its public API. Around it: the parameters (:mod:`scheduler.live.engine_config`),
one run (:mod:`scheduler.live.run_loop`), what a run returns (:mod:`scheduler.live.run_records`)
and a policy as a spec (:mod:`scheduler.live.policy_spec`).
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scheduler.engine import EngineResult, requests_from_frame, workload_frame
from scheduler.live.driver import META_KEY
from scheduler.live.engine_config import VllmEngineConfig, engine_config
from scheduler.live.policy_spec import policy_spec
from scheduler.live.replay import prepare_requests
from scheduler.live.run_loop import serve_run
from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model
from scheduler.policies.base import Policy
from scheduler.policies.fifo import FIFOPolicy

logger = logging.getLogger("driftsched.live")

NULL_BLOCKS = 1  # KV blocks vLLM's BlockPool reserves (its null block, block id 0)


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


class VllmEngine:
    """The live engine (see the module docstring)."""

    name = "vllm"

    Config = VllmEngineConfig  # its parameters (report.config_schema reads them)

    def __init__(self, **cfg: Any) -> None:
        self.cfg = engine_config(cfg)  # validated: a bad key fails before any engine starts
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
    supports_admission_headroom = True  # the adapter's _drift_gate (policies.base)

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

    @property
    def llm(self) -> Any:
        """The vLLM client: ``LLMEngine`` (inprocess) or ``AsyncLLM`` (multiprocess); None
        while closed."""
        return self._llm

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
                    self._llm = self.call(self._make_async(vcfg))
                else:
                    from vllm.v1.engine.llm_engine import LLMEngine

                    self._llm = LLMEngine.from_vllm_config(vcfg)
                    if not self.stock:  # the sink is flushed after each replay (serve_run)
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

    def call(self, coro: Any) -> Any:
        """Run ``coro`` on the engine's event-loop thread (multiprocess mode) and wait."""
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
    def sink_root(self) -> Path:
        """Where runs write their sink directories (``sink_dir`` or one owned temporary one)."""
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
            return serve_run(
                self,
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

    def progress_bar(self, total: int, name: str) -> Any:
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
