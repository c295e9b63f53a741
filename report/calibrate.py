"""Fit the simulator's step-time profile from live runs' steps: ``python -m report.calibrate``.

    python -m report.calibrate RUN [RUN ...] --out fitted.json [--target wall|exec]

Reads the steps (and the engine limits) of live run directories -- ``evaluate.py engine=vllm``
runs or ``python -m report.fidelity`` outputs -- and fits and saves the profile with
:mod:`scheduler.sim.calibrate` (the fit itself is sim-side logic on a plain steps table; this
module only knows the run-directory files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from scheduler.sim.calibrate import TARGETS, fit_step_profile, save_profile

LIMIT_KEYS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "num_gpu_blocks",
    "max_model_len",
)


def read_run(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Steps, engine limits and metadata of a live run directory or steps file.

    Accepts an ``evaluate.py engine=vllm`` run directory (``steps.parquet`` + ``summary.json``),
    a fidelity output directory (``live_steps.parquet`` + ``fidelity.json``) or a steps
    parquet file (limits then unknown).
    """
    p = Path(path)
    if p.is_dir():
        for steps_name, meta_name in (
            ("steps.parquet", "summary.json"),
            ("live_steps.parquet", "fidelity.json"),
        ):
            if (p / steps_name).is_file():
                steps = pd.read_parquet(p / steps_name)
                meta: dict[str, Any] = {}
                if (p / meta_name).is_file():
                    doc = json.loads((p / meta_name).read_text())
                    meta = doc.get("engine_meta") or doc.get("meta") or {}
                limits = {**meta, **(meta.get("limits") or {})}
                return steps, {k: limits[k] for k in LIMIT_KEYS if k in limits}, meta
        raise FileNotFoundError(
            f"{p}: no steps.parquet (evaluate.py engine=vllm run) or live_steps.parquet "
            "(python -m report.fidelity output) in this directory"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such run directory or steps file")
    return pd.read_parquet(p), {}, {}


def main(argv: list[str] | None = None) -> int:
    """``python -m report.calibrate RUN [RUN ...] --out fitted.json``."""
    import argparse
    import datetime as dt

    ap = argparse.ArgumentParser(
        prog="python -m report.calibrate",
        description="Fit the simulator's step-time profile from live vLLM runs' steps and save "
        "it as JSON (use it with engine=sim engine.profile=OUT).",
    )
    ap.add_argument("runs", nargs="+", help="run directories or steps parquet files")
    ap.add_argument("--out", required=True, help="profile JSON to write")
    ap.add_argument("--target", default="wall", choices=TARGETS)
    ap.add_argument("--trim-quantile", type=float, default=1.0)
    ap.add_argument("--note", default="", help="free text kept in the profile's meta")
    a = ap.parse_args(argv)
    frames, limits, metas = [], {}, []
    for r in a.runs:
        steps, lim, meta = read_run(r)
        frames.append(steps)
        metas.append({"run": str(r), **{k: v for k, v in meta.items() if not isinstance(v, dict)}})
        for k, v in lim.items():
            if k in limits and limits[k] != v:
                raise ValueError(
                    f"{r}: {k}={v} differs from {limits[k]} in an earlier run; fit runs of one "
                    "engine configuration together"
                )
            limits[k] = v
    model, stats = fit_step_profile(
        pd.concat(frames, ignore_index=True),
        origin=f"live vLLM steps of {len(a.runs)} run(s)",
        trim_quantile=a.trim_quantile,
        target=a.target,
    )
    cap = None
    if "num_gpu_blocks" in limits and "block_size" in limits:
        cap = int(limits["num_gpu_blocks"]) * int(limits["block_size"])
    meta_out = {
        **(metas[0] if len(metas) == 1 else {}),  # one run: its provenance at the top level
        "fitted_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "how": "python -m report.calibrate " + " ".join(map(str, a.runs)),
        "note": a.note,
        "runs": metas,
    }
    save_profile(model, a.out, stats, meta=meta_out, kv_capacity_tokens=cap, limits=limits)
    print(json.dumps({**model.describe(), **stats, "kv_capacity_tokens": cap, "out": a.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
