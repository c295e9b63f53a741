"""Column-wise output tables of the simulator: the step table and the record table.

Both are accumulated as flat Python lists (no per-row dicts) and turned into DataFrames once:
at a million requests a dict per row costs gigabytes, a list of ints a few megabytes.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable, Sequence
from operator import attrgetter

import numpy as np
import pandas as pd

from data.schema import TIERS
from scheduler.engine import STEP_COLUMNS
from scheduler.records import RECORD_COLUMNS, RECORD_SCHEMA_VERSION
from scheduler.request import SchedRequest, Status

# step-table columns that stay constant over a fast-forward window, in segment-tuple order
SEGMENT_COLUMNS: tuple[str, ...] = (
    "prefill_tokens",
    "decode_seqs",
    "preemptions",
    "admitted",
    *(f"waiting_{t}" for t in TIERS),
    *(f"running_{t}" for t in TIERS),
)


class StepColumns:
    """The rows of ``steps.parquet`` (:data:`scheduler.engine.STEP_COLUMNS`).

    Time, duration and KV occupancy change every step and are appended per step (``t``,
    ``dt``, ``kv``); the other columns are constant over a decode fast-forward window, so they
    are appended once per run of ``k`` identical rows as ``(k, *values)`` in
    :data:`SEGMENT_COLUMNS` order (a general step is a segment of one row).
    """

    def __init__(self) -> None:
        # typed arrays: 8 bytes a value instead of a pointer plus a boxed float (~4x less at
        # millions of steps)
        self.t = array("d")  # step start (s)
        self.dt = array("d")  # step duration (s)
        self.kv = array("q")  # KV tokens held after the step
        self.seg = array("q")  # flat (rows, *SEGMENT_COLUMNS values) per segment

    def frame(self) -> pd.DataFrame:
        """The step table; rows of a step that raised half-way are left out.

        Built with one int64 block filled column by column (no per-column arrays stacked
        afterwards): at millions of steps the transient copies would double peak memory."""
        width = 1 + len(SEGMENT_COLUMNS)
        seg = np.frombuffer(self.seg, dtype=np.int64)
        seg = seg[: len(seg) // width * width].reshape(-1, width)
        reps = seg[:, 0]
        n = min(int(reps.sum()), len(self.t), len(self.dt), len(self.kv))
        floats = [c for c, (dtype, _, _) in STEP_COLUMNS.items() if dtype == "float64"]
        ints = [c for c in STEP_COLUMNS if c not in floats]
        if floats != ["time_s", "duration_s"] or any(STEP_COLUMNS[c][0] != "int64" for c in ints):
            raise AssertionError(f"StepColumns.frame: unexpected STEP_COLUMNS layout {floats}")
        block = np.empty((n, len(ints)), dtype=np.int64, order="F")  # column-major: one block
        for j, name in enumerate(ints):
            if name == "kv_tokens":
                block[:, j] = np.frombuffer(self.kv, dtype=np.int64)[:n]
            else:
                col = 1 + SEGMENT_COLUMNS.index(name)
                block[:, j] = np.repeat(seg[:, col], reps)[:n]
        steps = pd.DataFrame(block, columns=ints, copy=False)
        steps.insert(0, "time_s", np.frombuffer(self.t, dtype=np.float64)[:n].copy())
        steps.insert(1, "duration_s", np.frombuffer(self.dt, dtype=np.float64)[:n].copy())
        return steps


def _est_final(r: SchedRequest) -> float:
    return r.est_history[-1][2] if r.est_history else np.nan


def records_frame(
    requests: Sequence[SchedRequest], *, engine: str, policy: str, seed: int | None = None
) -> pd.DataFrame:
    """The record table of ``scheduler.records.build_records`` (identical frame, attrs and
    dtypes), built column by column. ``requests`` must be ended and in ``index`` order."""
    for r in requests:
        if r.status is not Status.FINISHED and r.status is not Status.ABORTED:
            raise ValueError(
                f"request {r.request_id!r} is still {r.status.value}: an engine "
                "must finish or abort every request before writing records"
            )
    idx = [r.index for r in requests]
    if any(b <= a for a, b in itertools.pairwise(idx)):
        raise ValueError("records_frame: requests must be in ascending index order")
    # one column at a time, each list dropped once converted (bounded transient memory)
    get: dict[str, Callable[[SchedRequest], object]] = {
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
    n = len(requests)
    data = {}
    for name, (dtype, _, _) in RECORD_COLUMNS.items():
        v = list(map(get[name], requests))
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
