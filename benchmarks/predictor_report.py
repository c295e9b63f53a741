"""Regenerate docs/PREDICTORS.md: length and drift predictors in and off distribution.

    python -m benchmarks.predictor_report            # the full report (bounded sizes, ~15 min)
    python -m benchmarks.predictor_report --quick    # a CI-sized smoke run (~1-2 min)

Splits (``predictor.eval_splits``) are built on conf/data/default.yaml's prompt-grouped split:
in-distribution test, unseen-prompt (the default workload's draws with unseen prompt text),
leave-one-source-out and leave-one-model-out (a generator and the test prompts both unseen).
Every variant of item 2 (generator descriptors, ranking objective, MiniLM features, all
CASTILLO samples) is fitted on every split with the same bounded sizes; the online section
serves each held-out generator's traffic through the calibrators of ``predictor.censored`` /
``predictor.online`` and the refit of ``predictor.refit``; the drift section scores the drift
model at t = 32/128/512 against "admission minus t" on the unseen splits.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import predictor_online as online
from benchmarks.common import md_table
from predictor.eval_splits import EvalSplit, held_out_split, unseen_prompt_rows, workload_mix

REPO = Path(__file__).resolve().parents[1]

CASTILLO_MODELS = (
    "meta-llama--Llama-3.1-8B-Instruct",
    "Qwen--Qwen2.5-32B-Instruct",
    "google--gemma-3-4b-it",
    "mistralai--Mixtral-8x7B-Instruct-v0.1",
)
ALPACA_MODELS = ("Meta-Llama-3.1-8B-Instruct-Turbo", "claude-3-opus-20240229", "gpt4_1106_preview")
VARIANTS: dict[str, str] = {
    "default": "LightGBM quantile p50/p90 as conf/predictor/lightgbm.yaml (since issue 15: "
    "generator descriptors + 20% model-id dropout)",
    "no_generator": "default without generator descriptors and model-id dropout (the default "
    "before issue 15)",
    "rank": "default quantiles + rank_xendcg ranker (groups of 32) for the median",
    "minilm": "default + 32 PCA dims of frozen MiniLM prompt embeddings",
    "samples10": "default trained on all 10 CASTILLO samples per prompt (3 by default)",
}
METRIC_COLS = ("n", "kendall_tau", "spearman", "mae", "mae_log", "p90_coverage", "class_accuracy")


@dataclass
class ReportConfig:
    max_train_rows: int = 30_000  # rows each length model trains on (after sample explosion)
    max_val_rows: int = 8_000  # early stopping and p90 calibration
    max_test_rows: int = 20_000  # in-distribution test rows scored
    samples_per_prompt: int = 3  # CASTILLO samples per (prompt, model) in training
    lomo_models: tuple[str, ...] = CASTILLO_MODELS + ALPACA_MODELS
    variants: tuple[str, ...] = tuple(VARIANTS)
    online_models: tuple[str, ...] = CASTILLO_MODELS + ALPACA_MODELS[:1]
    stream: int = 1500  # requests served per online run
    concurrency: int = 64  # requests running at once in the online stream
    burn_in: int = 100  # admissions before the online coverage is counted
    refit_every: int = 100  # completions between incremental refits
    refit_rounds: int = 30  # trees per quantile added at a refit
    drift_traces: int = 20_000  # traces the drift model trains on
    drift_models: tuple[str, ...] = (CASTILLO_MODELS[0],)  # lomo splits with a drift refit
    latency_batch: int = 64
    seed: int = 0
    checkpoints: tuple[int, ...] = online.CHECKPOINTS


QUICK = ReportConfig(
    max_train_rows=3000,
    max_val_rows=800,
    max_test_rows=1500,
    lomo_models=(CASTILLO_MODELS[0], ALPACA_MODELS[0]),
    variants=("default", "no_generator"),
    online_models=(CASTILLO_MODELS[0],),
    stream=300,
    concurrency=16,
    burn_in=50,
    refit_every=100,
    refit_rounds=10,
    drift_traces=1500,
    drift_models=(),
    checkpoints=(0, 50, 100, 200),
)


# --- data --------------------------------------------------------------------------------
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


# --- length variants ---------------------------------------------------------------------
def conf_params(section: str, **over: Any) -> dict[str, Any]:
    """Hyperparameters of conf/predictor/lightgbm.yaml's ``section`` (length | drift) on one
    thread, lists as tuples (as the estimators store them), plus ``over``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "predictor" / "lightgbm.yaml"))
    p = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg[section].items()}
    p = {k: v for k, v in p.items() if not k.startswith("_")}
    p.update(num_threads=1, random_state=0, **over)
    return p


def lgbm_params(**over: Any) -> dict[str, Any]:
    return conf_params("length", **over)


class Embeddings:
    """One MiniLM embedding cache shared by every split's featurizer."""

    def __init__(self) -> None:
        self.cache: dict[str, np.ndarray] = {}
        self.encoder: Any = None
        self.encode_s = 0.0


def fit_variant(
    variant: str, sp: EvalSplit, rc: ReportConfig, emb: Embeddings
) -> tuple[Any, float, pd.DataFrame]:
    """(fitted model, fit seconds, validation rows) of one variant on one split."""
    from predictor.lgbm import LightGBMLength
    from predictor.transfer import EmbeddingFeaturizer, RankedLength

    rng = np.random.default_rng(rc.seed)
    samples = 10 if variant == "samples10" else None
    tr, va = training_rows(sp, rc, rng, samples)
    ytr = tr["output_tokens"].to_numpy(np.float64)
    ev = (va, va["output_tokens"].to_numpy(np.float64))
    t0 = time.perf_counter()
    if variant in ("default", "rank", "samples10"):
        est = LightGBMLength(**lgbm_params()).fit(tr, ytr, eval_set=ev)
        if variant == "rank":
            est = RankedLength(est).fit(tr, ytr, eval_set=ev)
    elif variant == "no_generator":
        est = LightGBMLength(**lgbm_params(generator_features=False, model_id_dropout=0.0))
        est.fit(tr, ytr, eval_set=ev)
    elif variant == "minilm":
        p = lgbm_params()
        fz = EmbeddingFeaturizer(
            text_dim=p["text_dim"],
            max_vocab=p["max_vocab"],
            min_count=p["min_count"],
            text_score=p["text_score"],
            generator_features=p.get("generator_features", False),
            emb_cache=emb.cache,
            encoder=emb.encoder,
        )
        t1 = time.perf_counter()
        fz.fit(tr, ytr)
        fz.embed(list(dict.fromkeys(x for x in va["prompt"].tolist() if isinstance(x, str))))
        emb.encoder = fz.encoder
        emb.encode_s += time.perf_counter() - t1
        est = LightGBMLength(**p).fit(tr, ytr, eval_set=ev, featurizer=fz)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return est, time.perf_counter() - t0, va


def score(est: Any, rows: pd.DataFrame) -> tuple[dict[str, float], np.ndarray]:
    from predictor.metrics import length_metrics

    q = est.predict_quantiles(rows)
    y = rows["output_tokens"].to_numpy(np.float64)
    return length_metrics(y, q, rows["prompt_tokens"].to_numpy(np.float64)), q


def length_section(
    splits: dict[str, EvalSplit], rc: ReportConfig, emb: Embeddings, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Any], dict[str, Any]]:
    """Metric rows (split x variant), fitted models, and per-variant extras (latency, fits)."""
    from predictor.training import measure_latency

    rows: list[dict[str, Any]] = []
    models: dict[tuple[str, str], Any] = {}
    extras: dict[str, Any] = {}
    ind = splits["in_distribution"]
    for v in rc.variants:
        t_v = time.perf_counter()
        est, fit_s, va = fit_variant(v, ind, rc, emb)
        models[(v, "in_distribution")] = est
        models[(v, "_val")] = va
        m_in, _ = score(est, ind.test)
        rows.append({"split": "in_distribution", "variant": v, **m_in, "fit_s": fit_s})
        lat = measure_latency(est, ind.test, rc.latency_batch, budget_s=1.0)
        extras[v] = {"latency": lat, "fit_s": [fit_s]}
        log(f"{v}: in-distribution tau {m_in['kendall_tau']:.3f} ({fit_s:.0f} s)")
        m_un, _ = score(est, splits["unseen_prompt"].test)
        rows.append(
            {
                "split": "unseen_prompt",
                "variant": v,
                **m_un,
                "ref_tau": m_in["kendall_tau"],
                "ref_mae": m_in["mae"],
                "fit_s": 0.0,
            }
        )
        text = splits["unseen_prompt"].test
        text = text[text["prompt"].notna().to_numpy(bool)] if "prompt" in text else text
        m_tx, _ = score(est, text)
        rows.append(
            {
                "split": "unseen_prompt (with text)",
                "variant": v,
                **m_tx,
                "ref_tau": m_in["kendall_tau"],
                "ref_mae": m_in["mae"],
                "fit_s": 0.0,
            }
        )
        for name, sp in splits.items():
            if sp.kind not in ("loso", "lomo"):
                continue
            ref, _ = score(est, sp.test)  # the in-distribution model on the same rows
            held, fit_s, _ = fit_variant(v, sp, rc, emb)
            models[(v, name)] = held
            m, _ = score(held, sp.test)
            extras[v]["fit_s"].append(fit_s)
            rows.append(
                {
                    "split": name,
                    "variant": v,
                    **m,
                    "ref_tau": ref["kendall_tau"],
                    "ref_mae": ref["mae"],
                    "fit_s": fit_s,
                }
            )
            log(
                f"  {v} {name}: tau {m['kendall_tau']:.3f} (in-dist model {ref['kendall_tau']:.3f})"
            )
        extras[v]["wall_s"] = time.perf_counter() - t_v
    for r in rows:
        if "ref_tau" in r:
            r["tau_gap"] = r["kendall_tau"] - r["ref_tau"]
            r["mae_gap"] = r["mae"] - r["ref_mae"]
    return rows, models, extras


# --- online ------------------------------------------------------------------------------
def generator_pool(base: Base, model: str) -> pd.DataFrame:
    """A generator's rows in the train/val partitions (a lomo model never saw them)."""
    pool = pd.concat([base.train, base.val], ignore_index=True)
    return pool[pool["model"].astype(str).to_numpy() == model].reset_index(drop=True)


def online_section(
    base: Base,
    splits: dict[str, EvalSplit],
    models: dict[tuple[str, str], Any],
    rc: ReportConfig,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(recovery rows per held-out generator x method x checkpoint, coverage rows per split)."""
    rng = np.random.default_rng(rc.seed + 3)
    ref_est = models[("default", "in_distribution")]
    rec_rows: list[dict[str, Any]] = []
    for m in rc.online_models:
        name = f"lomo:{m}"
        if name not in splits:
            continue
        est = models[("default", name)]
        sp = splits[name]
        # the generator's traffic outside the test partition (its prompts may have been seen
        # answered by other generators, never by it); evaluated on its test rows
        pool = generator_pool(base, m)
        pool = pool.iloc[rng.permutation(len(pool))[: rc.stream]].reset_index(drop=True)
        va = models[("default", "_val_" + name)]
        warm = (va["output_tokens"].to_numpy(np.float64), est.predict_quantiles(va))
        ref_mae = score(ref_est, sp.test)[0]["mae"]
        log(f"online {name}: stream {len(pool)}, eval {len(sp.test)}, in-dist MAE {ref_mae:.1f}")
        res = online.recovery(
            est,
            pool,
            sp.test,
            warm,
            concurrency=rc.concurrency,
            refit_every=rc.refit_every,
            refit_rounds=rc.refit_rounds,
            checkpoints=rc.checkpoints,
            log=log,
        )
        for meth, r in res.items():
            for c in r.checkpoints:
                rec_rows.append({"generator": m, "method": meth, **c, "ref_mae": ref_mae})
    cov_rows: list[dict[str, Any]] = []
    for name, sp in splits.items():
        key = ("default", "in_distribution" if sp.kind in ("in", "unseen") else name)
        est = models[key]
        va = models[("default", "_val" if key[1] == "in_distribution" else "_val_" + name)]
        warm = (va["output_tokens"].to_numpy(np.float64), est.predict_quantiles(va))
        rows = sp.test
        if sp.kind == "lomo":
            # + the generator's rows outside the test partition (never trained on as its
            # answers): enough traffic for a held-out AlpacaEval generator (~80 test rows)
            rows = pd.concat([generator_pool(base, name.split(":", 1)[1]), rows], ignore_index=True)
        stream = rows.iloc[rng.permutation(len(rows))[: rc.stream]].reset_index(drop=True)
        row: dict[str, Any] = {"split": name, "n": len(stream)}
        for meth in ("none", "ema", "km"):
            cal, cens, _ = online.make_method(meth, est, warm, rc.refit_every, rc.refit_rounds)
            r = online.run_stream(est, stream, cal, concurrency=rc.concurrency, censored=cens)
            row[f"p90_cov_{meth}"] = online.online_coverage(r, rc.burn_in)
        cov_rows.append(row)
        log(f"coverage {name}: {row}")
    return rec_rows, cov_rows


# --- drift -------------------------------------------------------------------------------
def fit_drift(est: Any, sp: EvalSplit, rc: ReportConfig) -> Any:
    """A drift model with the default hyperparameters on ``sp``'s train (out-of-fold
    admission predictions of ``est``, at most ``rc.drift_traces`` traces)."""
    from data.schema import filter_rows
    from predictor.lgbm import LightGBMDrift
    from predictor.training_drift import (
        crossfit_admission,
        drift_traces,
        has_output_text,
        text_columns,
    )

    p = conf_params("drift")
    rng = np.random.default_rng(rc.seed + 7)
    # at most half the budget of text traces (ShareGPT: the only ones with partial text), the
    # rest drawn from all traces, so the report's drift fit stays bounded at every size
    text = has_output_text(sp.train)
    cap = np.flatnonzero(text)
    keep = np.zeros(len(sp.train), bool)
    keep[rng.permutation(cap)[: rc.drift_traces // 2]] = True
    pool, _ = filter_rows(sp.train, ~text | keep, "drift: text traces capped")
    dtr, _ = drift_traces(pool, None, rc.drift_traces, rng)
    F = est.featurize_training(dtr)
    y = dtr["output_tokens"].to_numpy(np.float64)
    adm = crossfit_admission(est, F, y, dtr, 2, rc.seed)
    va = sp.val.iloc[: rc.max_val_rows]
    Fv = est.featurize(va)
    tx, cut = text_columns(dtr)
    drift = LightGBMDrift(**p)
    drift.fit(
        F,
        y,
        adm,
        eval_set=(
            Fv,
            va["output_tokens"].to_numpy(np.float64),
            est.predict_features(Fv),
            *text_columns(va),
        ),
        feature_names=est.featurizer_.feature_names,
        categorical_indices=est.featurizer_.categorical_indices,
        texts=tx,
        texts_truncated=cut,
    )
    return drift


def drift_section(
    splits: dict[str, EvalSplit],
    models: dict[tuple[str, str], Any],
    rc: ReportConfig,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    from predictor.metrics import DRIFT_POINTS
    from predictor.training_drift import has_output_text, score_drift, text_columns

    rows: list[dict[str, Any]] = []
    est = models[("default", "in_distribution")]
    t0 = time.perf_counter()
    drift = fit_drift(est, splits["in_distribution"], rc)
    log(f"drift fit {time.perf_counter() - t0:.0f} s")
    todo = [("in_distribution", est, drift), ("unseen_prompt", est, drift)]
    for m in rc.drift_models:
        name = f"lomo:{m}"
        if name in splits:
            e = models[("default", name)]
            todo.append((name, e, fit_drift(e, splits[name], rc)))
    for name, e, d in todo:
        te = splits[name].test
        F = e.featurize(te)
        adm = e.predict_features(F)
        y = te["output_tokens"].to_numpy(np.float64)
        tx, cut = text_columns(te)
        for r in score_drift(d, F, adm, y, DRIFT_POINTS, tx, cut):
            rows.append({"split": name, **r})
        has = has_output_text(te)
        if has.any():
            for with_text in (True, False):
                sub = score_drift(
                    d,
                    F[has],
                    adm[has],
                    y[has],
                    DRIFT_POINTS,
                    tx[has] if with_text and tx is not None else None,
                    cut[has] if with_text and cut is not None else None,
                    subset="with_text" if with_text else "text_rows_no_text",
                )
                rows += [{"split": name, **r} for r in sub]
    return rows


# --- report ------------------------------------------------------------------------------
def fmt_targets(
    len_rows: list[dict[str, Any]],
    rec_rows: list[dict[str, Any]],
    cov_rows: list[dict[str, Any]],
    extras: dict[str, Any],
) -> list[dict[str, Any]]:
    out = []
    best_unseen = max(
        (r for r in len_rows if r["split"] == "unseen_prompt"), key=lambda r: r["kendall_tau"]
    )
    out.append(
        {
            "target": "unseen-prompt tau >= 0.45",
            "measured": f"{best_unseen['kendall_tau']:.3f} ({best_unseen['variant']})",
            "met": best_unseen["kendall_tau"] >= 0.45,
        }
    )
    covs = [r["p90_cov_km"] for r in cov_rows if r["p90_cov_km"] == r["p90_cov_km"]]
    ok = [abs(c - 0.9) <= 0.03 for c in covs]
    out.append(
        {
            "target": "p90 coverage 0.90 +/- 0.03 after online calibration (every split)",
            "measured": f"{sum(ok)}/{len(ok)} splits within; range {min(covs):.3f}-{max(covs):.3f}",
            "met": all(ok),
        }
    )
    df = pd.DataFrame(rec_rows)
    if len(df):
        halved = []
        for _g, d in df[df.method == "km"].groupby("generator"):
            d = d.sort_values("completed")
            gap0 = d["mae"].iloc[0] - d["ref_mae"].iloc[0]
            at = d[d.completed <= 500]
            halved.append(bool(gap0 <= 0 or (at["mae"] - at["ref_mae"]).min() <= gap0 / 2))
        out.append(
            {
                "target": "online calibration halves an unseen generator's MAE gap within 500",
                "measured": f"{sum(halved)}/{len(halved)} generators (km)",
                "met": all(halved),
            }
        )
    lat = extras["default"]["latency"]
    out.append(
        {
            "target": "LightGBM admission <= 20 us/request (batch 64)",
            "measured": f"{lat['admission_us_per_request']:.1f} us",
            "met": lat["admission_us_per_request"] <= 20,
        }
    )
    out.append(
        {
            "target": "featurising <= 300 us/request",
            "measured": f"{lat['featurize_us_per_request']:.1f} us",
            "met": lat["featurize_us_per_request"] <= 300,
        }
    )
    return out


def verdicts(len_rows: list[dict[str, Any]], tol: float = 0.005) -> list[dict[str, Any]]:
    """Each variant vs default: mean tau over the unseen splits (unseen-prompt, every loso and
    lomo) and in-distribution tau; "keep" needs a gain off distribution and no in-distribution
    loss beyond ``tol``."""
    df = pd.DataFrame(len_rows)
    off = df[df["split"].str.startswith(("unseen_prompt", "loso:", "lomo:"))]
    off = off[off["split"] != "unseen_prompt (with text)"]
    ind = df[df["split"] == "in_distribution"].set_index("variant")
    mean_off = off.groupby("variant")["kendall_tau"].mean()
    mean_mae = off.groupby("variant")["mae"].mean()
    if "default" not in ind.index:
        return []
    out = []
    for v in mean_off.index:
        d_off = float(mean_off[v] - mean_off["default"])
        d_in = float(ind.loc[v, "kendall_tau"] - ind.loc["default", "kendall_tau"])
        out.append(
            {
                "variant": v,
                "mean off-dist tau": float(mean_off[v]),
                "vs default (off)": d_off,
                "mean off-dist MAE": float(mean_mae[v]),
                "in-dist tau vs default": d_in,
                "keep": bool(v == "default" or (d_off > 0 and d_in >= -tol)),
            }
        )
    return out


def recovery_table(rec_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rec_rows:
        return []
    df = pd.DataFrame(rec_rows)
    out = []
    for (g, meth), d in df.groupby(["generator", "method"], sort=False):
        d = d.sort_values("completed")
        gap0 = d["mae"].iloc[0] - d["ref_mae"].iloc[0]
        row: dict[str, Any] = {"generator": g, "method": meth, "in-dist MAE": d["ref_mae"].iloc[0]}
        for _, r in d.iterrows():
            c = int(r["completed"])
            row[f"MAE@{c}"] = r["mae"]
        for _, r in d.iterrows():
            row[f"tau@{int(r['completed'])}"] = r["tau"]
        half = d[(d["mae"] - d["ref_mae"]) <= gap0 / 2] if gap0 > 0 else d.iloc[:1]
        row["gap halved at"] = (
            f"{int(half['completed'].iloc[0])} req / {half['tokens'].iloc[0] / 1e3:.0f}k tok"
            if len(half)
            else "not within stream"
        )
        out.append(row)
    return out


def write_report(
    path: Path,
    rc: ReportConfig,
    quick: bool,
    splits: dict[str, EvalSplit],
    len_rows: list[dict[str, Any]],
    extras: dict[str, Any],
    emb: Embeddings,
    rec_rows: list[dict[str, Any]],
    cov_rows: list[dict[str, Any]],
    drift_rows: list[dict[str, Any]],
    timings: dict[str, float],
) -> None:
    L = _report_head(rc, quick, splits, timings)
    L += _length_part(rc, splits, len_rows, extras, emb)
    L += _online_part(rc, extras, rec_rows, cov_rows)
    L += _CALIBRATOR_API
    L += _drift_part(drift_rows)
    L += ["## Targets", "", md_table(fmt_targets(len_rows, rec_rows, cov_rows, extras)), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def _report_head(
    rc: ReportConfig, quick: bool, splits: dict[str, EvalSplit], timings: dict[str, float]
) -> list[str]:
    """Title, machine and sizes, the splits table and the length section's intro."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cmd = "python -m benchmarks.predictor_report" + (" --quick" if quick else "")
    return [
        "# Predictors in and off distribution",
        "",
        f"Generated by `{cmd}` ({'quick smoke sizes: not the headline numbers' if quick else 'full report'}). "
        f"{platform.machine()}, {os.cpu_count()} cores, 1 LightGBM/BLAS thread "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); wall "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; peak RSS {peak:.0f} MiB.",
        "",
        "Bounded sizes (every model, every split): "
        + ", ".join(f"{k}={v}" for k, v in asdict(rc).items() if not isinstance(v, tuple))
        + ".",
        "",
        "## Splits",
        "",
        "All splits derive from conf/data/default.yaml's prompt-grouped split (0.8/0.1/0.1 by "
        "prompt_id, seed 0), so no scored prompt is trained on. *unseen_prompt*: grouped-test rows "
        "the default workload draws (conf/workload/default.yaml mixes) whose normalised prompt text "
        "is not in train/val, plus vidur_arxiv (never trained on, no prompt text) at its workload "
        "share; scored by the in-distribution model. *loso:S* / *lomo:M*: trained on grouped train "
        "without source S / generator M, scored on S's / M's grouped-test rows (new prompts too). "
        "`ref_tau` is the in-distribution model of the same variant on the same rows, so "
        "`tau_gap` is the transfer loss alone.",
        "",
        md_table(
            [
                {
                    "split": k,
                    "train rows (before subsampling)": len(s.train),
                    "test rows": len(s.test),
                }
                for k, s in splits.items()
            ]
        ),
        "",
        "## Length metrics",
        "",
        "Variants: " + "; ".join(f"**{v}**: {VARIANTS[v]}" for v in rc.variants) + ".",
        "",
    ]


def _length_part(
    rc: ReportConfig,
    splits: dict[str, EvalSplit],
    len_rows: list[dict[str, Any]],
    extras: dict[str, Any],
    emb: Embeddings,
) -> list[str]:
    """One table per variant, the summary by variant, the verdict, the encoder's cost."""
    L: list[str] = []
    cols = ["split", "variant", *METRIC_COLS, "ref_tau", "tau_gap", "mae_gap"]
    for v in rc.variants:
        L += [f"### {v}", "", md_table([r for r in len_rows if r["variant"] == v], cols), ""]
    L += ["### Summary by variant", "", md_table(_variant_summary(len_rows, extras)), ""]
    L += ["### Verdict (keep a variant only if it helps off distribution)", ""]
    L += [md_table(verdicts(len_rows)), ""]
    if "minilm" in rc.variants and emb.encoder is not None:
        L += _encoder_cost(rc, splits, emb)
    return L


def _variant_summary(
    len_rows: list[dict[str, Any]], extras: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per variant: mean tau per kind of split, lomo MAE and coverage, latency, fit time."""
    df = pd.DataFrame(len_rows)
    summ = []
    for v, d in df.groupby("variant", sort=False):

        def mean_of(kind: str, col: str = "kendall_tau", d: pd.DataFrame = d) -> float:
            sel = d[d["split"].str.startswith(kind)]
            return float(sel[col].mean()) if len(sel) else float("nan")

        summ.append(
            {
                "variant": v,
                "in-dist tau": mean_of("in_distribution"),
                "unseen-prompt tau": mean_of("unseen_prompt"),
                "mean loso tau": mean_of("loso:"),
                "mean lomo tau": mean_of("lomo:"),
                "mean lomo MAE": mean_of("lomo:", "mae"),
                "mean lomo p90 cov": mean_of("lomo:", "p90_coverage"),
                "featurize us/req": extras[v]["latency"]["featurize_us_per_request"],
                "admission us/req": extras[v]["latency"]["admission_us_per_request"],
                "mean fit s": float(np.mean(extras[v]["fit_s"])),
            }
        )
    return summ


def _encoder_cost(rc: ReportConfig, splits: dict[str, EvalSplit], emb: Embeddings) -> list[str]:
    """The MiniLM encoder's own cost (the featurize column reads cached embeddings)."""
    from predictor.transfer import EmbeddingFeaturizer

    fz = EmbeddingFeaturizer(encoder=emb.encoder)
    prompts = [p for p in splits["in_distribution"].test["prompt"].tolist() if isinstance(p, str)]
    us = fz.encode_cost_us(prompts, rc.latency_batch)
    return [
        f"MiniLM encoder cost (not in the featurize column above, which reads cached "
        f"embeddings): {us:.0f} us/prompt at batch {rc.latency_batch} on one CPU thread; "
        f"{len(emb.cache)} distinct prompts encoded in {emb.encode_s:.0f} s for the whole report.",
        "",
    ]


def _online_part(
    rc: ReportConfig,
    extras: dict[str, Any],
    rec_rows: list[dict[str, Any]],
    cov_rows: list[dict[str, Any]],
) -> list[str]:
    """Latency per variant, recovery on an unseen generator's stream, p90 coverage."""
    return [
        "## Latency (default, batch 64, one thread)",
        "",
        md_table([{"variant": v, **extras[v]["latency"]} for v in rc.variants]),
        "",
        "## Online adaptation to an unseen generator",
        "",
        f"Each held-out generator's own traffic (its rows outside the test partition, shuffled, "
        f"{rc.stream} requests) is served by the lomo model in a fluid continuous-batching "
        f"stream ({rc.concurrency} running at once, one token per step). Methods: "
        + "; ".join(f"**{k}**: {v}" for k, v in online.METHODS.items())
        + f". Calibration group: (served model, tenant); warm start: the lomo model's validation "
        f"residuals; refit every {rc.refit_every} completions with {rc.refit_rounds} trees per "
        "quantile. MAE/tau at each checkpoint (completed requests) are measured on the generator's "
        "test rows with the corrections of that moment; `in-dist MAE` is the model that trained on "
        "the generator, on the same rows. Gap = MAE - in-dist MAE; tokens = output tokens of the "
        "completed requests.",
        "",
        md_table(recovery_table(rec_rows)),
        "",
        "## p90 coverage after online calibration (every split)",
        "",
        f"Each split's test rows served as a stream ({rc.concurrency} concurrent); coverage of "
        f"the admission-time p90 over the requests admitted after the first {rc.burn_in}.",
        "",
        md_table(cov_rows),
        "",
    ]


_CALIBRATOR_API = [
    "## Calibrator API (for the `drift` policy)",
    "",
    "`predictor.censored.CensoredCalibrator` is a drop-in for "
    "`predictor.online.OnlineRecalibrator` (`scheduler/policies/estimates.py` builds one):",
    "",
    "* `adjust(groups, raw) -> (n, 2)`: corrected (p50, p90) in tokens for raw admission "
    "predictions `raw` (n, 2); `groups` any hashables, a tuple `(a, b)` falls back to `(a,)` "
    "then the global level while it has fewer than `min_count` observations;",
    "* `update(groups, actual, raw, keys=None)` / `update_one(group, actual, raw, key=None)`: "
    "finished requests (true length, *raw* prediction); `keys` drops their running state;",
    "* `observe_running(keys, groups, attained, raw)`: running requests' tokens generated so "
    "far (censored: length > attained); call it each step or every few steps with the running "
    "batch (a key's state is overwritten; 0 tokens is ignored);",
    "* `forget_running(keys)` for aborted/preempted-and-dropped requests; "
    "`reset_observations()` after the model is refitted;",
    "* warm start: `CensoredCalibrator.from_residuals(val_lengths, val_raw_pred)` (the "
    "artifact's validation split), or the default calibrated-model prior.",
    "",
    "Memory is bounded: `window` completions per group level and at most `max_running` "
    "censored states. `predictor.refit.IncrementalRefit(base, cadence, rounds, max_rows)` "
    "refits from completions: `add(features, lengths) -> bool` (True when `current`, the "
    "model to serve, changed).",
    "",
]


def _drift_part(drift_rows: list[dict[str, Any]]) -> list[str]:
    """The drift model's remaining-length error on every split."""
    return [
        "## Drift model off distribution",
        "",
        "Remaining-length MAE of the drift model vs `admission_minus_t` (the admission p50 minus "
        "t) over requests still running at t; `mae_gain_vs_naive` > 1 is better. `with_text`: "
        "the text-bearing rows (ShareGPT) reading their first t tokens; `text_rows_no_text`: the "
        "same rows with the partial text withheld.",
        "",
        md_table(
            [r for r in drift_rows if r.get("model") == "drift"],
            [
                "split",
                "subset",
                "t",
                "n",
                "mae",
                "kendall_tau",
                "p90_coverage",
                "mae_gain_vs_naive",
            ],
        ),
        "",
    ]


def build(
    rc: ReportConfig,
    out: Path,
    quick: bool,
    base: Base | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = base or load_base(log)
    rng = np.random.default_rng(rc.seed)
    splits = build_splits(base, rc, rng)
    timings["data"] = time.perf_counter() - t0
    emb = Embeddings()
    t0 = time.perf_counter()
    len_rows, models, extras = length_section(splits, rc, emb, log)
    timings["length"] = time.perf_counter() - t0
    # validation rows of every held-out split (the warm start of its calibrator)
    for name, sp in splits.items():
        if sp.kind in ("loso", "lomo"):
            models[("default", "_val_" + name)] = training_rows(
                sp, rc, np.random.default_rng(rc.seed)
            )[1]
    t0 = time.perf_counter()
    rec_rows, cov_rows = online_section(base, splits, models, rc, log)
    timings["online"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    drift_rows = drift_section(splits, models, rc, log)
    timings["drift"] = time.perf_counter() - t0
    write_report(
        out, rc, quick, splits, len_rows, extras, emb, rec_rows, cov_rows, drift_rows, timings
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke sizes")
    ap.add_argument("--out", default=None, help="default docs/PREDICTORS.md (quick: outputs/)")
    ap.add_argument(
        "--variants", default=None, help="comma-separated subset of " + ",".join(VARIANTS)
    )
    args = ap.parse_args(argv)
    rc = QUICK if args.quick else ReportConfig()
    if args.variants:
        rc = replace(rc, variants=tuple(args.variants.split(",")))
    out = (
        Path(args.out)
        if args.out
        else (
            REPO / "outputs" / "predictors_quick.md"
            if args.quick
            else REPO / "docs" / "PREDICTORS.md"
        )
    )
    build(rc, out, args.quick)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
