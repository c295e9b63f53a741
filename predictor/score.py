"""Score a saved length predictor on any trace file and print one JSON object.

    python -m predictor.score ARTIFACT_DIR TRACE_FILE
    python -m predictor.score --online ARTIFACT_DIR TRACE_FILE   # + prequential online numbers

``ARTIFACT_DIR`` is a length artifact (e.g. ``artifacts/length``), an artifact root holding
``length/`` (e.g. ``artifacts``), or any saved baseline. ``TRACE_FILE`` is CSV, JSONL or parquet
(optionally .gz) with the schema's columns; only ``output_tokens`` and ``prompt`` (or
``prompt_tokens``) are required, absent identity columns are treated as unknown. An
``evaluate.py`` ``records.parquet`` works too (finished requests). Output keys: ``n``, ``mae``,
``rmse``, ``mae_log``, ``kendall_tau``, ``spearman``, ``class_accuracy``, ``p90_coverage``.

``--online``: the same metrics twice, ``cold`` (the artifact alone) and ``online`` (served
prequentially with ``predictor.online.OnlineLevels``: each request predicted at its arrival
with what completed before, learned from once it completes, running requests counted as
censored; ``predictor.prequential``), each with ``tau_within_generator`` and the MAE/tau after
the first 10% of arrivals; ``protocol`` says how completion times were set (``--tpot``,
``--rate``) and which ``--levels`` were learned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from predictor.artifacts import META, ArtifactError, read_meta
from predictor.metrics import length_metrics
from predictor.online import LEVELS


def load_length_model(directory: str | Path) -> Any:
    """Any saved length model: LightGBM, transformer or a baseline, by its meta.json kind."""
    d = Path(directory)
    if not (d / META).is_file() and (d / "length" / META).is_file():
        d = d / "length"
    kind = read_meta(d).get("kind")
    from predictor.baselines import BASELINES

    if kind in BASELINES:
        return BASELINES[kind].load(d)
    from predictor.serving import load_length_artifact

    return load_length_artifact(d)


def score(artifact_dir: str | Path, trace_file: str | Path) -> dict[str, Any]:
    from predictor.datasets import load_training_table

    model = load_length_model(artifact_dir)
    df, _ = load_training_table(path=trace_file)
    q = model.predict_quantiles(df)
    return length_metrics(
        df["output_tokens"].to_numpy(np.float64), q, df["prompt_tokens"].to_numpy(np.float64)
    )


def score_online(
    artifact_dir: str | Path,
    trace_file: str | Path,
    levels: tuple[str, ...] = LEVELS,
    tpot_s: float | None = None,
    rate_rps: float | None = None,
    warmup: float = 0.1,
) -> dict[str, Any]:
    """Cold and prequential online metrics of one artifact on one trace (module doc)."""
    from predictor.datasets import load_training_table
    from predictor.online import OnlineLevels
    from predictor.prequential import DEFAULT_RATE_RPS, DEFAULT_TPOT_S, evaluate_frame

    tpot_s = DEFAULT_TPOT_S if tpot_s is None else tpot_s
    rate_rps = DEFAULT_RATE_RPS if rate_rps is None else rate_rps
    learner = OnlineLevels(levels=levels)  # validates before any file is read
    if not (tpot_s > 0 and rate_rps > 0):
        raise ValueError(f"--tpot (tpot_s {tpot_s!r}) and --rate ({rate_rps!r}) must be > 0")
    model = load_length_model(artifact_dir)
    df, _ = load_training_table(path=trace_file)
    return evaluate_frame(model, df, levels, tpot_s, rate_rps, warmup, learner)


def _levels(text: str) -> tuple[str, ...]:
    from predictor.online import LEVEL_NAMES

    out = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in out if x not in LEVEL_NAMES]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"--levels {text!r}: expected a comma-separated subset of {', '.join(LEVEL_NAMES)}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m predictor.score", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("artifact_dir", help="length artifact directory (or artifacts root)")
    ap.add_argument("trace_file", help="CSV/JSONL/parquet trace or records.parquet")
    ap.add_argument(
        "--online", action="store_true", help="also serve prequentially with the online learner"
    )
    ap.add_argument(
        "--levels",
        type=_levels,
        default=LEVELS,
        help="online levels, comma-separated (default model,tenant,category,prompt; also tier, "
        "source)",
    )
    ap.add_argument("--tpot", type=float, default=None, help="s per token without finish_s")
    ap.add_argument("--rate", type=float, default=None, help="req/s without arrival_s")
    args = ap.parse_args(argv)
    try:
        if args.online:
            out = score_online(
                args.artifact_dir, args.trace_file, args.levels, args.tpot, args.rate
            )
        else:
            out = score(args.artifact_dir, args.trace_file)
    except (ArtifactError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
