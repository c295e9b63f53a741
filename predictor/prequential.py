"""Prequential (predict, then learn) evaluation of a length predictor with an online learner.

Serving order is what makes online learning honest: a request is predicted at its arrival with
what was learned from requests that *completed before it arrived*, and it teaches the learner
only once it completes. :func:`prequential` replays a trace that way:

* arrivals in ``arrival_s`` order (row order where a trace has none; ``rate_rps`` spaces them);
* completion at the trace's ``finish_s`` (an ``evaluate.py`` records table), otherwise at
  ``arrival + output_tokens * tpot_s``: a fluid server decoding every request from its arrival
  at ``tpot_s`` seconds per token (no queueing: the earliest each outcome could be known);
* while running, a request has generated ``output_tokens * (t - arrival) / (finish - arrival)``
  tokens; every ``running_every_s`` seconds of trace time the running set is reported to the
  learner as censored observations ("length > g"), as ``LearnedLengths.observe_running`` does.

``python -m predictor.score --online ARTIFACT TRACE`` prints these numbers beside the cold
ones; ``benchmarks.generalisation_predictors`` uses the same function on the suite workloads.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from predictor.online import LEVELS

DEFAULT_TPOT_S = 0.03  # seconds per output token of the fluid server (~33 tok/s per request)
DEFAULT_RATE_RPS = 5.0  # arrival rate of a trace without arrival_s (the default workload's)


def timeline(
    df: pd.DataFrame, tpot_s: float = DEFAULT_TPOT_S, rate_rps: float = DEFAULT_RATE_RPS
) -> tuple[np.ndarray, np.ndarray]:
    """(arrival_s, finish_s), float64 (n,) each, of every row (module doc)."""
    if not (tpot_s > 0 and rate_rps > 0):
        raise ValueError(f"tpot_s {tpot_s!r} and rate_rps {rate_rps!r} must be > 0")
    n = len(df)
    arr = np.arange(n, dtype=np.float64) / rate_rps
    if "arrival_s" in df.columns:
        a = pd.to_numeric(df["arrival_s"], errors="coerce").to_numpy(np.float64)
        if np.isfinite(a).all():
            arr = a
    y = df["output_tokens"].to_numpy(np.float64)
    fin = arr + y * tpot_s
    if "finish_s" in df.columns:
        f = pd.to_numeric(df["finish_s"], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(f) & (f >= arr)
        fin = np.where(ok, f, fin)
    return arr, fin


def level_table(df: pd.DataFrame, levels: Sequence[str]) -> list[tuple[Hashable, ...]]:
    """Each row's online level values: columns of ``df`` (``model``, ``tenant``, ...; missing
    -> ``"unknown"``) or ``prompt`` (the near-duplicate prompt key of ``data.holdout``)."""
    cols: list[list[Hashable]] = []
    for name in levels:
        if name == "prompt":
            from data.holdout import prompt_keys

            cols.append([int(k) for k in prompt_keys(df, prefix=True)])
        elif name in df.columns:
            cols.append(df[name].astype("string").fillna("unknown").tolist())
        else:
            cols.append(["unknown"] * len(df))
    return list(zip(*cols)) if cols else [() for _ in range(len(df))]


def prequential(
    raw: np.ndarray,
    values: Sequence[tuple[Hashable, ...]],
    y: np.ndarray,
    arrival: np.ndarray,
    finish: np.ndarray,
    learner: Any,
    running_every_s: float = 1.0,
) -> np.ndarray:
    """Admission (p50, p90) (n, 2) of every request as served at its arrival (module doc).

    ``raw`` (n, 2): the model's cold (p50, p90); ``values``: level tuples for ``learner`` (an
    ``predictor.online.OnlineLevels`` or anything with ``adjust``/``update_one``/
    ``observe_running``); ``y`` (n,) true lengths; ``arrival``/``finish`` (n,) seconds.
    """
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if raw.shape != (n, 2) or len(values) != n or arrival.shape != (n,) or finish.shape != (n,):
        raise ValueError(
            f"prequential: raw {raw.shape}, {len(values)} level tuples, arrival "
            f"{arrival.shape}, finish {finish.shape} for {n} lengths"
        )
    out = np.empty((n, 2))
    done: list[tuple[float, int]] = []  # heap of (finish, index) of admitted requests
    running: set[int] = set()
    next_report = -math.inf
    for i in np.argsort(arrival, kind="stable").tolist():
        t = float(arrival[i])
        while done and done[0][0] <= t:
            _, j = heapq.heappop(done)
            running.discard(j)
            learner.update_one(values[j], float(y[j]), raw[j], key=j)
        if running and t >= next_report:
            idx = sorted(running)
            span = np.maximum(finish[idx] - arrival[idx], 1e-9)
            got = np.floor(y[idx] * np.clip((t - arrival[idx]) / span, 0.0, 1.0))
            learner.observe_running(idx, [values[j] for j in idx], got, raw[idx])
            next_report = t + running_every_s
        out[i] = learner.adjust([values[i]], raw[i : i + 1])[0]
        heapq.heappush(done, (float(finish[i]), i))
        running.add(i)
    return out


def group_taus(
    y: np.ndarray, p50: np.ndarray, groups: Sequence[Hashable], min_n: int = 20
) -> float:
    """Kendall tau within each group of at least ``min_n`` requests, averaged with weights n
    (the ranking a policy gets among one generator's requests); NaN without such a group."""
    from predictor.metrics import kendall_tau

    g = pd.Series(list(groups))
    num = den = 0.0
    for _, idx in g.groupby(g).groups.items():
        ix = np.asarray(idx)
        if len(ix) >= min_n:
            num += len(ix) * kendall_tau(y[ix], p50[ix])
            den += len(ix)
    return num / den if den else math.nan


def scores(
    y: np.ndarray,
    pred: np.ndarray,
    prompt_tokens: np.ndarray,
    groups: Sequence[Hashable],
    arrival: np.ndarray,
    warmup: float = 0.1,
) -> dict[str, float]:
    """Length metrics of ``pred`` (n, 2) plus ``tau_within_generator`` and the MAE/tau of
    the requests after the first ``warmup`` share of arrivals (``*_after_warmup``)."""
    from predictor.metrics import kendall_tau, length_metrics, mae

    out = length_metrics(y, pred, prompt_tokens)
    out["tau_within_generator"] = group_taus(y, pred[:, 0], groups)
    late = np.argsort(arrival, kind="stable")[math.floor(warmup * len(y)) :]
    out["mae_after_warmup"] = mae(y[late], pred[late, 0]) if len(late) else math.nan
    out["kendall_tau_after_warmup"] = kendall_tau(y[late], pred[late, 0]) if len(late) > 1 else 0.0
    return out


def evaluate_frame(
    model: Any,
    df: pd.DataFrame,
    levels: Sequence[str] = LEVELS,
    tpot_s: float = DEFAULT_TPOT_S,
    rate_rps: float = DEFAULT_RATE_RPS,
    warmup: float = 0.1,
    learner: Any = None,
) -> dict[str, Any]:
    """Cold and prequential online :func:`scores` of a length model (``predict_quantiles``)
    on a trace or workload table (``output_tokens``; ``arrival_s``/``finish_s`` if present).
    ``learner``: default a fresh ``OnlineLevels(levels=levels)``."""
    from predictor.online import OnlineLevels

    learner = OnlineLevels(levels=tuple(levels)) if learner is None else learner
    y = df["output_tokens"].to_numpy(np.float64)
    raw = np.asarray(model.predict_quantiles(df), dtype=np.float64)
    arr, fin = timeline(df, tpot_s, rate_rps)
    online = prequential(raw, level_table(df, learner.levels), y, arr, fin, learner)
    gen = (
        df["model"].astype("string").fillna("unknown").tolist()
        if "model" in df.columns
        else ["unknown"] * len(df)
    )
    ptok = df["prompt_tokens"].to_numpy(np.float64)
    return {
        "n": len(df),
        "protocol": {
            "levels": list(learner.levels),
            "arrivals": "arrival_s"
            if "arrival_s" in df.columns
            else f"row order at {rate_rps} rps",
            "completions": "finish_s" if "finish_s" in df.columns else f"{tpot_s} s per token",
            "warmup": warmup,
        },
        "cold": scores(y, raw, ptok, gen, arr, warmup),
        "online": scores(y, online, ptok, gen, arr, warmup),
    }
