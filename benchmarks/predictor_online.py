"""Online adaptation measured on a served stream (used by ``benchmarks.predictor_report``).

A fluid continuous-batching model: ``concurrency`` requests run at once, each gaining one
token per decode step; when one finishes the next request of the stream is admitted. At every
completion the calibrator sees the finished request (exact) and, for the censored variants,
every running request's attained tokens (censored). Admission-time corrected predictions give
the online p90 coverage; at checkpoints (completed requests) the current corrections are
applied to a fixed evaluation set of the same generator (requests not in the stream) for MAE
and tau.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from predictor.censored import CensoredCalibrator
from predictor.metrics import coverage, kendall_tau, mae
from predictor.online import OnlineRecalibrator
from predictor.refit import IncrementalRefit

CHECKPOINTS = (0, 50, 100, 200, 500, 1000)


def groups_of(df: pd.DataFrame) -> list[Hashable]:
    """Calibration group of each row: (served model, tenant)."""
    return list(zip(df["model"].astype(str), df["tenant"].astype(str)))


@dataclass
class StreamResult:
    checkpoints: list[dict[str, Any]]  # one per checkpoint: completed, tokens, mae, tau, ...
    admitted_pred: np.ndarray  # (n, 2) corrected prediction at each request's admission
    lengths: np.ndarray  # (n,)
    order: np.ndarray  # completion order (stream indices)


@dataclass
class _EvalSet:
    """The fixed evaluation rows scored at every checkpoint."""

    F: Any  # their features (refits re-predict from them)
    y: np.ndarray  # (m,) true lengths
    groups: list[Hashable]  # calibration group of each row
    raw: np.ndarray  # (m, 2) the served model's raw (p50, p90)

    @classmethod
    def of(cls, est: Any, rows: pd.DataFrame | None) -> _EvalSet | None:
        if rows is None:
            return None
        F = est.featurize(rows)
        y = rows["output_tokens"].to_numpy(np.float64)
        return cls(F, y, groups_of(rows), est.predict_features(F))

    def score(self, calibrator: Any | None, completed: int, tokens: float) -> dict[str, Any]:
        """MAE, tau and p90 coverage with the corrections of this moment."""
        p = self.raw if calibrator is None else calibrator.adjust(self.groups, self.raw)
        return {
            "completed": completed,
            "tokens": tokens,
            "mae": mae(self.y, p[:, 0]),
            "tau": kendall_tau(self.y, p[:, 0]),
            "p90_coverage": coverage(self.y, p[:, 1]),
        }


def run_stream(
    est: Any,
    stream: pd.DataFrame,
    calibrator: Any | None,
    *,
    concurrency: int = 64,
    censored: bool = False,
    refit: IncrementalRefit | None = None,
    eval_rows: pd.DataFrame | None = None,
    checkpoints: Sequence[int] = CHECKPOINTS,
) -> StreamResult:
    """Serve ``stream`` in order with ``est``'s predictions corrected by ``calibrator``."""
    F = est.featurize(stream)
    raw = est.predict_features(F)
    y = stream["output_tokens"].to_numpy(np.float64)
    groups = groups_of(stream)
    ev = _EvalSet.of(est, eval_rows)
    n = len(y)
    adm = np.zeros((n, 2))
    run: list[int] = []
    att: list[float] = []
    done: list[int] = []
    cps: list[dict[str, Any]] = []
    marks = sorted({c for c in checkpoints if c <= n})
    tokens = 0.0
    if ev is not None and marks and marks[0] == 0:
        cps.append(ev.score(calibrator, 0, tokens))
    nxt = 0
    # serve while requests keep arriving; a finite stream's drain (only the longest requests
    # left, finishing last) would bias every late completion long, so it is not simulated
    while nxt < n or (len(run) == concurrency and len(done) < n):
        while len(run) < concurrency and nxt < n:
            adm[nxt] = (
                raw[nxt]
                if calibrator is None
                else calibrator.adjust([groups[nxt]], raw[nxt : nxt + 1])[0]
            )
            run.append(nxt)
            att.append(0.0)
            nxt += 1
        i, att = _finish_shortest(y, run, att)
        if calibrator is not None:
            _learn(calibrator, censored, i, run, att, groups, y, raw)
        done.append(i)
        tokens += y[i]
        if refit is not None and refit.add(F[i : i + 1], y[i : i + 1]):
            raw = _rebase(refit, calibrator, F, ev)
        if ev is not None and len(done) in marks:
            cps.append(ev.score(calibrator, len(done), tokens))
    return StreamResult(cps, adm, y, np.asarray(done))


def _finish_shortest(y: np.ndarray, run: list[int], att: list[float]) -> tuple[int, list[float]]:
    """Advance every running request until the one closest to its length finishes; remove it
    from ``run`` and return (its stream index, the others' attained tokens)."""
    a = np.asarray(att)
    rem = y[run] - a
    k = int(np.argmin(rem))
    a += rem[k]
    i = run.pop(k)
    a = np.delete(a, k)
    return i, a.tolist()


def _learn(
    calibrator: Any,
    censored: bool,
    i: int,
    run: list[int],
    att: list[float],
    groups: list[Hashable],
    y: np.ndarray,
    raw: np.ndarray,
) -> None:
    """Request ``i`` finished: the calibrator learns its length (exact) and, for a censored
    method, the running requests' attained tokens (lengths known to exceed them)."""
    if censored and run:
        calibrator.observe_running(run, [groups[j] for j in run], att, raw[run])
    calibrator.update_one(groups[i], float(y[i]), raw[i], **({"key": i} if censored else {}))


def _rebase(
    refit: IncrementalRefit, calibrator: Any | None, F: Any, ev: _EvalSet | None
) -> np.ndarray:
    """The served model changed: re-predict the stream (returned) and the evaluation rows,
    and rebase the calibrator's residuals."""
    raw = refit.current.predict_features(F)
    if ev is not None:
        ev.raw = refit.current.predict_features(ev.F)
    if isinstance(calibrator, CensoredCalibrator):
        # the stored residuals refer to the old model, and the refitted model's
        # residuals on its own training rows are too small: start from the warm start
        # and learn from the completions that follow (running states are refreshed
        # with the new predictions at the next observe_running)
        calibrator.reset_observations()
    return raw


METHODS: dict[str, str] = {
    "none": "artifact predictions, no online correction",
    "ema": "predictor.online.OnlineRecalibrator (EMA + conformal, completions only)",
    "km_done": "CensoredCalibrator fed completions only (no censored data)",
    "km": "CensoredCalibrator with running requests as censored observations",
    "km_refit": "km + IncrementalRefit (continue_fit on recent completions)",
}


def make_method(
    name: str, est: Any, warm: tuple[np.ndarray, np.ndarray], refit_every: int, refit_rounds: int
) -> tuple[Any | None, bool, IncrementalRefit | None]:
    """(calibrator, censored?, refit) for a method name of :data:`METHODS`."""
    if name == "none":
        return None, False, None
    if name == "ema":
        return OnlineRecalibrator(), False, None
    cal = CensoredCalibrator.from_residuals(*warm)
    if name == "km_done":
        return cal, False, None
    if name == "km":
        return cal, True, None
    if name == "km_refit":
        return cal, True, IncrementalRefit(est, cadence=refit_every, rounds=refit_rounds)
    raise ValueError(f"unknown online method {name!r}; expected one of {sorted(METHODS)}")


def recovery(
    est: Any,
    stream: pd.DataFrame,
    eval_rows: pd.DataFrame,
    warm: tuple[np.ndarray, np.ndarray],
    *,
    concurrency: int,
    refit_every: int,
    refit_rounds: int,
    methods: Sequence[str] = tuple(METHODS),
    checkpoints: Sequence[int] = CHECKPOINTS,
    log: Callable[[str], None] = print,
) -> dict[str, StreamResult]:
    out = {}
    for m in methods:
        cal, cens, rf = make_method(m, est, warm, refit_every, refit_rounds)
        out[m] = run_stream(
            est,
            stream,
            cal,
            concurrency=concurrency,
            censored=cens,
            refit=rf,
            eval_rows=eval_rows,
            checkpoints=checkpoints,
        )
        last = out[m].checkpoints[-1] if out[m].checkpoints else {}
        log(f"    online {m}: {last}")
    return out


def online_coverage(res: StreamResult, burn_in: int) -> float:
    """p90 coverage of the admission-time corrected predictions of the requests admitted
    after the first ``burn_in`` that completed within the simulated stream."""
    idx = np.sort(res.order)
    idx = idx[idx >= burn_in]
    if not idx.size:
        return float("nan")
    return coverage(res.lengths[idx], res.admitted_pred[idx, 1])
