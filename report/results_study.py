"""Part 2 of docs/RESULTS.md: the headline study on the default multi-tenant workload (every
policy x load x seed: per-load tables, ``drift``'s paired ratios, load curves, per-tier SLO), the
leak-free versus overlapping-prompt protocols, the held-out predictor table and the workload
whose tenants' length mix shifts halfway.

Each ``section_*`` returns its Markdown lines (and, where the document's key numbers come from
it, a mapping of them); the numbers come from the run directories of ``report.results_plan``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from data.schema import TIERS
from report.results_plan import OVERLAP_ARMS, SHIFT_ARMS, Plan
from report.runs import load_run
from report.tables import capture, figure_link, fmt_ci, get, latency, md_table, num, rel


def section_headline(
    plan: Plan, runs: Mapping[float, Mapping[int, Mapping[str, Path]]], figdir: Path
) -> tuple[list[str], dict[str, Any]]:
    out = ["## Part 2: headline study on the default multi-tenant workload\n"]
    loads = sorted(runs)
    seeds = sorted(next(iter(runs.values())))
    labels: list[str] = []  # union over loads (transformer arms run at the top load only)
    for by_seed in runs.values():
        for dirs in by_seed.values():
            labels += [lab for lab in dirs if lab not in labels]
    root = rel(next(iter(next(iter(runs.values())).values()))["fifo"].parents[2])
    out.append(
        f"Runs: `{root}/u<load>/seed<seed>/<policy>/`; simulator `conf/engine/sim.yaml` "
        f"(continuous batching, L4 + Llama-3-8B), default workload with {plan.default_n} "
        f"requests, seeds {seeds}, loads {loads}. `sjf` and `drift` use the LightGBM predictor "
        "in `artifacts/` (`sjf_tf`, `drift_tf`, where present: the same policies on the "
        "transformer predictor in `artifacts/transformer`). Mean [95% t-interval] over "
        "seeds.\n"
    )
    summ = _headline_summaries(runs, loads, seeds, labels)
    out += _headline_load_tables(summ, loads, seeds, labels)
    key: dict[str, Any] = {}
    out += _headline_ratios(summ, loads, seeds, labels, key)
    out += _headline_figures(summ, loads, seeds, labels, figdir)
    return out, key


# summ[load][seed][arm]: the run's summary.json (an empty mapping where the arm is missing)
_Summaries = Mapping[float, Mapping[int, Mapping[str, Mapping[str, Any]]]]


def _headline_summaries(
    runs: Mapping[float, Mapping[int, Mapping[str, Path]]],
    loads: Sequence[float],
    seeds: Sequence[int],
    labels: Sequence[str],
) -> dict[float, dict[int, dict[str, Any]]]:
    """Every run's summary, with every label present at every load and seed."""
    summ = {
        u: {s: {lab: load_run(d)[0] for lab, d in runs[u][s].items()} for s in seeds} for u in loads
    }
    nan_summary: dict[str, Any] = {}  # missing arm at a load: every metric NaN ("n/a")
    for u in loads:
        for s in seeds:
            for lab in labels:
                summ[u][s].setdefault(lab, nan_summary)
    return summ


def _headline_load_tables(
    summ: _Summaries, loads: Sequence[float], seeds: Sequence[int], labels: Sequence[str]
) -> list[str]:
    """One table per utilisation: every policy's headline metrics."""
    metrics = [
        ("E2E mean (s)", lambda x: latency(x, "e2e_s", "mean")),
        ("E2E p99 (s)", lambda x: latency(x, "e2e_s", "p99")),
        (
            "premium TTFT p99 (s)",
            lambda x: get(x, "per_tier", "premium", "latency", "ttft_s", "p99"),
        ),
        ("SLO attainment", lambda x: get(x, "slo", "attainment")),
        ("Jain (tenants)", lambda x: get(x, "fairness", "jain_tenants")),
        ("max wait (s)", lambda x: get(x, "starvation", "max_wait_s")),
    ]
    out = []
    for u in loads:
        rows = []
        for lab in labels:
            rows.append([lab, *[fmt_ci([f(summ[u][s][lab]) for s in seeds]) for _, f in metrics]])
        out.append(f"### Utilisation {u:g}\n")
        out.append(md_table(["policy", *[m for m, _ in metrics]], rows) + "\n")
    return out


def _headline_ratios(
    summ: _Summaries,
    loads: Sequence[float],
    seeds: Sequence[int],
    labels: Sequence[str],
    key: dict[str, Any],
) -> list[str]:
    """E2E of ``drift`` over each reference, paired per seed; records them in ``key``."""
    rows = []
    for u in loads:
        row = [f"{u:g}"]
        for ref in ("fifo", "sjf", "oracle"):
            if "drift" in labels and ref in labels:
                for q in ("mean", "p99"):
                    v = [
                        latency(summ[u][s]["drift"], "e2e_s", q)
                        / latency(summ[u][s][ref], "e2e_s", q)
                        for s in seeds
                    ]
                    key[f"drift_vs_{ref}_{q}_u{u:g}"] = v
                    row.append(fmt_ci(v))
        rows.append(row)
    return [
        "### Headline ratios (E2E of `drift` / E2E of the reference, paired per seed)\n",
        md_table(
            [
                "load",
                "drift/fifo mean",
                "drift/fifo p99",
                "drift/sjf mean",
                "drift/sjf p99",
                "drift/oracle mean",
                "drift/oracle p99",
            ],
            rows,
        )
        + "\n",
    ]


def _headline_figures(
    summ: _Summaries,
    loads: Sequence[float],
    seeds: Sequence[int],
    labels: Sequence[str],
    figdir: Path,
) -> list[str]:
    """Load curves and the per-tier SLO figure and table at the top load."""
    from report.figures import fig_load_curves, fig_tier_slo

    curves = fig_load_curves(
        _load_curve_frame(summ, loads, seeds, labels),
        labels,
        figdir / "results_load_curves.png",
        min_loads=1,
    )
    top = loads[-1]
    att = {
        lab: {
            t: [get(summ[top][s][lab], "per_tier", t, "slo", "both") for s in seeds] for t in TIERS
        }
        for lab in labels
    }
    tiers = fig_tier_slo(att, top, figdir / "results_tier_slo.png")
    rows = [[lab, *[fmt_ci(att[lab][t]) for t in TIERS]] for lab in labels]
    return [
        f"### Per-tier SLO attainment (TTFT and E2E) at utilisation {top:g}\n",
        md_table(["policy", *TIERS], rows) + "\n",
        figure_link("load curves", curves, figdir.parent) + "\n",
        figure_link("tier SLO", tiers, figdir.parent) + "\n",
    ]


def _load_curve_frame(
    summ: _Summaries, loads: Sequence[float], seeds: Sequence[int], labels: Sequence[str]
) -> pd.DataFrame:
    """One row per (policy, load, seed) with the metrics ``report.figures.fig_load_curves``
    draws by default (``report.comparison`` keys)."""
    rows = []
    for lab in labels:
        for u in loads:
            for s in seeds:
                x = summ[u][s][lab]
                rows.append(
                    {
                        "label": lab,
                        "utilisation": u,
                        "e2e_mean_s": latency(x, "e2e_s", "mean"),
                        "premium_ttft_p99_s": get(
                            x, "per_tier", "premium", "latency", "ttft_s", "p99"
                        ),
                        "slo_attainment": get(x, "slo", "attainment"),
                    }
                )
    return pd.DataFrame(rows)


def _tau(d: Path) -> float:
    """Kendall tau-b of a run's admission estimates with the true lengths."""
    from scipy.stats import kendalltau

    r = load_run(d)[1]
    r = r[r["est_output_tokens"].notna()]
    if len(r) < 3:
        return math.nan
    return float(kendalltau(r["est_output_tokens"], r["true_output_tokens"]).statistic)


def section_overlap(
    plan: Plan,
    headline: Mapping[float, Mapping[int, Mapping[str, Path]]],
    overlap: Mapping[int, Mapping[str, Path]],
) -> tuple[list[str], dict[str, Any]]:
    u = max(plan.loads)
    seeds = sorted(overlap)
    new = {s: {p: headline[u][s][p] for p in OVERLAP_ARMS} for s in seeds}
    out = [
        "### What prompt overlap had inflated: the old protocol beside the leak-free one\n",
        "Until this version the default workload drew its prompts from the same pools the "
        "predictor trained on. Both columns below use the same artifacts, seeds and load "
        f"(utilisation {u:g}); *overlapping* re-runs the old protocol (`workload.unseen_by=null "
        "allow_train_overlap=true`, runs `" + rel(root_of(overlap)) + "`), *leak-free* is the "
        "headline study above (`train_overlap` 0). Capture = headroom capture vs FIFO and the "
        "oracle of the same protocol; tau = Kendall tau-b of the policy's admission estimates "
        "with the true lengths over the workload.\n",
    ]
    key: dict[str, Any] = {}
    rows = []
    for p in OVERLAP_ARMS:
        row = [f"`{p}`"]
        for tag, runs in (("leak_free", new), ("overlapping", overlap)):
            summ = {s: load_run(runs[s][p])[0] for s in seeds}
            fifo = {s: latency(load_run(runs[s]["fifo"])[0], "e2e_s", "mean") for s in seeds}
            orc = {s: latency(load_run(runs[s]["oracle"])[0], "e2e_s", "mean") for s in seeds}
            e2e = [latency(summ[s], "e2e_s", "mean") for s in seeds]
            cap = [capture(fifo[s], e2e[i], orc[s]) for i, s in enumerate(seeds)]
            ov = [summ[s].get("train_overlap") for s in seeds]
            tau = [_tau(runs[s][p]) for s in seeds] if p in ("sjf", "drift") else []
            key[f"{tag}_{p}_capture"] = cap
            key[f"{tag}_{p}_tau"] = tau
            row += [
                fmt_ci(e2e),
                fmt_ci(cap),
                "-"
                if all(x is None for x in ov)
                else f"{max(float(x) for x in ov if x is not None):.2f}",
                fmt_ci(tau) if tau else "-",
            ]
        rows.append(row)
    cols = ["mean E2E (s)", "capture", "train_overlap", "tau"]
    out.append(
        md_table(
            ["policy", *[f"leak-free {c}" for c in cols], *[f"overlapping {c}" for c in cols]],
            rows,
        )
        + "\n"
    )
    d_tau = [
        a - b for a, b in zip(key.get("overlapping_sjf_tau", []), key.get("leak_free_sjf_tau", []))
    ]
    d_cap = [
        a - b for a, b in zip(key["overlapping_drift_capture"], key["leak_free_drift_capture"])
    ]
    out.append(
        "Reading: on overlapping prompts the predictor ranks better by "
        f"{fmt_ci(d_tau)} Kendall tau (sjf's estimates) and `drift`'s headroom capture "
        f"changes by {fmt_ci(d_cap)}; numbers measured on the old default therefore credited "
        "the learned policies with part of the predictor's memory of its training prompts.\n"
    )
    return out, key


def root_of(runs: Mapping[int, Mapping[str, Path]]) -> Path:
    return next(iter(next(iter(runs.values())).values())).parents[1]


def section_shift(plan: Plan, runs: Mapping[int, Mapping[str, Path]]) -> tuple[list[str], dict]:
    seeds = sorted(runs)
    root = rel(next(iter(runs.values()))["fifo"].parent.parent)
    out = ["### A workload whose tenants' length mix shifts halfway\n"]
    out.append(
        f"Runs: `{root}/seed<seed>/<arm>/`. Two default workloads of {plan.shift_n} requests "
        "back to back (`report.results.shift_workload`); in the second half the `chat` and "
        "`batch` tenants swap their length mixes, so a predictor's tenant feature points the "
        f"wrong way. Utilisation {plan.shift_load:g}. `drift_recal`: online recalibration on "
        "(`policy.recalibrate=true`, the default); `drift_norecal`: off.\n"
    )
    rows = []
    key: dict[str, Any] = {}
    for lab in [a.label for a in SHIFT_ARMS]:
        ss = [load_run(runs[s][lab]) for s in seeds]
        mae2 = [second_half_mae(r, plan.shift_n) for _, r in ss]
        key[f"shift_{lab}_e2e"] = [latency(x, "e2e_s", "mean") for x, _ in ss]
        rows.append(
            [
                lab,
                fmt_ci([latency(x, "e2e_s", "mean") for x, _ in ss]),
                fmt_ci([latency(x, "e2e_s", "p99") for x, _ in ss]),
                fmt_ci([get(x, "slo", "attainment") for x, _ in ss]),
                fmt_ci(mae2),
            ]
        )
    out.append(
        md_table(
            [
                "arm",
                "E2E mean (s)",
                "E2E p99 (s)",
                "SLO attainment",
                "admission MAE, 2nd half (tokens)",
            ],
            rows,
        )
        + "\n"
    )
    return out, key


def second_half_mae(records: pd.DataFrame, n_first: int) -> float:
    r = records[(records["index"] >= n_first) & (records["status"] == "finished")]
    r = r[r["est_output_tokens"].notna()]
    if len(r) == 0:
        return float("nan")
    return float((r["est_output_tokens"] - r["output_tokens"]).abs().mean())


def section_predictors(artifacts: Path) -> list[str]:
    out = ["### Predictors and generalisation\n"]
    t = predictor_table(artifacts)
    if t is None:
        out.append(f"No trained predictor in `{rel(artifacts)}` (run `python train.py`).\n")
    else:
        rows, loso = t
        out.append(
            f"Held-out test split of the training data (`{rel(artifacts / 'length' / 'meta.json')}`"
            ", written by `python train.py`; tokens, Spearman of the p50 with the true length, "
            "runtime-class accuracy, p90 coverage).\n"
        )
        out.append(
            md_table(["estimator", "MAE", "RMSE", "Spearman", "class acc.", "p90 cov.", "n"], rows)
            + "\n"
        )
        if not loso:
            out.append(
                "Leave-one-source-out / leave-one-model-out: not regenerated here (each is one "
                "LightGBM fit per held-out group, ~2 min each on one core); run "
                "`python train.py train.leave_one_source_out=true`.\n"
            )
    tr = artifacts / "transformer" / "length" / "meta.json"
    if tr.is_file():
        out.append(
            f"The transformer (MiniLM) predictor (`{rel(tr.parent.parent)}`, its own "
            "`meta.json`) is scored on its own held-out sample (column n), so its row is not "
            "paired with the others; in Part 2 it drives `sjf_tf` and `drift_tf`.\n"
        )
    else:
        out.append(
            "The transformer predictor (`python train.py predictor=transformer`) was not trained "
            f"in this checkout (`{rel(artifacts / 'transformer')}` is missing), so the headline "
            "study uses LightGBM only.\n"
        )
    return out


def predictor_table(artifacts: Path) -> tuple[list[list[str]], str] | None:
    meta = artifacts / "length" / "meta.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    rows = []
    keys = ("mae", "rmse", "spearman", "class_accuracy", "p90_coverage")
    tf = artifacts / "transformer" / "length" / "meta.json"
    items = [("lightgbm (ours)", m.get("metrics", {})), *m.get("baselines", {}).items()]
    if tf.is_file():
        items.insert(1, ("transformer (ours)", json.loads(tf.read_text()).get("metrics", {})))
    for name, met in items:
        rows.append([name, *[num(get(met, k)) for k in keys], num(get(met, "n"))])
    loso = m.get("leave_one_source_out")
    note = "" if loso is None else json.dumps(loso)
    return rows, note
