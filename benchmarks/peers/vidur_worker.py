"""Run Vidur (PyPI ``vidur``, microsoft/vidur) on a CSV trace; print ``BENCH_JSON {...}``.

    .venv-peers/bin/python benchmarks/peers/vidur_worker.py TRACE.csv C0 C_TOKEN C_KV C_PAIR KV_BLOCKS

What Vidur needs that cannot be had here, and what it gets instead: Vidur's execution-time
predictor trains scikit-learn models on per-operator GPU profiles that it downloads from the
Hugging Face hub (``model_profiling_dataset``); those are not obtainable on this offline box.
So this worker registers an *analytic* predictor in Vidur's own registry (replacing its
linear-regression predictor) that returns DriftSched's fitted step-time model (the four
coefficients passed on the command line, ``LinearCostModel`` in ``scheduler/sim/cost.py``),
spread over Vidur's per-layer operator slots. Everything else is Vidur's own: request entities,
the Sarathi chunked-prefill replica scheduler (chunk = 2,048 tokens, 256 sequences, the same
number of KV blocks as DriftSched's default engine), the event heap, and its metrics store (with
plots, traces and file output switched off). What is timed is Vidur's event loop
(``Simulator.run``), the same span as DriftSched's ``SimEngine.run``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def main(path: str, c0: float, c_tok: float, c_kv: float, c_pair: float, blocks: int) -> None:
    import pandas as pd
    from vidur.simulator import Simulator

    stats = register_analytic_predictor(c0, c_tok, c_kv, c_pair)
    tmp = tempfile.mkdtemp(prefix="vidur-bench-")
    df = pd.read_csv(path)
    trace, max_tokens = write_vidur_trace(df, tmp)
    t0 = time.perf_counter()
    cfg = simulation_config(trace, tmp, blocks, max_tokens)
    sim = Simulator(cfg)
    setup = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    sim.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out = {
        "sim_s": wall,
        "sim_cpu_s": cpu,
        "setup_s": setup,
        "requests": len(df),
        "makespan_s": float(sim._time),
        "steps": stats["steps"],
        "tokens_computed": stats["q_tokens"],
    }
    print("BENCH_JSON " + json.dumps(out), flush=True)


def register_analytic_predictor(
    c0: float, c_tok: float, c_kv: float, c_pair: float
) -> dict[str, int]:
    """Put ``AnalyticPredictor`` in Vidur's registry in place of its linear-regression
    predictor; returns the counters it fills while Vidur runs (steps, query tokens)."""
    from vidur.execution_time_predictor import ExecutionTimePredictorRegistry
    from vidur.execution_time_predictor.base_execution_time_predictor import (
        BaseExecutionTimePredictor,
    )
    from vidur.types import ExecutionTimePredictorType

    class AnalyticPredictor(BaseExecutionTimePredictor):
        """DriftSched's linear step-time model in Vidur's per-layer operator slots (ms)."""

        def __init__(self, predictor_config, replica_config, cache_config) -> None:
            super().__init__(predictor_config, replica_config, cache_config)
            self._layers = replica_config.num_layers_per_pipeline_stage

        def _per_layer_ms(self, seconds: float) -> float:
            return seconds * 1e3 / self._layers

        def _get_mlp_layer_up_proj_execution_time(self, batch) -> float:
            # c0 + c_token * tokens: weight streaming and linear-layer FLOPs (one call per step)
            STATS["steps"] += 1
            STATS["q_tokens"] += batch.total_num_q_tokens
            return self._per_layer_ms(c0 + c_tok * batch.total_num_q_tokens)

        def _get_attention_decode_execution_time(self, batch) -> float:
            # c_kv * context attended (Vidur's num_kv_tokens: tokens before this step)
            kv = sum(batch.num_kv_tokens) + batch.total_num_q_tokens
            return self._per_layer_ms(c_kv * kv)

        def _get_attention_prefill_execution_time(self, batch) -> float:
            pairs = 0.0
            for q, kv in zip(batch.num_q_tokens, batch.num_kv_tokens):
                if q > 1:
                    pairs += q * (kv + 0.5 * q)
            return self._per_layer_ms(c_pair * pairs)

        def _zero(self, batch) -> float:
            return 0.0

        _get_attention_layer_pre_proj_execution_time = _zero
        _get_attention_layer_post_proj_execution_time = _zero
        _get_attention_rope_execution_time = _zero
        _get_attention_kv_cache_save_execution_time = _zero
        _get_mlp_layer_down_proj_execution_time = _zero
        _get_mlp_layer_act_execution_time = _zero
        _get_tensor_parallel_communication_time = _zero
        _get_pipeline_parallel_communication_time = _zero
        _get_mlp_norm_layer_act_execution_time = _zero
        _get_attn_norm_layer_act_execution_time = _zero
        _get_add_layer_act_execution_time = _zero
        _get_kv_parallel_communication_time = _zero

    STATS = {"steps": 0, "q_tokens": 0}
    key = ExecutionTimePredictorType.LINEAR_REGRESSION
    ExecutionTimePredictorRegistry.unregister(key)
    ExecutionTimePredictorRegistry.register(key, AnalyticPredictor)

    return STATS


def write_vidur_trace(df: pd.DataFrame, tmp: str) -> tuple[str, int]:
    """The trace as Vidur's CSV (in ``tmp``); returns its path and the max tokens per request."""
    import pandas as pd

    max_tokens = int((df["prompt_tokens"] + df["output_tokens"]).max()) + 1
    trace = os.path.join(tmp, "trace.csv")
    pd.DataFrame(
        {
            "Date": "bench",
            "Time": df["arrival_s"],
            "PromptTokenCount": df["prompt_tokens"].clip(lower=1),
            # Vidur asserts on 1-token outputs (its prefill step already emits the first token and
            # then schedules one decode more): such requests get 2 here, and are counted
            "CompletionTokenCount": df["output_tokens"].clip(lower=2),
        }
    ).to_csv(trace, index=False)
    return trace, max_tokens


def simulation_config(trace: str, tmp: str, blocks: int, max_tokens: int) -> Any:
    """Vidur's config: one replica, Sarathi chunked prefill, ``blocks`` KV blocks, no file output."""
    from vidur.config import (
        CacheConfig,
        ClusterConfig,
        LinearRegressionExecutionTimePredictorConfig,
        MetricsConfig,
        ReplicaConfig,
        SarathiSchedulerConfig,
        SimulationConfig,
        TraceRequestGeneratorConfig,
    )

    return SimulationConfig(
        log_level="warning",
        cluster_config=ClusterConfig(
            num_replicas=1,
            replica_config=ReplicaConfig(
                model_name="meta-llama/Llama-3-8B",
                num_pipeline_stages=1,
                tensor_parallel_size=1,
                device="a100",  # only sizes memory; num_blocks below fixes the KV cache
            ),
            cache_config=CacheConfig(block_size=16, num_blocks=blocks),
            replica_scheduler_config=SarathiSchedulerConfig(batch_size_cap=256, chunk_size=2048),
        ),
        request_generator_config=TraceRequestGeneratorConfig(
            trace_file=trace,
            date="bench",
            prefill_scale_factor=1.0,
            decode_scale_factor=1.0,
            time_scale_factor=1.0,
            max_tokens=max_tokens,
        ),
        execution_time_predictor_config=LinearRegressionExecutionTimePredictorConfig(
            cache_dir=os.path.join(tmp, "cache")
        ),
        metrics_config=MetricsConfig(
            write_metrics=False,
            write_json_trace=False,
            enable_chrome_trace=False,
            store_plots=False,
            store_request_metrics=True,
            store_batch_metrics=False,
            store_utilization_metrics=False,
            output_dir=tmp,
        ),
    )


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], float(a[1]), float(a[2]), float(a[3]), float(a[4]), int(a[5]))
