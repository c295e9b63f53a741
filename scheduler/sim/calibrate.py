"""Fit the simulator's step-time model from a table of measured engine steps.

Sim-side and engine-agnostic: the input is a plain steps table (any engine that records these
columns); the live vLLM engine writes one per run. The command that reads run directories and
writes a profile is ``python -m report.calibrate``. The live engine records, per step, what it computed (``prefill_tokens``, ``decode_seqs``,
``kv_read_tokens`` = context attended, ``prefill_pairs``) and how long it took
(:func:`scheduler.live.run_records.steps_table`). Non-negative least squares on

    t = c0 + c_token * (prefill_tokens + decode_seqs) + c_kv * kv_read_tokens
           + c_pair * prefill_pairs + c_decode * decode_seqs + c_prefill_seq * prefill_seqs

gives the coefficients of :class:`scheduler.sim.cost.LinearCostModel`, saved as JSON
(``save_profile``; read by the simulator through ``engine.profile=<path>``) with the fit's
quality and provenance.

What ``t`` is (``target``):

* ``"wall"`` (default): the step's full wall time, from one ``schedule()`` to the next while
  the engine went straight on (``busy`` steps; ``duration_s``). It includes vLLM's scheduler,
  the model, output processing and the replay loop -- everything a simulated step stands for
  (on a CPU with a tiny model the non-model part is a large share: ``overhead_share``).
* ``"exec"``: model time only (``schedule()`` return -> ``update_from_output()``), the older
  behaviour; a simulator fed with it runs faster than the live engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scheduler.sim.cost import PROFILE_KIND, PROFILE_VERSION, LinearCostModel, load_cost_model

TARGETS = ("wall", "exec")
_TERMS = ("c0", "c_token", "c_kv", "c_pair", "c_decode", "c_prefill_seq")


def _design(steps: pd.DataFrame) -> np.ndarray:
    need = ["prefill_tokens", "decode_seqs", "kv_read_tokens", "prefill_pairs", "prefill_seqs"]
    missing = [c for c in need if c not in steps.columns]
    if missing:
        raise ValueError(
            f"steps table: missing column(s) {missing}; expected the live engine's "
            "steps (scheduler.live.run_records.steps_table, steps.parquet of an engine=vllm run)"
        )
    dec = steps["decode_seqs"].to_numpy(float)
    tokens = steps["prefill_tokens"].to_numpy(float) + dec
    return np.c_[
        np.ones(len(steps)),
        tokens,
        steps["kv_read_tokens"].to_numpy(float),
        steps["prefill_pairs"].to_numpy(float),
        dec,
        steps["prefill_seqs"].to_numpy(float),
    ]


def usable_steps(steps: pd.DataFrame, target: str = "wall") -> tuple[pd.DataFrame, np.ndarray]:
    """The steps a fit may use and their durations (s) for ``target`` (module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"fit target {target!r}: expected one of {TARGETS}")
    s = steps[(steps["prefill_tokens"] + steps["decode_seqs"]) > 0]
    if target == "wall":
        if "busy" not in s.columns:
            raise ValueError(
                "steps table has no 'busy' column (recorded before full step timing); "
                "use target='exec' or record the steps again"
            )
        s = s[s["busy"].astype(bool)]
        y = s["duration_s"].to_numpy(float)
    else:
        if "exec_s" not in s.columns:
            raise ValueError("steps table: missing column 'exec_s' (the live engine's steps)")
        y = s["exec_s"].to_numpy(float)
    ok = np.isfinite(y) & (y > 0)
    return s[ok], y[ok]


def fit_step_profile(
    steps: pd.DataFrame,
    origin: str = "live vLLM steps",
    trim_quantile: float = 1.0,
    target: str = "wall",
) -> tuple[LinearCostModel, dict[str, Any]]:
    """Fit the cost model; returns it and fit statistics.

    Steps that computed nothing are dropped. With ``trim_quantile < 1`` the steps whose
    residual after a first fit is above that quantile are dropped and the fit repeated (OS
    hiccups on a shared CPU); the residual, not the raw duration, because the slowest steps
    are mostly the long prefills the model must learn. The default keeps every step: least
    squares fits the mean, so the summed step time -- what latencies add up -- is unbiased
    (``sum_ratio`` 1), hiccups included. Coefficients are kept >= 0 (non-negative least
    squares: a negative cost has no physical reading).
    Statistics: ``n_steps``, ``r2``, ``mean_abs_rel_err`` (per step), ``sum_ratio`` (predicted
    / measured total time, on all usable steps including the trimmed ones), ``mean_step_s``,
    ``overhead_share`` (share of the wall time outside ``schedule()`` + model execution).
    """
    from scipy.optimize import nnls

    s, y = usable_steps(steps, target)
    if len(s) < 8:
        raise ValueError(
            f"fit_step_profile: {len(s)} usable steps; need at least 8 (run a longer live workload)"
        )
    if not 0.5 <= trim_quantile <= 1.0:
        raise ValueError(f"trim_quantile={trim_quantile!r}: expected a quantile in [0.5, 1]")
    X_all = _design(s)
    scale = np.maximum(np.abs(X_all).max(axis=0), 1e-12)  # column scaling for a stable solve

    def solve(X: np.ndarray, yy: np.ndarray) -> np.ndarray:
        c, _ = nnls(X / scale, yy)
        return c / scale

    coef = solve(X_all, y)
    keep = np.ones(len(y), dtype=bool)
    if trim_quantile < 1.0:
        resid = y - X_all @ coef
        keep = resid <= np.quantile(resid, trim_quantile)
        coef = solve(X_all[keep], y[keep])
    X, yk = X_all[keep], y[keep]
    pred = X @ coef
    ss_res = float(((yk - pred) ** 2).sum())
    ss_tot = float(((yk - yk.mean()) ** 2).sum())
    overhead = math.nan
    if target == "wall" and {"sched_s", "exec_s"} <= set(s.columns):
        inner = (s["sched_s"] + s["exec_s"]).to_numpy(float)
        overhead = float(1.0 - inner.sum() / y.sum())
    stats = {
        "target": target,
        "n_steps": int(keep.sum()),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "mean_abs_rel_err": float(np.mean(np.abs(pred - yk) / np.maximum(yk, 1e-9))),
        "sum_ratio": float((X_all @ coef).sum() / y.sum()),
        "mean_step_s": float(yk.mean()),
        "overhead_share": overhead,
        "trim_quantile": trim_quantile,
    }
    model = LinearCostModel(
        c0=float(coef[0]),
        c_token=float(coef[1]),
        c_kv=float(coef[2]),
        c_pair=float(coef[3]),
        c_decode=float(coef[4]),
        c_prefill_seq=float(coef[5]),
        origin=origin,
    )
    return model, stats


def save_profile(
    model: LinearCostModel,
    path: str | Path,
    stats: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    kv_capacity_tokens: int | None = None,
    limits: dict[str, Any] | None = None,
) -> Path:
    """Write the profile JSON the simulator reads (``engine.profile=<path>``).

    ``kv_capacity_tokens``: the live engine's KV blocks x block size (sizes the simulator's
    cache); ``limits``: the live engine's ``max_num_seqs``, ``max_num_batched_tokens``,
    ``block_size``, ``max_model_len`` (documentation: run the simulator with the same)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": PROFILE_KIND,
        "version": PROFILE_VERSION,
        "units": "seconds",
        "formula": "c0 + c_token*(prefill_tokens+decode_seqs) + c_kv*kv_read_tokens "
        "+ c_pair*prefill_pairs + c_decode*decode_seqs + c_prefill_seq*prefill_seqs",
        **{k: getattr(model, k) for k in _TERMS},
        "origin": model.origin,
        "kv_capacity_tokens": kv_capacity_tokens,
        "limits": limits or {},
        "fit": _finite(stats or {}),
        "meta": meta or {},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None: the file stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def load_profile(path: str | Path) -> LinearCostModel:
    """The fitted cost model in ``path`` (validated; :func:`scheduler.sim.cost.load_cost_model`)."""
    return load_cost_model(path)
