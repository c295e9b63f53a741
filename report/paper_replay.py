"""The DriftSched paper's length estimator measured alongside any run (``report.results``).

The paper's estimator is measured under every policy, not only under SJF (the one policy that
reads it): :func:`replay_estimates` runs ``predictor.paper.PaperEMA`` alongside a finished run,
estimating each request at its arrival with the biases updated by every completion before it
(event order of the run's records), and :func:`write_replay` writes ``estimation_replay.json``
into the job dir; :func:`paper_estimation` and :func:`replay_check` read those files back, and
:func:`waits_by` breaks a run's queue waits down by tier and runtime class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.schema import RUNTIME_CLASSES, TIERS
from report.runs import load_run


def paper_inputs(requests: pd.DataFrame) -> dict[str, Any]:
    """Keyword categories and input counts (both variants) per workload row, as driftsched."""
    from predictor.paper import classify_categories, count_input_tokens

    prompts = requests["prompt"].tolist()
    n_ws = count_input_tokens(prompts, "whitespace").astype(np.float64)
    n_tok = count_input_tokens(prompts, "tokenizer").astype(np.float64)
    missing = requests["prompt"].isna().to_numpy()
    pt = requests["prompt_tokens"].to_numpy(dtype=np.float64)
    return {
        "category": classify_categories(prompts),
        "tier": requests["tier"].astype(str).tolist(),
        "whitespace": np.where(missing, pt, n_ws),
        "tokenizer": np.where(missing, pt, n_tok),
    }


def replay_estimates(
    records: pd.DataFrame, inputs: Mapping[str, Any], correction: bool, counting: str
) -> np.ndarray:
    """Admission estimates the paper's EMA would have made in this run (float64, per record).

    Events in time order; a completion at the same instant as an arrival is applied first.
    """
    from predictor.paper import PaperEMA

    ema = PaperEMA(correction=correction, counting=counting)
    idx = records["index"].to_numpy()
    arr = records["arrival_s"].to_numpy(dtype=np.float64)
    fin = records["finish_s"].to_numpy(dtype=np.float64)
    out = records["output_tokens"].to_numpy()
    done = (records["status"] == "finished").to_numpy() & (out > 0)
    events = [(arr[i], 1, i) for i in range(len(records))]
    events += [(fin[i], 0, i) for i in np.flatnonzero(done)]
    events.sort()
    cats, tiers, n_in = inputs["category"], inputs["tier"], inputs[counting]
    est = np.full(len(records), np.nan)
    for _, kind, i in events:
        j = int(idx[i])
        if kind == 1:
            est[i] = ema.estimate_one(cats[j], tiers[j], float(n_in[j]))
        else:
            ema.update_one(cats[j], float(out[i]))
    return est


def est_errors(records: pd.DataFrame, est: np.ndarray) -> dict[str, float]:
    ok = (records["status"] == "finished").to_numpy() & np.isfinite(est)
    err = est[ok] - records["output_tokens"].to_numpy(dtype=np.float64)[ok]
    return {
        "n": int(ok.sum()),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
    }


VARIANTS = {
    "ws_ema": (True, "whitespace"),
    "ws_noema": (False, "whitespace"),
    "tok_ema": (True, "tokenizer"),
    "tok_noema": (False, "tokenizer"),
}


def write_replay(d: Path, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Replay every estimator variant on the run in ``d``; JSON next to its records."""
    path = d / "estimation_replay.json"
    _, rec = load_run(d)
    out: dict[str, Any] = {}
    for name, (corr, counting) in VARIANTS.items():
        out[name] = est_errors(rec, replay_estimates(rec, inputs, corr, counting))
    if rec["est_output_tokens"].notna().any():
        recorded = rec["est_output_tokens"].to_numpy(dtype=np.float64)
        out["recorded"] = est_errors(rec, recorded)
    path.write_text(json.dumps(out, indent=2))
    return out


def read_replay(d: Path) -> dict[str, Any]:
    """The ``estimation_replay.json`` of a job dir (:func:`write_replay`)."""
    return json.loads((d / "estimation_replay.json").read_text())


def paper_estimation(runs: Mapping[int, Mapping[str, Path]], five: Mapping[str, str]) -> dict:
    """Per counting: per policy per seed, EMA reduction of MAE and RMSE.

    Non-SJF policies: both estimators replayed on the same run (their schedule ignores the
    estimate). SJF: the estimates it recorded, with correction (``sjf_ema``) vs without
    (``sjf_noema``), two different schedules, as the paper ran them.
    """
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for counting, (on, off, sjf_on, sjf_off) in {
        "whitespace": ("ws_ema", "ws_noema", "sjf_ema", "sjf_noema"),
        "tokenizer": ("tok_ema", "tok_noema", "sjf_ema_tok", "sjf_noema_tok"),
    }.items():
        per: dict[str, dict[str, list[float]]] = {}
        for pname, label in five.items():
            vals: dict[str, list[float]] = {"mae": [], "rmse": [], "mae_on": [], "mae_off": []}
            for _seed, dirs in sorted(runs.items()):
                if pname == "SJF":
                    a, b = (
                        read_replay(dirs[sjf_on])["recorded"],
                        read_replay(dirs[sjf_off])["recorded"],
                    )
                else:
                    r = read_replay(dirs[label])
                    a, b = r[on], r[off]
                vals["mae"].append(1 - a["mae"] / b["mae"])
                vals["rmse"].append(1 - a["rmse"] / b["rmse"])
                vals["mae_on"].append(a["mae"])
                vals["mae_off"].append(b["mae"])
            per[pname] = vals
        out[counting] = per
    return out


def replay_check(runs: Mapping[int, Mapping[str, Path]]) -> list[float]:
    """|replayed MAE - recorded MAE| / recorded MAE on the SJF (driftsched) runs."""
    diffs = []
    for dirs in runs.values():
        for label, variant in (
            ("sjf_ema", "ws_ema"),
            ("sjf_noema", "ws_noema"),
            ("sjf_ema_tok", "tok_ema"),
            ("sjf_noema_tok", "tok_noema"),
        ):
            if label in dirs:
                r = read_replay(dirs[label])
                diffs.append(abs(r[variant]["mae"] - r["recorded"]["mae"]) / r["recorded"]["mae"])
    return diffs


def waits_by(records: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean first queue wait (s) per tier and per runtime class (prompt + output tokens)."""
    from data.schema import runtime_class

    r = records[records["status"] == "finished"]
    w = r["admitted_s"] - r["arrival_s"]
    cls = [runtime_class(p + o) for p, o in zip(r["prompt_tokens"], r["output_tokens"])]
    return {
        "tier": {t: float(w[r["tier"] == t].mean()) for t in TIERS},
        "class": {c: float(w[np.array(cls) == c].mean()) for c in RUNTIME_CLASSES},
        "class_n": {c: int((np.array(cls) == c).sum()) for c in RUNTIME_CLASSES},
    }
