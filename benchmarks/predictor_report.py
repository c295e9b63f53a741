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
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.predictor_config import QUICK, REPO, VARIANTS, ReportConfig
from benchmarks.predictor_document import write_report
from benchmarks.predictor_drift import drift_section
from benchmarks.predictor_length import Embeddings, length_section
from benchmarks.predictor_recovery import online_section
from benchmarks.predictor_splits import Base, build_splits, load_base, training_rows


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
