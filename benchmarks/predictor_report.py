"""Regenerate the predictor results report (held-out + leave-one-source-out tables, latency).

    python benchmarks/predictor_report.py                       # LightGBM, default data
    python benchmarks/predictor_report.py predictor=transformer  # the MiniLM versions
    python benchmarks/predictor_report.py --out outputs/benchmarks/predictor.md train.max_train_rows=50000

Extra arguments are Hydra overrides of conf/train.yaml. Artifacts go to a temporary directory
(the default ``artifacts/`` is not touched); the Markdown report is written to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: import train, predictor, data

METRICS = [
    "n",
    "mae",
    "rmse",
    "mae_log",
    "kendall_tau",
    "spearman",
    "class_accuracy",
    "p90_coverage",
]


def to_markdown(df) -> str:
    """A pipe table (no tabulate dependency); floats with 3 decimals."""

    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [list(map(str, df.columns)), ["---"] * len(df.columns)]
    rows += [[cell(v) for v in r] for r in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "predictor.md"))
    ap.add_argument("--no-loso", action="store_true", help="skip leave-one-source-out")
    args, overrides = ap.parse_known_args(argv)
    from hydra import compose, initialize_config_dir

    import train as train_entry

    with tempfile.TemporaryDirectory() as tmp:
        ov = [
            "logger=none",
            f"out_dir={tmp}",
            f"train.leave_one_source_out={str(not args.no_loso).lower()}",
            *overrides,
        ]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=ov)
        t0 = time.perf_counter()
        res = train_entry.train(cfg, run_dir=Path(tmp) / "run")
        wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"# Predictor report: {cfg.predictor.name}",
        "",
        f"Command: `python benchmarks/predictor_report.py {' '.join(overrides)}`; "
        f"{platform.processor() or platform.machine()}, threads={cfg.threads}; wall "
        f"{wall:.0f} s, peak RSS {peak_mb:.0f} MiB.",
        f"Data sizes: {res.sizes}. Timings (s): "
        + ", ".join(f"{k}={v:.1f}" for k, v in res.timings.items()),
        "",
        "## Held-out length metrics (prompt-grouped test split)",
        "",
        to_markdown(res.length_table[["model", *METRICS]]),
        "",
        "## Drift: remaining tokens at fixed progress t (requests still running at t)",
        "",
        to_markdown(res.drift_table) if len(res.drift_table) else "(no drift model)",
        "",
        f"## Latency (batch {res.latency['batch']})",
        "",
        f"featurize {res.latency['featurize_us_per_request']:.1f} us/request; admission "
        f"prediction {res.latency['admission_us_per_request']:.1f} us/request.",
    ]
    if res.loso_table is not None:
        lines += [
            "",
            "## Leave-one-source-out",
            "",
            to_markdown(res.loso_table[["held_out", "model", *METRICS]]),
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
