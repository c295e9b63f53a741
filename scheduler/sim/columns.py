"""Column-wise output tables of the simulator: the step table (here) and the record table
(``records_frame``: :func:`scheduler.records.build_records`, the builder both engines share).

The step table is accumulated as flat typed arrays (no per-row dicts) and turned into a
DataFrame once: at a million steps a dict per row costs gigabytes, an array of ints megabytes.
"""

from __future__ import annotations

from array import array

import numpy as np
import pandas as pd

from data.schema import TIERS
from scheduler.engine import STEP_COLUMNS
from scheduler.records import build_records as records_frame  # the one record-table builder

__all__ = ["SEGMENT_COLUMNS", "StepColumns", "records_frame"]

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
