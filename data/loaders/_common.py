"""Shared helpers of the source loaders: raw file paths, defaults, explicit filtering."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from data.schema import UNKNOWN, FilterReport, filter_rows

log = logging.getLogger("data.loaders")

RAW_DIR = Path(__file__).resolve().parent.parent / "raw"
"""The shipped raw files (data/raw/); the toolkit never reads ../shared at run time."""

DEFAULT_TENANT = UNKNOWN
DEFAULT_TIER = (
    "standard"  # a request whose source says nothing about its tier is served as standard
)
DEFAULT_CATEGORY = UNKNOWN
DEFAULT_MODEL = UNKNOWN


def raw_path(rel: str) -> Path:
    p = RAW_DIR / rel
    if not p.is_file():
        raise FileNotFoundError(
            f"shipped raw file {p} is missing; the repository's data/raw/ is incomplete "
            "(see data/raw/PROVENANCE.md for where each file comes from)"
        )
    return p


def drop_nonpositive(
    df: pd.DataFrame, columns: list[str], source: str, reports: list[FilterReport]
) -> pd.DataFrame:
    """Remove rows whose length columns are <= 0 (empty prompts or outputs), with a report.

    The schema requires lengths > 0: an empty output is a failed or refused request, which a
    length predictor or a scheduler cannot use. The removal is counted, never silent.
    """
    for col in columns:
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        mask = vals > 0
        if not mask.all():
            df, rep = filter_rows(df, mask, f"{source}: drop rows with {col} <= 0")
            reports.append(rep)
            log.info("%s", rep)
    return df


def with_defaults(df: pd.DataFrame, source: str, **labels: str) -> pd.DataFrame:
    """Set the identity columns a source lacks to explicit constants.

    ``labels`` gives per-source constants (e.g. ``category="code"``); columns neither present nor
    given get the documented defaults: tenant ``unknown``, tier ``standard``, category and model
    ``unknown``. ``source`` is always the loader's name.
    """
    defaults = {
        "tenant": DEFAULT_TENANT,
        "tier": DEFAULT_TIER,
        "category": DEFAULT_CATEGORY,
        "model": DEFAULT_MODEL,
    }
    defaults.update(labels)
    for col, val in defaults.items():
        if col not in df.columns:
            df[col] = val
    df["source"] = source
    return df
