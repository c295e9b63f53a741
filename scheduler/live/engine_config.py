"""The live engine's parameters (``conf/engine/vllm.yaml``): :class:`VllmEngineConfig`.

Every field is checked (:meth:`VllmEngineConfig.validate`, :func:`engine_config`) before any
engine starts, so a bad value fails with the key's name and what it expects, not deep inside
vLLM's start-up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.live.replay import LENGTH_MODES, PROMPT_SOURCES
from scheduler.live.tiny_model import TinyModelSpec

PROCESS_MODES = ("inprocess", "multiprocess")
SCHEDULER_IMPLS = ("driftsched", "vllm_fcfs", "vllm_priority")
DTYPES = ("auto", "float32", "bfloat16", "float16")


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


def engine_config(cfg: dict[str, Any]) -> VllmEngineConfig:
    """The validated config from ``VllmEngine``'s keyword arguments (a Hydra ``_target_`` key
    is dropped); unknown keys are refused with the list of known ones."""
    cfg = dict(cfg)
    cfg.pop("_target_", None)
    known = {f.name for f in dataclasses.fields(VllmEngineConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(
            f"engine config: unknown key(s) {unknown}; expected some of "
            f"{sorted(known)} (conf/engine/vllm.yaml)"
        )
    out = VllmEngineConfig(**cfg)
    out.validate()
    return out
