"""The per-request record table both engines produce (``records.parquet``).

Every metric and report is computed from this one table, so the simulator and the live vLLM
engine are compared on identical terms. One row per submitted request, finished or aborted:
nothing submitted is missing from it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from scheduler.request import SchedRequest, Status

RECORD_SCHEMA_VERSION = 1

# name -> (dtype, unit, meaning)
RECORD_COLUMNS: dict[str, tuple[str, str, str]] = {
    "request_id": ("string", "", "request id from the workload"),
    "index": ("int64", "", "row position in the workload"),
    "tenant": ("string", "", "tenant"),
    "tier": ("string", "", "premium | standard | batch"),
    "category": ("string", "", "task category from the workload"),
    "source": ("string", "", "dataset the request came from"),
    "status": ("string", "", "finished | aborted"),
    "arrival_s": ("float64", "s", "arrival time"),
    "admitted_s": ("float64", "s", "first time scheduled (NaN if never)"),
    "first_token_s": ("float64", "s", "time the first output token was produced"),
    "finish_s": ("float64", "s", "completion (or abort) time"),
    "prompt_tokens": ("int64", "tokens", "prompt length"),
    "output_tokens": ("int64", "tokens", "tokens actually generated"),
    "true_output_tokens": (
        "int64",
        "tokens",
        "true length from the trace (target in trace-driven mode)",
    ),
    "max_tokens": ("int64", "tokens", "generation cap"),
    "num_preemptions": ("int64", "", "times preempted (recompute)"),
    "n_policy_preemptions": ("int64", "", "preemptions the policy asked for"),
    "est_output_tokens": ("float64", "tokens", "admission estimate of the output length (median)"),
    "est_output_p90": ("float64", "tokens", "admission upper-quantile estimate"),
    "est_final_total": ("float64", "tokens", "last estimate of the total output length"),
    "n_estimates": ("int64", "", "number of (re-)predictions made"),
    "n_reclassified": ("int64", "", "runtime-class changes after admission"),
}


def build_records(
    requests: Iterable[SchedRequest], *, engine: str, policy: str, seed: int | None = None
) -> pd.DataFrame:
    """Turn engine request states into the record table, in workload order."""
    rows = []
    for r in requests:
        if r.status not in (Status.FINISHED, Status.ABORTED):
            raise ValueError(
                f"request {r.request_id!r} is still {r.status.value}: an engine "
                "must finish or abort every request before writing records"
            )
        rows.append(
            {
                "request_id": r.request_id,
                "index": r.index,
                "tenant": r.tenant,
                "tier": r.tier,
                "category": r.category,
                "source": r.source,
                "status": r.status.value,
                "arrival_s": r.arrival_s,
                "admitted_s": r.admitted_s,
                "first_token_s": r.first_token_s,
                "finish_s": r.finish_s,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.num_output_tokens,
                "true_output_tokens": r.true_output_tokens,
                "max_tokens": r.max_tokens,
                "num_preemptions": r.num_preemptions,
                "n_policy_preemptions": r.n_policy_preemptions,
                "est_output_tokens": r.est_output_tokens,
                "est_output_p90": r.est_output_p90,
                "est_final_total": r.est_history[-1][2] if r.est_history else np.nan,
                "n_estimates": len(r.est_history),
                "n_reclassified": r.n_reclassified,
            }
        )
    df = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    for name, (dtype, _, _) in RECORD_COLUMNS.items():
        df[name] = df[name].astype(dtype)
    df = df.sort_values("index", kind="stable").reset_index(drop=True)
    df.attrs.update(
        {
            "engine": engine,
            "policy": policy,
            "seed": seed,
            "record_schema_version": RECORD_SCHEMA_VERSION,
        }
    )
    df.insert(0, "engine", pd.Series([engine] * len(df), dtype="string"))
    df.insert(1, "policy", pd.Series([policy] * len(df), dtype="string"))
    return df


def check_records(df: pd.DataFrame, where: str = "records") -> None:
    """Raise if a record table is not in the schema (used when reading runs back)."""
    missing = [c for c in ("engine", "policy", *RECORD_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: missing record column(s) {missing}; expected the columns of "
            "scheduler.records.RECORD_COLUMNS (schema version "
            f"{RECORD_SCHEMA_VERSION})"
        )
