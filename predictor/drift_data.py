"""Training rows and features for the drift (remaining-length) task. Pure functions.

A trace of true length L contributes one row per progress point t with 1 <= t < L (the request
is still running after t tokens): the fixed points (32, 128, 512 by default) that lie below L and
``n_random`` points drawn log-uniformly from [1, L). The target is the remaining length L - t,
learned on log scale. Evaluation uses fixed points only (see ``predictor.metrics``).

Traces with output text (ShareGPT) also carry the *partial text* at each progress point: the
decoded first t tokens (:func:`partial_texts`), featurised by ``predictor.text_progress``; they
get ``n_random_text`` extra random points each, since they are few among the length corpora.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from predictor.metrics import DRIFT_POINTS
from predictor.text_progress import encode, prefix_text

DRIFT_EXTRA_NAMES: tuple[str, ...] = (
    "adm_p50_log",
    "adm_p90_log",
    "t",
    "t_log",
    "adm_p50_minus_t_log",
    "adm_p90_minus_t_log",
    "t_over_adm_p50",
    "t_over_adm_p90",
    "past_p50",
    "past_p90",
)


def progress_points(
    lengths: np.ndarray,
    rng: np.random.Generator,
    points: tuple[int, ...] = DRIFT_POINTS,
    n_random: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """(row index into ``lengths``, t) pairs of progress points where the trace is running.

    Returns two int64 arrays of equal length m; for each pair ``1 <= t < lengths[row]``.
    """
    L = np.asarray(lengths, dtype=np.int64).reshape(-1)
    rows, ts = [], []
    for p in points:
        idx = np.flatnonzero(p < L)
        rows.append(idx)
        ts.append(np.full(idx.size, p, dtype=np.int64))
    long_enough = np.flatnonzero(L >= 2)
    for _ in range(n_random):
        hi = np.log(L[long_enough].astype(np.float64))  # t < L  <=>  log t < log L
        t = np.floor(np.exp(rng.uniform(0.0, hi))).astype(np.int64)
        t = np.clip(t, 1, L[long_enough] - 1)
        rows.append(long_enough)
        ts.append(t)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    t = np.concatenate(ts) if ts else np.zeros(0, np.int64)
    return r.astype(np.int64), t.astype(np.int64)


def drift_features(F: np.ndarray, admission: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Admission features + admission quantiles + progress: float32 (n, d + 10).

    ``F`` (n, d) admission features, ``admission`` (n, 2) p50/p90 tokens, ``generated`` (n,)
    tokens generated so far.
    """
    F = np.asarray(F, dtype=np.float32)
    a = np.maximum(np.asarray(admission, dtype=np.float64).reshape(-1, 2), 1.0)
    t = np.asarray(generated, dtype=np.float64).reshape(-1)
    if not (F.shape[0] == a.shape[0] == t.size):
        raise ValueError(
            f"features ({F.shape[0]}), admission ({a.shape[0]}) and generated "
            f"({t.size}) must have the same number of rows"
        )
    if (t < 0).any() or not np.isfinite(t).all():
        raise ValueError("generated must be finite token counts >= 0")
    lp50, lp90, lt = np.log(a[:, 0]), np.log(a[:, 1]), np.log1p(t)
    extra = np.column_stack(
        [
            lp50,
            lp90,
            t,
            lt,
            lp50 - lt,
            lp90 - lt,
            t / a[:, 0],
            t / a[:, 1],
            (t >= a[:, 0]).astype(np.float64),
            (t >= a[:, 1]).astype(np.float64),
        ]
    ).astype(np.float32)
    return np.hstack([F, extra])


def naive_remaining(admission: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """The baseline "admission prediction minus t", floored at 1 token: (n, 2)."""
    a = np.asarray(admission, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(generated, dtype=np.float64).reshape(-1, 1)
    return np.maximum(a - t, 1.0)


def text_progress_points(
    lengths: np.ndarray,
    has_text: np.ndarray,
    rng: np.random.Generator,
    points: tuple[int, ...] = DRIFT_POINTS,
    n_random: int = 2,
    n_random_text: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`progress_points` plus ``n_random_text`` more random points per text trace."""
    r, t = progress_points(lengths, rng, points, n_random)
    idx = np.flatnonzero(np.asarray(has_text, dtype=bool))
    if n_random_text > 0 and idx.size:
        r2, t2 = progress_points(np.asarray(lengths)[idx], rng, (), n_random_text)
        r, t = np.concatenate([r, idx[r2]]), np.concatenate([t, t2])
    return r, t


def output_token_ids(texts: object, truncated: object = None) -> tuple[list, np.ndarray]:
    """(cl100k ids per trace or None, complete flags) from an ``output_text`` column.

    ``texts``: a sequence of str / None / NA; ``truncated``: the optional
    ``output_text_truncated`` flags (a capped text knows only its first tokens; missing = not
    capped).
    """
    vals = [v if isinstance(v, str) else None for v in list(texts)]  # type: ignore[call-overload]
    cut = np.zeros(len(vals), bool)
    if truncated is not None:
        flags = pd.Series(list(truncated), dtype=object)  # type: ignore[call-overload]
        cut = flags.map(lambda x: isinstance(x, bool | np.bool_) and bool(x)).to_numpy(bool)
    return encode(vals), ~cut


def partial_texts(
    ids: list, complete: np.ndarray, rows: np.ndarray, generated: np.ndarray
) -> list[str | None]:
    """Text of the first ``generated[k]`` tokens of trace ``rows[k]`` (None where unknown)."""
    if not ids:
        return [None] * len(rows)
    return [
        prefix_text(ids[r], int(t), bool(complete[r]))
        for r, t in zip(np.asarray(rows), np.asarray(generated))
    ]
