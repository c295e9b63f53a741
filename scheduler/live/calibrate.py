"""Fit the simulator's step-time model from live vLLM steps (no vLLM import here).

The live engine records, per step, what it computed (``prefill_tokens``, ``decode_seqs``,
``kv_read_tokens`` = context attended, ``prefill_pairs``) and the model time ``exec_s``
(``schedule()`` return -> ``update_from_output()`` entry). Non-negative least squares on

    exec_s = c0 + c_token * (prefill_tokens + decode_seqs) + c_kv * kv_read_tokens
                + c_pair * prefill_pairs

gives the coefficients of :class:`scheduler.sim.cost.LinearCostModel`, saved as JSON
(``save_profile`` / ``load_profile``) with the fit's quality and provenance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scheduler.sim.cost import LinearCostModel

PROFILE_KIND = "driftsched.linear_step_time"
PROFILE_VERSION = 1
_TERMS = ("c0", "c_token", "c_kv", "c_pair")


def _design(steps: pd.DataFrame) -> np.ndarray:
    need = ["prefill_tokens", "decode_seqs", "kv_read_tokens", "prefill_pairs", "exec_s"]
    missing = [c for c in need if c not in steps.columns]
    if missing:
        raise ValueError(
            f"steps table: missing column(s) {missing}; expected the live engine's "
            "steps (scheduler.live.engine.steps_table)"
        )
    tokens = steps["prefill_tokens"].to_numpy(float) + steps["decode_seqs"].to_numpy(float)
    return np.c_[
        np.ones(len(steps)),
        tokens,
        steps["kv_read_tokens"].to_numpy(float),
        steps["prefill_pairs"].to_numpy(float),
    ]


def fit_step_profile(
    steps: pd.DataFrame, origin: str = "live vLLM steps", trim_quantile: float = 0.99
) -> tuple[LinearCostModel, dict[str, Any]]:
    """Fit the cost model; returns it and fit statistics (n, r2, mean relative error).

    Steps that computed nothing are dropped; so are the slowest ``1 - trim_quantile`` (first
    steps with lazy initialisation, OS hiccups on a shared CPU). Coefficients are kept >= 0
    (non-negative least squares: a negative cost has no physical reading).
    """
    from scipy.optimize import nnls

    s = steps[(steps["prefill_tokens"] + steps["decode_seqs"]) > 0]
    s = s[np.isfinite(s["exec_s"].to_numpy(float))]
    if len(s) < 8:
        raise ValueError(
            f"fit_step_profile: {len(s)} usable steps; need at least 8 (run a longer live workload)"
        )
    cut = s["exec_s"].quantile(trim_quantile)
    s = s[s["exec_s"] <= cut]
    X = _design(s)
    y = s["exec_s"].to_numpy(float)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)  # column scaling for a stable solve
    coef, _ = nnls(X / scale, y)
    coef = coef / scale
    pred = X @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    stats = {
        "n_steps": len(s),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "mean_abs_rel_err": float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-9))),
        "mean_step_s": float(y.mean()),
        "trim_quantile": trim_quantile,
    }
    model = LinearCostModel(
        c0=float(coef[0]),
        c_token=float(coef[1]),
        c_kv=float(coef[2]),
        c_pair=float(coef[3]),
        origin=origin,
    )
    return model, stats


def save_profile(
    model: LinearCostModel,
    path: str | Path,
    stats: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": PROFILE_KIND,
        "version": PROFILE_VERSION,
        "units": "seconds",
        "formula": "c0 + c_token*(prefill_tokens+decode_seqs) + c_kv*kv_read_tokens "
        "+ c_pair*prefill_pairs",
        **{k: getattr(model, k) for k in _TERMS},
        "origin": model.origin,
        "fit": stats or {},
        "meta": meta or {},
    }
    path.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return path


def load_profile(path: str | Path) -> LinearCostModel:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a step-time profile ({e})") from None
    if doc.get("kind") != PROFILE_KIND:
        raise ValueError(
            f"{path}: field 'kind' is {doc.get('kind')!r}; expected "
            f"{PROFILE_KIND!r} (written by scheduler.live.calibrate.save_profile)"
        )
    bad = [k for k in _TERMS if not isinstance(doc.get(k), int | float) or doc[k] < 0]
    if bad:
        raise ValueError(f"{path}: coefficient(s) {bad} missing or negative; expected seconds >= 0")
    return LinearCostModel(
        **{k: float(doc[k]) for k in _TERMS}, origin=str(doc.get("origin", path.name))
    )
