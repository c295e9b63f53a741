"""Evaluation splits for off-distribution predictor reports (``benchmarks.predictor_report``).

Every split is built on the data config's prompt-grouped split (conf/data/default.yaml), so no
evaluation prompt is ever trained on:

* ``in_distribution``: the grouped test partition.
* ``unseen_prompt``: the test partition restricted to the rows the default workload draws
  (conf/workload/default.yaml tenants' mixes) minus any prompt whose normalised text occurs in
  train/val, plus the workload's sources that are never trained on (vidur_arxiv).
  :func:`unseen_prompt_rows` is the one place that defines it (to be swapped for
  ``data.holdout`` when that lands).
* ``loso:<source>``: trained on train minus the source, scored on the source's test rows.
* ``lomo:<model>``: trained on train minus the generator, scored on its test rows (a new
  generator on new prompts). Scoring on the *same* rows as the in-distribution model gives an
  honest per-split gap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
_WS = re.compile(r"\s+")


def normalise_prompt(p: Any) -> str | None:
    """Whitespace-collapsed, casefolded prompt text (None without text)."""
    if not isinstance(p, str):
        return None
    return _WS.sub(" ", p).strip().casefold()


def workload_mix(path: Path | None = None) -> list[dict[str, Any]]:
    """The (source, models, categories) items of a tenants workload config, as plain dicts."""
    from omegaconf import OmegaConf

    p = path or REPO / "conf" / "workload" / "default.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    tenants = cfg.get("tenants") if isinstance(cfg, dict) else None
    if not isinstance(tenants, dict) or not tenants:
        raise ValueError(f"{p}: expected a `tenants:` mapping (a tenants-preset workload)")
    out = []
    for name, t in tenants.items():
        for item in t.get("mix") or []:
            if "source" not in item:
                raise ValueError(f"{p}: tenants.{name}.mix item {item!r} lacks `source`")
            out.append(
                {
                    "tenant": str(name),
                    "source": str(item["source"]),
                    "models": item.get("models"),
                    "categories": item.get("categories"),
                }
            )
    return out


def workload_mask(df: pd.DataFrame, mix: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Rows of ``df`` a workload with these mix items could draw."""
    keep = np.zeros(len(df), bool)
    src = df["source"].astype(str).to_numpy()
    model = df["model"].astype(str).to_numpy()
    cat = df["category"].astype(str).to_numpy()
    for it in mix:
        m = src == it["source"]
        if it.get("models"):
            m &= np.isin(model, list(it["models"]))
        if it.get("categories"):
            m &= np.isin(cat, list(it["categories"]))
        keep |= m
    return keep


def unseen_prompt_rows(
    test: pd.DataFrame,
    seen: pd.DataFrame,
    extra: pd.DataFrame | None = None,
    mix: Iterable[Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Rows of ``test`` (+ ``extra``, never-trained sources) the workload draws whose prompt
    text does not occur in ``seen`` (train + val), by normalised text."""
    mix = list(mix if mix is not None else workload_mix())
    seen_text = {t for t in map(normalise_prompt, seen["prompt"].tolist()) if t}
    parts = [test] if extra is None or not len(extra) else [test, extra]
    df = pd.concat(parts, ignore_index=True)
    keep = workload_mask(df, mix)
    norm = [normalise_prompt(p) for p in df["prompt"].tolist()] if "prompt" in df else []
    if norm:
        keep &= np.array([t is None or t not in seen_text for t in norm], bool)
    return df.loc[keep].reset_index(drop=True)


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation split: train/val rows to fit on and test rows to score."""

    name: str  # in_distribution | unseen_prompt | loso:<source> | lomo:<model>
    kind: str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def held_out_split(
    train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, column: str, value: str
) -> EvalSplit:
    """Train/val without ``column == value``; test = its rows of the grouped test partition."""
    kind = {"source": "loso", "model": "lomo"}[column]

    def drop(d: pd.DataFrame) -> pd.DataFrame:
        return d.loc[d[column].astype(str).to_numpy() != value].reset_index(drop=True)

    te = test.loc[test[column].astype(str).to_numpy() == value].reset_index(drop=True)
    if not len(te):
        raise ValueError(f"{kind}: {column} {value!r} has no rows in the grouped test partition")
    return EvalSplit(f"{kind}:{value}", kind, drop(train), drop(val), te)
