"""Build the comparison report: runs on disk -> table (CSV, Markdown, stdout) + PNG figures.

``build_report(paths, out_dir)`` is what ``python compare.py`` runs. Outputs in ``out_dir``:

* ``report.md``: the runs compared, the table (policy x metric, mean [95% CI] over seeds, ratios
  to the baseline and reference policies), the figures and any warning;
* ``table.csv``: the long table (label, utilisation, metric, mean, ci_low, ci_high, n, seeds);
* ``runs.csv``: one row per run with the recomputed metrics (what the table averages);
* ``figures/*.png``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from report import figures as F
from report.comparison import (
    METRICS,
    aggregate,
    column_title,
    markdown_table,
    order_labels,
    per_run_table,
    ratio_key,
    run_labels,
    run_summary,
    summary_mismatches,
    tier_slos,
    wide_table,
)
from report.runs import Run, discover_runs
from report.tables import figure_link

# the columns of the printed table (the Markdown report has every metric)
PRINTED = ("e2e_mean_s", "e2e_p99_s", "premium_ttft_p99_s", "slo_attainment", "jain", "preemptions")


class IncompleteRunsError(RuntimeError):
    """Some runs are not finished; ``runs`` lists them (path and reason)."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = list(runs)
        lines = "\n".join(f"  {r.path}: {r.problem}" for r in self.runs)
        super().__init__(
            f"{len(self.runs)} incomplete run(s):\n{lines}\nre-run them (a sweep "
            "re-run skips finished jobs, see docs/COMPARING.md) or pass "
            "--allow-incomplete to compare the finished ones only"
        )


@dataclass
class Report:
    out_dir: Path
    per_run: pd.DataFrame
    table: pd.DataFrame  # long: label, utilisation, metric, mean, ci_low, ci_high, n
    wide: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    incomplete: list[Run] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    text: str = ""  # the printed table


def _loads(per_run: pd.DataFrame) -> list[float | None]:
    u = sorted(per_run["utilisation"].dropna().unique().tolist())
    return u if u else [None]


def _dedupe(items: list[F.Labelled], warnings: list[str]) -> list[F.Labelled]:
    seen: dict[tuple, F.Labelled] = {}
    for it in items:
        key = (
            it.label,
            it.run.utilisation,
            it.run.rate_rps if it.run.utilisation is None else None,
            it.run.seed,
        )
        if key in seen:
            warnings.append(
                f"duplicate run of {it.label!r} seed {it.run.seed} at "
                f"{it.run.path}; kept {seen[key].run.path}"
            )
            continue
        seen[key] = it
    return list(seen.values())


def build_report(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    baseline: str = "fifo",
    reference: str = "oracle",
    allow_incomplete: bool = False,
    load: float | None = None,
    figures: bool = True,
) -> Report:
    """Discover, check, recompute, tabulate and plot; see the module docstring."""
    out = Path(out_dir)
    runs = discover_runs(paths)
    incomplete = [r for r in runs if not r.complete]
    if incomplete and not allow_incomplete:
        raise IncompleteRunsError(incomplete)
    done = [r for r in runs if r.complete]
    if not done:
        raise ValueError("no finished runs to compare under " + ", ".join(map(str, paths)))
    warnings: list[str] = []
    summaries = []
    for r in done:
        s = run_summary(r)
        for msg in summary_mismatches(r.summary, s):
            warnings.append(f"{r.path}: {msg} (the table uses the records)")
        summaries.append(s)
    labels, _ = run_labels(done)
    items = _dedupe([F.Labelled(r, lab, s) for r, lab, s in zip(done, labels, summaries)], warnings)
    done = [it.run for it in items]
    per_run = per_run_table(done, [it.summary for it in items], baseline, reference)
    label_order = order_labels(per_run["label"], baseline, reference)
    per_run = _sorted(per_run, label_order)
    warnings += _single_seed_warnings(per_run, label_order)
    table = aggregate(per_run)
    metric_cols = [m.key for m in METRICS] + [c for c in per_run.columns if "_vs_" in c]
    wide = wide_table(table, metric_cols)
    printed = [c for c in PRINTED if c in wide.columns] + [
        ratio_key("e2e_mean_s", a)
        for a in (baseline, reference)
        if ratio_key("e2e_mean_s", a) in wide.columns
    ]
    missing_anchor = [a for a in (baseline, reference) if a not in set(per_run["policy"])]
    out.mkdir(parents=True, exist_ok=True)
    per_run.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    text = _text_table(wide[["n", *printed]])
    rep = Report(
        out_dir=out,
        per_run=per_run,
        table=table,
        wide=wide,
        incomplete=incomplete,
        warnings=warnings,
        text=text,
    )
    if figures:
        rep.figures = _figures(items, per_run, label_order, out / "figures", load)
    (out / "report.md").write_text(
        _markdown(
            rep,
            paths,
            baseline,
            reference,
            missing_anchor,
            load if load is not None else _loads(per_run)[-1],
        )
    )
    return rep


def _sorted(per_run: pd.DataFrame, label_order: Sequence[str]) -> pd.DataFrame:
    """Rows in label order (baseline first, reference last), then by load and seed."""
    per_run["_order"] = per_run["label"].map({lab: i for i, lab in enumerate(label_order)})
    return (
        per_run.sort_values(["_order", "utilisation", "seed"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _single_seed_warnings(per_run: pd.DataFrame, label_order: Sequence[str]) -> list[str]:
    """One warning per label and load measured on a single seed (no confidence interval)."""
    warnings = []
    for lab in label_order:
        for u in _loads(per_run):
            g = per_run[
                (per_run["label"] == lab)
                & ((per_run["utilisation"] == u) if u is not None else True)
            ]
            if len(g) == 1:
                warnings.append(
                    f"{lab!r}"
                    + (f" at utilisation {u:g}" if u is not None else "")
                    + ": one seed only, no confidence interval"
                )
    return warnings


def _figures(
    items: list[F.Labelled],
    per_run: pd.DataFrame,
    labels: list[str],
    fig_dir: Path,
    load: float | None,
) -> dict[str, Path]:
    loads = _loads(per_run)
    focus = load if load is not None else loads[-1]  # the highest load: where policies differ
    if focus not in loads:
        raise ValueError(f"--load {focus}: no runs at that utilisation; have {loads}")
    slos = tier_slos(items[0].run.config)
    out: dict[str, Path | None] = {
        "e2e_cdf": F.fig_e2e_cdf(items, labels, loads, fig_dir / "e2e_cdf.png"),
        "tier_p99": F.fig_tier_p99(items, labels, slos, focus, fig_dir / "tier_p99.png"),
        "queue_depth": F.fig_queue_depth(items, labels, focus, fig_dir / "queue_depth.png"),
        "estimates": F.fig_estimates(items, labels, focus, fig_dir / "estimates.png"),
        "events": F.fig_events(items, labels, focus, fig_dir / "events.png"),
        "load_curves": F.fig_load_curves(per_run, labels, fig_dir / "load_curves.png"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _text_table(wide: pd.DataFrame) -> str:
    df = wide.copy()
    df.columns = ["seeds" if c == "n" else column_title(c) for c in df.columns]
    df = df.reset_index()
    if not any(df["utilisation"]):
        df = df.drop(columns="utilisation")
    with pd.option_context(
        "display.width", 250, "display.max_columns", 50, "display.max_colwidth", 40
    ):
        return df.to_string(index=False)


CAPTIONS = {
    "e2e_cdf": "End-to-end latency CDF per policy (finished requests pooled over seeds; log x).",
    "tier_p99": "P99 TTFT and P99 end-to-end latency per tier (bars: mean over seeds, whiskers: "
    "95% CI), dashed lines: the tier's SLO (strictest tenant of the tier).",
    "queue_depth": "Waiting requests per tier over simulated time (first seed; mean per time "
    "bin), one panel per policy.",
    "estimates": "Admission estimate vs actual output length, and the estimation bias "
    "(actual / estimate, rolling median) over time; policies that estimate only.",
    "events": "Cumulative preemptions (per engine step) and runtime-class reclassifications "
    "(counted at the request's finish) over time (first seed).",
    "load_curves": "Metrics against utilisation (mean over seeds, 95% CI whiskers).",
}
MISSING = {
    "queue_depth": "no steps.parquet with rows (live engines may not record steps)",
    "estimates": "no compared policy records length estimates",
    "load_curves": "the runs cover a single load",
}


def _markdown(
    rep: Report,
    paths: Sequence[str | os.PathLike[str]],
    baseline: str,
    reference: str,
    missing_anchor: list[str],
    focus: float | None,
) -> str:
    pr = rep.per_run
    lines = ["# Experiment comparison", ""]
    lines.append("Inputs: " + ", ".join(f"`{p}`" for p in paths))
    lines.append("")
    lines.append(
        f"{len(pr)} finished run(s): {pr['label'].nunique()} policy label(s) x "
        f"{pr['seed'].nunique()} seed(s) x {pr['utilisation'].nunique() or 1} load(s); "
        f"workload(s) {', '.join(sorted(set(pr['workload'])))}; engine(s) "
        f"{', '.join(sorted(set(pr['engine'])))}."
    )
    if rep.incomplete:
        lines += ["", f"**{len(rep.incomplete)} incomplete run(s) excluded:**", ""]
        lines += [f"- `{r.path}`: {r.problem}" for r in rep.incomplete]
    lines += [
        "",
        "## Table",
        "",
        "Every number is recomputed from `records.parquet` with `scheduler.metrics`. "
        "Cells: mean over seeds [95% Student-t confidence interval]. Ratios pair each "
        f"run with the `{baseline}` / `{reference}` run of the same seed and load (the "
        "same seed replays the identical workload) and average the per-seed ratios; "
        "below 1 is better for latency.",
        "",
    ]
    if missing_anchor:
        lines += [f"No `{a}` runs: no ratios against it." for a in missing_anchor] + [""]
    groups = (
        ("Latency", [m.key for m in METRICS if m.unit == "s"]),
        ("QoS, fairness and preemptions", [m.key for m in METRICS if m.unit != "s"]),
        ("Ratios", [c for c in rep.wide.columns if "_vs_" in c]),
    )
    for title, cols in groups:
        cols = [c for c in cols if c in rep.wide.columns]
        if cols:
            lines += [f"### {title}", "", markdown_table(rep.wide[["n", *cols]]), ""]
    lines += [
        "Per-run values: `runs.csv`; long table with the bounds: `table.csv`.",
        "",
        "## Figures",
        "",
    ]
    if focus is not None:
        lines += [f"Single-load figures show utilisation {focus:g}.", ""]
    for key, caption in CAPTIONS.items():
        if key in rep.figures:
            lines += [figure_link(key, rep.figures[key], rep.out_dir), "", f"*{caption}*", ""]
        elif key in MISSING:
            lines += [f"- `{key}` not drawn: {MISSING[key]}.", ""]
    if rep.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in rep.warnings] + [""]
    return "\n".join(lines)
