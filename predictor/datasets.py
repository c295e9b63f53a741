"""Training tables for the predictors: shipped sources, user traces, and evaluate.py records.

* ``load_training_table(sources=[...])``: the shipped sources (``data.loaders.load_sources``).
* ``load_training_table(path=...)``: a user trace file (CSV/JSONL/parquet; missing identity
  columns are filled with the documented defaults) **or** a ``records.parquet`` written by an
  ``evaluate.py`` run (detected by its ``true_output_tokens``/``status`` columns): finished
  requests become training rows with their generated length as the target; aborted ones are
  removed with an explicit filter report.
* ``explode_samples``: CASTILLO has 10 sampled lengths per (prompt, model); training uses up to
  ``k`` of them as separate rows (the samples carry the length *distribution* the quantile
  models must learn), evaluation keeps one row per (prompt, model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.schema import FilterReport, filter_rows, validate_trace


def is_records_table(df: pd.DataFrame) -> bool:
    return {"true_output_tokens", "status", "output_tokens"} <= set(df.columns)


def records_to_trace(df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, list[FilterReport]]:
    """An evaluate.py record table -> a schema trace of its finished requests."""
    kept, rep = filter_rows(
        df,
        (df["status"].astype("string") == "finished").to_numpy(bool),
        f"{where}: keep finished requests (aborted ones have no true length)",
    )
    out = kept.copy()
    for col, default in (
        ("model", "unknown"),
        ("category", "unknown"),
        ("tenant", "unknown"),
        ("source", Path(where).stem),
    ):
        if col not in out.columns:
            out[col] = default
    if "prompt_id" not in out.columns:
        out["prompt_id"] = out["request_id"]
    # engine/policy/index columns are kept as extras; several runs may share request ids
    if out["request_id"].duplicated().any():
        out["request_id"] = (
            out.get("policy", pd.Series("run", index=out.index)).astype(str)
            + ":"
            + out["request_id"].astype(str)
        )
    return validate_trace(out, where=where), [rep]


def load_training_table(
    *, sources: list[str] | None = None, path: str | Path | None = None
) -> tuple[pd.DataFrame, list[FilterReport]]:
    """The full (unsplit) training table and any explicit filters applied."""
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(
                f"training data file {p} not found (data.path); expected a "
                "trace file (CSV/JSONL/parquet) or an evaluate.py "
                "records.parquet"
            )
        if p.suffix == ".parquet":
            raw = pd.read_parquet(p)
            if is_records_table(raw):
                return records_to_trace(raw, str(p))
        from data.loaders import load_trace_file

        df = load_trace_file(p, fill_defaults=True)
        if "prompt_id" not in df.columns:
            df["prompt_id"] = df["request_id"]
        return df, []
    if not sources:
        raise ValueError(
            "no training data: set data.sources (e.g. [castillo, alpaca_eval, "
            "sharegpt]) or data.path (a trace file or records.parquet)"
        )
    from data.loaders import load_source_with_reports, load_sources

    reports: list[FilterReport] = []
    for s in sources:
        reports += load_source_with_reports(s)[1]
    return load_sources(list(sources)), reports


def explode_samples(df: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """Rows with ``output_samples`` become up to ``k`` rows, one per sampled length.

    The first copy keeps ``output_tokens`` (the source's own first sample); further copies use
    distinct other samples drawn with ``rng``; request ids get a ``#s<j>`` suffix.
    """
    if k <= 1 or "output_samples" not in df.columns:
        return df
    samples = df["output_samples"].tolist()
    has = np.array([isinstance(s, tuple) and len(s) > 1 for s in samples])
    if not has.any():
        return df
    extra_idx, extra_len, extra_j = [], [], []
    for i in np.flatnonzero(has):
        s = samples[i]
        others = list(s[1:])
        take = rng.permutation(len(others))[: k - 1]
        for j, o in enumerate(take, start=1):
            extra_idx.append(i)
            extra_len.append(int(others[o]))
            extra_j.append(j)
    extra = df.iloc[extra_idx].copy()
    extra["output_tokens"] = np.asarray(extra_len, dtype=np.int64)
    extra["request_id"] = [f"{r}#s{j}" for r, j in zip(extra["request_id"], extra_j)]
    return pd.concat([df, extra], ignore_index=True)


def subsample(
    df: pd.DataFrame, n: int | None, rng: np.random.Generator, reason: str
) -> tuple[pd.DataFrame, FilterReport]:
    """At most ``n`` rows drawn uniformly without replacement (explicit filter report)."""
    if n is None or len(df) <= n:
        return filter_rows(df, np.ones(len(df), bool), reason)
    mask = np.zeros(len(df), bool)
    mask[rng.choice(len(df), size=n, replace=False)] = True
    return filter_rows(df, mask, reason)
