"""Compare evaluation runs: metrics recomputed from the record tables, mean and 95% CI over seeds.

Pure functions over :class:`report.runs.Run` objects and DataFrames; the I/O and figures live in
``compare.py`` (the command) and :mod:`report.figures`.

* :func:`run_summary` recomputes a run's ``summary.json`` from its ``records.parquet`` with
  ``scheduler.metrics.summarize`` (the SLOs come from the run's workload config), so the table
  never trusts a number it cannot reproduce; :func:`summary_mismatches` lists where the stored
  summary disagrees.
* :func:`per_run_table` has one row per run: its *label* (the policy plus every override that
  varies across the compared runs, e.g. ``drift predictor_dir=artifacts/transformer``), load,
  seed and the metrics of :data:`METRICS`, plus paired ratios against the baseline and reference
  policies run on the same seed and load (the same seed replays the identical workload).
* :func:`aggregate` reduces it to mean, 95% t-interval and n per (label, load, metric).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from report.runs import Run
from report.tables import LEVEL, NA, interval_cell, md_table, t_interval


@dataclass(frozen=True)
class Metric:
    key: str  # column name in the tables
    label: str  # human name (figures, Markdown)
    unit: str  # "s", "req/s", "" (dimensionless)
    path: tuple[str, ...]  # where it sits in a summary.json
    better: str  # "lower" | "higher"


METRICS: tuple[Metric, ...] = (
    Metric("e2e_mean_s", "E2E mean", "s", ("latency", "e2e_s", "mean"), "lower"),
    Metric("e2e_p99_s", "E2E P99", "s", ("latency", "e2e_s", "p99"), "lower"),
    Metric("ttft_p99_s", "TTFT P99", "s", ("latency", "ttft_s", "p99"), "lower"),
    Metric(
        "premium_ttft_p99_s",
        "premium TTFT P99",
        "s",
        ("per_tier", "premium", "latency", "ttft_s", "p99"),
        "lower",
    ),
    Metric("tpot_mean_s", "TPOT mean", "s", ("latency", "tpot_s", "mean"), "lower"),
    Metric("slo_attainment", "SLO attainment", "", ("slo", "attainment"), "higher"),
    Metric("goodput_rps", "goodput", "req/s", ("slo", "goodput_rps"), "higher"),
    Metric("jain", "Jain fairness", "", ("fairness", "jain_tenants"), "higher"),
    Metric("max_wait_s", "max queue wait", "s", ("starvation", "max_wait_s"), "lower"),
    Metric("preemptions", "preemptions", "", ("preemptions", "total"), "lower"),
    # share of requests whose prompt the policy's predictor trained on (data.holdout); NaN for
    # policies without a predictor, > 0 only in runs made with allow_train_overlap=true
    Metric("train_overlap", "train overlap", "", ("train_overlap",), "lower"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}
RATIO_METRICS = ("e2e_mean_s", "e2e_p99_s")  # ratios policy / baseline and policy / reference

# overrides that are axes of their own (or bookkeeping), never part of a run's label
NOT_A_FACTOR = (
    "policy",
    "seed",
    "utilisation",
    "rate_rps",
    "sweep",
    "logger",
    "hydra",
    "run_name",
    "compare",
    "baseline",
    "reference",
)


def ratio_key(metric: str, anchor: str) -> str:
    return f"{metric.removesuffix('_s')}_vs_{anchor}"


def get_path(d: Mapping[str, Any], path: Sequence[str]) -> float:
    """``d[path[0]][path[1]]...`` as a float; NaN when absent or null."""
    cur: Any = d
    for p in path:
        if not isinstance(cur, Mapping) or p not in cur:
            return float("nan")
        cur = cur[p]
    return float("nan") if cur is None else float(cur)


# --------------------------------------------------------------------------- recomputation


def slos_from_config(config: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """(TTFT s, E2E s) per tier (``data.schema.TIER_SLOS``) and per tenant of the run's
    workload config (``workload.tenants.<name>.slo_ttft_s`` / ``slo_e2e_s``), as evaluate.py
    uses them (:func:`scheduler.metrics.slo_table`, the one SLO lookup, as
    :func:`scheduler.metrics.workload_slos` for a built workload); a tenant without its own SLOs
    inherits its tier's."""
    from data.schema import TIER_SLOS
    from scheduler.metrics import slo_table

    workload = config.get("workload")
    tenants = workload.get("tenants") if isinstance(workload, Mapping) else None
    rows = []
    for name, t in (tenants or {}).items():
        if not isinstance(t, Mapping):
            continue
        tier_ttft, tier_e2e = TIER_SLOS.get(str(t.get("tier")), (math.nan, math.nan))
        ttft = t.get("slo_ttft_s", tier_ttft)
        e2e = t.get("slo_e2e_s", tier_e2e)
        if ttft is None or e2e is None or not (math.isfinite(ttft) and math.isfinite(e2e)):
            continue
        rows.append((str(name), ttft, e2e))
    return slo_table(rows)


def tier_slos(config: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The SLO line to draw per tier: the strictest of its tenants' SLOs (or the tier default)."""
    from data.schema import TIER_SLOS

    out = dict(TIER_SLOS)
    workload = config.get("workload")
    tenants = workload.get("tenants") if isinstance(workload, Mapping) else None
    per_tenant = slos_from_config(config)
    seen: dict[str, list[tuple[float, float]]] = {}
    for name, t in (tenants or {}).items():
        if isinstance(t, Mapping) and str(name) in per_tenant:
            seen.setdefault(str(t.get("tier")), []).append(per_tenant[str(name)])
    for tier, vals in seen.items():
        out[tier] = (min(v[0] for v in vals), min(v[1] for v in vals))
    return out


def run_summary(run: Run) -> dict[str, Any]:
    """The run's metrics recomputed from ``records.parquet`` (``scheduler.metrics.summarize``)."""
    from scheduler.metrics import summarize

    extra = {
        k: run.summary.get(k)
        for k in (
            "policy",
            "engine",
            "workload",
            "seed",
            "utilisation",
            "rate_rps",
            "train_overlap",
        )
        if k in run.summary
    }
    # the recompute counts are the engine's, not the records': carried over from summary.json
    tokens = run.summary.get("preemptions", {})
    return summarize(run.records, slos_from_config(run.config), extra, tokens=tokens)


def summary_mismatches(
    stored: Mapping[str, Any], recomputed: Mapping[str, Any], rtol: float = 1e-6
) -> list[str]:
    """Metrics of :data:`METRICS` where ``summary.json`` disagrees with the records."""
    out = []
    for m in METRICS:
        a, b = get_path(stored, m.path), get_path(recomputed, m.path)
        if math.isnan(a) and math.isnan(b):
            continue
        if math.isnan(a) != math.isnan(b) or abs(a - b) > rtol * max(abs(a), abs(b), 1e-12):
            out.append(f"{m.key}: summary.json {a:.6g} vs records {b:.6g}")
    return out


# --------------------------------------------------------------------------- labels


def _factors(run: Run) -> dict[str, str]:
    """The run's command-line overrides as ``key -> value`` (``+``/``~`` prefixes dropped)."""
    out = {}
    for o in run.overrides:
        k, sep, v = o.partition("=")
        k = k.lstrip("+~")
        if not sep or k.split(".")[0] in NOT_A_FACTOR or k.startswith("hydra/"):
            continue
        out[k] = v
    for o in run.overrides:  # policy parameters (policy.risk=...) belong to the label
        k, sep, v = o.partition("=")
        k = k.lstrip("+~")
        if sep and k.startswith("policy."):
            out[k] = v
    return out


def run_labels(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, str]]]:
    """A label per run: its policy plus the overrides that vary across ``runs``.

    Returns (labels, the varying factors of each run). Factors absent from a run show as
    ``default``. Policy parameters (``policy.x``) vary only among runs of the same policy.
    """
    facts = [_factors(r) for r in runs]
    keys = sorted({k for f in facts for k in f})
    varying = []
    for k in keys:
        if k.startswith("policy."):
            by_policy: dict[str, set[str]] = {}
            for r, f in zip(runs, facts):
                by_policy.setdefault(r.policy, set()).add(f.get(k, "default"))
            if any(len(v) > 1 for v in by_policy.values()):
                varying.append(k)
        elif len({f.get(k, "default") for f in facts}) > 1:
            varying.append(k)
    labels, out = [], []
    for r, f in zip(runs, facts):
        mine = {k: f.get(k, "default") for k in varying if not k.startswith("policy.") or k in f}
        out.append(mine)
        suffix = " ".join(f"{k}={v}" for k, v in mine.items())
        labels.append(f"{r.policy} {suffix}".strip())
    return labels, out


# --------------------------------------------------------------------------- tables


def per_run_table(
    runs: Sequence[Run],
    summaries: Sequence[Mapping[str, Any]],
    baseline: str = "fifo",
    reference: str = "oracle",
) -> pd.DataFrame:
    """One row per run: identity columns, :data:`METRICS` from ``summaries`` (recomputed, in
    the order of ``runs``) and paired ratios to ``baseline`` / ``reference``.

    A ratio pairs a run with the baseline (reference) run of the same seed, load, workload,
    engine and non-policy factors; NaN when no such run exists.
    """
    labels, factors = run_labels(runs)
    rows = []
    for run, s, label, f in zip(runs, summaries, labels, factors):
        shared = tuple(sorted((k, v) for k, v in f.items() if not k.startswith("policy.")))
        load = run.utilisation if run.utilisation is not None else run.rate_rps
        row = {
            "label": label,
            "policy": run.policy,
            "utilisation": run.utilisation,
            "rate_rps": run.rate_rps,
            "seed": run.seed,
            "workload": run.workload,
            "engine": run.engine,
            "path": str(run.path),
            "_pair": (shared, run.workload, run.engine, load, run.seed),
        }
        row.update({m.key: get_path(s, m.path) for m in METRICS})
        rows.append(row)
    df = pd.DataFrame(rows)
    for anchor in dict.fromkeys((baseline, reference)):
        anchor_rows = df[df["policy"] == anchor]
        # the un-parameterised anchor run of each pairing key (first one if several)
        lookup = {}
        for _, a in anchor_rows.iterrows():
            lookup.setdefault(a["_pair"], a)
        for m in RATIO_METRICS:
            vals = []
            for _, r in df.iterrows():
                a = lookup.get(r["_pair"])
                den = float(a[m]) if a is not None else float("nan")
                vals.append(float(r[m]) / den if a is not None and den != 0 else float("nan"))
            df[ratio_key(m, anchor)] = vals
    return df.drop(columns="_pair")


def value_columns(df: pd.DataFrame) -> list[str]:
    """The metric and ratio columns of a :func:`per_run_table` frame, in table order."""
    ratios = [c for c in df.columns if "_vs_" in c]
    return [m.key for m in METRICS if m.key in df.columns] + ratios


def aggregate(per_run: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Long table: one row per (label, utilisation, metric) with mean, ci_low, ci_high, n and
    the seeds averaged over."""
    rows = []
    keys = ["label", "policy", "utilisation", "rate_rps", "workload", "engine"]
    grouped = per_run.groupby(
        [per_run[k].astype(str) for k in ("label", "utilisation")], sort=False, dropna=False
    )
    for _, g in grouped:
        ident = {k: g[k].iloc[0] for k in keys}
        if g["rate_rps"].nunique() > 1:  # utilisation-driven loads differ slightly per seed
            ident["rate_rps"] = float(g["rate_rps"].mean())
        seeds = ",".join(str(s) for s in sorted(g["seed"].dropna().unique()))
        for c in value_columns(per_run):
            mean, lo, hi, n = t_interval(g[c], level)
            rows.append(
                {
                    **ident,
                    "metric": c,
                    "mean": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n": n,
                    "seeds": seeds,
                }
            )
    return pd.DataFrame(rows)


def fmt(x: float) -> str:
    """3-4 significant digits, plain notation for the ranges latencies live in."""
    if x is None or not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def wide_table(agg: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Policy (label, load) x metric cells ``mean [low, high]`` for printing and Markdown."""
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(agg["metric"]))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for _, r in agg[agg["metric"].isin(metrics)].iterrows():
        load = "" if pd.isna(r["utilisation"]) else f"{r['utilisation']:g}"
        cell = fmt(r["mean"])
        if math.isfinite(r["ci_low"]):
            cell = interval_cell(r["mean"], r["ci_low"], r["ci_high"], fmt)
        rows.setdefault((r["label"], load), {"n": str(r["n"])})[r["metric"]] = cell
    index = pd.MultiIndex.from_tuples(list(rows), names=["policy", "utilisation"])
    out = pd.DataFrame(list(rows.values()), index=index)
    cols = ["n"] + [m for m in metrics if m in out.columns]
    return out[cols]


def column_title(key: str) -> str:
    """``e2e_mean_s`` -> ``E2E mean (s)``; ``e2e_mean_vs_fifo`` -> ``E2E mean / fifo``."""
    if "_vs_" in key:
        base, anchor = key.split("_vs_")
        m = METRIC_BY_KEY.get(f"{base}_s") or METRIC_BY_KEY.get(base)
        return f"{m.label if m else base} / {anchor}"
    m = METRIC_BY_KEY.get(key)
    if m is None:
        return key
    return f"{m.label} ({m.unit})" if m.unit else m.label


def markdown_table(wide: pd.DataFrame) -> str:
    """A GitHub Markdown table of :func:`wide_table` output."""
    show_load = any(load for _, load in wide.index)
    head = (
        ["policy"]
        + (["utilisation"] if show_load else [])
        + [column_title(c) if c != "n" else "seeds" for c in wide.columns]
    )
    rows = [
        [label, *([load] if show_load else []), *[v if isinstance(v, str) else NA for v in row]]
        for (label, load), row in wide.iterrows()
    ]
    return md_table(head, rows)


def order_labels(
    labels: Iterable[str], baseline: str = "fifo", reference: str = "oracle"
) -> list[str]:
    """Baseline first, reference last, the rest in first-seen order."""
    seen = list(dict.fromkeys(labels))
    first = [x for x in seen if x.split(" ")[0] == baseline]
    last = [x for x in seen if x.split(" ")[0] == reference]
    return first + [x for x in seen if x not in first and x not in last] + last
