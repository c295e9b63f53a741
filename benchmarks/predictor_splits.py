"""The predictor report's data: the data config's grouped split, the never-trained workload
sources, and the evaluation splits built on them (in distribution, unseen prompt,
leave-one-source-out, leave-one-model-out), plus the bounded training rows of a split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.predictor_config import REPO, ReportConfig
from predictor.eval_splits import EvalSplit, held_out_split, unseen_prompt_rows, workload_mix


@dataclass
class Base:
    """The grouped split of the data config, plus never-trained workload sources."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    extra: pd.DataFrame  # rows of workload sources no predictor trains on (vidur_arxiv)
    mix: list[dict[str, Any]]
    sizes: dict[str, int] = field(default_factory=dict)


def load_base(log: Callable[[str], None]) -> Base:
    from omegaconf import OmegaConf

    from data.loaders import load_sources
    from predictor.training import split_table

    data_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "default.yaml"))
    table = load_sources(list(data_cfg["sources"]))
    sp = split_table(table, data_cfg["split"])
    mix = workload_mix()
    trained = set(data_cfg["sources"])
    extra_sources = sorted({m["source"] for m in mix} - trained)
    extra = load_sources(extra_sources) if extra_sources else table.iloc[:0]
    log(
        f"data: {len(table)} rows; grouped train/val/test {len(sp.train)}/{len(sp.val)}/{len(sp.test)}"
    )
    return Base(sp.train, sp.val, sp.test, extra, mix, {"rows": len(table)})


def extra_share(mix: list[dict[str, Any]], extra_sources: set[str]) -> float:
    """Share of the workload's requests drawn from ``extra_sources`` (tenant x item weight)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "workload" / "default.yaml"))
    total = sum(float(t["weight"]) for t in cfg["tenants"].values())
    share = 0.0
    for t in cfg["tenants"].values():
        w = sum(float(i.get("weight", 1.0)) for i in t["mix"])
        for i in t["mix"]:
            if i["source"] in extra_sources:
                share += float(t["weight"]) / total * float(i.get("weight", 1.0)) / w
    return share


def build_splits(base: Base, rc: ReportConfig, rng: np.random.Generator) -> dict[str, EvalSplit]:
    from predictor.datasets import subsample

    seen = pd.concat([base.train, base.val], ignore_index=True)
    text = unseen_prompt_rows(base.test, seen, None, base.mix)
    extra = base.extra
    if len(extra):
        # never-trained sources enter at their workload share (vidur_arxiv: 10% of requests)
        s = extra_share(base.mix, set(extra["source"].astype(str)))
        n_extra = round(s / max(1.0 - s, 1e-9) * len(text))
        extra, _ = subsample(extra, n_extra, rng, "unseen-prompt: workload share of extra")
    unseen = unseen_prompt_rows(base.test, seen, extra, base.mix) if len(extra) else text
    test, _ = subsample(base.test, rc.max_test_rows, rng, "in-distribution test rows")
    splits = {
        "in_distribution": EvalSplit("in_distribution", "in", base.train, base.val, test),
        "unseen_prompt": EvalSplit("unseen_prompt", "unseen", base.train, base.val, unseen),
    }
    for src in sorted(set(base.test["source"].astype(str))):
        splits[f"loso:{src}"] = held_out_split(base.train, base.val, base.test, "source", src)
    for m in rc.lomo_models:
        if (base.test["model"].astype(str) == m).any():
            splits[f"lomo:{m}"] = held_out_split(base.train, base.val, base.test, "model", m)
    return splits


def training_rows(
    sp: EvalSplit, rc: ReportConfig, rng: np.random.Generator, samples: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from predictor.datasets import explode_samples, subsample

    tr = explode_samples(sp.train, samples or rc.samples_per_prompt, rng)
    tr, _ = subsample(tr, rc.max_train_rows, rng, "train rows")
    va, _ = subsample(sp.val, rc.max_val_rows, rng, "val rows")
    return tr, va


def generator_pool(base: Base, model: str) -> pd.DataFrame:
    """A generator's rows in the train/val partitions (a lomo model never saw them)."""
    pool = pd.concat([base.train, base.val], ignore_index=True)
    return pool[pool["model"].astype(str).to_numpy() == model].reset_index(drop=True)
