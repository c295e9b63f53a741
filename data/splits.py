"""Deterministic train/validation/test splits.

* :func:`grouped_split`: by prompt. A group (``prompt_id``; ``request_id`` where a row has no
  prompt id) goes wholly to one split, so the 10 CASTILLO samples or the ~225 AlpacaEval models
  answering one prompt never leak across splits. Assignment hashes ``(seed, group)``, so it is
  deterministic, independent of row order, and a group keeps its split when other sources are
  added to the table.
* :func:`leave_one_out` (and the source/model shorthands): hold out one value of a column.
* :func:`time_split`: the first part of a logged trace trains, the later parts validate/test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _check_fractions(fractions: tuple[float, float, float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(
            f"split fractions {fractions!r}: expected three numbers >= 0 summing "
            "to 1 (train, val, test)"
        )
    return f


def group_keys(df: pd.DataFrame, group_col: str = "prompt_id") -> pd.Series:
    """The group of each row: ``group_col`` where set, else the row's ``request_id``."""
    if group_col in df.columns:
        g = df[group_col].astype("string")
        return g.fillna(df["request_id"].astype("string"))
    if group_col != "prompt_id":
        raise ValueError(
            f"grouped split: column {group_col!r} not in table (columns: {list(df.columns)})"
        )
    return df["request_id"].astype("string")


def _unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    # blake2b of "seed:key" -> uniform in [0, 1): stable across processes (unlike hash()).
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") / 2.0**64
    return out


def assign_groups(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    group_col: str = "prompt_id",
) -> np.ndarray:
    """Split index per row (0 train, 1 val, 2 test), int8 shape (n,), constant within a group."""
    f = _check_fractions(fractions)
    keys = group_keys(df, group_col)
    uniq, inverse = np.unique(keys.to_numpy(dtype=object).astype(str), return_inverse=True)
    u = _unit_hash(uniq, seed)
    cuts = np.cumsum(f)[:2]
    return np.searchsorted(cuts, u, side="right").astype(np.int8)[inverse]


def grouped_split(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    group_col: str = "prompt_id",
) -> Split:
    """Train/val/test by prompt group; fractions hold for groups, approximately for rows."""
    part = assign_groups(df, fractions, seed, group_col)
    pick = [df.loc[part == k].reset_index(drop=True) for k in range(3)]
    return Split(*pick)


def leave_one_out(
    df: pd.DataFrame, column: str, held_out: str, *, disjoint_prompts: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): test = rows with ``column == held_out``, train = the rest.

    With ``disjoint_prompts`` train also loses every prompt group that occurs in test (e.g.
    leave-one-model-out on CASTILLO, where all models answer the same prompts: the held-out
    model is then judged on prompts no model was trained on).
    """
    if column not in df.columns:
        raise ValueError(f"leave-one-out: column {column!r} not in table")
    values = df[column].astype("string")
    is_test = (values == held_out).fillna(False).to_numpy(dtype=bool)
    if not is_test.any():
        known = sorted(values.dropna().unique())
        raise ValueError(
            f"leave-one-out: {column} {held_out!r} not in table; expected one of "
            f"{known[:20]}{' ...' if len(known) > 20 else ''}"
        )
    is_train = ~is_test
    if disjoint_prompts:
        g = group_keys(df)
        is_train &= ~g.isin(set(g[is_test])).to_numpy(dtype=bool)
    return df.loc[is_train].reset_index(drop=True), df.loc[is_test].reset_index(drop=True)


def leave_one_source_out(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return leave_one_out(df, "source", source)


def leave_one_model_out(
    df: pd.DataFrame, model: str, *, disjoint_prompts: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out one model. By default train keeps the held-out model's prompts as answered by
    other models (a new model on known prompts); ``disjoint_prompts=True`` removes them too."""
    return leave_one_out(df, "model", model, disjoint_prompts=disjoint_prompts)


def iter_leave_one_out(
    df: pd.DataFrame, column: str, *, disjoint_prompts: bool = False
) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(held-out value, train, test) for every value of ``column``, in sorted order."""
    for v in sorted(df[column].astype("string").dropna().unique()):
        yield (str(v), *leave_one_out(df, column, str(v), disjoint_prompts=disjoint_prompts))


def time_split(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    time_col: str = "arrival_s",
) -> Split:
    """Chronological split of a logged trace: earliest rows train, latest rows test.

    Rows are ordered by ``time_col`` (stable, so ties keep file order) and cut by row count.
    """
    f = _check_fractions(fractions)
    if time_col not in df.columns:
        raise ValueError(
            f"time split: column {time_col!r} not in table; a time-ordered split "
            "needs arrival times (a logged trace or a workload)"
        )
    t = pd.to_numeric(df[time_col], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(t).all():
        bad = np.flatnonzero(~np.isfinite(t))[:10].tolist()
        raise ValueError(f"time split: row(s) {bad}: column {time_col!r}: expected finite times")
    order = np.argsort(t, kind="stable")
    n = len(df)
    c1 = round(float(f[0]) * n)
    c2 = round(float(f[0] + f[1]) * n)
    s = df.iloc[order].reset_index(drop=True)
    return Split(
        s.iloc[:c1].reset_index(drop=True),
        s.iloc[c1:c2].reset_index(drop=True),
        s.iloc[c2:].reset_index(drop=True),
    )


SPLIT_KINDS = ("grouped", "time", "leave_one_source_out", "leave_one_model_out", "leave_out")


def _held_rows(df: pd.DataFrame, col: str, held: Any) -> np.ndarray:
    """Rows whose ``col`` is one of ``held`` (a name or a list); every name must occur."""
    if col not in df.columns:
        raise ValueError(
            f"data.split.held_out: column {col!r} not in the table (columns: {list(df.columns)})"
        )
    names = [held] if isinstance(held, str) else [str(h) for h in held]
    values = df[col].astype("string")
    is_held = values.isin(names).fillna(False).to_numpy(dtype=bool)
    missing = sorted(set(names) - set(values[is_held].unique()))
    if missing:
        known = sorted(values.dropna().unique())
        raise ValueError(
            f"data.split.held_out: {col}(s) {missing} not in the table; expected names from "
            f"{known[:20]}{' ...' if len(known) > 20 else ''}"
        )
    return is_held


def split_by_config(df: pd.DataFrame, cfg: Any) -> Split:
    """Train/val/test as a ``data.split`` config node says (``conf/data/default.yaml``).

    ``kind``: ``grouped`` (by prompt, ``fractions`` and ``seed``), ``time`` (chronological),
    ``leave_one_source_out`` / ``leave_one_model_out`` with ``held_out`` (one name or a list),
    ``leave_out`` with ``held_out`` a mapping column -> names (a row is held out when any
    column matches: e.g. a prompt source, a CASTILLO ``dataset`` and a generator family at once).

    Leave-one-out kinds keep the prompt-grouped partitions of the grouped split: train and
    validation are the grouped train and validation rows of the *other* sources/models; test is
    the held-out rows whose prompt group occurs in neither (all of a held-out source's rows; a
    held-out model's rows on test-partition prompts, since other models answered the train
    prompts). The other values' test-partition rows are used by nobody, so they stay unseen
    and a workload may draw from them (``data.holdout``).
    """
    d = dict(cfg or {})
    kind = d.get("kind", "grouped")
    fractions = tuple(d.get("fractions") or DEFAULT_FRACTIONS)
    seed = int(d.get("seed") or 0)
    if kind == "grouped":
        return grouped_split(df, fractions, seed=seed)
    if kind == "time":
        return time_split(df, fractions)
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown data.split.kind {kind!r}; expected one of {list(SPLIT_KINDS)}")
    held = d.get("held_out")
    if kind == "leave_out":
        if not isinstance(held, dict) or not held:
            raise ValueError(
                "data.split.kind=leave_out needs data.split.held_out as a mapping column -> "
                "value or list of values (e.g. {source: [sharegpt], model: [m1, m2]})"
            )
        is_held = np.zeros(len(df), dtype=bool)
        for col, names in held.items():
            is_held |= _held_rows(df, str(col), names)
    else:
        col = "source" if kind == "leave_one_source_out" else "model"
        if held is None or (not isinstance(held, str) and len(held) == 0):
            raise ValueError(
                f"data.split.kind={kind} needs data.split.held_out (the {col} or list of "
                f"{col}s to hold out)"
            )
        is_held = _held_rows(df, col, held)
    part = assign_groups(df, fractions, seed)
    train = ~is_held & (part == 0)
    val = ~is_held & (part == 1)
    g = group_keys(df)
    seen = set(g[train | val])
    test = is_held & ~g.isin(seen).to_numpy(dtype=bool)
    if not test.any():
        raise ValueError(
            f"data.split.held_out {held}: every held-out row shares a prompt with train/val; "
            "nothing is left to test on"
        )
    return Split(*(df.loc[m].reset_index(drop=True) for m in (train, val, test)))
