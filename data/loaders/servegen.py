"""ServeGen (Alibaba, 2025) per-client tables: rate windows and length summaries.

These are not request tables (no request rows), so they have their own typed loaders. The
workload builder uses the rate windows to give each tenant a time-varying arrival rate.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from data.loaders._common import raw_path

WINDOW_S = 600.0
"""Length of one ServeGen rate window in seconds (windows start every 600 s)."""

SERVEGEN_MODELS: tuple[str, ...] = ("m-large", "m-mid", "m-small", "deepseek-r1", "mm-image")
"""The ServeGen workloads in the shipped tables (configs are checked against this list before
any file is read; a test checks it matches the file)."""

# column -> dtype of each table (checked on load; a mismatch means the raw file changed)
WINDOW_COLUMNS: dict[str, str] = {
    "category": "string",  # language | reason | multimodal
    "model": "string",  # ServeGen workload name (m-large, m-mid, m-small, deepseek-r1, mm-image)
    "client": "int64",  # anonymised tenant id within the workload
    "window_start_s": "int64",  # start of the 600 s window since the trace start
    "rate_rps": "float64",  # mean request rate of the client in that window (as published)
    "cv": "float64",  # coefficient of variation of inter-arrival gaps in that window
    "arrival_dist": "string",  # Gamma | Weibull: the fitted inter-arrival distribution
    "param1": "float64",  # shape of that distribution
    "param2": "float64",  # scale of that distribution (s)
}
LENGTH_COLUMNS: dict[str, str] = {
    "category": "string",
    "model": "string",
    "client": "int64",
    "window_start_s": "int64",  # start of the 6 h window
    **{
        f"{k}_{s}": "float64"
        for k in ("input_tokens", "output_tokens", "text_tokens")
        for s in ("mean", "p50", "p90", "p99")
    },
    "reason_ratio_mean": "float64",  # deepseek-r1 only: reasoning share of output tokens
}


def _typed(df: pd.DataFrame, columns: dict[str, str], rel: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{raw_path(rel)}: missing column(s) {missing}; expected {list(columns)}")
    return df[list(columns)].astype(columns)


@lru_cache(maxsize=1)
def _windows() -> pd.DataFrame:
    rel = "servegen/servegen_client_windows_nonzero.csv.gz"
    df = _typed(pd.read_csv(raw_path(rel)), WINDOW_COLUMNS, rel)
    bad = ~(np.isfinite(df["rate_rps"].to_numpy()) & (df["rate_rps"].to_numpy() > 0))
    if bad.any():
        raise ValueError(
            f"{raw_path(rel)}: row(s) {np.flatnonzero(bad)[:10].tolist()}: column "
            "'rate_rps': expected a rate > 0 (zero-rate windows are not shipped)"
        )
    return df


@lru_cache(maxsize=1)
def _lengths() -> pd.DataFrame:
    rel = "servegen/servegen_client_length_summaries.csv.gz"
    return _typed(pd.read_csv(raw_path(rel)), LENGTH_COLUMNS, rel)


def _select(df: pd.DataFrame, model: str | None, clients: list[int] | None) -> pd.DataFrame:
    if model is not None:
        known = sorted(df["model"].unique())
        if model not in known:
            raise ValueError(f"unknown ServeGen model {model!r}; expected one of {known}")
        df = df[df["model"] == model]
    if clients is not None:
        df = df[df["client"].isin(clients)]
    return df.reset_index(drop=True)


def load_servegen_windows(
    model: str | None = None, clients: list[int] | None = None
) -> pd.DataFrame:
    """Per-client 600 s rate windows (only windows with a non-zero rate), typed per
    ``WINDOW_COLUMNS``, optionally restricted to one ServeGen workload and some clients."""
    return _select(_windows(), model, clients)


def load_servegen_lengths(
    model: str | None = None, clients: list[int] | None = None
) -> pd.DataFrame:
    """Per-client 6 h length summaries (mean/p50/p90/p99 tokens), typed per ``LENGTH_COLUMNS``."""
    return _select(_lengths(), model, clients)


def top_clients(model: str, k: int) -> list[int]:
    """The ``k`` clients of a ServeGen workload with the most requests (sum of rate x window)."""
    w = load_servegen_windows(model)
    vol = (w["rate_rps"] * WINDOW_S).groupby(w["client"]).sum().sort_values(ascending=False)
    return [int(c) for c in vol.index[:k]]


def rate_profile(
    model: str, client: int, start_s: float = 0.0, duration_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant rate of one client: (window starts s, rates rps), shape (n,), (n,).

    Windows absent from the file had rate 0 and are filled with 0 so the profile is dense
    over ``[start_s, start_s + duration_s)`` (default: up to the client's last window).
    Returned starts are relative to ``start_s``.
    """
    w = load_servegen_windows(model, [client])
    if w.empty:
        raise ValueError(f"ServeGen model {model!r} has no client {client}")
    end = (
        float(w["window_start_s"].max()) + WINDOW_S if duration_s is None else start_s + duration_s
    )
    starts = np.arange(start_s - start_s % WINDOW_S, end, WINDOW_S)
    rates = np.zeros(len(starts))
    idx = ((w["window_start_s"].to_numpy() - starts[0]) // WINDOW_S).astype(np.int64)
    ok = (idx >= 0) & (idx < len(starts))
    rates[idx[ok]] = w["rate_rps"].to_numpy()[ok]
    return starts - start_s, rates
