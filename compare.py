"""``python compare.py <run or multirun dirs...>``: compare evaluation runs from disk.

    python evaluate.py +sweep=three_policies                 # fifo, drift, oracle x seeds 0, 1
    python compare.py multirun/three_policies                # -> multirun/three_policies/comparison
    python compare.py outputs/evaluate/2026-*/ --out cmp     # several directories, one report
    python compare.py multirun/x --allow-incomplete          # compare the finished jobs only

Reads ``records.parquet``, ``steps.parquet``, ``summary.json`` and the job configs (never wandb),
recomputes every metric from the records, prints policy x metric (mean [95% CI] over seeds,
ratios to FIFO and the oracle) and writes ``report.md``, ``table.csv``, ``runs.csv`` and
``figures/*.png`` (see report/build.py and docs/COMPARING.md). Exit status 2 when runs are
incomplete (unless ``--allow-incomplete``) or nothing can be compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="+",
        help="evaluate.py run or multirun directories "
        "(searched recursively for records.parquet + summary.json)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: <path>/comparison "
        "for one input path, ./comparison otherwise)",
    )
    p.add_argument("--baseline", default="fifo", help="ratios policy / this (default fifo)")
    p.add_argument("--reference", default="oracle", help="and policy / this (default oracle)")
    p.add_argument(
        "--load",
        type=float,
        default=None,
        help="utilisation shown by the single-load figures (default: the highest in the runs)",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="compare the finished "
        "runs and list the incomplete ones in the report instead of refusing",
    )
    p.add_argument("--no-figures", action="store_true", help="table only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from report.build import IncompleteRunsError, build_report

    args = parse_args(argv)
    out = (
        Path(args.out)
        if args.out
        else (Path(args.paths[0]) / "comparison" if len(args.paths) == 1 else Path("comparison"))
    )
    try:
        rep = build_report(
            args.paths,
            out,
            baseline=args.baseline,
            reference=args.reference,
            allow_incomplete=args.allow_incomplete,
            load=args.load,
            figures=not args.no_figures,
        )
    except IncompleteRunsError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    print(rep.text)
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if rep.incomplete:
        print(
            f"note: {len(rep.incomplete)} incomplete run(s) excluded (listed in report.md)",
            file=sys.stderr,
        )
    print(
        f"\nreport: {rep.out_dir / 'report.md'} ({len(rep.figures)} figures in "
        f"{rep.out_dir / 'figures'})"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python compare.py ... | head`: not an error
        sys.stdout = None
        sys.exit(0)
