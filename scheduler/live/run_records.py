"""What a live run returns: the record table, the steps table and the run's meta.

The client's view of each request (``replay.Prepared``: submission, token times, ends) is
merged with the scheduler's (its sink: admission, preemptions, estimates; nothing for vLLM's
stock scheduler, :data:`STOCK_SCHED_FIELDS`) into the shared record table
(:func:`scheduler.records.build_records`); the scheduler's step lines become the shared steps
layout (:func:`steps_table`). A run cut short keeps the requests that ended
(:func:`partial_result`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scheduler.engine import STEP_COLUMNS, EngineResult
from scheduler.live.replay import (
    ClampReport,
    Prepared,
    client_fault_counts,
    merge_requests,
    partial_requests,
    read_sink,
    read_sink_partial,
    read_steps,
)
from scheduler.records import build_records
from scheduler.request import SchedRequest

if TYPE_CHECKING:
    from scheduler.live.engine import VllmEngine


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


def run_result(
    eng: VllmEngine,
    prepared: list[Prepared],
    sink: Path,
    clamp: ClampReport,
    wall: float,
    run_id: str,
    name: str,
    seed: int | None,
) -> EngineResult:
    """A finished replay's result: client rows merged with the scheduler's sink lines (every
    submitted request's; waits for lines still being written), its steps and its meta."""
    submitted = [p.req.request_id for p in prepared if not math.isnan(p.submit_s)]
    if eng.stock:  # no adapter, no sink: the client's view only
        sched = {rid: dict(STOCK_SCHED_FIELDS) for rid in submitted}
    else:
        sched = read_sink(sink, submitted)
    final = merge_requests(prepared, sched)
    records = build_records(final, engine="vllm", policy=name, seed=seed)
    raw_steps = read_steps(sink)
    summary: dict[str, Any] = {}
    if (sink / "sched_summary.json").is_file():
        summary = json.loads((sink / "sched_summary.json").read_text())
    meta = run_meta(eng, prepared, raw_steps, summary, clamp.as_dict(), wall, run_id, name)
    meta.update(recompute_counts(final, raw_steps))
    return EngineResult(records=records, steps=steps_table(raw_steps), meta=meta)


def partial_result(
    prepared: list[Prepared], sink: Path, name: str, seed: int | None, exc: BaseException
) -> EngineResult:
    """The records of a run that failed mid-replay, in the simulator's partial-result form
    (``scheduler.sim.engine.partial_result``): one row per request that had ended; requests
    cut off in flight are left out and counted (with the tokens they received) in meta.
    (The caller flushed the scheduler's buffered lines when it could.)"""
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


def run_meta(
    eng: VllmEngine,
    prepared: list[Prepared],
    raw_steps: pd.DataFrame,
    summary: dict,
    clamp: dict,
    wall: float,
    run_id: str,
    name: str,
) -> dict[str, Any]:
    """The run's meta: the engine as it served (sizes, model, config), the client's counts
    (requests, tokens, submit lag, faults) and the scheduler's (policy time, faults)."""
    pol = raw_steps["policy_us"].to_numpy(dtype=float) if len(raw_steps) else np.array([])
    lag = np.array([p.submit_s - p.req.arrival_s for p in prepared if not math.isnan(p.submit_s)])
    served = [p for p in prepared if p.finished and not p.aborted]
    out_tokens = sum(len(p.token_times) for p in prepared)
    return {
        "engine": "vllm",
        "policy": name,
        "scheduler_impl": eng.cfg.scheduler_impl,
        "run_id": run_id,
        "model": eng.cfg.model,
        "model_dir": str(eng.model_dir),
        "process_mode": eng.cfg.process_mode,
        "max_model_len": eng.max_model_len,
        "block_size": eng.block_size,
        "num_gpu_blocks": eng.num_gpu_blocks,
        "max_num_seqs": eng.cfg.max_num_seqs,
        "max_num_batched_tokens": eng.cfg.max_num_batched_tokens,
        "prefix_caching": eng.cfg.enable_prefix_caching,
        "length_mode": eng.cfg.length_mode,
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
        "startup_s": eng.startup_s,
        "engine_config": dataclasses.asdict(eng.cfg),
    }


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"p50": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan}
    return {
        "p50": float(np.percentile(x, 50)),
        "p99": float(np.percentile(x, 99)),
        "mean": float(x.mean()),
        "max": float(x.max()),
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
