"""The doc generators' table toolkit: Markdown tables, ``mean [CI]`` cells, ratio and capture
cells, per-workload section headers and figure links.

Every generated document (``report.results``, ``report.generalisation``, ``report.ablations``,
``report.fidelity``, ``compare.py``'s ``report.md``, and the benchmarks' docs/BENCHMARKS.md and
docs/PREDICTORS.md) formats its numbers with these functions, so
one cell means the same thing everywhere. All pure; the API is kept small on purpose:

* statistics: :func:`t_interval` (mean and Student-t interval over seeds), :func:`finite_mean`,
  :func:`capture` (headroom capture between a baseline and a reference), :func:`relative_change`;
* cells: :func:`num`, :func:`interval_cell`, :func:`fmt_ci` (``mean [low, high]`` over seeds),
  :func:`fixed` and :func:`signed_pct` (one number or ``n/a``);
* blocks: :func:`md_table`, :func:`record_table` (rows as dicts, cells formatted: the
  benchmarks' tables), :func:`section_header`, :func:`load_table`, :func:`figure_link`;
* lookups: :func:`get` (a number at a path of a ``summary.json``), :func:`latency`, :func:`rel`
  (a path as the documents cite it, relative to the repository).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEVEL = 0.95  # confidence level of every interval in the documents
NA = "n/a"  # the cell of a value that is missing or not finite


# --- statistics -------------------------------------------------------------------------------
def t_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values with a Student-t interval on the mean.

    ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation;
    the bounds are NaN for n < 2 (no spread to estimate) and equal the mean when every value is.
    """
    from scipy import stats

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there is none)."""
    a = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    return float(a.mean()) if len(a) else math.nan


def capture(baseline: float, value: float, reference: float, tol: float = 0.0) -> float:
    """Headroom capture ``(baseline - value) / (baseline - reference)``: 0 = the baseline (FIFO),
    1 = the reference (the oracle); NaN unless the gap exceeds ``tol`` in magnitude."""
    gap = baseline - reference
    return (baseline - value) / gap if abs(gap) > tol else math.nan


def relative_change(value: float, reference: float) -> float:
    """``value / reference - 1`` (-0.05 = 5% lower); NaN unless ``reference`` > 0."""
    return value / reference - 1 if reference > 0 else math.nan


# --- cells ------------------------------------------------------------------------------------
def num(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, whole numbers from 100 up."""
    if not math.isfinite(x):
        return NA
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def interval_cell(mean: float, low: float, high: float, fmt: Callable[[float], str]) -> str:
    """``mean [low, high]`` with each number written by ``fmt``."""
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def fmt_ci(values: Sequence[float], pct: bool = False, digits: int = 3) -> str:
    """Mean [95% t-interval] of per-seed values; the mean alone below two finite values.
    ``pct``: as percentages with one decimal, else :func:`num` with ``digits``."""
    m, lo, hi, n = t_interval([float(v) for v in values])
    if not math.isfinite(m):
        return NA

    def fmt(x: float) -> str:
        return _percent(x) if pct else num(x, digits)

    if n < 2 or not math.isfinite(lo):
        return fmt(m)
    return interval_cell(m, lo, hi, fmt)


def fixed(x: float, spec: str) -> str:
    """``x`` in the format ``spec`` (``".2f"``), or ``n/a`` when it is not finite."""
    return f"{x:{spec}}" if math.isfinite(x) else NA


def signed_pct(x: float) -> str:
    """A relative change as a signed percentage with one decimal (``+1.5%``), or ``n/a``."""
    return f"{100 * x:+.1f}%" if math.isfinite(x) else NA


# --- blocks -----------------------------------------------------------------------------------
def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align``: one letter per column, ``l`` (default) or ``r``."""
    rule = "".join("---:|" if a == "r" else "---|" for a in (align or "l" * len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + rule]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def record_cell(v: Any) -> str:
    """A benchmark table's cell: yes/**no**, floats with 3 significant digits (whole numbers with
    thousands separators from 100 up), ints with separators, ``n/a`` for NaN."""
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if v != v:
            return NA
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def record_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str] | None = None) -> str:
    """A Markdown table of dict rows (columns: ``cols`` or the first row's keys), each cell
    written by :func:`record_cell`; ``(no rows)`` when there is none."""
    if not rows:
        return "(no rows)"
    cols = list(cols or rows[0].keys())
    return md_table(cols, [[record_cell(r.get(c, "")) for c in cols] for r in rows])


def section_header(name: str) -> list[str]:
    """The heading lines of one workload's section."""
    return [f"### {name}", ""]


def load_table(
    load: float, n_seeds: int, header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[str]:
    """One utilisation's table inside a workload section, with its caption line."""
    return [f"Utilisation {load:g} ({n_seeds} seeds):", "", md_table(header, rows), ""]


def figure_link(alt: str, path: Path, doc_dir: Path) -> str:
    """A Markdown image of ``path``, relative to the document's directory."""
    return f"![{alt}]({path.relative_to(doc_dir).as_posix()})"


# --- lookups ----------------------------------------------------------------------------------
def get(d: Mapping[str, Any], *path: str) -> float:
    """The number at ``path`` in a nested mapping (a ``summary.json``); NaN where missing."""
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return float("nan")
        d = d[k]
    return float("nan") if d is None else float(d)


def latency(summary: Mapping[str, Any], metric: str, stat: str) -> float:
    """A latency statistic of a ``summary.json`` (``metric`` ``e2e_s``/``ttft_s``/..., ``stat``
    ``mean``/``p50``/``p99``); NaN where missing."""
    return get(summary, "latency", metric, stat)


def rel(p: Path) -> str:
    """``p`` relative to the repository root where it lies inside it (as documents cite it)."""
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)
