"""Writes docs/PREDICTORS.md from the predictor report's results: the tables per section, the
summaries and verdicts derived from them, and the targets.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import predictor_online as online
from benchmarks.predictor_config import VARIANTS, ReportConfig
from benchmarks.predictor_length import Embeddings
from predictor.eval_splits import EvalSplit
from report.tables import record_table

METRIC_COLS = ("n", "kendall_tau", "spearman", "mae", "mae_log", "p90_coverage", "class_accuracy")


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
    L += ["## Targets", "", record_table(fmt_targets(len_rows, rec_rows, cov_rows, extras)), ""]
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
        record_table(
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
        L += [f"### {v}", "", record_table([r for r in len_rows if r["variant"] == v], cols), ""]
    L += ["### Summary by variant", "", record_table(_variant_summary(len_rows, extras)), ""]
    L += ["### Verdict (keep a variant only if it helps off distribution)", ""]
    L += [record_table(verdicts(len_rows)), ""]
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
        record_table([{"variant": v, **extras[v]["latency"]} for v in rc.variants]),
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
        record_table(recovery_table(rec_rows)),
        "",
        "## p90 coverage after online calibration (every split)",
        "",
        f"Each split's test rows served as a stream ({rc.concurrency} concurrent); coverage of "
        f"the admission-time p90 over the requests admitted after the first {rc.burn_in}.",
        "",
        record_table(cov_rows),
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
        record_table(
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
