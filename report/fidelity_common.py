"""What the two sim-vs-live comparisons share (:mod:`report.fidelity`, the latency table, and
:mod:`report.preemption_fidelity`, preemptions under a small KV cache): the replayed-load cost
model that gives the simulator the live run's slowdown, the workload rewrites both apply to what
the live engine serves, and the JSON-safe conversion of their metadata."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd


class ReplayedLoad:
    """A cost model times the live run's slowdown at the same (simulated) time.

    ``factor[k]`` = measured / predicted wall time of the live run's busy steps that started
    in window ``k`` (``window_s`` long; 1 where a window has no steps). The simulator's
    ``observer`` hook keeps ``now`` (the end of the last simulated step), so a step is scaled
    by the window it starts in; an idle jump to the next arrival is seen one step late, which
    the 1 s windows make negligible. A diagnostic for fidelity runs, not a profile.
    """

    def __init__(self, base: Any, live_steps: pd.DataFrame, window_s: float = 1.0) -> None:
        from scheduler.sim.calibrate import usable_steps

        s, y = usable_steps(live_steps)
        pred = np.array(
            [
                base.step_time(a, b, c, d, prefill_seqs=e)
                for a, b, c, d, e in zip(
                    s["prefill_tokens"],
                    s["decode_seqs"],
                    s["kv_read_tokens"],
                    s["prefill_pairs"],
                    s["prefill_seqs"],
                )
            ]
        )
        k = (s["time_s"].to_numpy(float) // window_s).astype(np.int64)
        n = int(k.max()) + 1 if len(k) else 1
        meas = np.bincount(k, weights=y, minlength=n)
        model = np.bincount(k, weights=pred, minlength=n)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(model > 0, meas / model, 1.0)
        self.base = base
        self.window_s = float(window_s)
        self.factor = f
        self.now = 0.0

    def observe(self, state: Any) -> None:
        self.now = float(state.now)

    def step_time(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        kv_tokens: int,
        prefill_pairs: float = 0.0,
        prefill_seqs: int = 0,
    ) -> float:
        k = min(int(self.now // self.window_s), len(self.factor) - 1)
        t = self.base.step_time(
            prefill_tokens, decode_seqs, kv_tokens, prefill_pairs, prefill_seqs=prefill_seqs
        )
        return t * float(self.factor[k])

    def describe(self) -> dict[str, object]:
        f = self.factor
        return {
            **self.base.describe(),
            "load_window_s": self.window_s,
            "load_factor_p10": float(np.percentile(f, 10)),
            "load_factor_p90": float(np.percentile(f, 90)),
        }


def with_requests(workload: Any, frame: pd.DataFrame) -> Any:
    """``workload`` (a ``Workload`` or a request DataFrame) with its requests replaced."""
    if isinstance(workload, pd.DataFrame):
        return frame
    return dataclasses.replace(workload, requests=frame)


def at_rate(workload: Any, rate: float) -> Any:
    """``Workload.at_rate`` for a ``Workload`` or a request DataFrame (same rescaling)."""
    if not isinstance(workload, pd.DataFrame):
        return workload.at_rate(rate)
    a = workload["arrival_s"].to_numpy(dtype=np.float64)
    span = float(a[-1] - a[0]) if len(a) > 1 else 0.0
    if span <= 0:
        raise ValueError("fidelity: need at least two distinct arrival times to set a rate")
    out = workload.copy()
    out["arrival_s"] = a * (((len(a) - 1) / span) / rate)
    return out


def jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [jsonable(v) for v in o]
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "item"):
        return jsonable(o.item())
    if isinstance(o, str | int | bool) or o is None:
        return o
    return str(o)
