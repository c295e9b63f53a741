"""Summary statistics of a source, a workload or a trace file, as a plain aligned text table.

python -m report.inspect castillo             # a shipped source (see data.loaders.SOURCES)
python -m report.inspect all                  # every shipped source, one line each
python -m report.inspect default --n 3000     # a workload preset: conf/workload/<name>.yaml
python -m report.inspect paper --no-prefix    # the paper's workload
python -m report.inspect my_trace.csv         # a user trace file (missing columns filled)
python -m report.inspect castillo --by model  # break a table down by any column
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.arrivals import arrival_cv

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "workload"


def length_stats(df: pd.DataFrame) -> dict[str, object]:
    """Rows and prompt/output length percentiles (tokens) of a table."""
    out: dict[str, object] = {"rows": len(df)}
    for col, short in (("prompt_tokens", "in"), ("output_tokens", "out")):
        v = df[col].to_numpy(dtype=np.float64)
        out[f"{short}_mean"] = float(v.mean()) if len(v) else math.nan
        for q in (50, 90, 99):
            out[f"{short}_p{q}"] = float(np.percentile(v, q)) if len(v) else math.nan
        out[f"{short}_max"] = float(v.max()) if len(v) else math.nan
    return out


def arrival_stats(df: pd.DataFrame) -> dict[str, object]:
    """Span (s), mean rate (req/s) and gap CV of a table with arrival times."""
    if "arrival_s" not in df.columns or df["arrival_s"].isna().all() or len(df) < 2:
        return {}
    a = np.sort(df["arrival_s"].to_numpy(dtype=np.float64))
    span = float(a[-1] - a[0])
    return {
        "span_s": span,
        "rate_rps": (len(a) - 1) / span if span > 0 else math.inf,
        "cv": arrival_cv(a),
    }


def summarise(df: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """One row for the whole table, then one per value of ``by`` (if given)."""
    rows = [{"group": "ALL", **length_stats(df), **arrival_stats(df)}]
    if by is not None:
        if by not in df.columns:
            raise ValueError(f"--by {by!r}: no such column; columns: {list(df.columns)}")
        for key, g in df.groupby(by, sort=True):
            rows.append({"group": f"{by}={key}", **length_stats(g), **arrival_stats(g)})
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    """Plain aligned text: numbers right-aligned, integers without decimals."""

    def cell(v: object) -> str:
        if isinstance(v, float | np.floating):
            if math.isnan(v):
                return "-"
            if math.isinf(v):
                return "inf"
            if abs(v) >= 100 or float(v).is_integer():
                return f"{v:,.0f}"
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
        if isinstance(v, int | np.integer):
            return f"{v:,}"
        return str(v)

    cols = list(df.columns)
    body = [[cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [
        max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(cols)
    ]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    ]
    for r in body:
        lines.append(
            "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
        )
    return "\n".join(lines)


def load_named(name: str, n: int | None, seed: int, prefix: bool):
    """A source table, a Workload, or a trace file table, by name."""
    from data.loaders import SOURCES, load_source, load_trace_file

    if name in SOURCES:
        return load_source(name)
    if (CONF_DIR / f"{name}.yaml").is_file():
        from data.presets import workload_from_config
        from report.presets import compose_workload_config

        cfg = compose_workload_config(name)
        if cfg.get("preset") == "paper":
            cfg["prefix"] = prefix
        elif n is not None:
            cfg["n_requests"] = n
        return workload_from_config(cfg, seed)
    if Path(name).is_file():
        return load_trace_file(name, fill_defaults=True)
    presets = sorted(p.stem for p in CONF_DIR.glob("*.yaml")) if CONF_DIR.is_dir() else []
    raise SystemExit(
        f"unknown name {name!r}: expected a source {sorted(SOURCES)}, 'all', a "
        f"workload preset {presets}, or a trace file path"
    )


def inspect_all() -> str:
    from data.loaders import SOURCES, load_source_with_reports

    rows = []
    notes = []
    for name in SOURCES:
        df, reports = load_source_with_reports(name)
        rows.append({"source": name, **length_stats(df), **arrival_stats(df)})
        notes += [f"  {r}" for r in reports]
    out = format_table(pd.DataFrame(rows))
    if notes:
        out += "\n\nexplicit filters applied while loading:\n" + "\n".join(notes)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m report.inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("name", help="source, 'all', workload preset, or trace file")
    ap.add_argument(
        "--by",
        default=None,
        help="break down by this column (default: tenant, tier and category for workloads)",
    )
    ap.add_argument("--n", type=int, default=None, help="workload size (requests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-prefix", action="store_true", help="paper preset without the prefix")
    args = ap.parse_args(argv)

    if args.name == "all":
        print(inspect_all())
        return 0
    obj = load_named(args.name, args.n, args.seed, prefix=not args.no_prefix)
    from data.workload import Workload

    if isinstance(obj, Workload):
        print(
            f"workload {obj.name!r}  seed={obj.seed}  requests={len(obj):,}  "
            f"arrivals: {obj.arrival}"
        )
        print(f"span {obj.duration_s:,.1f} s  rate {obj.rate_rps:.3g} req/s  cv {obj.cv:.3g}\n")
        print(format_table(obj.tenant_table()))
        bys = (
            [args.by]
            if args.by
            else ["tenant", "tier", "category"]
            + (["phase"] if "phase" in obj.requests.columns else [])
        )
        for by in bys:
            print()
            print(format_table(summarise(obj.requests, by)))
        if obj.reports:
            print("\nexplicit filters and caps:")
            for r in obj.reports:
                print(f"  {r}")
        return 0
    df = obj
    print(f"{args.name}: {len(df):,} rows, columns {list(df.columns)}\n")
    bys = (
        [args.by]
        if args.by
        else [c for c in ("category", "model") if df[c].nunique() <= 30 and df[c].nunique() > 1][:1]
    )
    print(format_table(summarise(df, bys[0] if bys else None)))
    if args.name in __import__("data.loaders", fromlist=["SOURCES"]).SOURCES:
        from data.loaders import load_source_with_reports

        reports = load_source_with_reports(args.name)[1]
        if reports:
            print("\nexplicit filters applied while loading:")
            for r in reports:
                print(f"  {r}")
    return 0


if __name__ == "__main__":
    from data.schema import TraceValidationError

    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.exit(0)
    except TraceValidationError as e:  # a bad trace file: the message says where, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
