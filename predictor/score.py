"""Score a saved length predictor on any trace file and print one JSON object.

    python -m predictor.score ARTIFACT_DIR TRACE_FILE

``ARTIFACT_DIR`` is a length artifact (e.g. ``artifacts/length``), an artifact root holding
``length/`` (e.g. ``artifacts``), or any saved baseline. ``TRACE_FILE`` is CSV, JSONL or parquet
(optionally .gz) with the schema's columns; only ``output_tokens`` and ``prompt`` (or
``prompt_tokens``) are required, absent identity columns are treated as unknown. An
``evaluate.py`` ``records.parquet`` works too (finished requests). Output keys: ``n``, ``mae``,
``rmse``, ``mae_log``, ``kendall_tau``, ``spearman``, ``class_accuracy``, ``p90_coverage``.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m predictor.score", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("artifact_dir", help="length artifact directory (or artifacts root)")
    ap.add_argument("trace_file", help="CSV/JSONL/parquet trace or records.parquet")
    args = ap.parse_args(argv)
    try:
        out = score(args.artifact_dir, args.trace_file)
    except (ArtifactError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
