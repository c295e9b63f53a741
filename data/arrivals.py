"""Arrival processes: when requests arrive.

:class:`ArrivalSpec` (the ``workload.arrival`` config node) names a process; the generators
below are pure (a ``numpy.random.Generator`` in, sorted arrival times in seconds out):
Poisson, Gamma renewal with a given CV, replay of a shipped trace's timestamps (Azure
code/conv, Mooncake, BurstGPT) and ServeGen's per-client rate windows. Which tenant sends each
arrival is decided in :mod:`data.tenant_mix`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data.config_checks import _check_fields, check_number
from data.loaders import load_source
from data.loaders.servegen import WINDOW_S, load_servegen_windows

ARRIVAL_KINDS = ("poisson", "gamma", "replay", "servegen")
REPLAY_TRACES = (
    "azure_code",
    "azure_conv",
    "mooncake_conversation",
    "mooncake_synthetic",
    "burstgpt",
)
MOONCAKE_BUCKET_S = 3.0
"""The Mooncake conversation trace's timestamps are 3 s buckets (see ``replay_arrivals``)."""


@dataclass(frozen=True)
class ArrivalSpec:
    """How arrival times are generated."""

    kind: str = "poisson"  # poisson | gamma | replay | servegen
    rate_rps: float | None = None  # mean rate (req/s); required for poisson/gamma, optional
    # rescale for replay/servegen (None: keep the trace's own rate)
    cv: float = 1.0  # gamma: coefficient of variation of the gaps (1 = Poisson, > 1 bursty)
    trace: str = "azure_conv"  # replay: which trace's timestamps to replay
    start_s: float = 0.0  # replay/servegen: offset into the trace (s) where the replay starts
    servegen_model: str = "m-large"  # servegen: which ServeGen workload's clients to use
    servegen_clients: tuple[int, ...] | None = None  # servegen: one client per tenant, in
    # tenant order; None: the busiest clients of that workload
    window_s: float = WINDOW_S  # servegen: wall-clock length of one published 600 s window
    # (smaller compresses a day of rate changes into a short run; rates scale by 600/window_s)
    rate_scale: float = 1.0  # servegen: multiplies every published client rate (< 1 thins the
    # traffic so that a few thousand requests span many windows of the rate profile)

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(
                f"unknown arrival kind {self.kind!r}; expected one of {list(ARRIVAL_KINDS)}"
            )
        if self.kind in ("poisson", "gamma") and self.rate_rps is None:
            raise ValueError(
                f"{self.kind} arrivals need rate_rps > 0 (workload.arrival.rate_rps, requests per second)"
            )
        check_number("workload.arrival.rate_rps", self.rate_rps, gt=0, none_ok=True)
        check_number("workload.arrival.cv", self.cv, gt=0)
        if self.kind == "replay" and self.trace not in REPLAY_TRACES:
            raise ValueError(f"replay trace {self.trace!r}: expected one of {list(REPLAY_TRACES)}")
        check_number("workload.arrival.start_s", self.start_s, ge=0)
        check_number("workload.arrival.window_s", self.window_s, gt=0)
        check_number("workload.arrival.rate_scale", self.rate_scale, gt=0)
        if self.kind == "servegen":
            from data.loaders.servegen import SERVEGEN_MODELS

            if self.servegen_model not in SERVEGEN_MODELS:
                raise ValueError(
                    f"workload.arrival.servegen_model {self.servegen_model!r}: expected one of "
                    f"{list(SERVEGEN_MODELS)}"
                )

    def describe(self) -> str:
        if self.kind == "poisson":
            return f"poisson({self.rate_rps:g} req/s)"
        if self.kind == "gamma":
            return f"gamma({self.rate_rps:g} req/s, cv={self.cv:g})"
        rate = f", rescaled to {self.rate_rps:g} req/s" if self.rate_rps else ""
        if self.kind == "replay":
            return f"replay({self.trace} from {self.start_s:g} s{rate})"
        return (
            f"servegen({self.servegen_model}, clients={self.servegen_clients}, "
            f"window={self.window_s:g} s, rate x{self.rate_scale:g}{rate})"
        )


def _arrival_from_dict(a: Mapping[str, Any]) -> ArrivalSpec:
    if not isinstance(a, Mapping):
        raise ValueError(f"workload.arrival {a!r}: expected a mapping (kind, rate_rps, ...)")
    a = dict(a)
    _check_fields("workload.arrival", a, ArrivalSpec)
    if a.get("kind", "poisson") not in ARRIVAL_KINDS:
        raise ValueError(
            f"unknown arrival kind {a.get('kind')!r}; expected one of {list(ARRIVAL_KINDS)}"
        )
    if a.get("servegen_clients") is not None:
        a["servegen_clients"] = tuple(int(c) for c in a["servegen_clients"])
    return ArrivalSpec(**a)


# --------------------------------------------------------------------------------------------
# arrival processes (pure: rng in, sorted times out)


def poisson_arrivals(n: int, rate_rps: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` Poisson arrival times (s), shape (n,): exponential gaps of mean 1/rate."""
    return np.cumsum(rng.exponential(1.0 / rate_rps, size=n))


def gamma_arrivals(n: int, rate_rps: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` renewal arrivals with Gamma gaps of mean 1/rate and coefficient of variation ``cv``.

    Gamma(shape k, scale θ) has mean kθ and CV 1/sqrt(k): k = 1/cv², θ = cv²/rate.
    """
    k = 1.0 / cv**2
    return np.cumsum(rng.gamma(k, cv**2 / rate_rps, size=n))


def trace_times(trace: str, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of a shipped trace, sorted, shape (rows,).

    The Mooncake conversation trace publishes 3 s buckets (timestamps are multiples of 3,000 ms
    up to a few ms of jitter). A replay that kept them would send ~10 requests in the same
    instant every 3 s, a burst the real service never saw. We spread each request uniformly at
    random within its bucket, ``bucket * 3 + U(0, 3)`` s, with the workload's ``buckets`` stream,
    and sort; bucket counts (the published information) are preserved exactly.
    """
    t = load_source(trace)["arrival_s"].to_numpy(dtype=np.float64)
    if trace == "mooncake_conversation":
        bucket = np.round(t / MOONCAKE_BUCKET_S)
        t = np.sort(bucket * MOONCAKE_BUCKET_S + rng.uniform(0.0, MOONCAKE_BUCKET_S, len(t)))
    return t


def replay_arrivals(n: int, times: np.ndarray, start_s: float = 0.0) -> np.ndarray:
    """The first ``n`` arrivals of a trace at or after ``start_s``, shifted to start at 0.

    If the trace runs out, it is tiled: repeated back to back, each copy shifted by the trace
    span plus one mean gap (so the seam looks like an ordinary gap).
    """
    t = np.sort(np.asarray(times, dtype=np.float64))
    t = t[t >= start_s] - start_s
    if len(t) < 2:
        raise ValueError(f"replay: fewer than 2 arrivals after start_s={start_s} s")
    period = (t[-1] - t[0]) + (t[-1] - t[0]) / (len(t) - 1)
    reps = -(-n // len(t))
    tiled = np.concatenate([t + r * period for r in range(reps)])[:n]
    return tiled - tiled[0]


def servegen_arrivals(
    n: int,
    model: str,
    clients: Sequence[int],
    window_s: float,
    start_s: float,
    rng: np.random.Generator,
    rate_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Merged arrivals of several ServeGen clients: (times s (n,), client position (n,)).

    Each client follows its published piecewise-constant rate: inside each 600 s window (played
    in ``window_s`` wall seconds, rate scaled by 600/window_s) gaps are Gamma with that window's
    rate and CV (ServeGen fits Gamma or Weibull per window; we keep its rate and burstiness).
    The renewal process restarts at each window boundary. Windows absent from the file have rate
    0. ``rate_scale`` multiplies every published rate. Windows are generated in time order until ``n`` arrivals exist; if the clients' traces
    end first, the rate profile repeats.
    """
    scale = window_s / WINDOW_S
    frames = []
    for pos, c in enumerate(clients):
        w = load_servegen_windows(model, [c])
        if w.empty:
            raise ValueError(f"ServeGen model {model!r} has no client {c}")
        frames.append(w.assign(pos=pos))
    win = pd.concat(frames, ignore_index=True).sort_values(["window_start_s", "pos"])
    horizon = float(win["window_start_s"].max()) + WINDOW_S
    ws_all = win["window_start_s"].to_numpy(dtype=np.float64)
    rate_all = win["rate_rps"].to_numpy(dtype=np.float64)
    cv_all = np.maximum(win["cv"].to_numpy(dtype=np.float64), 1e-3)
    pos_all = win["pos"].to_numpy(dtype=np.int64)
    times: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    total = 0
    for cycle in range(1000):
        first = ws_all >= start_s if cycle == 0 else np.ones(len(ws_all), dtype=bool)
        # windows in time order; stop after the window in which the n-th arrival fell
        for ws in np.unique(ws_all[first]):
            for i in np.flatnonzero(first & (ws_all == ws)):
                r = rate_all[i] * rate_scale / scale  # req/s in wall time
                t0 = (cycle * horizon + ws - start_s) * scale
                k = 1.0 / cv_all[i] ** 2
                t = _gamma_until(t0, t0 + window_s, r, k, n, rng)
                times.append(t)
                owner.append(np.full(len(t), pos_all[i], dtype=np.int64))
                total += len(t)
            if total >= n:
                break
        if total >= n:
            break
    else:
        raise ValueError("servegen arrivals: the selected clients produce too few requests")
    all_t = np.concatenate(times)
    all_o = np.concatenate(owner)
    order = np.argsort(all_t, kind="stable")[:n]
    t = all_t[order]
    return t - t[0], all_o[order]


def _gamma_until(
    t0: float, t1: float, rate: float, shape: float, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """Renewal arrivals in [t0, t1) with Gamma(shape, 1/(rate*shape)) gaps, at most ``limit``."""
    out: list[np.ndarray] = []
    t, count = t0, 0
    while t < t1 and count < limit:
        m = min(limit - count, int(rate * (t1 - t) * 1.2) + 16)
        pts = t + np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=m))
        t = float(pts[-1])
        pts = pts[pts < t1]
        out.append(pts)
        count += len(pts)
    return np.concatenate(out)[:limit] if out else np.zeros(0)


def process_arrivals(a: ArrivalSpec, n: int, rngs: dict[str, np.random.Generator]) -> np.ndarray:
    """``n`` sorted arrival times (s) of a poisson, gamma or replay arrival spec."""
    if a.kind == "poisson":
        return poisson_arrivals(n, a.rate_rps, rngs["arrivals"])  # type: ignore[arg-type]
    if a.kind == "gamma":
        return gamma_arrivals(n, a.rate_rps, a.cv, rngs["arrivals"])  # type: ignore[arg-type]
    if a.kind == "replay":
        return replay_arrivals(n, trace_times(a.trace, rngs["buckets"]), a.start_s)
    raise ValueError(
        f"arrival kind {a.kind!r}: expected poisson, gamma or replay here (servegen arrivals "
        "come with their own tenant streams)"
    )


def arrival_cv(arrivals: np.ndarray) -> float:
    """CV (std / mean) of the gaps between sorted arrival times; NaN if fewer than 3."""
    gaps = np.diff(np.asarray(arrivals, dtype=np.float64))
    if len(gaps) < 2 or gaps.mean() <= 0:
        return math.nan
    return float(gaps.std() / gaps.mean())
