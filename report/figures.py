"""Comparison figures (PNG, matplotlib Agg): every axis labelled with its unit, one colour per
policy label across all figures, tiers always in premium / standard / batch order.

Each ``fig_*`` function takes the compared runs (``Run`` objects with a ``label``) and writes one
PNG, returning its path, or ``None`` when the runs hold nothing to draw (for example no policy
that estimates lengths); the caller says so in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from data.schema import RUNTIME_CLASSES
from report.comparison import METRIC_BY_KEY
from report.runs import Run
from report.tables import t_interval

TIERS = ("premium", "standard", "batch")
TIER_COLOURS = {"premium": "#d62728", "standard": "#1f77b4", "batch": "#7f7f7f"}
DPI = 120


@dataclass
class Labelled:
    """A run with its comparison label and its recomputed summary."""

    run: Run
    label: str
    summary: Mapping[str, Any]


def _plain_log_y(ax: Any) -> None:
    """Log y axis with plain tick labels (30, 100) instead of 3x10^1."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def colours(labels: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _grid(
    n: int, ncols: int = 3, w: float = 4.6, h: float = 3.4, sharey: bool = False
) -> tuple[Any, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, sharey=sharey
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _first_seed(items: Sequence[Labelled]) -> dict[str, Labelled]:
    """Per label, the run with the smallest seed (one representative timeline per policy)."""
    out: dict[str, Labelled] = {}
    for it in sorted(items, key=lambda x: (x.run.seed is None, x.run.seed or 0)):
        out.setdefault(it.label, it)
    return out


def _e2e(records: pd.DataFrame) -> np.ndarray:
    r = records[records["status"] == "finished"]
    return (r["finish_s"] - r["arrival_s"]).to_numpy(dtype=np.float64)


def fig_e2e_cdf(
    items: Sequence[Labelled], labels: Sequence[str], loads: Sequence[Any], path: Path
) -> Path:
    """End-to-end latency CDF per policy (requests pooled over seeds), one panel per load."""
    col = colours(labels)
    fig, axes = _grid(len(loads), ncols=3, w=5.2, h=3.8, sharey=True)
    for ax, load in zip(axes, loads):
        for lab in labels:
            vals = [
                _e2e(it.run.records)
                for it in items
                if it.label == lab and it.run.utilisation == load
            ]
            if not vals:
                continue
            v = np.sort(np.concatenate(vals))
            v = v[v > 0]
            if v.size == 0:
                continue
            y = np.arange(1, v.size + 1) / v.size
            ax.step(v, y, where="post", color=col[lab], label=lab, lw=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (s, log scale)")
        ax.set_ylabel("fraction of requests ≤ x")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title("E2E latency CDF" + ("" if load is None else f", utilisation {load:g}"))
    axes[0].legend(loc="lower right", fontsize=8, title="policy")
    return _save(fig, path)


def fig_tier_p99(
    items: Sequence[Labelled],
    labels: Sequence[str],
    slos: Mapping[str, tuple[float, float]],
    load: Any,
    path: Path,
) -> Path:
    """Per-tier P99 TTFT and E2E (mean over seeds, 95% CI whiskers) against the tier SLOs."""
    col = colours(labels)
    tiers = [t for t in TIERS if any(t in it.summary.get("per_tier", {}) for it in items)]
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 1.4 * len(labels) * len(tiers) / 1.5), 4.2))
    width = 0.8 / max(len(labels), 1)
    for ax, (metric, title, slo_i) in zip(
        axes, (("ttft_s", "P99 TTFT", 0), ("e2e_s", "P99 end-to-end latency", 1))
    ):
        for j, lab in enumerate(labels):
            means, errs = [], [[], []]
            for t in tiers:
                vals = [
                    it.summary.get("per_tier", {})
                    .get(t, {})
                    .get("latency", {})
                    .get(metric, {})
                    .get("p99")
                    for it in items
                    if it.label == lab and it.run.utilisation == load
                ]
                m, lo, hi, _ = t_interval([v for v in vals if v is not None])
                means.append(m)
                errs[0].append(m - lo if math.isfinite(lo) else 0.0)
                errs[1].append(hi - m if math.isfinite(hi) else 0.0)
            x = np.arange(len(tiers)) + (j - (len(labels) - 1) / 2) * width
            ax.bar(
                x,
                means,
                width,
                yerr=errs,
                color=col[lab],
                label=lab,
                capsize=2,
                error_kw={"lw": 0.8},
            )
        for i, t in enumerate(tiers):
            if t in slos:
                ax.hlines(
                    slos[t][slo_i],
                    i - 0.45,
                    i + 0.45,
                    colors="black",
                    linestyles="--",
                    lw=1.4,
                    label="SLO" if i == 0 else None,
                    zorder=5,
                )
        ax.set_xticks(np.arange(len(tiers)), tiers)
        _plain_log_y(ax)
        ax.set_ylabel(f"{title} (s, log scale)")
        ax.set_xlabel("tier")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.set_title(f"{title} per tier" + ("" if load is None else f", utilisation {load:g}"))
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="upper center",
        ncol=min(len(names), 6),
        fontsize=8,
        bbox_to_anchor=(0.5, 1.08),
    )
    fig.tight_layout()
    return _save(fig, path)


def _binned(t: np.ndarray, y: np.ndarray, bins: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` over equal time bins (keeps a 100k-step run drawable)."""
    if t.size <= bins:
        return t, y
    edges = np.linspace(t.min(), t.max(), bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    sums = np.bincount(idx, weights=y, minlength=bins)
    counts = np.bincount(idx, minlength=bins)
    keep = counts > 0
    centres = (edges[:-1] + edges[1:]) / 2
    return centres[keep], sums[keep] / counts[keep]


def fig_queue_depth(
    items: Sequence[Labelled], labels: Sequence[str], load: Any, path: Path
) -> Path | None:
    """Waiting requests per tier over time, one panel per policy (first seed, ``load``)."""
    reps = _first_seed([it for it in items if it.run.utilisation == load])
    panels = [
        (lab, reps[lab])
        for lab in labels
        if lab in reps and reps[lab].run.steps is not None and len(reps[lab].run.steps)
    ]
    if not panels:
        return None
    fig, axes = _grid(len(panels), ncols=3, w=4.8, h=3.2, sharey=True)
    for ax, (lab, it) in zip(axes, panels):
        st = it.run.steps
        t = st["time_s"].to_numpy(dtype=np.float64)
        for tier in TIERS:
            c = f"waiting_{tier}"
            if c in st.columns:
                x, y = _binned(t, st[c].to_numpy(dtype=np.float64))
                ax.plot(x, y, color=TIER_COLOURS[tier], label=tier, lw=1.2)
        ax.set_title(f"{lab} (seed {it.run.seed})", fontsize=10)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("waiting requests")
        ax.grid(True, alpha=0.3)
    axes[0].legend(title="tier", fontsize=8)
    fig.suptitle(
        "Queue depth per tier over time"
        + ("" if load is None else f", utilisation {load:g}")
        + " (mean per time bin)",
        y=1.01,
    )
    fig.tight_layout()
    return _save(fig, path)


def _has_estimates(records: pd.DataFrame) -> bool:
    return bool(records["est_output_tokens"].notna().any())


def calibration_columns(steps: pd.DataFrame | None) -> list[str]:
    """Per-step columns an engine or policy may record for the EMA bias / recalibration
    factor (any column whose name contains ``bias``, ``recal`` or ``ema``)."""
    if steps is None:
        return []
    return [c for c in steps.columns if any(k in c.lower() for k in ("bias", "recal", "ema_"))]


def fig_estimates(
    items: Sequence[Labelled], labels: Sequence[str], load: Any, path: Path
) -> Path | None:
    """Estimate vs actual output length (scatter) and the estimation bias over time.

    Bias over time is ``actual / admission estimate`` of finished requests, rolling median of
    50 in finish order (1 = unbiased; the quantity an EMA correction or an online
    recalibration tracks). Per-step calibration columns (:func:`calibration_columns`) are drawn
    in a third panel when an engine records them.
    """
    reps = _first_seed([it for it in items if it.run.utilisation == load])
    est = [
        (lab, reps[lab]) for lab in labels if lab in reps and _has_estimates(reps[lab].run.records)
    ]
    if not est:
        return None
    col = colours(labels)
    cal = [(lab, it, calibration_columns(it.run.steps)) for lab, it in est]
    cal = [c for c in cal if c[2]]
    fig, axes = plt.subplots(1, 3 if cal else 2, figsize=(15 if cal else 11, 4.4))
    ax = axes[0]
    lo_hi = [np.inf, 0.0]
    for lab, it in est:
        r = it.run.records
        r = r[(r["status"] == "finished") & r["est_output_tokens"].notna()]
        x = np.maximum(r["est_output_tokens"].to_numpy(dtype=np.float64), 1.0)
        y = np.maximum(r["output_tokens"].to_numpy(dtype=np.float64), 1.0)
        ax.scatter(x, y, s=6, alpha=0.35, color=col[lab], label=lab, edgecolors="none")
        lo_hi = [min(lo_hi[0], x.min(), y.min()), max(lo_hi[1], x.max(), y.max())]
    ax.plot(lo_hi, lo_hi, "k--", lw=1, label="estimate = actual")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("admission estimate of output length (tokens, log)")
    ax.set_ylabel("actual output length (tokens, log)")
    ax.set_title("Estimate vs actual length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, markerscale=2)
    ax = axes[1]
    for lab, it in est:
        r = it.run.records
        r = r[(r["status"] == "finished") & r["est_output_tokens"].notna()]
        r = r.sort_values("finish_s")
        ratio = r["output_tokens"].to_numpy(dtype=np.float64) / np.maximum(
            r["est_output_tokens"].to_numpy(dtype=np.float64), 1.0
        )
        roll = pd.Series(ratio).rolling(50, min_periods=10).median()
        ax.plot(r["finish_s"].to_numpy(), roll.to_numpy(), color=col[lab], label=lab, lw=1.4)
    ax.axhline(1.0, color="black", ls="--", lw=1, label="unbiased")
    ax.set_xlabel("finish time (s)")
    ax.set_ylabel("actual / estimate (rolling median of 50)")
    ax.set_title("Estimation bias over time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if cal:
        ax = axes[2]
        for lab, it, cols in cal:
            st = it.run.steps
            for c in cols:
                x, y = _binned(
                    st["time_s"].to_numpy(dtype=np.float64), st[c].to_numpy(dtype=np.float64)
                )
                ax.plot(x, y, color=col[lab], label=f"{lab}: {c}", lw=1.2)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("recorded correction factor")
        ax.set_title("EMA bias / recalibration factor")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    suffix = "" if load is None else f" (utilisation {load:g}, first seed)"
    fig.suptitle("Length estimation" + suffix, y=1.02)
    fig.tight_layout()
    return _save(fig, path)


def fig_events(items: Sequence[Labelled], labels: Sequence[str], load: Any, path: Path) -> Path:
    """Cumulative preemptions (per engine step) and reclassifications (per finished request,
    at its finish time: the record table keeps counts, not times) over time."""
    reps = _first_seed([it for it in items if it.run.utilisation == load])
    col = colours(labels)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    for lab in labels:
        if lab not in reps:
            continue
        run = reps[lab].run
        st = run.steps
        if st is not None and len(st):
            axes[0].step(
                st["time_s"],
                st["preemptions"].cumsum(),
                where="post",
                color=col[lab],
                label=lab,
                lw=1.4,
            )
        else:  # live engines may not record steps: one point per preempted request at finish
            r = run.records.sort_values("finish_s")
            axes[0].step(
                r["finish_s"],
                r["num_preemptions"].cumsum(),
                where="post",
                color=col[lab],
                label=lab,
                lw=1.4,
                ls=":",
            )
        r = run.records.sort_values("finish_s")
        axes[1].step(
            r["finish_s"],
            r["n_reclassified"].cumsum(),
            where="post",
            color=col[lab],
            label=lab,
            lw=1.4,
        )
    axes[0].set_title("Preemptions (cumulative)")
    axes[0].set_ylabel("preemptions")
    axes[1].set_title("Runtime-class reclassifications (cumulative)")
    axes[1].set_ylabel("reclassifications (counted at finish)")
    for ax in axes:
        ax.set_xlabel("simulated time (s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Scheduling events over time"
        + ("" if load is None else f", utilisation {load:g}, first seed"),
        y=1.02,
    )
    fig.tight_layout()
    return _save(fig, path)


def fig_load_curves(
    per_run: pd.DataFrame,
    labels: Sequence[str],
    path: Path,
    metrics: Sequence[str] = ("e2e_mean_s", "premium_ttft_p99_s", "slo_attainment"),
    min_loads: int = 2,
) -> Path | None:
    """Metrics against utilisation per policy (mean over seeds, 95% CI whiskers); ``None``
    unless the runs cover at least ``min_loads`` loads. ``per_run``: one row per run with
    ``label``, ``utilisation`` and the metric columns (``report.comparison`` keys)."""
    df = per_run[per_run["utilisation"].notna()]
    if df["utilisation"].nunique() < min_loads:
        return None
    col = colours(labels)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 4.0))
    for ax, key in zip(np.atleast_1d(axes), metrics):
        m = METRIC_BY_KEY[key]
        for lab in labels:
            g = df[df["label"] == lab]
            if g.empty:
                continue
            xs, ys, lo, hi = [], [], [], []
            for u, gu in g.groupby("utilisation"):
                mean, a, b, _ = t_interval(gu[key])
                xs.append(u)
                ys.append(mean)
                lo.append(mean - a if math.isfinite(a) else 0.0)
                hi.append(b - mean if math.isfinite(b) else 0.0)
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                color=col[lab],
                label=lab,
                marker="o",
                ms=4,
                capsize=3,
                lw=1.4,
            )
        ax.set_xlabel("utilisation (offered load / capacity)")
        ax.set_ylabel(f"{m.label} ({m.unit})" if m.unit else m.label)
        if m.unit == "s":
            _plain_log_y(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{m.label} vs load")
    np.atleast_1d(axes)[0].legend(fontsize=8, title="policy")
    fig.tight_layout()
    return _save(fig, path)


# --- docs/RESULTS.md (report.results): bar charts over seeds' means ------------------------
def fig_paper_waits(waits: Mapping[str, Mapping[str, list[float]]], path: Path) -> Path:
    """docs/RESULTS.md: mean queue wait per tier and per runtime class of each paper arm."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, groups, title in (
        (axes[0], TIERS, "per tier"),
        (axes[1], RUNTIME_CLASSES, "per runtime class"),
    ):
        labels = list(waits)
        w = 0.8 / len(labels)
        for i, lab in enumerate(labels):
            vals = [np.mean(waits[lab][g]) for g in groups]
            ax.bar(np.arange(len(groups)) + i * w, vals, w, label=lab)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - w / 2, groups)
        ax.set_ylabel("mean queue wait (s)")
        ax.set_title(f"paper workload, micro-batch: {title}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_tier_slo(att: Mapping[str, Mapping[str, list[float]]], load: float, path: Path) -> Path:
    """docs/RESULTS.md: SLO attainment (TTFT and E2E) per tier of each policy at ``load``."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    labels = list(att)
    w = 0.8 / len(labels)
    for i, lab in enumerate(labels):
        vals = [np.nanmean(att[lab][t]) for t in TIERS]
        ax.bar(np.arange(len(TIERS)) + i * w, vals, w, label=lab)
    ax.set_xticks(np.arange(len(TIERS)) + 0.4 - w / 2, TIERS)
    ax.set_ylabel("SLO attainment (TTFT and E2E)")
    ax.set_title(f"default workload, utilisation {load:g}: per-tier SLO attainment")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
