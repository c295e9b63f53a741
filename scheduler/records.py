"""The per-request record table both engines produce (``records.parquet``).

Every metric and report is computed from this one table, so the simulator and the live vLLM
engine are compared on identical terms. One row per submitted request, finished or aborted:
nothing submitted is missing from it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from operator import attrgetter

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


def _est_final(r: SchedRequest) -> float:
    return r.est_history[-1][2] if r.est_history else np.nan


# column -> how to read it off an ended request (RECORD_COLUMNS order)
_GETTERS: dict[str, Callable[[SchedRequest], object]] = {
    "request_id": attrgetter("request_id"),
    "index": attrgetter("index"),
    "tenant": attrgetter("tenant"),
    "tier": attrgetter("tier"),
    "category": attrgetter("category"),
    "source": attrgetter("source"),
    "status": lambda r: r.status.value,
    "arrival_s": attrgetter("arrival_s"),
    "admitted_s": attrgetter("admitted_s"),
    "first_token_s": attrgetter("first_token_s"),
    "finish_s": attrgetter("finish_s"),
    "prompt_tokens": attrgetter("prompt_tokens"),
    "output_tokens": attrgetter("num_output_tokens"),
    "true_output_tokens": attrgetter("true_output_tokens"),
    "max_tokens": attrgetter("max_tokens"),
    "num_preemptions": attrgetter("num_preemptions"),
    "n_policy_preemptions": attrgetter("n_policy_preemptions"),
    "est_output_tokens": attrgetter("est_output_tokens"),
    "est_output_p90": attrgetter("est_output_p90"),
    "est_final_total": _est_final,
    "n_estimates": lambda r: len(r.est_history),
    "n_reclassified": attrgetter("n_reclassified"),
}


def build_records(
    requests: Iterable[SchedRequest], *, engine: str, policy: str, seed: int | None = None
) -> pd.DataFrame:
    """Turn engine request states into the record table, in workload (``index``) order.

    Built column by column from flat lists (no per-row dicts: at a million requests a dict per
    row costs gigabytes), each list dropped once converted. Every request must be ended."""
    reqs = list(requests)
    for r in reqs:
        if r.status is not Status.FINISHED and r.status is not Status.ABORTED:
            raise ValueError(
                f"request {r.request_id!r} is still {r.status.value}: an engine "
                "must finish or abort every request before writing records"
            )
    if any(b.index < a.index for a, b in itertools.pairwise(reqs)):
        reqs.sort(key=attrgetter("index"))  # stable: equal indices keep their order
    n = len(reqs)
    data = {}
    for name, (dtype, _, _) in RECORD_COLUMNS.items():
        v = list(map(_GETTERS[name], reqs))
        data[name] = pd.array(v, dtype=dtype) if dtype == "string" else np.asarray(v, dtype=dtype)
        del v
    df = pd.DataFrame(data, columns=list(RECORD_COLUMNS))
    df.attrs.update(
        {
            "engine": engine,
            "policy": policy,
            "seed": seed,
            "record_schema_version": RECORD_SCHEMA_VERSION,
        }
    )
    df.insert(0, "engine", pd.Series([engine] * n, dtype="string"))
    df.insert(1, "policy", pd.Series([policy] * n, dtype="string"))
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
