"""The engine protocol both engines (``scheduler.sim`` and ``scheduler.live``) implement.

An engine is built by ``hydra.utils.instantiate`` from ``conf/engine/<name>.yaml`` and offers:

* ``run(workload, policy) -> EngineResult``: serve every request of the workload (a
  ``data.workload.Workload`` or a trace DataFrame with ``arrival_s``) in arrival time, letting the
  policy order admission and preemption (contract in ``scheduler/policies/base.py``), and return
  the record table (``scheduler.records``), a per-step table (:data:`STEP_COLUMNS`) and metadata;
* ``capacity_rps(workload) -> float``: the sustainable request rate for the workload's length
  mix, so an evaluation can set load as a utilisation of capacity;
* ``describe() -> dict``: flat parameters for logs.

Engines must not keep state between ``run`` calls (sweeps run many jobs in one process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from data.schema import TIERS
from scheduler.policies.base import Policy
from scheduler.request import SchedRequest

# name -> (dtype, unit, meaning) of steps.parquet
STEP_COLUMNS: dict[str, tuple[str, str, str]] = {
    "time_s": ("float64", "s", "step start"),
    "duration_s": ("float64", "s", "step duration"),
    "prefill_tokens": ("int64", "tokens", "prompt (or recompute) tokens computed this step"),
    "decode_seqs": ("int64", "", "sequences that decoded one token this step"),
    "kv_tokens": ("int64", "tokens", "KV tokens held after the step (blocks * block_size)"),
    "preemptions": ("int64", "", "requests preempted this step"),
    "admitted": ("int64", "", "requests admitted from the waiting queue this step"),
    **{f"waiting_{t}": ("int64", "", f"waiting {t} requests at step start") for t in TIERS},
    **{f"running_{t}": ("int64", "", f"running {t} requests in the step") for t in TIERS},
}


@dataclass
class EngineResult:
    records: pd.DataFrame  # scheduler.records.RECORD_COLUMNS, one row per request
    steps: pd.DataFrame  # STEP_COLUMNS, one row per engine step (may be empty for live engines)
    meta: dict[str, Any] = field(default_factory=dict)  # engine parameters and run statistics


class Engine(Protocol):
    """What the job layer (``report.jobs``) relies on; both engines implement all of it.

    ``with engine:`` starts it (the live engine loads the model once for the capacity probe and
    every policy; the simulator holds nothing) and shuts it down, also when a run fails.
    """

    name: str  # "sim" | "vllm": records' and summaries' ``engine`` field
    max_requests: int | None  # serve only the workload's head (live on CPU); None: all of it
    supports_live_faults: bool  # faults.client / faults.engine (scheduler.faults) are possible
    supports_admission_headroom: bool  # a policy's admission gate (scheduler.policies.base)

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(
        self, workload: Any, policy: Policy, *, faults: Any = None, progress: str | None = None
    ) -> EngineResult:
        """Serve the workload under the policy: the per-request record table, the step table
        and run metadata. ``faults``: a ``FaultPlan`` or None; ``progress``: a label for quiet
        progress output. A failed run raises with ``exc.partial_result`` (the records so far)."""
        ...

    def capacity_rps(self, workload: Any) -> float:
        """Sustainable request rate for the workload's length mix (req/s)."""
        ...

    def describe(self) -> dict[str, object]:
        """Flat engine parameters (summaries, wandb config)."""
        ...


def workload_frame(workload: Any) -> pd.DataFrame:
    """The request table of a ``Workload`` (``.requests``) or a DataFrame passed directly."""
    df = workload.requests if hasattr(workload, "requests") else workload
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"expected a data.workload.Workload or a DataFrame, got {type(workload).__name__}"
        )
    missing = [
        c
        for c in ("request_id", "tenant", "tier", "arrival_s", "prompt_tokens", "output_tokens")
        if c not in df.columns
    ]
    if missing:
        raise ValueError(
            f"workload {getattr(workload, 'name', '<table>')!r}: missing column(s) "
            f"{missing} (see data/schema.py)"
        )
    a = df["arrival_s"].to_numpy(dtype=np.float64)
    if len(a) and (not np.isfinite(a).all() or (np.diff(a) < 0).any() or a[0] < 0):
        raise ValueError("workload arrival_s must be finite, >= 0 and sorted ascending")
    return df


def _seconds(v: object) -> float:
    return math.nan if v is None or pd.isna(v) else float(v)  # type: ignore[arg-type]


def requests_from_frame(df: pd.DataFrame) -> list[SchedRequest]:
    """One fresh :class:`SchedRequest` per row (the engine's private copy of the workload)."""
    n = len(df)

    def col(name: str, default: object) -> list:
        return df[name].tolist() if name in df.columns else [default] * n

    prompts = col("prompt", None)
    max_tokens = col("max_tokens", None)
    outputs = col("output_text", None)
    slo_ttft = col("slo_ttft_s", math.nan)  # the request's own target (its tenant's), s
    out = []
    for i, (rid, ten, tier, cat, src, model, arr, p, o, mt, txt) in enumerate(
        zip(
            df["request_id"].tolist(),
            df["tenant"].tolist(),
            df["tier"].tolist(),
            col("category", "unknown"),
            col("source", "unknown"),
            col("model", "unknown"),
            df["arrival_s"].tolist(),
            df["prompt_tokens"].tolist(),
            df["output_tokens"].tolist(),
            max_tokens,
            prompts,
        )
    ):
        mt = int(o) if mt is None or pd.isna(mt) else int(mt)
        out.append(
            SchedRequest(
                request_id=str(rid),
                index=i,
                tenant=str(ten),
                tier=str(tier),
                category=str(cat),
                source=str(src),
                model=str(model),
                prompt=None if txt is None or pd.isna(txt) else txt,
                prompt_tokens=int(p),
                max_tokens=mt,
                arrival_s=float(arr),
                true_output_tokens=int(o),
                output_text=outputs[i] if isinstance(outputs[i], str) else None,
                slo_ttft_s=_seconds(slo_ttft[i]),
            )
        )
    return out
